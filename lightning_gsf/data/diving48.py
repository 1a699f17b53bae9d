"""Diving48 (V2 annotations): 48 dive classes told apart by motion, not by scene.

Layout::

    <root>/<vid_name>/frame000001.jpg ...   extracted frames (template configurable), or
    <root>/<vid_name>.mp4                   the videos
    Diving48_vocab.json                     48 lists [takeoff, somersault, twist, flight position];
                                            the class index is the position in the list
    Diving48_V2_{train,test}.json           [{"vid_name", "label", "start_frame", "end_frame"}, ...]

``start_frame`` is 0 throughout V2 and ``end_frame`` is the number of frames, so an entry is the
half-open 0-based range ``[start_frame, end_frame)`` as it stands. Label 30 is used by no V2
video; the model still has 48 outputs so its indices match the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from lightning_gsf.data.annotation_files import check_class_count, read_json
from lightning_gsf.data.errors import AnnotationError
from lightning_gsf.data.sources import MediaKind, SampleCandidate, WholeVideoDataModule

__all__ = ["DIVING48_NUM_CLASSES", "Diving48DataModule", "DivingEntry", "read_split", "read_vocabulary"]

DIVING48_NUM_CLASSES = 48


@dataclass(frozen=True)
class DivingEntry:
    """One entry of a Diving48 split list, frames as the half-open 0-based range [start, stop)."""

    vid_name: str
    label: int
    start: int
    stop: int


def read_vocabulary(path: Path) -> list[str]:
    """Class names from ``Diving48_vocab.json``, e.g. ``"Back 15som 05Twis FREE"``, in index order."""
    names: list[str] = []
    for position, entry in enumerate(read_json(path, list)):
        if not (isinstance(entry, list) and len(entry) == 4 and all(isinstance(part, str) for part in entry)):
            raise AnnotationError(
                f"{path}, entry {position}: expected [takeoff, somersault, twist, flight position] strings, "
                f"got {entry!r}"
            )
        names.append(" ".join(entry))
    if len(set(names)) != len(names):
        raise AnnotationError(f"{path}: the vocabulary lists a class twice")
    return names


def _int_field(entry: dict[str, Any], key: str, where: str) -> int:
    value = entry.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise AnnotationError(f"{where}: expected an integer {key!r}, got {value!r}")
    return value


def read_split(path: Path, num_classes: int = DIVING48_NUM_CLASSES) -> list[DivingEntry]:
    """Entries of ``Diving48_V2_{train,test}.json``, checked: known label, non-empty frame range."""
    entries: list[DivingEntry] = []
    for position, entry in enumerate(read_json(path, list)):
        where = f"{path}, entry {position}"
        if not isinstance(entry, dict) or not isinstance(entry.get("vid_name"), str) or not entry["vid_name"]:
            raise AnnotationError(f"{where}: expected an object with a 'vid_name' string, got {entry!r}")
        where = f"{where} ({entry['vid_name']})"
        label = _int_field(entry, "label", where)
        start = _int_field(entry, "start_frame", where)
        stop = _int_field(entry, "end_frame", where)
        if not 0 <= label < num_classes:
            raise AnnotationError(f"{where}: label {label} is outside the {num_classes} vocabulary classes")
        if not 0 <= start < stop:
            raise AnnotationError(
                f"{where}: expected 0 <= start_frame < end_frame, got start_frame={start}, end_frame={stop}"
            )
        entries.append(DivingEntry(vid_name=entry["vid_name"], label=label, start=start, stop=stop))
    return entries


class Diving48DataModule(WholeVideoDataModule):
    """Diving48 (V2 labels) from extracted frames or from the videos (``layout="video"``).

    Diving48 has no validation split; as is usual (and as the original code does) the test
    split serves for validation too, unless ``val_file`` names another list.

    Args:
        root: folder of the per-video frame folders, or of the ``<vid_name><suffix>`` videos.
        annotations_dir: folder of the JSON files.
        vocab_file, train_file, val_file, test_file: the annotation files' names in
            ``annotations_dir``.
        video_suffix: with ``layout="video"``, the video files are ``<root>/<vid_name><suffix>``.
        layout, frame_template, first_frame_index, **kwargs: see ``WholeVideoDataModule`` and
            ``VideoDataModule``.
    """

    dataset_name = "diving48"

    def __init__(
        self,
        root: str | Path,
        annotations_dir: str | Path,
        *,
        vocab_file: str = "Diving48_vocab.json",
        train_file: str = "Diving48_V2_train.json",
        val_file: str = "Diving48_V2_test.json",
        test_file: str = "Diving48_V2_test.json",
        layout: MediaKind = "frames",
        frame_template: str = "frame{:06d}.jpg",
        first_frame_index: int = 1,
        video_suffix: str = ".mp4",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root, annotations_dir, layout=layout, frame_template=frame_template, first_frame_index=first_frame_index, **kwargs
        )
        self.vocab_file = vocab_file
        self.split_files = {"train": train_file, "val": val_file, "test": test_file}
        self.video_suffix = video_suffix

    @cached_property
    def class_names(self) -> list[str]:
        """The 48 classes as ``"<takeoff> <somersault> <twist> <flight position>"``, in index order."""
        path = self.annotations_dir / self.vocab_file
        names = read_vocabulary(path)
        check_class_count(len(names), DIVING48_NUM_CLASSES, path, "Diving48")
        return names

    @property
    def num_classes(self) -> dict[str, int]:
        return {"class": DIVING48_NUM_CLASSES}

    def candidates(self, split: str) -> list[SampleCandidate]:
        path = self.annotations_dir / self.split_files[split]
        return [
            SampleCandidate(
                id=entry.vid_name,
                source=self.source_by_id(entry.vid_name, self.video_suffix),
                where=f"{path}, entry {position} ({entry.vid_name})",
                labels={"class": entry.label},
                start=entry.start,
                stop=entry.stop,
            )
            for position, entry in enumerate(read_split(path, len(self.class_names)))
        ]
