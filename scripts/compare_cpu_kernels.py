"""The C++ CPU kernels of this checkout against another git revision's, in one process.

A change to ``lightning_gsf/csrc/gsf_cpu.cpp`` that saves a millisecond a clip moves the
whole-network ratio by ~0.3 %, far inside the run-to-run spread of ``gsf benchmark`` on a
shared CPU. This script builds the revision's kernels as a second extension, their ops
registered under another namespace (``lightning_gsf_at_<commit>``), and times the two builds
alternately, call by call (which build goes first alternates too), on the same inputs, at
the sites of a ResNet-50:

- ``--op gsf``: GSF's inference, ``infer``, in place on the first P = C/4 of C channels, at
  the 16 GSF sites;
- ``--op tsm``: TSM's in-place inference shift and its undoing (``temporal_shift_`` and
  ``temporal_unshift_``, C/8 channels each way) at the 16 blocks' inputs.

It prints each stage's median time per call, the median per-call ratio and whether the two
outputs are bitwise equal, then the sum of the medians over the network's sites per clip.
The revision's ops must take this checkout's arguments (a revision whose schema differs fails
with the op's schema error). Its source is written once per commit under the temporary
directory, so a second run loads the cached build.

    python scripts/compare_cpu_kernels.py --revision HEAD~1
    python scripts/compare_cpu_kernels.py --revision HEAD~1 --channels-last --dtype bf16 --input-size 224
    python scripts/compare_cpu_kernels.py --revision HEAD~1 --op tsm --channels-last
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from lightning_gsf import cpu_kernels, host_memory

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "lightning_gsf/csrc/gsf_cpu.cpp"
# ResNet-50's GSF sites (each block's last conv output): channels, stride to the input, count
GSF_SITES = ((256, 4, 3), (512, 8, 4), (1024, 16, 6), (2048, 32, 3))
# and its TSM sites (each block's input: a stage's first block takes the previous stage's map)
TSM_SITES = ((64, 4, 1), (256, 4, 3), (512, 8, 4), (1024, 16, 6), (2048, 32, 2))
_LIBRARY_MACRO = re.compile(r"\b(TORCH_LIBRARY(?:_IMPL)?)\(\s*lightning_gsf\s*,")


def with_namespace(source: str, namespace: str) -> str:
    """``source`` with its ``TORCH_LIBRARY`` / ``TORCH_LIBRARY_IMPL`` blocks in ``namespace``
    instead of ``lightning_gsf`` (so that both builds' ops can be loaded at once)."""
    renamed, count = _LIBRARY_MACRO.subn(rf"\1({namespace},", source)
    if not count:
        raise ValueError("the source defines no TORCH_LIBRARY block in the lightning_gsf namespace")
    return renamed


def kernels_at(revision: str) -> object:
    """The ops of ``gsf_cpu.cpp`` at ``revision``, built (or loaded from the extension cache)
    under their own namespace."""
    commit = subprocess.run(["git", "rev-parse", "--short=12", revision], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    source = subprocess.run(["git", "show", f"{commit}:{SOURCE}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    namespace = f"lightning_gsf_at_{commit}"
    if torch._C._jit_get_schemas_for_operator(f"{namespace}::infer"):  # loaded before in this process
        return getattr(torch.ops, namespace)  # (a second load of the library would abort it)
    path = Path(tempfile.gettempdir()) / "lightning_gsf_compare_cpu_kernels" / f"gsf_cpu_at_{commit}.cpp"
    path.parent.mkdir(parents=True, exist_ok=True)
    renamed = with_namespace(source, namespace)
    if not path.exists() or path.read_text() != renamed:  # (unchanged: ninja keeps the cached build)
        path.write_text(renamed)
    capability = cpu_kernels.built_capability() or "DEFAULT"
    # (the checkout's build name, torch version and instruction set included, with the commit's)
    cpu_kernels.load_build(f"{cpu_kernels.extension_name(capability)}_at_{commit}", path, capability)
    return getattr(torch.ops, namespace)


def site_map(channels: int, size: int, args: argparse.Namespace, generator: torch.Generator) -> torch.Tensor:
    """A map of one site, ``(N*T, C, size, size)``, in the chosen layout and dtype."""
    frames = args.batch_size * args.num_segments
    x = torch.randn(frames, channels, size, size, generator=generator).to(args.dtype)
    return x.contiguous(memory_format=torch.channels_last) if args.channels_last else x


def gsf_call(channels: int, size: int, args: argparse.Namespace, generator: torch.Generator):
    """One GSF site: its map, and a call of a build's ``infer`` over a copy of it (P, T, the
    batch norm's statistics and affine, the gate conv, the two fusion convs), which returns
    the result."""
    x = site_map(channels, size, args, generator)
    processed = channels // 4
    parameters = (torch.randn(processed, generator=generator) * 0.1, torch.rand(processed, generator=generator) + 0.5,
                  1e-5, torch.rand(processed, generator=generator) + 0.5,
                  torch.randn(processed, generator=generator) * 0.1,
                  torch.randn(2, processed // 2, 3, 3, 3, generator=generator) * 0.05,
                  torch.randn(2, generator=generator) * 0.1,
                  torch.randn(1, 2, 3, 3, generator=generator) * 0.3, torch.randn(1, 2, 3, 3, generator=generator) * 0.3,
                  torch.randn(1, generator=generator), torch.randn(1, generator=generator))

    def call(ops) -> tuple[torch.Tensor, float]:
        out = x.clone(memory_format=torch.preserve_format)
        start = time.perf_counter()
        ops.infer(out, out, processed, args.num_segments, *parameters)
        return out, time.perf_counter() - start

    return call


def tsm_call(channels: int, size: int, args: argparse.Namespace, generator: torch.Generator):
    """One TSM site: a call of a build's in-place shift and its undoing over a copy of the
    map, which returns the shifted map (and the time of both, not of the copy between)."""
    x = site_map(channels, size, args, generator)
    fold = channels // 8
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    def call(ops) -> tuple[torch.Tensor, float]:
        out = x.clone(memory_format=torch.preserve_format)
        saved = torch.empty(args.batch_size * 2, fold, size, size, dtype=x.dtype, memory_format=memory_format)
        start = time.perf_counter()
        ops.temporal_shift_(out, saved, args.num_segments, fold)
        shifted_at = time.perf_counter()
        shifted = out.clone()
        restored_at = time.perf_counter()
        ops.temporal_unshift_(out, saved, args.num_segments, fold)
        elapsed = shifted_at - start + time.perf_counter() - restored_at
        if not torch.equal(out, x):
            raise RuntimeError(f"the shift at {tuple(x.shape)} was not undone exactly")
        return shifted, elapsed

    return call


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revision", required=True, help="git revision of the kernels to compare with")
    parser.add_argument("--op", choices=("gsf", "tsm"), default="gsf",
                        help="gsf: GSF's infer; tsm: TSM's in-place shift and its undoing")
    parser.add_argument("--num-segments", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--dtype", choices=("float32", "bf16"), default="float32")
    parser.add_argument("--rounds", type=int, default=35)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    args.dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    host_memory.configure(host_memory.mode_from_environment())  # as gsf benchmark: no page faults each call
    torch.set_num_threads(args.threads)
    checkout = cpu_kernels.cpu_kernels()
    if checkout is None:
        raise SystemExit("this checkout's CPU kernels are not built (see the log above)")
    builds = (kernels_at(args.revision), checkout)  # (the revision's, the checkout's)

    layout = "channels-last" if args.channels_last else "NCHW"
    what = "GSF infer, in place" if args.op == "gsf" else "TSM shift and unshift, in place"
    print(f"{what}, {layout}, {str(args.dtype).removeprefix('torch.')}, T={args.num_segments}, "
          f"batch {args.batch_size}, {args.input_size} px, {args.threads} thread(s), {args.rounds} rounds; "
          "us per call")
    print(f"{'site (C x H x W)':>18} {'revision':>12} {'checkout':>12} {'ratio':>7}  bitwise equal   "
          f"(revision: {args.revision})")
    generator = torch.Generator().manual_seed(0)
    per_clip = [0.0, 0.0]
    sites, make_call = (GSF_SITES, gsf_call) if args.op == "gsf" else (TSM_SITES, tsm_call)
    for channels, stride, count in sites:
        size = max(1, args.input_size // stride)
        call = make_call(channels, size, args, generator)
        times: tuple[list[float], list[float]] = ([], [])
        outputs: list[torch.Tensor | None] = [None, None]
        for round_ in range(args.warmup + args.rounds):
            for which in ((0, 1) if round_ % 2 == 0 else (1, 0)):  # (either build first in turn)
                outputs[which], elapsed = call(builds[which])
                if round_ >= args.warmup:
                    times[which].append(elapsed)
        old, new = times
        ratio = statistics.median(n / o for n, o in zip(new, old))
        equal = torch.equal(outputs[0], outputs[1])
        print(f"{f'{channels} x {size} x {size}':>18} {statistics.median(old) * 1e6:12.1f} "
              f"{statistics.median(new) * 1e6:12.1f} {ratio:7.3f}  {equal}")
        for which in (0, 1):
            per_clip[which] += count * statistics.median(times[which]) / args.batch_size
    old_clip, new_clip = per_clip
    print(f"{f'per clip ({sum(site[2] for site in sites)} sites)':>18} {old_clip * 1e3:10.2f}ms "
          f"{new_clip * 1e3:10.2f}ms {new_clip / old_clip:7.3f}  (sums of the medians)")


if __name__ == "__main__":
    main()
