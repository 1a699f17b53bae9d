"""The media layer (lightning_gsf/data/sources.py): media layouts, counting frame files and the
frame-count cache, locating annotated samples, warnings and the missing-media report."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from pytorch_lightning import Trainer
from pytorch_lightning.loggers import CSVLogger

from lightning_gsf.data import sources
from lightning_gsf.data.errors import ConfigurationError, MissingMediaError, SampleReadError
from lightning_gsf.data.kinetics import Kinetics400DataModule
from lightning_gsf.data.sources import (
    MediaLayout,
    SampleCandidate,
    count_frame_files,
    locate_samples,
    missing_report_path,
    read_frame_count_cache,
)
from media_writers import decode_frame_numbers, write_frame_folder


def _frames(folder: Path, count: int, template: str = "{:05d}.jpg") -> Path:
    """``folder`` with ``count`` empty files named as frames 1, 2, ...: counting and locating read
    names only (media_writers.write_frame_folder writes decodable JPEGs where frames are read)."""
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(1, count + 1):
        (folder / template.format(number)).write_bytes(b"")
    return folder


def test_a_layout_other_than_video_or_frames_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"layout must be 'video' or 'frames', got 'vidoe'"):
        MediaLayout("vidoe")  # type: ignore[arg-type]


def test_a_frame_prefix_in_another_letter_case_is_an_error_not_a_shorter_video(tmp_path: Path) -> None:
    """``img_00006.jpg`` spelled ``IMG_00006.jpg``: the template's prefix, not only its
    extension, is compared without letter case."""
    _frames(tmp_path, 5, "img_{:05d}.jpg")
    for number in range(6, 9):
        (tmp_path / f"IMG_{number:05d}.jpg").write_bytes(b"")
    with pytest.raises(SampleReadError, match=r"3 of its files are frames named otherwise .* e.g. 'IMG_00006.jpg' "
                                              r"beside 'img_00001.jpg'"):
        count_frame_files(tmp_path, "img_{:05d}.jpg", first_index=1)


@pytest.mark.parametrize("template", ["{0:05d}_{0:05d}.jpg", "{:05d}_{:05d}.jpg", "frames.jpg"])
def test_a_layout_refuses_a_frame_template_without_exactly_one_number_field(template: str) -> None:
    """Where the configuration is read, not at the first frame folder counted: a template that
    formats the number twice formats fine but names no frame files."""
    with pytest.raises(ConfigurationError, match=rf"frame_template '{re.escape(template)}' must format one frame number"):
        MediaLayout("frames", frame_template=template)


def test_a_frame_template_with_the_number_twice_is_refused(tmp_path: Path) -> None:
    """A template that formats the number twice (``{0}_{0}``) names no frames of one number field."""
    with pytest.raises(ValueError, match=r"frame template '\{0:05d\}_\{0:05d\}' must hold one number field"):
        count_frame_files(tmp_path, "{0:05d}_{0:05d}", first_index=1)


@pytest.mark.parametrize("count", ["-1", "-3"])
def test_every_negative_cached_frame_count_names_the_cache_line(tmp_path: Path, count: str) -> None:
    cache = tmp_path / "frame_counts.csv"
    cache.write_text(f"counted_as,num_frames\n/data/a.mp4,0\n/data/b.mp4,{count}\n")
    with pytest.raises(ValueError, match=rf"frame_counts.csv, line 3: a negative frame count, {count}"):
        read_frame_count_cache(cache)


def test_a_cached_count_of_zero_frames_is_read_back(tmp_path: Path) -> None:
    """An empty frame folder counts 0 frames, and that count is cached like any other."""
    cache = tmp_path / "frame_counts.csv"
    cache.write_text("counted_as,num_frames\n/data/empty/00001.jpg,0\n")
    assert read_frame_count_cache(cache) == {"/data/empty/00001.jpg": 0}


def test_progress_is_reported_every_so_many_videos_not_before_the_first(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sources, "_PROGRESS_EVERY", 2)
    candidates = [SampleCandidate(id=str(i), source=_frames(tmp_path / str(i), 3), where=f"list.json, entry {i}")
                  for i in range(5)]
    calls: list[tuple[int, int]] = []
    samples = locate_samples(candidates, MediaLayout("frames"), missing="error", report_path=tmp_path / "missing.tsv",
                             progress=lambda done, total: calls.append((done, total)))
    assert len(samples) == 5
    assert calls == [(2, 5), (4, 5)]


def test_a_range_ending_at_the_last_frame_is_not_warned_about(tmp_path: Path, caplog) -> None:
    source = _frames(tmp_path / "clip", 5)
    candidates = [SampleCandidate(id="whole", source=source, where="list.json, entry 0", start=0, stop=5)]
    with caplog.at_level(logging.WARNING):
        samples = locate_samples(candidates, MediaLayout("frames"), missing="error", report_path=tmp_path / "m.tsv")
    assert [(sample.start, sample.stop) for sample in samples] == [(0, 5)]
    assert "run past their extracted frames" not in caplog.text


def test_the_warning_names_the_largest_overrun(tmp_path: Path, caplog) -> None:
    source = _frames(tmp_path / "clip", 5)
    candidates = [SampleCandidate(id="a", source=source, where="list.json, entry 0", start=0, stop=6),
                  SampleCandidate(id="b", source=source, where="list.json, entry 1", start=0, stop=9)]
    with caplog.at_level(logging.WARNING):
        locate_samples(candidates, MediaLayout("frames"), missing="error", report_path=tmp_path / "m.tsv")
    assert "2 annotated frame ranges run past their extracted frames, by up to 4 frames" in caplog.text


def test_a_cache_holding_every_count_is_not_rewritten(tmp_path: Path, monkeypatch, caplog) -> None:
    """Counted once, written once: a parse that counts nothing leaves the cache file alone (a
    cache shared read-only by many jobs is not written by each)."""
    candidates = [SampleCandidate(id=str(i), source=_frames(tmp_path / str(i), 3 + i), where=f"list.json, entry {i}")
                  for i in range(2)]
    cache = tmp_path / "frame_counts.csv"
    with caplog.at_level(logging.INFO, logger=sources.__name__):
        locate_samples(candidates, MediaLayout("frames"), missing="error", report_path=tmp_path / "m.tsv",
                       frame_count_cache=cache)
    assert f"wrote 2 frame counts to {cache}" in caplog.text

    def no_writing(path, counts):
        raise AssertionError(f"rewrote {path}")

    monkeypatch.setattr(sources, "write_frame_count_cache", no_writing)
    samples = locate_samples(candidates, MediaLayout("frames"), missing="error", report_path=tmp_path / "m.tsv",
                             frame_count_cache=cache)
    assert [sample.stop for sample in samples] == [3, 4]


def test_the_missing_media_error_lists_the_first_five(tmp_path: Path) -> None:
    candidates = [SampleCandidate(id=str(i), source=tmp_path / f"v{i}", where=f"list.json, entry {i}")
                  for i in range(7)]
    with pytest.raises(MissingMediaError) as error:
        locate_samples(candidates, MediaLayout("frames"), missing="error", report_path=tmp_path / "missing.tsv")
    message = str(error.value)
    assert message.startswith("7 of 7 annotated videos are missing or unreadable")
    assert all(f"list.json, entry {i}: {tmp_path / f'v{i}'} (no such folder)" in message for i in range(5))
    assert "entry 5" not in message and "entry 6" not in message


def test_the_missing_media_report_goes_to_the_trainers_log_dir(tmp_path: Path) -> None:
    datamodule = Kinetics400DataModule(root=tmp_path, annotations_dir=tmp_path)
    datamodule.trainer = Trainer(default_root_dir=tmp_path, logger=CSVLogger(tmp_path / "logs"),
                                 enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    assert datamodule.trainer.log_dir
    assert missing_report_path(datamodule, "val") == Path(datamodule.trainer.log_dir) / "missing_kinetics400_val.tsv"


def test_an_unknown_missing_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"missing_videos must be 'error' or 'drop', got 'skip'"):
        Kinetics400DataModule(root=tmp_path, annotations_dir=tmp_path, missing_videos="skip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"missing must be 'error' or 'drop', got 'skip'"):
        locate_samples([], MediaLayout("frames"), missing="skip", report_path=tmp_path / "m.tsv")  # type: ignore[arg-type]


def test_frames_numbered_from_zero_are_read_from_the_first_frame_index(tmp_path: Path) -> None:
    """``first_frame_index=0``: frame 0 of a video is the file ``00000.jpg``, when read as when counted."""
    folder = tmp_path / "clip"
    write_frame_folder(folder, 1, 4, "{:05d}.jpg", first_index=0)
    datamodule = Kinetics400DataModule(root=tmp_path, annotations_dir=tmp_path, layout="frames",
                                       frame_template="{:05d}.jpg", first_frame_index=0)
    assert datamodule.media_layout.count_frames(folder) == 4
    assert decode_frame_numbers(datamodule.build_reader().read(folder, [0, 1, 2, 3])) == [0, 1, 2, 3]
