"""The shared dataset / DataModule: item layout, per-sample seeding, epochs, skip_unreadable.

A fake reader stands in for the frame readers: frame ``i`` of every source is a uniform image
of grey level ``i`` with a left-to-right ramp in the red channel, so a batch shows exactly which
frames were read and whether the clip was flipped, whatever the crop and resize.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lightning_gsf.data.base import ClipDataset, ClipSample, VideoDataModule, sample_seed
from lightning_gsf.data.errors import AnnotationError, SampleReadError
from lightning_gsf.data import samplers
from lightning_gsf.data.samplers import UnpaddedDistributedSampler
from lightning_gsf.data.transforms import EvalClipTransform, TrainClipTransform

HEIGHT, WIDTH = 40, 52


class IndexFrames:
    """Frame ``i``: green and blue = ``i``, red = a ramp from 0 (left) to 250 (right)."""

    def __init__(self, unreadable: Sequence[str] = ()) -> None:
        self.unreadable = set(unreadable)

    def read(self, source: Path, indices: Sequence[int], fps: float | None = None) -> torch.Tensor:
        if Path(source).name in self.unreadable:
            raise SampleReadError(f"{source}: cannot decode (a test's unreadable source)")
        frames = torch.empty(len(indices), 3, HEIGHT, WIDTH, dtype=torch.uint8)
        frames[:, 1:] = torch.tensor(indices, dtype=torch.uint8).view(-1, 1, 1, 1)
        frames[:, 0] = torch.linspace(0, 250, WIDTH).round().to(torch.uint8)
        return frames


def frame_indices(clip: torch.Tensor) -> list[int]:
    """The frame indices of a ``(T, 3, H, W)`` clip made by :class:`IndexFrames`."""
    return clip[:, 1, 0, 0].tolist()


def is_flipped(clip: torch.Tensor) -> bool:
    return bool(clip[0, 0, 0, 0] > clip[0, 0, 0, -1])


def make_samples(count: int = 10, split: str = "train", unreadable: Sequence[int] = ()) -> list[ClipSample]:
    return [
        ClipSample(
            id=f"{split}_{i}",
            source=Path(f"/videos/{'bad' if i in unreadable else 'ok'}_{i}"),
            start=3 * i,
            stop=3 * i + 12 + i,
            labels={"verb": i % 4, "noun": i % 3},
            subsets={"tail_verb": i % 2 == 0},
        )
        for i in range(count)
    ]


class ToyDataModule(VideoDataModule):
    """A dataset of ten samples per split, read by :class:`IndexFrames`."""

    def __init__(self, unreadable: Sequence[int] = (), swap_on_flip: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.unreadable = tuple(unreadable)
        self.swap_on_flip = swap_on_flip

    def parse_split(self, split: str) -> list[ClipSample]:
        samples = make_samples(10, split, self.unreadable)
        if split == "test":  # an unlabelled split
            samples = [ClipSample(s.id, s.source, s.start, s.stop, None, {}) for s in samples]
        return samples

    def build_reader(self) -> IndexFrames:
        return IndexFrames(unreadable=[f"bad_{i}" for i in self.unreadable])

    @property
    def num_classes(self) -> dict[str, int]:
        return {"verb": 4, "noun": 3}

    def transform_labels(self, labels: dict[str, int], flipped: bool) -> dict[str, int]:
        if self.swap_on_flip and flipped:
            return {**labels, "verb": labels["verb"] ^ 1}
        return labels


def toy(**kwargs) -> ToyDataModule:
    options = dict(num_segments=4, batch_size=4, num_workers=0, input_size=32, resize_size=36, seed=7)
    options.update(kwargs)
    return ToyDataModule(**options)


def train_dataset(**kwargs) -> ClipDataset:
    datamodule = toy(**kwargs)
    return datamodule.dataset("train", training=True)


# --- items -------------------------------------------------------------------------------


def test_training_item_layout():
    dataset = train_dataset()
    item = dataset[3]
    assert set(item) == {"clip", "labels", "index", "id", "subsets"}
    assert item["clip"].shape == (4, 3, 32, 32) and item["clip"].dtype == torch.uint8
    assert item["labels"] == {"verb": 3, "noun": 0}
    assert (item["index"], item["id"], item["subsets"]) == (3, "train_3", {"tail_verb": False})
    sample = dataset.samples[3]
    indices = frame_indices(item["clip"])
    assert indices == sorted(indices) and all(sample.start <= i < sample.stop for i in indices)


@pytest.mark.parametrize(("train_sampling", "reachable"), [("exact", range(15)), ("release", range(12))])
def test_train_sampling_picks_the_frame_sampler(train_sampling, reachable):
    """Sample 3 has 15 frames; at T = 4 the release's parts are 3 whole frames, so its sampler
    never draws the last 3 frames, while the exact parts of 3.75 frames reach every one."""
    dataset = train_dataset(train_sampling=train_sampling)
    start = dataset.samples[3].start
    seen = set()
    for epoch in range(40):
        dataset.set_epoch(epoch)
        seen.update(index - start for index in frame_indices(dataset[3]["clip"]))
    assert seen == set(reachable)


def test_an_unknown_train_sampling_is_refused():
    with pytest.raises(ValueError, match="train_sampling must be one of"):
        toy(train_sampling="dense")
    with pytest.raises(ValueError, match="train_sampling must be one of"):
        ClipDataset(make_samples(), IndexFrames(), num_segments=4, train_transform=TrainClipTransform(32), train_sampling="x")


@pytest.mark.parametrize(("clips", "crops"), [(1, 1), (1, 3), (2, 1), (3, 3)])
def test_evaluation_item_has_clips_times_crops_views_clip_major(clips, crops):
    datamodule = toy()
    dataset = datamodule.dataset("val", training=False, num_clips=clips, num_crops=crops)
    item = dataset[5]
    assert item["clip"].shape == (clips * crops, 4, 3, 32, 32)
    from lightning_gsf.data.sampling import multi_clip_indices

    expected = multi_clip_indices(dataset.samples[5].start, dataset.samples[5].stop, 4, clips)
    for view in range(clips * crops):
        assert frame_indices(item["clip"][view]) == expected[view // crops]
    if crops == 3:  # left, centre and right crops of a left-to-right ramp get brighter
        red = item["clip"][:crops, 0, 0].float().mean(dim=(1, 2))
        assert red[0] < red[1] < red[2]


def test_unlabelled_split_items_have_no_labels_key():
    datamodule = toy()
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    assert "labels" not in batch
    assert batch["clip"].shape == (4, 1, 4, 3, 32, 32)


def test_collated_training_batch():
    datamodule = toy()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["clip"].shape == (4, 4, 3, 32, 32)
    assert batch["labels"]["verb"].dtype == torch.int64 and batch["labels"]["verb"].shape == (4,)
    assert batch["subsets"]["tail_verb"].dtype == torch.bool
    assert len(batch["id"]) == 4
    for index, verb in zip(batch["index"].tolist(), batch["labels"]["verb"].tolist()):
        assert verb == index % 4


def test_loaders_cover_each_split_once_and_predict_follows_its_split():
    datamodule = toy(predict_split="val", eval_batch_size=3)
    datamodule.setup()
    for loader in (datamodule.val_dataloader(), datamodule.predict_dataloader()):
        batches = list(loader)
        assert [i for b in batches for i in b["index"].tolist()] == list(range(10))
        assert all(i.startswith("val_") for b in batches for i in b["id"])
    assert len(list(datamodule.train_dataloader())) == 10 // 4  # drop_last


def test_num_classes_and_class_counts():
    datamodule = toy()
    counts = datamodule.class_counts()
    assert counts["verb"].tolist() == [3, 3, 2, 2] and counts["noun"].tolist() == [4, 3, 3]


@pytest.mark.parametrize(("start", "stop"), [(-1, 4), (5, 5), (6, 2)])
def test_clip_sample_rejects_empty_or_negative_ranges(start, stop):
    with pytest.raises(ValueError, match="sample 'x'"):
        ClipSample("x", Path("v"), start, stop)


@pytest.mark.parametrize("fps", [0.0, -25.0, float("nan"), float("inf")])
def test_clip_sample_rejects_a_frame_rate_that_is_no_rate(fps):
    with pytest.raises(ValueError, match="sample 'x': expected a frame rate > 0"):
        ClipSample("x", Path("v"), 0, 4, fps=fps)


def test_datamodule_rejects_unknown_splits():
    with pytest.raises(ValueError, match="predict_split"):
        toy(predict_split="holdout")


# --- seeding and epochs ------------------------------------------------------------------


def test_sample_seed_mixes_its_inputs():
    seeds = {sample_seed(s, e, i) for s in range(3) for e in range(3) for i in range(50)}
    assert len(seeds) == 450 and all(0 <= s < 2**63 for s in seeds)


def test_training_clip_is_a_function_of_seed_epoch_and_index():
    first, second = train_dataset(), train_dataset()
    assert torch.equal(first[2]["clip"], second[2]["clip"])
    epoch0 = [first[i]["clip"] for i in range(10)]
    first.set_epoch(1)
    epoch1 = [first[i]["clip"] for i in range(10)]
    assert sum(not torch.equal(a, b) for a, b in zip(epoch0, epoch1)) >= 8
    second.set_epoch(1)
    assert all(torch.equal(a, second[i]["clip"]) for i, a in enumerate(epoch1))
    other_seed = train_dataset(seed=8)
    assert sum(not torch.equal(a, other_seed[i]["clip"]) for i, a in enumerate(epoch0)) >= 8


def test_the_data_seed_is_the_runs_unless_given():
    """Without a seed of its own a data module takes the one ``seed_everything`` set (0 when
    none was), so that runs differing by ``seed_everything`` differ in their samples too."""
    import pytorch_lightning as pl

    assert toy(seed=None).seed == 0
    pl.seed_everything(11)
    assert toy(seed=None).seed == 11
    assert toy(seed=3).seed == 3
    assert not torch.equal(toy(seed=None).dataset("train", training=True)[2]["clip"],
                           train_dataset(seed=0)[2]["clip"])


def test_the_epoch_reaches_persistent_workers_through_the_sampler():
    datamodule = toy(num_workers=2, persistent_workers=True, drop_last=False)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    reference = train_dataset()  # computes the same items in this process
    for epoch in (0, 1, 2):
        loader.sampler.set_epoch(epoch)
        reference.set_epoch(epoch)
        for batch in loader:
            for index, clip in zip(batch["index"].tolist(), batch["clip"]):
                assert torch.equal(clip, reference[index]["clip"]), (epoch, index)


@pytest.mark.parametrize("method", [None, "fork", pytest.param("forkserver", marks=pytest.mark.slow),
                                    pytest.param("spawn", marks=pytest.mark.slow)])
def test_every_worker_start_method_gives_the_same_batches(method):
    """``worker_start_method`` only changes how the workers start (``forkserver`` and ``spawn``
    pickle the dataset to them): each batch holds the items this process computes."""
    datamodule = toy(num_workers=2, worker_start_method=method, drop_last=False)
    datamodule.setup("fit")
    loaders = {"train": datamodule.train_dataloader(), "val": datamodule.val_dataloader()}
    for role, loader in loaders.items():
        context = loader.multiprocessing_context
        assert (context is None) if method is None else (context.get_start_method() == method)
        reference = datamodule.dataset(role, training=role == "train")
        reference.set_epoch(0)
        indices = []
        for batch in loader:
            for index, clip in zip(batch["index"].tolist(), batch["clip"]):
                assert torch.equal(clip, reference[index]["clip"]), (role, index)
                indices.append(index)
        assert sorted(indices) == list(range(len(reference)))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the fork server's memory map in /proc")
def test_the_fork_server_starts_with_the_data_modules_imported(tmp_path):
    """With ``forkserver`` the server imports PyTorch and the data modules once, so that each
    worker it forks has them (Python 3.11 never preloads ``__main__``, its default). In a fresh
    process, whose ``__main__`` imports nothing, so that this test's server is the first."""
    script = tmp_path / "fork_server.py"
    script.write_text(textwrap.dedent("""
        if __name__ == "__main__":
            import os, sys
            from pathlib import Path
            sys.path.insert(0, sys.argv[1])
            from test_base_datamodule import toy

            datamodule = toy(num_workers=1, worker_start_method="forkserver")
            datamodule.setup("fit")
            next(iter(datamodule.train_dataloader()))
            for status in Path("/proc").glob("[0-9]*/status"):
                if f"PPid:\\t{os.getpid()}\\n" in status.read_text():
                    command = (status.parent / "cmdline").read_bytes().decode()
                    if "forkserver" in command:
                        print("fork server has libtorch:", "libtorch_cpu" in (status.parent / "maps").read_text())
    """))
    result = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)], capture_output=True,
                            text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["fork server has libtorch: True"], result.stdout


