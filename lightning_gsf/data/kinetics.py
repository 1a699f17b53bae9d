"""Kinetics-400: 400 human action classes, 10-second YouTube clips.

Layout (the video path is a template, so other arrangements need only a config change)::

    <root>/<split>/<label>/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4   (default), or
    <root>/<split>/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4            (flat), or
    <root>/<split>/<youtube_id>_<time_start:06d>_<time_end:06d>/img_00001.jpg  (extracted frames,
                                                                  FRAMES_TEMPLATE, the default then)
    kinetics-400_{train,val,test}.csv    label,youtube_id,time_start,time_end,split[,is_cc]
                                         (the test CSV has no label column)

Labels contain spaces, parentheses and apostrophes ("passing American football (in game)"), and
the CSVs quote them, so the files are read with the ``csv`` module. Class ``k`` is the k-th
label in alphabetical order (the label-map file, or the train CSV's labels sorted).

Many YouTube videos have disappeared since the lists were published, so every copy of Kinetics
misses some. Missing videos are never dropped silently: the default stops with an error that
lists them, and ``missing_videos="drop"`` drops them, logs the count and writes the list to a file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from lightning_gsf.data.annotation_files import (check_class_count, parse_integer, parse_number,
                                                  read_class_name_lines, read_headed_csv)
from lightning_gsf.data.errors import AnnotationError, ConfigurationError
from lightning_gsf.data.sources import MediaKind, SampleCandidate, WholeVideoDataModule

__all__ = [
    "FRAMES_TEMPLATE",
    "VIDEO_TEMPLATE_BY_CLASS",
    "VIDEO_TEMPLATE_FLAT",
    "Kinetics400DataModule",
    "KineticsClip",
    "read_csv",
    "read_label_map",
]

KINETICS400_NUM_CLASSES = 400

VIDEO_TEMPLATE_BY_CLASS = "{split}/{label}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
VIDEO_TEMPLATE_FLAT = "{split}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
FRAMES_TEMPLATE = "{split}/{clip_id}"  # one folder of frames per clip
_VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")

_REQUIRED_COLUMNS = ("youtube_id", "time_start", "time_end", "split")


@dataclass(frozen=True)
class KineticsClip:
    """One row of a Kinetics CSV; ``label`` is None for the test list."""

    youtube_id: str
    time_start: int
    time_end: int
    split: str
    label: str | None
    #: line of the CSV file the row was read from (not part of equality)
    line: int = field(default=0, compare=False)

    @property
    def clip_id(self) -> str:
        """``<youtube_id>_<start:06d>_<end:06d>``, the name the standard download scripts give the file."""
        return f"{self.youtube_id}_{self.time_start:06d}_{self.time_end:06d}"

    def relative_path(self, template: str) -> Path:
        """Path of this clip's video (or frame folder) under the dataset root, from ``template``.

        Fields: ``split``, ``label``, ``label_underscored`` (spaces -> ``_``, as some copies name
        their class folders), ``youtube_id``, ``time_start``, ``time_end``, ``clip_id``.
        """
        label = self.label or ""
        return Path(
            template.format(
                split=self.split,
                label=label,
                label_underscored=label.replace(" ", "_"),
                youtube_id=self.youtube_id,
                time_start=self.time_start,
                time_end=self.time_end,
                clip_id=self.clip_id,
            )
        )


def read_label_map(path: Path) -> list[str]:
    """Class names one per line (``label_map_k400.txt``), checked to be unique."""
    names = read_class_name_lines(path)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise AnnotationError(f"{path}: class names listed more than once: {duplicates}")
    return names


def _parse_second(value: str, column: str, where: str) -> int:
    try:
        return parse_integer(value)
    except ValueError:
        # Some copies write whole seconds as floats ("17.0").
        try:
            seconds = parse_number(value)
        except ValueError:
            seconds = float("nan")
        if not seconds.is_integer():
            raise AnnotationError(f"{where}: expected a whole number of seconds in {column!r}, got {value!r}") from None
        return int(seconds)


def read_csv(path: Path, labelled: bool | None = None) -> list[KineticsClip]:
    """Rows of an official Kinetics CSV (header ``label,youtube_id,time_start,time_end,split[,is_cc]``).

    ``labelled=None`` reads labels when the header has a ``label`` column (the original test
    list has none); True requires one, False ignores it.
    """
    path = Path(path)
    header, records = read_headed_csv(path)
    if labelled is None:
        labelled = "label" in header
    required = (("label",) if labelled else ()) + _REQUIRED_COLUMNS
    missing = [column for column in required if column not in header]
    if missing:
        raise AnnotationError(
            f"{path}, line 1: header {header} lacks the columns {missing}; expected "
            f"{'label,' if labelled else ''}youtube_id,time_start,time_end,split"
        )
    clips: list[KineticsClip] = []
    for record in records:
        row, where = record.values, f"{path}, {record.lines}"
        if None in row or any(row[column] is None for column in header):
            shown = str(row) if len(str(row)) <= 300 else f"{str(row)[:300]} ..."
            raise AnnotationError(f"{where}: expected {len(header)} fields ({','.join(header)}), got {shown}")
        youtube_id, split = row["youtube_id"].strip(), row["split"].strip()
        label = row["label"].strip() if labelled else None
        if not youtube_id or not split or (labelled and not label):  # (an empty split: a path outside the root)
            raise AnnotationError(f"{where}: empty youtube_id, split or label in {row}")
        start = _parse_second(row["time_start"], "time_start", where)
        end = _parse_second(row["time_end"], "time_end", where)
        if not 0 <= start < end:
            raise AnnotationError(f"{where}: expected 0 <= time_start < time_end, got {start}, {end}")
        clips.append(KineticsClip(youtube_id, start, end, split, label, line=record.first_line))
    return clips


def _rarest_labels(clips: list[KineticsClip], count: int = 3) -> str:
    """The ``count`` labels of fewest rows, each with its number of rows and first line."""
    rows = Counter(clip.label for clip in clips)
    first_line: dict[str | None, int] = {}
    for clip in clips:
        first_line.setdefault(clip.label, clip.line)
    rarest = sorted(rows, key=lambda label: (rows[label], first_line[label]))[:count]
    return ", ".join(f"{label!r} ({rows[label]} row{'s' * (rows[label] > 1)}, first on line {first_line[label]})"
                     for label in rarest)


class Kinetics400DataModule(WholeVideoDataModule):
    """Kinetics-400 from its videos (or extracted frames, with ``layout="frames"``).

    Args:
        root: the dataset folder the ``path_template`` is relative to.
        annotations_dir: folder of the CSV files.
        train_file, val_file, test_file: the CSV files' names in ``annotations_dir``.
        class_names_file: class names one per line in index order (``label_map_k400.txt``);
            default: the train CSV's labels, sorted.
        path_template: where a clip's video (or frame folder) is under ``root``, with the
            fields of :meth:`KineticsClip.relative_path`. Default ``VIDEO_TEMPLATE_BY_CLASS``
            for videos (``VIDEO_TEMPLATE_FLAT`` for one folder per split) and
            ``FRAMES_TEMPLATE`` for frames; a template naming a video file with
            ``layout="frames"`` is refused.
        layout, frame_template, first_frame_index, missing_videos, missing_report_dir,
            **kwargs: see ``WholeVideoDataModule`` and ``VideoDataModule``. Kinetics copies
            always miss some videos: ``missing_videos="drop"`` trains on the rest and writes
            the list of the missing ones.
    """

    dataset_name = "kinetics400"

    def __init__(
        self,
        root: str | Path,
        annotations_dir: str | Path,
        *,
        train_file: str = "kinetics-400_train.csv",
        val_file: str = "kinetics-400_val.csv",
        test_file: str = "kinetics-400_test.csv",
        class_names_file: str | None = None,
        path_template: str | None = None,
        layout: MediaKind = "video",
        frame_template: str = "img_{:05d}.jpg",
        first_frame_index: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root, annotations_dir, layout=layout, frame_template=frame_template, first_frame_index=first_frame_index, **kwargs
        )
        self.split_files = {"train": train_file, "val": val_file, "test": test_file}
        self.class_names_file = class_names_file
        if path_template is None:
            path_template = FRAMES_TEMPLATE if layout == "frames" else VIDEO_TEMPLATE_BY_CLASS
        elif layout == "frames" and path_template.lower().endswith(_VIDEO_SUFFIXES):
            raise ConfigurationError(f"path_template {path_template!r} names a video file, but layout is 'frames': "
                                     f"give the clips' frame folders, e.g. {FRAMES_TEMPLATE!r} (or leave "
                                     "path_template out)")
        self.path_template = path_template

    @cached_property
    def class_names(self) -> list[str]:
        """Class names in index order: the label map's, or the train CSV's labels sorted. Either
        must name the 400 classes (a train CSV missing a class would shift every later index)."""
        if self.class_names_file is not None:
            path = self.annotations_dir / self.class_names_file
            names = read_label_map(path)
            check_class_count(len(names), KINETICS400_NUM_CLASSES, path, "Kinetics-400")
            return names
        path = self.annotations_dir / self.split_files["train"]
        if not path.is_file():
            raise AnnotationError(f"{path}: not found; with class_names_file null the class list is the train split's "
                                  f"labels (even to validate, test or predict): give that file, or class_names_file "
                                  f"(label_map_k400.txt)")
        clips = read_csv(path, labelled=True)
        names = sorted({clip.label for clip in clips if clip.label is not None})
        if len(names) != KINETICS400_NUM_CLASSES:  # (check_class_count's check, naming the rows to look at)
            raise AnnotationError(f"{path}: {len(names)} labels, where Kinetics-400 has {KINETICS400_NUM_CLASSES} "
                                  f"classes; the rarest: {_rarest_labels(clips)}; a misspelled or missing label? "
                                  f"(or give class_names_file, label_map_k400.txt)")
        return names

    @cached_property
    def class_to_index(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.class_names)}

    @property
    def num_classes(self) -> dict[str, int]:
        return {"class": len(self.class_names)}

    def candidates(self, split: str) -> list[SampleCandidate]:
        path = self.annotations_dir / self.split_files[split]
        candidates = []
        for clip in read_csv(path, labelled=None if split == "test" else True):
            where = f"{path}, line {clip.line}"
            labels = None
            if clip.label is not None:
                if clip.label not in self.class_to_index:
                    raise AnnotationError(
                        f"{where}: unknown label {clip.label!r} (not among the {len(self.class_names)} classes)"
                    )
                labels = {"class": self.class_to_index[clip.label]}
            candidates.append(
                SampleCandidate(
                    id=clip.clip_id,
                    source=self.source(clip.relative_path(self.path_template)),
                    where=where,
                    labels=labels,
                    metadata={"youtube_id": clip.youtube_id, "time_start": clip.time_start, "time_end": clip.time_end},
                )
            )
        return candidates
