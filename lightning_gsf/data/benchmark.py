"""Throughput of the EPIC-KITCHENS pipeline: decoded training clips per second, frames vs video.

``python -m lightning_gsf.data.benchmark [--root data/synthetic]`` loads training batches through
``EpicKitchensDataModule`` exactly as ``gsf fit`` does (TSN sampling, reading, multi-scale crop),
from the extracted JPEG frames and from the MP4 videos, with 0, 1 and 2 DataLoader workers, and
reports clips per second for each (``--randaugment``: with the configs' RandAugment). Without ``--root`` it first writes
the default synthetic dataset to a temporary folder (a ``--root`` that does not exist is an
error, not a reason to time other data).

Beside them it times the model's training on clips of the same shape on the same machine
(``--model BACKBONE TEMPORAL_MODULE``, ResNet-50 GSF by default; ``gsf benchmark``'s training
step: forward, backward and SGD step, on the CPU) and gives each loader's clips per second as
a multiple of the model's: above 1, the loader keeps ahead of training. ``--no-model`` leaves
it out. Timing the model first sets glibc's malloc as ``gsf fit`` does
(:mod:`lightning_gsf.host_memory`), for the loaders too, as in training.

Measure, not test: the figures depend on the machine, its load and the dataset's resolution;
``data/README.md`` records some. The first batches of every run (one per worker, at least one)
are excluded, so worker start-up does not count.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from lightning_gsf import benchmark as model_benchmark
from lightning_gsf import host_memory
from lightning_gsf.data.epic import EpicKitchensDataModule
from lightning_gsf.data.synthetic import generate_synthetic_dataset

__all__ = ["Throughput", "main", "measure", "measure_model"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Throughput:
    layout: str
    num_workers: int
    clips: int
    seconds: float

    #: the model's training clips per second on clips of the same shape, if it was timed
    model_clips_per_second: float | None = None

    @property
    def clips_per_second(self) -> float:
        return self.clips / self.seconds

    @property
    def vs_model(self) -> float | None:
        """Loaded clips per trained clip: above 1, the loader keeps ahead of training."""
        return None if self.model_clips_per_second is None else self.clips_per_second / self.model_clips_per_second


def measure_model(backbone: str, temporal_module: str, *, batch_size: int, num_segments: int, input_size: int,
                  repeats: int = 3) -> float:
    """Training clips per second of ``backbone`` + ``temporal_module`` on batches of clips of
    the given shape: ``gsf benchmark``'s training step (float32, eager, with freed memory kept
    as ``gsf fit`` keeps it), one untimed step, then the median of ``repeats``."""
    config = model_benchmark.BenchmarkConfig(
        backbones=(backbone,), temporal_modules=(temporal_module,), num_segments=num_segments,
        input_size=input_size, batch_size=batch_size, repeats=repeats,
    )
    host_memory.configure(host_memory.mode_from_environment())
    clips, labels = model_benchmark.make_batch(config)
    model = model_benchmark.build_model(backbone, temporal_module, config)
    steps = model_benchmark.make_steps(model, clips, labels, config)
    times = model_benchmark.time_round_robin({"train": steps.train}, repeats, config.warmup, config.device)
    return batch_size / statistics.median(times["train"])


def measure(
    root: Path,
    layout: str,
    num_workers: int,
    *,
    num_batches: int = 20,
    batch_size: int = 8,
    num_segments: int = 8,
    input_size: int = 64,
    video_threads: int = 0,
    randaugment: bool = False,
) -> Throughput:
    """Time ``num_batches`` training batches of one configuration, after one untimed batch per
    worker (each worker's start-up and first-touch costs are not throughput, and the batches
    the other workers prepared while the first one started would be counted at no cost)."""
    datamodule = EpicKitchensDataModule(
        root,
        layout=layout,  # type: ignore[arg-type]
        num_segments=num_segments,
        batch_size=batch_size,
        num_workers=num_workers,
        input_size=input_size,
        resize_size=input_size,
        video_threads=video_threads,
        randaugment=randaugment,
        pin_memory=False,
        drop_last=True,
    )
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    untimed = max(1, num_workers)
    available = len(loader) - untimed
    if available < 1:
        raise ValueError(f"{root}: too few training clips for {untimed + 1} batches of {batch_size}")
    batches = iter(loader)
    for _ in range(untimed):
        next(batches)
    clips, start = 0, time.perf_counter()
    for _, batch in zip(range(min(num_batches, available)), batches):
        clips += batch["clip"].shape[0]
    seconds = time.perf_counter() - start
    del batches  # stops the workers
    return Throughput(layout, num_workers, clips, seconds)


def main(argv: Sequence[str] | None = None) -> list[Throughput]:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_gsf.data.benchmark", description="Decoded training clips per second."
    )
    parser.add_argument("--root", type=Path, default=None, help="dataset root (default: generate a synthetic one)")
    parser.add_argument("--layouts", nargs="+", default=["frames", "video"], choices=["frames", "video"])
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2], help="DataLoader workers to try")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per configuration")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-segments", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--video-threads", type=int, default=0, help="decoder threads per video (0: FFmpeg chooses)")
    parser.add_argument("--randaugment", action="store_true", help="the training RandAugment on (as the real configs)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", nargs=2, default=["resnet50", "gsf"], metavar=("BACKBONE", "TEMPORAL_MODULE"),
                       help="the model whose training clips/s (on the CPU) each loader is compared with "
                            "(default: resnet50 gsf)")
    model.add_argument("--no-model", action="store_true", help="time the loader alone")
    args = parser.parse_args(argv)
    if args.root is not None and not args.root.is_dir():
        parser.error(f"--root {args.root}: no such dataset folder (leave --root out to time a generated synthetic set)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("lightning_gsf.data.base").setLevel(logging.WARNING)  # per-split sample counts
    with tempfile.TemporaryDirectory(prefix="gsf-benchmark-") as scratch:
        root = args.root
        if root is None:
            root = Path(scratch) / "synthetic"
            logger.info("no dataset given: writing the default synthetic dataset to %s", root)
            generate_synthetic_dataset(root)
        model_clips_per_second = None
        if not args.no_model:
            backbone, temporal_module = args.model
            model_clips_per_second = measure_model(backbone, temporal_module, batch_size=args.batch_size,
                                                   num_segments=args.num_segments, input_size=args.input_size)
            logger.info("model: %s + %s trains %.1f clips/s on these clips (batches of %d, %d frames, %d px)",
                        backbone, temporal_module, model_clips_per_second, args.batch_size, args.num_segments,
                        args.input_size)
        results = []
        logger.info("%-7s %8s %8s %10s %10s", "layout", "workers", "clips", "clips/s", "x model")
        for layout in args.layouts:
            for workers in args.workers:
                result = measure(
                    root,
                    layout,
                    workers,
                    num_batches=args.batches,
                    batch_size=args.batch_size,
                    num_segments=args.num_segments,
                    input_size=args.input_size,
                    video_threads=args.video_threads,
                    randaugment=args.randaugment,
                )
                result = dataclasses.replace(result, model_clips_per_second=model_clips_per_second)
                results.append(result)
                versus = "-" if result.vs_model is None else f"{result.vs_model:.2f}"
                logger.info("%-7s %8d %8d %10.1f %10s", layout, workers, result.clips, result.clips_per_second, versus)
    return results


if __name__ == "__main__":
    main()
