"""GSF's C++ inference (``infer``) of this checkout against another git revision's, in one process.

A change to ``lightning_gsf/csrc/gsf_cpu.cpp`` that saves a millisecond a clip moves the
whole-network ratio by ~0.3 %, far inside the run-to-run spread of ``gsf benchmark`` on a
shared CPU. This script builds the revision's kernels as a second extension, their ops
registered under another namespace (``lightning_gsf_at_<revision>``), and times the two
builds' ``infer`` alternately, call by call, at the GSF sites of a ResNet-50 (P = C/4 of C
channels, in place, as the network calls it), on the same inputs. It prints each stage's
median time per call, their ratio and whether the two outputs are bitwise equal, and the sum
over the network's 16 sites per clip.

The revision's ``infer`` must take this checkout's arguments (a revision whose schema differs
fails with the op's schema error).

    python scripts/compare_cpu_kernels.py --revision HEAD~1
    python scripts/compare_cpu_kernels.py --revision HEAD~1 --channels-last --dtype bf16 --input-size 224
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
# ResNet-50's stages: channels, stride to the input, blocks (one GSF each)
STAGES = ((256, 4, 3), (512, 8, 4), (1024, 16, 6), (2048, 32, 3))
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
    path = Path(tempfile.mkdtemp()) / f"gsf_cpu_at_{commit}.cpp"
    path.write_text(with_namespace(source, namespace))
    capability = cpu_kernels.built_capability() or "DEFAULT"
    from torch.utils import cpp_extension

    cpp_extension.load(name=f"{namespace}_{capability.lower()}", sources=[str(path)],
                       extra_cflags=cpu_kernels.CFLAGS + cpu_kernels.ISA_FLAGS.get(capability, []),
                       extra_ldflags=cpu_kernels.LDFLAGS, is_python_module=False, verbose=False)
    return getattr(torch.ops, namespace)


def site_arguments(channels: int, size: int, args: argparse.Namespace, generator: torch.Generator):
    """A map of one site (``(N*T, C, size, size)``, in the chosen layout and dtype) and the
    ``infer`` arguments after it: P, T, the batch norm's statistics and affine, the gate conv,
    the two fusion convs."""
    processed = channels // 4
    frames = args.batch_size * args.num_segments
    x = torch.randn(frames, channels, size, size, generator=generator).to(args.dtype)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    parameters = (torch.randn(processed, generator=generator) * 0.1, torch.rand(processed, generator=generator) + 0.5,
                  1e-5, torch.rand(processed, generator=generator) + 0.5,
                  torch.randn(processed, generator=generator) * 0.1,
                  torch.randn(2, processed // 2, 3, 3, 3, generator=generator) * 0.05,
                  torch.randn(2, generator=generator) * 0.1,
                  torch.randn(1, 2, 3, 3, generator=generator) * 0.3, torch.randn(1, 2, 3, 3, generator=generator) * 0.3,
                  torch.randn(1, generator=generator), torch.randn(1, generator=generator))
    return x, (processed, args.num_segments, *parameters)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revision", required=True, help="git revision of the kernels to compare with")
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
    builds = {args.revision: kernels_at(args.revision), "checkout": checkout}

    layout = "channels-last" if args.channels_last else "NCHW"
    print(f"GSF infer, in place, {layout}, {str(args.dtype).removeprefix('torch.')}, T={args.num_segments}, "
          f"batch {args.batch_size}, {args.input_size} px, {args.threads} thread(s), {args.rounds} rounds; "
          "us per call")
    print(f"{'site (C x H x W)':>18} {args.revision:>12} {'checkout':>12} {'ratio':>7}  bitwise equal")
    generator = torch.Generator().manual_seed(0)
    per_clip = dict.fromkeys(builds, 0.0)
    for channels, stride, blocks in STAGES:
        size = max(1, args.input_size // stride)
        x, arguments = site_arguments(channels, size, args, generator)
        times: dict[str, list[float]] = {name: [] for name in builds}
        outputs: dict[str, torch.Tensor] = {}
        for round_ in range(args.warmup + args.rounds):
            for name, ops in builds.items():
                out = x.clone(memory_format=torch.preserve_format)
                start = time.perf_counter()
                ops.infer(out, out, *arguments)
                elapsed = time.perf_counter() - start
                outputs[name] = out
                if round_ >= args.warmup:
                    times[name].append(elapsed)
        old, new = (times[name] for name in builds)
        ratio = statistics.median(n / o for n, o in zip(new, old))
        equal = torch.equal(*outputs.values())
        print(f"{f'{channels} x {size} x {size}':>18} {statistics.median(old) * 1e6:12.1f} "
              f"{statistics.median(new) * 1e6:12.1f} {ratio:7.3f}  {equal}")
        for name in builds:
            per_clip[name] += blocks * statistics.median(times[name]) / args.batch_size
    old_clip, new_clip = per_clip.values()
    print(f"{'per clip (16 sites)':>18} {old_clip * 1e3:10.2f}ms {new_clip * 1e3:10.2f}ms {new_clip / old_clip:7.3f}")


if __name__ == "__main__":
    main()
