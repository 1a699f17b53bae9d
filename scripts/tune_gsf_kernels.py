"""GPU time of one GSF site under each launch setting of its Triton kernels.

Each ResNet-50 stage's GSF (``--batch-size`` clips of ``--num-segments`` frames at
``--input-size``) runs a training step (forward and backward) and an inference forward,
captured as CUDA graphs: replays cost the kernels' time alone, whatever the host's launch
overhead. Settings vary one at a time from the defaults of :mod:`lightning_gsf.gsf_kernels`:
the programs that loops over pixels or channels are cut across, the gate conv's
matrix-product precision, warps per program, the largest pixel tile. The
last column weights the stages by ResNet-50's blocks (3, 4, 6, 3): GSF's kernel time per step.
Then the training step of the first and last stages, profiled kernel by kernel.

    python scripts/tune_gsf_kernels.py
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from trace_gpu_step import graph_ms  # (scripts/, on the path when this script runs)

from lightning_gsf import gsf_kernels
from lightning_gsf.gsf import GSF

STAGES = ((256, 4, 3), (512, 8, 4), (1024, 16, 6), (2048, 32, 3))  # channels, stride, blocks
CONSTANTS = ("NUM_WARPS", "MAX_BLOCK_PIXELS", "DOT_PRECISION", "MIN_PROGRAMS")  # of gsf_kernels
SETTINGS = {  # name -> the CONSTANTS' values
    "default": (4, 128, "tf32x3", 1024),
    "loops uncut": (4, 128, "tf32x3", 0),  # (the grids before loops were cut across programs)
    "4096 programs": (4, 128, "tf32x3", 4096),
    "float32 FMA": (4, 128, "ieee", 1024),
    "8 warps": (8, 128, "tf32x3", 1024),
    "256 px": (4, 256, "tf32x3", 1024),
    "2 warps, 64 px": (2, 64, "tf32x3", 1024),
}


def use_setting(values: tuple) -> None:
    for name, value in zip(CONSTANTS, values, strict=True):
        setattr(gsf_kernels, name, value)


def site_steps(channels: int, size: int, frames: int, num_segments: int) -> tuple[GSF, Callable, Callable]:
    """One stage's GSF on CUDA and its training step (forward and backward) and inference."""
    device = torch.device("cuda")
    generator = torch.Generator().manual_seed(0)
    module = GSF(channels, num_segments, 0.25).to(device)
    x = torch.randn(frames, channels, size, size, generator=generator).to(device).requires_grad_()
    grad = torch.randn(x.shape, generator=generator).to(device)

    def train() -> None:
        module.forward_triton(x).backward(grad)

    def infer() -> None:
        with torch.no_grad():
            module.forward_triton(x)

    return module, train, infer


def site_ms(channels: int, size: int, frames: int, num_segments: int, replays: int) -> tuple[float, float]:
    module, train, infer = site_steps(channels, size, frames, num_segments)
    module.train()
    train_ms = graph_ms(train, replays)  # (its warm-up compiles the kernels for this setting and shape)
    module.eval()
    return train_ms, graph_ms(infer, replays)


def print_kernel_times(channels: int, size: int, frames: int, num_segments: int, steps: int) -> None:
    """Each kernel's GPU time in one stage's training step (the default setting; kernel
    durations are the device's, whatever the host's pace)."""
    module, train, _ = site_steps(channels, size, frames, num_segments)
    module.train()
    for _ in range(3):
        train()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            train()
        torch.cuda.synchronize()
    print(f"\nkernels of the {channels}x{size} site's training step, {steps} steps")
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=20))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-segments", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--kernel-stages", nargs="*", type=int, default=[1, 4], choices=[1, 2, 3, 4],
                        help="stages whose training step is then profiled kernel by kernel")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    torch.backends.cudnn.allow_tf32 = False  # (GSF's own kernels are what is timed)
    frames = args.batch_size * args.num_segments
    print(f"GSF site kernel time, ms (train: forward + backward / inference); {frames} frames, "
          f"{args.input_size} px input, {torch.cuda.get_device_name()}")
    print(f"{'setting':>16} " + " ".join(f"{f'{c}x{args.input_size // s}':>16}" for c, s, _ in STAGES)
          + f" {'ResNet-50 total':>16}")
    defaults = tuple(getattr(gsf_kernels, name) for name in CONSTANTS)
    for name in args.settings:
        use_setting(SETTINGS[name])
        cells, train_total, infer_total = [], 0.0, 0.0
        for channels, stride, blocks in STAGES:
            train_ms, infer_ms = site_ms(channels, args.input_size // stride, frames, args.num_segments,
                                         args.replays)
            train_total += blocks * train_ms
            infer_total += blocks * infer_ms
            cells.append(f"{train_ms:7.3f}/{infer_ms:7.3f}")
        print(f"{name:>16} " + " ".join(f"{c:>16}" for c in cells) + f" {train_total:7.2f}/{infer_total:7.2f}",
              flush=True)
    use_setting(defaults)
    for stage in args.kernel_stages:
        channels, stride, _ = STAGES[stage - 1]
        print_kernel_times(channels, args.input_size // stride, frames, args.num_segments, args.replays)


if __name__ == "__main__":
    main()