def test_the_fork_server_preload_keeps_the_programs_own_modules(monkeypatch):
    import multiprocessing.forkserver

    monkeypatch.setattr(multiprocessing.forkserver._forkserver, "_preload_modules", ["__main__", "json"])
    toy(num_workers=1, worker_start_method="forkserver")._loader_options()
    assert multiprocessing.forkserver._forkserver._preload_modules == [
        "__main__", "json", "lightning_gsf.data.base", ToyDataModule.__module__]


def test_a_worker_start_method_is_a_known_name_and_without_workers_unused():
    datamodule = toy(num_workers=0, worker_start_method="spawn")
    datamodule.setup("fit")
    assert datamodule.train_dataloader().multiprocessing_context is None  # (DataLoader refuses one without workers)
    with pytest.raises(ValueError, match="worker_start_method must be one of .*'fork'.*got 'threads'"):
        toy(worker_start_method="threads")


def test_flipped_clips_get_their_labels_transformed():
    dataset = toy(swap_on_flip=True).dataset("train", training=True)
    flips = 0
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in range(10):
            item = dataset[index]
            flipped = is_flipped(item["clip"])
            flips += flipped
            assert item["labels"]["verb"] == (index % 4) ^ int(flipped)
    assert 5 < flips < 25


class RecordClips(pl.LightningModule):
    """Records, per epoch, a fingerprint of every training clip it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, dict[int, list[int]]] = {}

    def training_step(self, batch, batch_index):
        record = self.seen.setdefault(self.current_epoch, {})
        for index, clip in zip(batch["index"].tolist(), batch["clip"]):
            record[index] = frame_indices(clip) + [int(is_flipped(clip))]
        return (self.weight * batch["clip"].float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit_and_record(tmp_path: Path) -> dict[int, dict[int, list[int]]]:
    module = RecordClips()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=toy(drop_last=False))
    return module.seen


def test_lightning_sets_the_epoch_and_runs_are_reproducible(tmp_path):
    first = fit_and_record(tmp_path)
    assert set(first) == {0, 1} and all(len(epoch) == 10 for epoch in first.values())
    assert first[0] != first[1]  # new frames and crops every epoch
    assert fit_and_record(tmp_path) == first


# --- unreadable samples ------------------------------------------------------------------


def test_unreadable_sample_raises_naming_the_sample_by_default():
    dataset = toy(unreadable=[4]).dataset("val", training=False)
    with pytest.raises(SampleReadError, match=r"sample 'val_4' \(index 4 of val, frames \[12, 28\) of /videos/bad_4\)"):
        dataset[4]


def test_skip_unreadable_substitutes_the_next_sample_logs_and_counts(caplog):
    dataset = toy(unreadable=[4, 5], skip_unreadable=True).dataset("val", training=False)
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.data.base"):
        item = dataset[4]
    assert item["index"] == 6 and item["id"] == "val_6"  # the substitute keeps its own identity
    assert dataset.num_skipped == 2
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.data.base"):
        assert dataset[5]["index"] == 6  # known unreadable: neither read nor logged again
    assert dataset.num_skipped == 2
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "'val_4'" in messages[0] and "/videos/bad_4" in messages[0] and "1 unreadable so far in val" in messages[0]
    assert "'val_5'" in messages[1] and "2 unreadable so far in val" in messages[1]


def test_skip_unreadable_keeps_batches_full_and_counts_across_workers():
    datamodule = toy(unreadable=[1, 8], skip_unreadable=True, num_workers=2, eval_batch_size=5)
    datamodule.setup("validate")
    batches = list(datamodule.val_dataloader())
    assert [len(b["id"]) for b in batches] == [5, 5]
    assert [i for b in batches for i in b["index"].tolist()] == [0, 2, 2, 3, 4, 5, 6, 7, 9, 9]
    assert datamodule.skipped_samples == {"val": 2}


def test_skip_unreadable_gives_up_when_everything_is_unreadable():
    dataset = toy(unreadable=range(10), skip_unreadable=True).dataset("train", training=True)
    with pytest.raises(SampleReadError, match="unreadable, from 10 different sources in a row"):
        dataset[3]
    assert dataset.num_skipped == 10


def test_skip_unreadable_gives_up_after_many_bad_sources_in_a_row():
    samples = [ClipSample(f"s{i}", Path(f"/videos/bad_{i}"), 0, 8, {"verb": 0}) for i in range(40)]
    dataset = ClipDataset(
        samples + make_samples(2),
        IndexFrames(unreadable=[f"bad_{i}" for i in range(40)]),
        num_segments=4,
        eval_transform=EvalClipTransform(32, 36),
        skip_unreadable=True,
    )
    with pytest.raises(SampleReadError, match="from 16 different sources in a row"):
        dataset[0]
    assert dataset.num_skipped == 16


def test_skip_unreadable_passes_over_many_segments_of_one_missing_video():
    missing_video = [ClipSample(f"s{i}", Path("/videos/bad_video"), 8 * i, 8 * i + 8, {"verb": 0}) for i in range(30)]
    dataset = ClipDataset(
        missing_video + make_samples(2),
        IndexFrames(unreadable=["bad_video"]),
        num_segments=4,
        eval_transform=EvalClipTransform(32, 36),
        skip_unreadable=True,
    )
    assert dataset[0]["id"] == "train_0"
    assert dataset.num_skipped == 30


def test_dataset_requires_exactly_one_transform():
    with pytest.raises(ValueError, match="exactly one"):
        ClipDataset(make_samples(), IndexFrames(), num_segments=4)
    with pytest.raises(ValueError, match="exactly one"):
        ClipDataset(
            make_samples(),
            IndexFrames(),
            num_segments=4,
            train_transform=TrainClipTransform(32),
            eval_transform=EvalClipTransform(32, 36),
        )


def test_plain_dataloader_uses_epoch_zero():
    dataset = train_dataset()
    batch = next(iter(DataLoader(dataset, batch_size=10)))
    reference = train_dataset()
    assert all(torch.equal(batch["clip"][i], reference[i]["clip"]) for i in range(10))


def test_package_exports_resolve_to_their_modules():
    """``lightning_gsf.data`` loads its public names lazily; each is the defining module's object."""
    import importlib

    import lightning_gsf.data as data

    for name in data.__all__:
        module = importlib.import_module(f"lightning_gsf.data.{data._SOURCES[name]}")
        assert getattr(data, name) is getattr(module, name), name
    assert set(data.__all__) <= set(dir(data))
    with pytest.raises(AttributeError, match="no attribute 'NotAName'"):
        data.NotAName  # noqa: B018


