"""Where a GPU step's time goes, TSN next to GSF: the host's launches or the kernels.

For each variant (TSN always first) and for a training step (forward, loss, backward) and an
inference forward, on one CUDA device:

- ``eager``: wall milliseconds per step, ``--steps`` steps back to back, one synchronisation
  at the end (as training runs them: the host may run ahead of the GPU);
- ``kernels``: the summed duration of the step's GPU kernels (``torch.profiler``): what the
  step costs the GPU, whatever the host does;
- ``graph``: wall milliseconds per replay of the step captured as a CUDA graph (no launch
  overhead; fails loudly if the step synchronises with the host);

with each variant's ratio to TSN, then each GSF variant's costliest kernels and host
operations. If ``eager`` is well above ``kernels``, the step is bound by the host.

    python scripts/trace_gpu_step.py --temporal-modules gsf gsf_torch --steps 10
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

import torch
from torch.autograd.profiler_util import EventList
from torch.profiler import ProfilerActivity, profile

from lightning_gsf.benchmark import BenchmarkConfig, autocast_context, build_model, loss_of, make_batch

logger = logging.getLogger(__name__)


def step_functions(model: torch.nn.Module, clips: torch.Tensor, labels: torch.Tensor,
                   config: BenchmarkConfig) -> dict[str, Callable[[], None]]:
    """Forward + loss + backward (gradients accumulate: no optimiser, so that the step can be
    captured as it is), and an inference forward."""

    def train() -> None:
        model.train()
        with autocast_context(config):
            loss = loss_of(model, clips, labels)
        loss.backward()

    def infer() -> None:
        model.eval()
        with torch.inference_mode(), autocast_context(config):
            model(clips)

    return {"train": train, "infer": infer}


def eager_ms(step: Callable[[], None], steps: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1e3


def kernel_ms(step: Callable[[], None], steps: int) -> tuple[float, EventList]:
    """The step's summed GPU kernel time in ms, and the profile's per-operation averages."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    averages = prof.key_averages()  # (computed once: it walks every event)
    total_us = sum(event.self_device_time_total for event in averages
                   if event.device_type == torch.autograd.DeviceType.CUDA)
    return total_us / steps / 1e3, averages


def graph_ms(step: Callable[[], None], steps: int) -> float:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--temporal-modules", nargs="+", default=["gsf"])
    parser.add_argument("--num-segments", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--dtype", choices=("float32", "bf16"), default="float32")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=20, help="rows of each kernel / host-operation table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    config = BenchmarkConfig(backbones=(args.backbone,), temporal_modules=tuple(args.temporal_modules),
                             num_segments=args.num_segments, input_size=args.input_size,
                             batch_size=args.batch_size, dtype=args.dtype, device="cuda")
    clips, labels = make_batch(config)
    results: dict[tuple[str, str], dict[str, float | None]] = {}
    for variant in config.variants:
        torch.manual_seed(config.seed)
        model = build_model(args.backbone, variant, config)
        for kind, step in step_functions(model, clips, labels, config).items():
            for _ in range(3):  # warm-up: cuDNN's choices, Triton's compilation
                step()
            figures: dict[str, float | None] = {"eager": eager_ms(step, args.steps)}
            figures["kernels"], averages = kernel_ms(step, args.steps)
            try:
                figures["graph"] = graph_ms(step, args.steps)
            except RuntimeError:
                logger.exception("%s %s: the step could not be captured as a CUDA graph", variant, kind)
                figures["graph"] = None
            results[variant, kind] = figures
            logger.info("%s %s: %s", variant, kind, figures)
            if variant != "none":
                print(f"\n== {variant} {kind}: costliest GPU kernels")
                print(averages.table(sort_by="self_device_time_total", row_limit=args.top))
                print(f"\n== {variant} {kind}: costliest host operations")
                print(averages.table(sort_by="self_cpu_time_total", row_limit=args.top))
        del model
        torch.cuda.empty_cache()
    print(f"\nms per step ({args.backbone}, {args.batch_size} clips x {args.num_segments} frames, "
          f"{args.input_size} px, {args.dtype}, {torch.cuda.get_device_name()}); ratio to TSN in brackets")
    for kind in ("train", "infer"):
        base = results["none", kind]
        for variant in config.variants:
            cells = []
            for column, value in results[variant, kind].items():
                ratio = "" if value is None or not base[column] else f" ({value / base[column]:.3f})"
                cells.append(f"{column} {'-' if value is None else f'{value:.2f}'}{ratio}")
            print(f"{kind:>5} {variant:>12}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
