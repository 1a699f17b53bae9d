"""What one GSF site costs, per ResNet-50 stage and per formulation of GSF.

A "site" is what GSF sits in inside a Bottleneck: the block's last 1x1 convolution
(``C/4 -> C``), GSF, then the BatchNorm. Each formulation is timed as a whole site, next to
the same site without GSF, in inference (eval, ``inference_mode``) and as a training step
(forward and backward):

- ``fast``: ``GSF.forward``, the eager default (on CUDA the Triton kernels, on the CPU the
  C++ kernels of ``forward_cpu``),
- ``torch``: ``GSF.forward_torch``, the PyTorch-ops path, and ``triton`` (CUDA only):
  ``GSF.forward_triton``, the Triton kernels called directly,
- ``compilable``: ``GSF.forward_compilable`` run eagerly,
- ``reference``: ``GSF.forward_reference``, the literal spec,
- ``compiled``: the GSF module under ``torch.compile`` (``--compile``; it runs the C++
  kernels as custom ops on the CPU, ``forward_compiled_ops``, and ``forward_compilable``
  elsewhere).

The last column weights the four stages by ResNet-50's blocks per stage (3, 4, 6, 3): GSF's
cost per clip of ``--batch-size`` clips in milliseconds. On the CPU, use ``--threads 1
--timer process``; on a GPU (``--device cuda``), the wall clock with synchronisation.

    python scripts/profile_gsf.py --threads 1 --timer process
    python scripts/profile_gsf.py --device cuda --batch-size 8 --input-size 224 --compile
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from lightning_gsf.gsf import GSF

STAGES = ((256, 4, 3), (512, 8, 4), (1024, 16, 6), (2048, 32, 3))  # channels, stride, blocks
FORMULATIONS = ("fast", "torch", "triton", "compilable", "reference", "compiled")


def gsf_call(gsf: GSF, formulation: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if formulation == "compiled":
        return torch.compile(gsf)
    return {"fast": gsf.forward, "torch": gsf.forward_torch, "triton": gsf.forward_triton,
            "compilable": gsf.forward_compilable, "reference": gsf.forward_reference}[formulation]


def formulations_for(args: argparse.Namespace) -> list[str]:
    on_cuda = torch.device(args.device).type == "cuda"
    return [f for f in FORMULATIONS
            if (f != "compiled" or args.compile) and (f != "triton" or on_cuda)]


def time_site(channels: int, size: int, args: argparse.Namespace, formulation: str | None,
              training: bool) -> float:
    """Median seconds of one call of conv -> [GSF] -> BN (forward, or forward and backward)."""
    device = torch.device(args.device)
    frames = args.batch_size * args.num_segments
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(frames, channels // 4, size, size, generator=generator).to(device)
    conv = nn.Conv2d(channels // 4, channels, 1, bias=False).to(device)
    norm = nn.BatchNorm2d(channels).to(device)
    gsf = GSF(channels, args.num_segments, 0.25, inplace=True).to(device)
    temporal = gsf_call(gsf, formulation) if formulation else (lambda features: features)
    for module in (conv, norm, gsf):
        module.train(training)

    def step() -> None:
        if training:
            norm(temporal(conv(x))).square().mean().backward()
        else:
            with torch.inference_mode():
                norm(temporal(conv(x)))

    timer = time.process_time if args.timer == "process" else time.perf_counter
    times = []
    for index in range(args.warmup + args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = timer()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= args.warmup:
            times.append(timer() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-segments", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--input-size", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--timer", choices=("wall", "process"), default="wall")
    parser.add_argument("--compile", action="store_true", help="also time the GSF module under torch.compile")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if torch.device(args.device).type == "cuda":
        torch.backends.cudnn.benchmark = True
    formulations = formulations_for(args)
    print(f"GSF site (1x1 conv -> GSF -> BN), ms per call; {args.batch_size} clip(s) x "
          f"{args.num_segments} frames, {args.input_size} px input, device {args.device}, timer {args.timer}")
    for training in (False, True):
        totals = dict.fromkeys(formulations, 0.0)
        print(f"\n{'training step' if training else 'inference'}")
        print(f"{'stage':>16} {'no GSF':>8} " + " ".join(f"{f:>11}" for f in formulations))
        for channels, stride, blocks in STAGES:
            size = args.input_size // stride
            base = time_site(channels, size, args, None, training) * 1e3
            cells = []
            for formulation in formulations:
                with_gsf = time_site(channels, size, args, formulation, training) * 1e3
                totals[formulation] += blocks * (with_gsf - base) / args.batch_size
                cells.append(f"{with_gsf:11.3f}")
            print(f"{f'{channels}x{size}x{size}':>16} {base:8.3f} " + " ".join(cells))
        print(f"{'GSF ms per clip':>16} {'':>8} " + " ".join(f"{totals[f]:11.2f}" for f in formulations))


if __name__ == "__main__":
    main()