def test_readers_get_the_samples_frame_rate():
    """A sample's fps (the rate its annotations count at) reaches the reader, for training
    and evaluation reads alike."""
    rates = []

    class RecordingFrames(IndexFrames):
        def read(self, source, indices, fps=None):
            rates.append(fps)
            return super().read(source, indices)

    samples = [replace(sample, fps=50.0) for sample in make_samples(2)]
    for transform in (dict(train_transform=TrainClipTransform(input_size=32)),
                      dict(eval_transform=EvalClipTransform(input_size=32, resize_size=36))):
        ClipDataset(samples, RecordingFrames(), num_segments=4, **transform)[0]
    assert rates == [50.0, 50.0]


# --- splits that cannot serve their stage --------------------------------------------------


class OddSplits(ToyDataModule):
    """The toy data with an empty val split and an unlabelled train split on request."""

    def __init__(self, unlabelled_train: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.unlabelled_train = unlabelled_train

    def parse_split(self, split: str) -> list[ClipSample]:
        if split == "val":
            return []
        samples = super().parse_split(split)
        if split == "train" and self.unlabelled_train:
            samples = [ClipSample(s.id, s.source, s.start, s.stop, None, {}, where=f"train.csv, line {i + 2}")
                       for i, s in enumerate(samples)]
        return samples


def test_an_unlabelled_train_split_is_refused_naming_its_first_row():
    options = dict(num_segments=4, batch_size=4, num_workers=0, input_size=32, resize_size=36)
    with pytest.raises(AnnotationError, match=r"train.csv, line 2: sample '.*' of the train split has no labels"):
        OddSplits(unlabelled_train=True, **options).setup("fit")


def test_an_empty_split_is_refused():
    options = dict(num_segments=4, batch_size=4, num_workers=0, input_size=32, resize_size=36)
    with pytest.raises(AnnotationError, match="the val split has no samples .*nothing to validate on"):
        OddSplits(**options).setup("validate")


def test_an_unlabelled_split_to_test_on_is_warned_about(caplog):
    datamodule = toy()
    with caplog.at_level(logging.WARNING):
        datamodule.setup("test")
    assert "the test split (its annotation file) has no labels" in caplog.text


def test_a_train_split_smaller_than_one_dropped_batch_is_an_error():
    """Lightning only said "`Trainer.fit` stopped: No training batches" (10 samples, batch 16)."""
    datamodule = toy(batch_size=16)
    datamodule.setup("fit")
    with pytest.raises(ValueError, match="the train split has 10 samples: fewer than one batch of 16, and drop_last"):
        datamodule.train_dataloader()
    kept = toy(batch_size=16, drop_last=False)
    kept.setup("fit")
    assert len(kept.train_dataloader()) == 1


def test_a_train_split_smaller_than_one_dropped_batch_per_process_is_an_error(monkeypatch):
    """Under DDP each process holds its share: 10 samples on 2 processes are 5 each, fewer than
    one batch of 8 (though the split itself is not), and drop_last would leave no batch."""
    monkeypatch.setattr(samplers, "process_group_layout", lambda num_replicas=None, rank=None: (2, 0))
    datamodule = toy(batch_size=8)
    datamodule.setup("fit")
    with pytest.raises(ValueError, match="the train split has 10 samples, 5 for each of 2 processes: fewer than "
                                         "one batch of 8, and drop_last"):
        datamodule.train_dataloader()


@pytest.mark.parametrize(
    ("module_path", "split_files"),
    [
        ("lightning_gsf.data.epic.EpicKitchensDataModule",
         ("EPIC_100_train.csv", "EPIC_100_validation.csv", "EPIC_100_test_timestamps.csv")),
        ("lightning_gsf.data.ssv1.SomethingSomethingV1DataModule",
         ("something-something-v1-train.csv", "something-something-v1-validation.csv", "something-something-v1-test.csv")),
        ("lightning_gsf.data.ssv2.SomethingSomethingV2DataModule",
         ("something-something-v2-train.json", "something-something-v2-validation.json",
          "something-something-v2-test.json")),
        ("lightning_gsf.data.kinetics.Kinetics400DataModule",
         ("kinetics-400_train.csv", "kinetics-400_val.csv", "kinetics-400_test.csv")),
        # (Diving48 publishes no validation split: its test split serves as both)
        ("lightning_gsf.data.diving48.Diving48DataModule",
         ("Diving48_V2_train.json", "Diving48_V2_test.json", "Diving48_V2_test.json")),
    ],
)
def test_each_split_reads_the_datasets_own_file_by_default(module_path: str, split_files: tuple[str, str, str]) -> None:
    """The annotation files' names as the datasets publish them, one per split: a default that
    named another split's file would train or validate on the wrong samples without a word."""
    import importlib

    module_name, class_name = module_path.rsplit(".", 1)
    datamodule_class = getattr(importlib.import_module(module_name), class_name)
    arguments = {"root": "/nowhere"} if "epic" in module_name else {"root": "/nowhere", "annotations_dir": "/nowhere"}
    datamodule = datamodule_class(**arguments)
    assert (datamodule.split_files["train"], datamodule.split_files["val"], datamodule.split_files["test"]) == split_files


def test_sample_seed_refuses_negative_inputs():
    for args in ((-1, 0, 0), (0, -1, 0), (0, 0, -1)):
        with pytest.raises(ValueError, match="seed, epoch and index must be >= 0"):
            sample_seed(*args)


def test_sample_seed_is_numpys_seed_sequence_of_seed_epoch_and_index():
    """The documented recipe, pinned: a run resumed on a newer version must draw the same clips."""
    for seed, epoch, index in [(0, 0, 0), (7, 1, 3), (7, 3, 1), (123, 45, 6789)]:
        state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0]
        assert sample_seed(seed, epoch, index) == int(state) >> 1


