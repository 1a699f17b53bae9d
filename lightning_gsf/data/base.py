"""What every dataset shares: the sample record, the clip dataset and the base DataModule.

A dataset's own file (``epic.py``, ``ssv2.py``, ...) only turns its annotation files into a list
of :class:`ClipSample` and picks a reader; everything from frame indices to batches happens
here, identically for every dataset:

- training item: ``train_indices`` (or the release's sampler) -> reader -> ``TrainClipTransform`` ->
  ``clip`` uint8 ``(T, 3, H, W)``;
- evaluation item (val / test / predict): ``multi_clip_indices`` -> reader ->
  ``EvalClipTransform`` -> ``clip`` uint8 ``(V, T, 3, S, S)`` with ``V = clips x crops`` views,
  clip-major (view ``k * crops + c`` is clip ``k``, crop ``c``); always 5 dimensions, ``V = 1``
  included.

Every item also carries ``labels`` (``{head: int}``, absent for unlabelled splits), ``index``
(its position in the split, by which the metrics count a sample once, e.g. the second copy
``skip_unreadable`` substitutes), ``id`` and ``subsets`` (``{name: bool}``).

Reproducible augmentation. Each training item draws its frames and its augmentation from a
``torch.Generator`` seeded with ``(seed, epoch, index)``. The clip therefore does not depend on
which worker loads it, changes from epoch to epoch, and a run resumed at epoch ``e`` sees the
clips an uninterrupted run would. The epoch reaches the workers through the training sampler
(:class:`~lightning_gsf.data.samplers.ResumableDistributedSampler`): Lightning calls its
``set_epoch`` at the start of every epoch, before the loader's workers are asked for the
epoch's first batch, and the sampler passes it to :meth:`ClipDataset.set_epoch`, which writes it
into a one-element shared-memory tensor that the workers, persistent ones included, read.
The same sampler shuffles with ``(seed, epoch)``, shards the set under DDP and resumes
mid-epoch; evaluation loaders use
:class:`~lightning_gsf.data.samplers.UnpaddedDistributedSampler`, so that under DDP every
sample is scored exactly once.

Unreadable samples. By default a sample whose frames cannot be read raises
:class:`~lightning_gsf.data.errors.SampleReadError` naming the sample and its file. With
``skip_unreadable=True`` the dataset instead logs a warning naming the sample, its file and the
reason, and returns the next readable sample of the split in its place (the substitute keeps its
own ``index``, ``id`` and labels). Substituting rather than dropping keeps every batch full (a
batch of one or zero clips would upset batch norm, or crash), and at evaluation the metrics'
de-duplication by ``index`` removes the substitute's second copy, so neither the accuracies
nor the mean loss count it twice (a submission lacks the unreadable sample's id, and
``gsf predict`` warns of it).
Unreadable samples are flagged in a shared-memory array (one flag per sample, so workers need
no lock and a sample found by two workers counts once); a flagged sample is not read again, and
the DataModule logs the count when a stage ends. ``VideoDataModule.skipped_samples`` reads it.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.forkserver
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_gsf.data.errors import AnnotationError, ConfigurationError, SampleReadError
from lightning_gsf.data.samplers import (
    EvaluationDataLoader,
    ResumableDataLoader,
    ResumableDistributedSampler,
    UnpaddedDistributedSampler,
)
from lightning_gsf.data.sampling import multi_clip_indices, train_sampler
from lightning_gsf.data.transforms import EvalClipTransform, TrainClipTransform
from lightning_gsf.data.video import ClipReader

__all__ = [
    "ClipDataset",
    "ClipSample",
    "LabelTransform",
    "SPLITS",
    "VideoDataModule",
    "run_seed",
    "sample_seed",
]

logger = logging.getLogger(__name__)

#: The split names a DataModule knows; ``parse_split`` receives one of them.
SPLITS = ("train", "val", "test")

#: ``(labels, flipped) -> labels``: how a horizontal flip changes a training sample's labels.
LabelTransform = Callable[[dict[str, int], bool], dict[str, int]]

# How many different unreadable sources in a row ``skip_unreadable`` tolerates before concluding
# that the data, not a sample, is broken (a wrong root, a missing mount) and raising after all.
# Sources, not samples: the hundreds of segments of one missing EPIC video are one bad source.
_MAX_CONSECUTIVE_BAD_SOURCES = 16


@dataclass(frozen=True)
class ClipSample:
    """One labelled (or unlabelled) segment of a video.

    Attributes:
        id: the sample's name in the dataset (EPIC's ``narration_id``, a video id), used in
            submissions and error messages.
        source: the frame folder or the video file holding the segment.
        start: first frame of the segment, 0-based.
        stop: one past the last frame (the segment is the half-open range ``[start, stop)``).
        labels: ``{head: class index}``, or ``None`` for an unlabelled split.
        subsets: evaluation subsets the sample belongs to (EPIC: ``tail_verb``, ``tail_noun``,
            ``unseen``); empty when the dataset defines none.
        fps: the frame rate ``start`` and ``stop`` count at when the annotations give one
            (EPIC's video information); a video file at another rate is read by time.
        metadata: anything else a dataset wants to keep with the sample (participant, video id).
        where: the annotation row that names the sample (``"<file>, line 12"``), for messages.
    """

    id: str
    source: Path
    start: int
    stop: int
    labels: Mapping[str, int] | None = None
    subsets: Mapping[str, bool] = field(default_factory=dict)
    fps: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    where: str | None = None

    def __post_init__(self) -> None:
        # A safety net: parsers check their rows and raise AnnotationError naming the file and line.
        if self.start < 0 or self.stop <= self.start:
            raise ValueError(
                f"sample {self.id!r}: expected 0 <= start < stop, got the frame range [{self.start}, {self.stop})"
            )
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"sample {self.id!r}: expected a frame rate > 0, got fps={self.fps}")

    @property
    def num_frames(self) -> int:
        return self.stop - self.start


def run_seed() -> int:
    """The seed that Lightning's ``seed_everything`` set for this run (it keeps it in the
    ``PL_GLOBAL_SEED`` environment variable, inherited by DDP's processes), or 0."""
    value = os.environ.get("PL_GLOBAL_SEED")
    return int(value) if value is not None else 0


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` at ``epoch``, well mixed (NumPy's ``SeedSequence``).

    Mixing, rather than e.g. ``seed + epoch * n + index``, keeps neighbouring samples and epochs
    from getting correlated generator streams.
    """
    if min(seed, epoch, index) < 0:
        raise ValueError(f"seed, epoch and index must be >= 0, got {seed}, {epoch}, {index}")
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


class ClipDataset(Dataset[dict[str, Any]]):
    """Turns :class:`ClipSample` records into training or evaluation items (see the module doc).

    Args:
        samples: the split's samples; an item's ``index`` is its position in this list.
        reader: reads the frames of a sample's ``source``.
        num_segments: frames per clip (T).
        train_transform: makes a training dataset (random frames, augmentation).
        eval_transform: makes an evaluation dataset (fixed frames, ``num_clips`` x crops views).
            Give exactly one of the two transforms.
        num_clips: clips per evaluation item (multi-clip testing); 1 for training.
        train_sampling: the training frame sampler, a name of
            :data:`~lightning_gsf.data.sampling.TRAIN_SAMPLERS` (``exact`` or ``release``).
        seed: base seed of the per-sample generators.
        label_transform: applied to a training sample's labels with the flip flag (see
            ``VideoDataModule.transform_labels``); ``None`` keeps the labels.
        skip_unreadable: substitute the next readable sample for an unreadable one (logged and
            counted) instead of raising.
        name: the split's name, for log messages.
    """

    def __init__(
        self,
        samples: Sequence[ClipSample],
        reader: ClipReader,
        *,
        num_segments: int,
        train_transform: TrainClipTransform | None = None,
        eval_transform: EvalClipTransform | None = None,
        num_clips: int = 1,
        train_sampling: str = "exact",
        seed: int = 0,
        label_transform: LabelTransform | None = None,
        skip_unreadable: bool = False,
        name: str = "",
    ) -> None:
        if (train_transform is None) == (eval_transform is None):
            raise ValueError("give exactly one of train_transform (training) and eval_transform (evaluation)")
        if num_segments < 1 or num_clips < 1:
            raise ValueError(f"num_segments and num_clips must be >= 1, got {num_segments} and {num_clips}")
        if train_transform is not None and num_clips != 1:
            raise ValueError(f"training items hold one clip, got num_clips={num_clips}")
        self.samples = list(samples)
        self.reader = reader
        self.num_segments = num_segments
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.num_clips = num_clips
        self.train_sampler = train_sampler(train_sampling)
        self.seed = seed
        self.label_transform = label_transform
        self.skip_unreadable = skip_unreadable
        self.name = name
        # Shared memory, so that DataLoader workers (forked or spawned, persistent or not) see
        # the epoch the main process sets, and the main process sees the workers' skip counts.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._unreadable = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()

    @property
    def training(self) -> bool:
        return self.train_transform is not None

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations ``__getitem__`` draws (main process or worker)."""
        self._epoch[0] = epoch

    @property
    def num_skipped(self) -> int:
        """Distinct unreadable samples found so far, by the main process and all workers."""
        return int(self._unreadable.sum())

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not self.skip_unreadable:
            return self.load(index)
        bad_sources: set[Path] = set()
        for attempt in range(len(self)):
            candidate = (index + attempt) % len(self)
            if self._unreadable[candidate]:
                continue  # found unreadable before, and logged then
            try:
                return self.load(candidate)
            except SampleReadError as error:
                self._flag_unreadable(candidate, error)
                bad_sources.add(self.samples[candidate].source)
                if len(bad_sources) >= _MAX_CONSECUTIVE_BAD_SOURCES:
                    break
        raise SampleReadError(
            f"{self.name or 'dataset'}: the samples from index {index} on are unreadable, from "
            f"{len(bad_sources)} different sources in a row (see the warnings above); expected readable "
            "data: check the dataset's root and layout"
        )

    def load(self, index: int) -> dict[str, Any]:
        """The item of sample ``index``; raises ``SampleReadError`` naming the sample if unreadable."""
        sample = self.samples[index]
        try:
            if self.training:
                clip, labels = self._training_clip(sample, index)
            else:
                clip, labels = self._evaluation_views(sample), sample.labels
        except SampleReadError as error:
            row = f"{sample.where}; " if sample.where else ""
            raise SampleReadError(
                f"sample {sample.id!r} ({row}index {index} of {self.name or 'the split'}, frames "
                f"[{sample.start}, {sample.stop}) of {sample.source}): {error}"
            ) from error
        item: dict[str, Any] = {"clip": clip, "index": index, "id": sample.id, "subsets": dict(sample.subsets)}
        if labels is not None:
            item["labels"] = dict(labels)
        return item

    def generator(self, index: int) -> torch.Generator:
        """The generator of sample ``index`` at the current epoch."""
        return torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))

    def _training_clip(self, sample: ClipSample, index: int) -> tuple[torch.Tensor, Mapping[str, int] | None]:
        assert self.train_transform is not None
        generator = self.generator(index)
        indices = self.train_sampler(sample.start, sample.stop, self.num_segments, generator)
        clip, flipped = self.train_transform(self.reader.read(sample.source, indices, fps=sample.fps), generator)
        labels = sample.labels
        if labels is not None and self.label_transform is not None:
            labels = self.label_transform(dict(labels), flipped)
        return clip, labels

    def _evaluation_views(self, sample: ClipSample) -> torch.Tensor:
        assert self.eval_transform is not None
        clips = multi_clip_indices(sample.start, sample.stop, self.num_segments, self.num_clips)
        # One read for all clips: the reader decodes each distinct frame once.
        frames = self.reader.read(sample.source, [i for clip in clips for i in clip], fps=sample.fps)
        crops = self.eval_transform(frames)  # (crops, clips * T, 3, S, S), the same crop on every frame
        views = crops.unflatten(1, (self.num_clips, self.num_segments)).transpose(0, 1)
        return views.reshape(-1, *views.shape[2:])  # (clips * crops, T, 3, S, S), clip-major

    def _flag_unreadable(self, index: int, error: SampleReadError) -> None:
        self._unreadable[index] = True
        logger.warning(
            "skip_unreadable: skipping %s sample %r (index %d, %s): %s [%d unreadable so far in %s]",
            self.name,
            self.samples[index].id,
            index,
            self.samples[index].source,
            error,
            self.num_skipped,
            self.name or "the split",
        )


class VideoDataModule(pl.LightningDataModule, ABC):
    """The DataModule every dataset shares; its typed ``__init__`` is the ``data:`` config schema.

    Subclasses implement :meth:`parse_split`, :meth:`build_reader` and :attr:`num_classes`, and may
    override :meth:`transform_labels`.

    Args:
        num_segments: frames per clip (T), linked into the model.
        train_sampling: how training picks a clip's frames (:mod:`lightning_gsf.data.sampling`):
            ``exact`` (default) splits the segment into T exactly equal parts, so every frame
            can be drawn; ``release`` uses the original release's (TSN's) parts of ``n // T``
            whole frames, which never draw the last ``n mod T`` frames: the paper's numbers
            were trained with it, and the real-dataset configs select it.
        batch_size: clips per training batch.
        eval_batch_size: items per evaluation batch (each holds clips x crops views);
            defaults to ``batch_size``.
        num_workers: DataLoader worker processes.
        input_size: side of the square crops the model sees.
        resize_size: short side before the evaluation crops (the centre one, or three).
        scales: multi-scale crop sizes, as fractions of the short side (TSN).
        flip: random horizontal flip in training.
        randaugment: the original release's RandAugment in training (``rand-m9-mstd0.5``,
            :mod:`lightning_gsf.data.randaugment`), before the crop.
        val_clips: clips per validation sample.
        val_crops: crops per validation clip (1: centre; 3: left, centre, right).
        test_clips: clips per test / predict sample.
        test_crops: crops per test / predict clip.
        test_split: the split ``trainer.test`` evaluates.
        predict_split: the split ``trainer.predict`` runs on.
        seed: seed of the shuffling and of every augmentation; ``None`` (default): the run's
            seed, as ``seed_everything`` (a config's top-level key, or Lightning's
            ``seed_everything()``) set it, 0 if nothing set one; so runs that differ by
            ``seed_everything`` see their samples in different orders and crops.
        skip_unreadable: replace an unreadable sample by the next readable one, logging each
            skip and the count, instead of stopping with an error.
        pin_memory: pin batches in page-locked memory for faster copies to a CUDA device
            (ignored when there is none).
        persistent_workers: keep the workers alive between epochs.
        worker_start_method: how the loader workers start: ``"fork"``, ``"forkserver"`` or
            ``"spawn"`` (:mod:`multiprocessing`'s start methods); ``None`` (default): the
            platform's default (on Linux ``fork``, from Python 3.14 on ``forkserver``).
            ``forkserver`` forks each worker from a
            clean single-threaded server instead of from the training process, whose threads
            (DDP's communication, the logger's writer) make ``fork`` hang on rare occasions;
            it adds the data modules to ``multiprocessing.set_forkserver_preload`` so that the
            server imports them once, before it starts.
        drop_last: drop the last, incomplete training batch.
    """

    def __init__(
        self,
        num_segments: int = 8,
        train_sampling: Literal["exact", "release"] = "exact",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        input_size: int = 224,
        resize_size: int = 256,
        scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66),
        flip: bool = True,
        randaugment: bool = False,
        val_clips: int = 1,
        val_crops: int = 1,
        test_clips: int = 1,
        test_crops: int = 1,
        test_split: str = "test",
        predict_split: str = "test",
        seed: int | None = None,
        skip_unreadable: bool = False,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        worker_start_method: Literal["fork", "forkserver", "spawn"] | None = None,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("num_segments", num_segments), ("batch_size", batch_size)):
            if value < 1:
                raise ConfigurationError(f"{name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ConfigurationError(f"num_workers must be >= 0, got {num_workers}")
        for name, value in (("test_split", test_split), ("predict_split", predict_split)):
            if value not in SPLITS:
                raise ConfigurationError(f"{name} must be one of {SPLITS}, got {value!r}")
        train_sampler(train_sampling)  # (checks the name now rather than when the first loader is built)
        if worker_start_method is not None and worker_start_method not in multiprocessing.get_all_start_methods():
            raise ConfigurationError(f"worker_start_method must be one of {multiprocessing.get_all_start_methods()} "
                                     f"on this platform, or None, got {worker_start_method!r}")
        self.num_segments = num_segments
        self.train_sampling = train_sampling
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.input_size = input_size
        self.resize_size = resize_size
        self.scales = tuple(scales)
        self.flip = flip
        self.randaugment = randaugment
        self.val_clips, self.val_crops = val_clips, val_crops
        self.test_clips, self.test_crops = test_clips, test_crops
        self.test_split = test_split
        self.predict_split = predict_split
        self.seed = run_seed() if seed is None else seed
        self.skip_unreadable = skip_unreadable
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.worker_start_method = worker_start_method
        self.drop_last = drop_last
        self._samples: dict[str, list[ClipSample]] = {}
        self._datasets: dict[str, ClipDataset] = {}
        # Check the transform arguments now rather than when the first loader is built.
        self.train_transform()
        self.eval_transform(val_crops)
        self.eval_transform(test_crops)

    # --- what a dataset's subclass provides -------------------------------------------------

    @abstractmethod
    def parse_split(self, split: str) -> list[ClipSample]:
        """The samples of ``split`` (one of :data:`SPLITS`), in the order of the annotation file."""

    @abstractmethod
    def build_reader(self) -> ClipReader:
        """The reader of this dataset's sources (frame folders or video files)."""

    @property
    @abstractmethod
    def num_classes(self) -> dict[str, int]:
        """``{head: number of classes}``, e.g. ``{"verb": 97, "noun": 300}``."""

    def split_source(self, split: str) -> str:
        """Where ``split``'s samples come from, for messages: the annotation file of data modules
        that keep one per split (``split_files`` under ``annotations_dir``)."""
        name = getattr(self, "split_files", {}).get(split)
        folder = getattr(self, "annotations_dir", None)
        if name is None:
            return "its annotation file"
        return str(Path(folder) / name) if folder is not None else str(name)

    def transform_labels(self, labels: dict[str, int], flipped: bool) -> dict[str, int]:
        """The labels of a training clip after augmentation; ``flipped`` says it was mirrored.

        Identity here. Datasets whose classes name a direction override it (Something-Something
        swaps "left to right" and "right to left"). An override runs in the loader's workers,
        so it should depend only on the class lists.
        """
        return labels

    def class_counts(self) -> dict[str, torch.Tensor]:
        """Training samples per class, ``{head: int64 tensor of num_classes[head]}``."""
        counts = {head: torch.zeros(size, dtype=torch.int64) for head, size in self.num_classes.items()}
        for sample in self.samples("train"):
            for head, label in (sample.labels or {}).items():
                counts[head][label] += 1
        return counts

    # --- samples, datasets, transforms ------------------------------------------------------

    def samples(self, split: str) -> list[ClipSample]:
        """The parsed samples of ``split``, parsed once and kept."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split not in self._samples:
            self._samples[split] = self.parse_split(split)
            logger.info("%s: %d %s samples", type(self).__name__, len(self._samples[split]), split)
        return self._samples[split]

    def train_transform(self) -> TrainClipTransform:
        return TrainClipTransform(self.input_size, self.scales, self.flip, self.randaugment)

    def eval_transform(self, num_crops: int) -> EvalClipTransform:
        return EvalClipTransform(self.input_size, self.resize_size, num_crops)

    def dataset(self, split: str, *, training: bool, num_clips: int = 1, num_crops: int = 1) -> ClipDataset:
        """A dataset of ``split`` as the loaders build it (also handy for tools and tests)."""
        overridden = type(self).transform_labels is not VideoDataModule.transform_labels
        return ClipDataset(
            self.samples(split),
            self.build_reader(),
            num_segments=self.num_segments,
            train_transform=self.train_transform() if training else None,
            eval_transform=None if training else self.eval_transform(num_crops),
            num_clips=num_clips,
            train_sampling=self.train_sampling,
            seed=self.seed,
            label_transform=self.transform_labels if training and overridden else None,
            skip_unreadable=self.skip_unreadable,
            name=split,
        )

    # --- LightningDataModule ----------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets the stage needs (``fit``, ``validate``, ``test``, ``predict``)."""
        wanted: dict[str, tuple[str, bool, int, int]] = {}
        if stage in (None, "fit"):
            wanted["train"] = ("train", True, 1, 1)
        if stage in (None, "fit", "validate"):
            wanted["val"] = ("val", False, self.val_clips, self.val_crops)
        if stage in (None, "test"):
            wanted["test"] = (self.test_split, False, self.test_clips, self.test_crops)
        if stage in (None, "predict"):
            wanted["predict"] = (self.predict_split, False, self.test_clips, self.test_crops)
        for role, (split, training, clips, crops) in wanted.items():
            if role not in self._datasets:
                self._check_split_serves(role, split)
                self._datasets[role] = self.dataset(split, training=training, num_clips=clips, num_crops=crops)

    def _check_split_serves(self, role: str, split: str) -> None:
        """A split must hold samples, and the training split labelled ones: say so, naming the
        file and the first sample, rather than train on nothing or fail on a missing key
        mid-epoch. An unlabelled split to validate or test on is measured on nothing (EPIC's
        test split): a warning says so."""
        samples = self.samples(split)
        source = self.split_source(split)
        if not samples:
            stage = {"train": "train", "val": "validate", "test": "test", "predict": "predict"}[role]
            raise AnnotationError(f"the {split} split has no samples ({source}): nothing to {stage} on")
        unlabelled = next((sample for sample in samples if sample.labels is None), None)
        if unlabelled is None or role == "predict":
            return
        if role == "train":
            raise AnnotationError(
                f"{unlabelled.where}: sample {unlabelled.id!r} of the train split has no labels, which training "
                f"needs; give a labelled annotation file for the train split"
            )
        logger.warning("the %s split (%s) has no labels (e.g. %s): %s measures no accuracy or loss on it",
                       split, source, unlabelled.where, role)

    def teardown(self, stage: str | None = None) -> None:
        for role, count in self.skipped_samples.items():
            if count:
                logger.warning("skip_unreadable: %d unreadable %s samples were skipped", count, role)

    @property
    def skipped_samples(self) -> dict[str, int]:
        """Unreadable samples found so far, per loader role (``train``, ``val``, ``test``, ``predict``)."""
        return {role: dataset.num_skipped for role, dataset in self._datasets.items()}

    def train_dataloader(self) -> DataLoader:
        dataset = self._built("train")
        # The process group (if any) exists by now: the sampler reads the world size from it.
        sampler = ResumableDistributedSampler(dataset, shuffle=True, seed=self.seed)
        if self.drop_last and sampler.num_samples < self.batch_size:
            # (Lightning would only say "No training batches" and stop)
            shares = f", {sampler.num_samples} for each of {sampler.num_replicas} processes" if sampler.num_replicas > 1 else ""
            raise ConfigurationError(
                f"the train split has {len(dataset)} samples{shares}: fewer than one batch of {self.batch_size}, "
                "and drop_last drops it; lower batch_size or set drop_last: false"
            )
        return ResumableDataLoader(
            dataset, sampler=sampler, batch_size=self.batch_size, drop_last=self.drop_last, **self._loader_options()
        )

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._evaluation_loader("predict")

    def _built(self, role: str) -> ClipDataset:
        if role not in self._datasets:
            raise RuntimeError(f"the {role} dataset is not built; call setup() before asking for its loader")
        return self._datasets[role]

    def _evaluation_loader(self, role: str) -> DataLoader:
        dataset = self._built(role)
        sampler = UnpaddedDistributedSampler(dataset)
        self._check_every_process_keeps_a_batch(role, sampler)
        return EvaluationDataLoader(dataset, sampler=sampler, batch_size=self.eval_batch_size, **self._loader_options())

    def _check_every_process_keeps_a_batch(self, role: str, sampler: UnpaddedDistributedSampler) -> None:
        """Refuse, in every process alike, a fractional ``limit_<role>_batches`` that leaves some
        process no batch. The evaluation sampler does not pad, so processes may hold a batch
        more or less than each other, and Lightning takes the fraction of each process's own
        count: the process left with none would stop with Lightning's error while the others
        wait for it in the epoch-end metric sync (a broken connection, or a hang)."""
        limit = getattr(self.trainer, f"limit_{role}_batches", None)
        if sampler.num_replicas < 2 or not isinstance(limit, float) or not 0.0 < limit < 1.0:
            return
        batches = [math.ceil(count / self.eval_batch_size) for count in sampler.shares()]
        if min(int(count * limit) for count in batches) == 0:
            raise ConfigurationError(
                f"trainer.limit_{role}_batches={limit} leaves the process with the fewest {role} batches "
                f"none to evaluate (batches of {self.eval_batch_size} clips; the {sampler.num_replicas} processes "
                f"hold {', '.join(map(str, batches))}); give a number of batches (an integer, e.g. 1) or a larger "
                "fraction"
            )

    def _loader_options(self) -> dict[str, Any]:
        start_method = multiprocessing.get_context(self.worker_start_method).get_start_method()
        if start_method == "forkserver" and self.num_workers > 0:
            # The fork server (started by the first loader) imports the data modules once, so
            # that the workers it forks start with them: a loader's workers then start as fast
            # as forked ones, not in the seconds that importing PyTorch takes each of them.
            # (Added to the program's own list, which multiprocessing does not make public.)
            preloaded = getattr(getattr(multiprocessing.forkserver, "_forkserver", None), "_preload_modules", None)
            modules = list(preloaded or ["__main__"])
            multiprocessing.set_forkserver_preload(modules + [m for m in (__name__, type(self).__module__)
                                                              if m not in modules])
        return {
            "num_workers": self.num_workers,
            # Page-locked memory only speeds up copies to a CUDA device; without one it is waste.
            "pin_memory": self.pin_memory and torch.cuda.is_available(),
            "persistent_workers": self.persistent_workers and self.num_workers > 0,
            # (a DataLoader without workers refuses a start method)
            "multiprocessing_context": self.worker_start_method if self.num_workers > 0 else None,
        }
