"""This checkout's GSF against GSF from another git revision, in one process, next to TSN.

Whole-network ratios move by +-0.03 between runs on a shared CPU, more than most changes to
GSF: comparing two separate runs of ``gsf benchmark`` cannot tell whether a change helped.
This script builds three networks with the same weights (TSN, GSF as of ``--revision``, GSF
as checked out), alternates their steps round-robin in one process, and prints each GSF's
median per-round ratio to TSN and the median per-round difference between the two GSFs.

The old GSF is ``lightning_gsf/gsf.py`` (and ``gsf_fast.py``, its fast paths, where the
revision has it) read with ``git show REVISION:...`` and loaded as a separate module; each GSF
module of the second network gets that class (the parameter and buffer names have not
changed, so the weights are shared as they are). The rest of the package, the C++ CPU
kernels included, is the checkout's: a revision whose ``gsf.py`` (or ``gsf_fast.py``) calls
those kernels with another signature fails with the op's schema error (revisions from before
the kernels, such as 4fadd80, run on PyTorch operations alone).

    python scripts/compare_gsf_revisions.py --revision c2e1cc8 --mode train --rounds 10
    python scripts/compare_gsf_revisions.py --revision c2e1cc8 --mode infer --num-segments 16
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

from lightning_gsf import host_memory
from lightning_gsf.benchmark import BenchmarkConfig, build_model, make_batch, make_steps, time_round_robin
from lightning_gsf.gsf import GSF

ROOT = Path(__file__).resolve().parents[1]


def module_at(revision: str, name: str) -> ModuleType | None:
    """``lightning_gsf/<name>.py`` at ``revision``, loaded as a module of its own (None where the
    revision has no such file)."""
    shown = subprocess.run(["git", "show", f"{revision}:lightning_gsf/{name}.py"], cwd=ROOT, capture_output=True,
                           text=True)
    if shown.returncode:
        return None
    path = Path(tempfile.mkdtemp()) / f"{name}_at_revision.py"
    path.write_text(shown.stdout)
    spec = importlib.util.spec_from_file_location(f"{name}_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def gsf_class_at(revision: str) -> type:
    """The ``GSF`` class of ``lightning_gsf/gsf.py`` at ``revision``, with the fast paths of
    that revision's ``gsf_fast.py`` where it has one (before it, they were in ``gsf.py``)."""
    gsf = module_at(revision, "gsf")
    if gsf is None:
        raise SystemExit(f"{revision} has no lightning_gsf/gsf.py")
    fast = module_at(revision, "gsf_fast")
    if fast is not None:
        gsf.gsf_fast = fast  # (gsf.py calls its fast paths through this module name)
    return gsf.GSF


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revision", required=True, help="git revision of the GSF to compare with")
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--num-segments", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    host_memory.configure(host_memory.mode_from_environment())  # as gsf benchmark: no page faults each step
    torch.set_num_threads(args.threads)
    old_gsf = gsf_class_at(args.revision)

    config = BenchmarkConfig(backbones=(args.backbone,), num_segments=args.num_segments,
                             input_size=args.input_size, batch_size=args.batch_size)
    clips, labels = make_batch(config)
    models = {}
    for name in ("TSN", f"GSF@{args.revision}", "GSF@checkout"):
        torch.manual_seed(0)
        models[name] = build_model(args.backbone, "none" if name == "TSN" else "gsf", config)
    swapped = 0
    for module in models[f"GSF@{args.revision}"].modules():
        if type(module) is GSF:
            module.__class__ = old_gsf
            swapped += 1
    if not swapped:
        raise RuntimeError(f"{args.backbone} with temporal module 'gsf' has no GSF module to swap")
    print(f"{swapped} GSF modules run the code of {args.revision}")
    # the benchmark's own steps (SGD step / inference_mode forward) and round-robin timer
    steps = {name: getattr(make_steps(model, clips, labels, config), args.mode) for name, model in models.items()}
    times = time_round_robin(steps, args.rounds, args.warmup, config.device, time.process_time)

    baseline = times["TSN"]
    print(f"{args.mode}, {args.backbone}, T={args.num_segments}, {args.input_size} px, batch {args.batch_size}, "
          f"{args.rounds} rounds, CPU time of the process")
    print(f"{'TSN':>24}: {statistics.median(baseline) * 1e3:9.1f} ms")
    for name in list(models)[1:]:
        ratio = statistics.median(t / b for t, b in zip(times[name], baseline))
        print(f"{name:>24}: {statistics.median(times[name]) * 1e3:9.1f} ms, {ratio:.4f} x TSN (median per round)")
    old, new = times[f"GSF@{args.revision}"], times["GSF@checkout"]
    saved = [(o - c) * 1e3 for o, c in zip(old, new)]
    quartiles = statistics.quantiles(saved, n=4) if len(saved) > 1 else [saved[0]] * 3
    print(f"{'old - checkout':>24}: {statistics.median(saved):9.2f} ms (median per round; quartiles "
          f"{quartiles[0]:.2f} / {quartiles[2]:.2f} ms)")


if __name__ == "__main__":
    main()