def test_dataset_refuses_no_clips_and_multi_clip_training_items():
    with pytest.raises(ValueError, match="num_segments and num_clips must be >= 1"):
        ClipDataset(make_samples(), IndexFrames(), num_segments=4, eval_transform=EvalClipTransform(32, 36),
                    num_clips=0)
    with pytest.raises(ValueError, match="training items hold one clip"):
        ClipDataset(make_samples(), IndexFrames(), num_segments=4, train_transform=TrainClipTransform(32), num_clips=2)


def test_test_and_predict_read_their_split_with_the_test_views():
    datamodule = toy(test_split="val", predict_split="val", test_clips=2, test_crops=3)
    datamodule.setup()
    for loader in (datamodule.test_dataloader(), datamodule.predict_dataloader()):
        batch = next(iter(loader))
        assert all(sample_id.startswith("val_") for sample_id in batch["id"])
        assert batch["clip"].shape == (4, 6, 4, 3, 32, 32)
    assert next(iter(datamodule.val_dataloader()))["clip"].shape == (4, 1, 4, 3, 32, 32)


def test_a_second_setup_keeps_the_datasets_and_their_skip_counts():
    datamodule = toy(unreadable=[1], skip_unreadable=True)
    datamodule.setup("fit")
    list(datamodule.val_dataloader())
    assert datamodule.skipped_samples == {"train": 0, "val": 1}
    datamodule.setup("validate")  # (trainer.validate after trainer.fit)
    assert datamodule.skipped_samples == {"train": 0, "val": 1}


