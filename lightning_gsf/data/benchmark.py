"""Throughput of the EPIC-KITCHENS pipeline: decoded training clips per second, frames vs video.

``python -m lightning_gsf.data.benchmark [--root data/synthetic]`` loads training batches through
``EpicKitchensDataModule`` exactly as ``gsf fit`` does (TSN sampling, reading, multi-scale crop),
from the extracted JPEG frames and from the MP4 videos, with 0, 1 and 2 DataLoader workers, and
reports clips per second for each (``--randaugment``: with the configs' RandAugment). Without ``--root`` it first writes
the default synthetic dataset to a temporary folder (a ``--root`` that does not exist is an
error, not a reason to time other data).

Measure, not test: the figures depend on the machine, its load and the dataset's resolution;
``data/README.md`` records some. The first batches of every run (one per worker, at least one)
are excluded, so worker start-up does not count.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lightning_gsf.data.epic import EpicKitchensDataModule
from lightning_gsf.data.synthetic import generate_synthetic_dataset

__all__ = ["Throughput", "main", "measure"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Throughput:
    layout: str
    num_workers: int
    clips: int
    seconds: float

    @property
    def clips_per_second(self) -> float:
        return self.clips / self.seconds


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
        results = []
        logger.info("%-7s %8s %8s %10s", "layout", "workers", "clips", "clips/s")
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
                results.append(result)
                logger.info("%-7s %8d %8d %10.1f", layout, workers, result.clips, result.clips_per_second)
    return results


if __name__ == "__main__":
    main()