def test_predicting_on_an_unlabelled_split_is_not_warned_about(caplog):
    datamodule = toy()
    with caplog.at_level(logging.WARNING):
        datamodule.setup("predict")
    assert "has no labels" not in caplog.text


def test_teardown_logs_the_skip_count_of_the_roles_that_skipped_samples(caplog):
    datamodule = toy(unreadable=[1], skip_unreadable=True)
    datamodule.setup("fit")
    list(datamodule.val_dataloader())
    caplog.clear()  # (the skip's own warning)
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.data.base"):
        datamodule.teardown("fit")
    assert [record.getMessage() for record in caplog.records] == [
        "skip_unreadable: 1 unreadable val samples were skipped"]


def test_the_training_loader_shuffles_by_the_data_seed_and_the_epoch():
    def order(seed: int, epoch: int) -> list[int]:
        datamodule = toy(seed=seed, drop_last=False)
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return [index for batch in loader for index in batch["index"].tolist()]

    first = order(1, 0)
    assert sorted(first) == list(range(10)) and first != list(range(10))
    assert order(1, 0) == first
    assert order(1, 1) != first
    assert order(2, 0) != first


@pytest.mark.parametrize("role", ["val", "test", "predict"])
def test_a_fraction_of_evaluation_batches_must_leave_every_process_one(role):
    """7 samples in batches of 3 split unpadded as 2 batches and 1: half of each leaves process 1
    none. Each evaluation's own limit counts (``limit_test_batches`` for the test split)."""
    datamodule = toy(eval_batch_size=3)
    sampler = UnpaddedDistributedSampler(list(range(7)), num_replicas=2, rank=0)
    others = {f"limit_{other}_batches": 1.0 for other in ("val", "test", "predict") if other != role}
    datamodule.trainer = SimpleNamespace(**{f"limit_{role}_batches": 0.5}, **others)
    with pytest.raises(ValueError, match=rf"limit_{role}_batches=0.5 leaves .*the 2 processes hold 2, 1\)"):
        datamodule._check_every_process_keeps_a_batch(role, sampler)
    datamodule.trainer = SimpleNamespace(**{f"limit_{role}_batches": 1}, **others)
    datamodule._check_every_process_keeps_a_batch(role, sampler)


def test_memory_is_pinned_only_for_a_cuda_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert toy(pin_memory=True)._loader_options()["pin_memory"] is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert toy(pin_memory=True)._loader_options()["pin_memory"] is True
    assert toy(pin_memory=False)._loader_options()["pin_memory"] is False


def test_persistent_workers_without_workers_is_ignored():
    """(DataLoader refuses persistent_workers without workers.)"""
    datamodule = toy(num_workers=0, persistent_workers=True)
    datamodule.setup("fit")
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader()):
        assert not loader.persistent_workers
        assert next(iter(loader))["clip"].shape[0] == 4


def test_an_empty_split_names_its_annotation_file_under_annotations_dir():
    datamodule = OddSplits(num_segments=4, batch_size=4, num_workers=0, input_size=32, resize_size=36)
    datamodule.annotations_dir = Path("/data/annotations")
    datamodule.split_files = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}
    with pytest.raises(AnnotationError, match=r"the val split has no samples \(/data/annotations/val\.csv\)"):
        datamodule.setup("validate")


@pytest.mark.parametrize("argument", ["val_crops", "test_crops"])
def test_evaluation_crops_are_checked_when_the_datamodule_is_made(argument):
    """(At config time, not at ``setup`` or a loader's first batch, perhaps after training.)"""
    with pytest.raises(ValueError, match="num_crops must be 1 or 3"):
        toy(**{argument: 2})


def test_training_scales_are_checked_when_the_datamodule_is_made():
    with pytest.raises(ValueError, match="expected input_size >= 1 and scales in"):
        toy(scales=(1.0, 1.5))
