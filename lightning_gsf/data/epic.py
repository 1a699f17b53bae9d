"""EPIC-KITCHENS-100 action recognition: the official annotation CSVs and a thin DataModule.

The annotation files (github.com/epic-kitchens/epic-kitchens-100-annotations) are read with the
``csv`` module into typed, frozen records: :class:`EpicAction` for a row of
``EPIC_100_train.csv`` / ``EPIC_100_validation.csv`` (15 columns) or
``EPIC_100_test_timestamps.csv`` (the first 8, no labels), :class:`EpicClass` for the verb and
noun class lists and :class:`EpicVideoInfo` for ``EPIC_100_video_info.csv``. A bad row raises
:class:`~lightning_gsf.data.errors.AnnotationError` naming the file, the CSV line, the
narration_id and what was expected.

Two storage layouts (``layout`` in the config), both under one ``root``::

    frames: <root>/<participant_id>/rgb_frames/<video_id>/frame_0000000001.jpg  (1-based)
    video:  <root>/<participant_id>/videos/<video_id>.MP4

Frame numbers. ``start_frame`` and ``stop_frame`` are 1-based and inclusive, and they count the
*extracted* frames, which the dataset authors extracted at a fixed rate whatever the video's
own rate: on the validation file (EPIC-KITCHENS-55 videos only),
``start_frame == int(start_timestamp * 60)`` for every row whose start is not 0, including the
videos recorded at 29.97, 47.95 and 90 fps (the extension's videos, absent from that file, are
documented at 50 fps). Hence:

- frames layout: the segment is ``[start_frame - 1, stop_frame)``, the files it names;
- video layout: the frame numbers cannot index a 29.97 fps video, so the segment comes from the
  timestamps and the video's own rate (``EPIC_100_video_info.csv``):
  ``[round(start_timestamp * fps), round(stop_timestamp * fps))``. Timestamps have 0.01 s
  resolution, i.e. exact frames below 50 fps, and well within a frame above. Where both
  rates agree (the synthetic dataset), both layouts give the same frames; on the real data the
  frame files start about one 60 fps frame earlier (``int(t * 60) - 1`` against ``t``).

Labels are ``{"verb": verb_class, "noun": noun_class}`` (the first noun), none for the test
split; each sample also carries its ``narration_id`` (the sample id), participant and video
ids (metadata), and the official evaluation subsets ``tail_verb``, ``tail_noun`` (labelled
splits only) and ``unseen`` (participants absent from training).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Literal, TypeVar

from lightning_gsf.data.annotation_files import parse_integer, parse_number, read_headed_csv
from lightning_gsf.data.base import ClipSample, VideoDataModule
from lightning_gsf.data.errors import AnnotationError, SampleReadError
from lightning_gsf.data.sources import (
    MediaLayout,
    MissingPolicy,
    SampleCandidate,
    checked_missing_policy,
    decoder_threads,
    missing_report_path,
    report_missing_media,
    warn_ranges_past_frames,
)
from lightning_gsf.data.video import ClipReader

__all__ = [
    "EPIC_ACTION_COLUMNS",
    "EPIC_CLASS_COLUMNS",
    "EPIC_TIMESTAMP_COLUMNS",
    "EPIC_VIDEO_INFO_COLUMNS",
    "EpicAction",
    "EpicClass",
    "EpicKitchensDataModule",
    "EpicVideoInfo",
    "format_timestamp",
    "parse_timestamp",
    "read_actions",
    "read_classes",
    "read_participant_ids",
    "read_tail_classes",
    "read_video_info",
]

#: The columns of the unlabelled ``EPIC_100_test_timestamps.csv``, in the official order.
EPIC_TIMESTAMP_COLUMNS = (
    "narration_id",
    "participant_id",
    "video_id",
    "narration_timestamp",
    "start_timestamp",
    "stop_timestamp",
    "start_frame",
    "stop_frame",
)
#: The 15 columns of ``EPIC_100_train.csv`` and ``EPIC_100_validation.csv``, in the official order.
EPIC_ACTION_COLUMNS = EPIC_TIMESTAMP_COLUMNS + (
    "narration",
    "verb",
    "verb_class",
    "noun",
    "noun_class",
    "all_nouns",
    "all_noun_classes",
)
#: The columns only labelled files have.
EPIC_LABEL_COLUMNS = EPIC_ACTION_COLUMNS[len(EPIC_TIMESTAMP_COLUMNS):]
#: The columns of ``EPIC_100_verb_classes.csv`` and ``EPIC_100_noun_classes.csv``.
EPIC_CLASS_COLUMNS = ("id", "key", "instances", "category")
#: The columns of ``EPIC_100_video_info.csv``.
EPIC_VIDEO_INFO_COLUMNS = ("video_id", "duration", "fps", "resolution")

# Stop timestamps may overshoot a video's duration by rounding (one validation row does, by
# 0.013 s); within this margin the segment is clipped to the video, beyond it is an error.
_END_TOLERANCE_SECONDS = 0.05

# (re.ASCII: \d is 0-9 only, not every script's digits)
_TIMESTAMP = re.compile(r"(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)", re.ASCII)
_RESOLUTION = re.compile(r"(\d+)x(\d+)", re.ASCII)
_INTEGER_LIST = re.compile(r"\[\s*(?:[+-]?\d+\s*,\s*)*(?:[+-]?\d+\s*,?\s*)?\]", re.ASCII)

_T = TypeVar("_T")


# --- records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpicAction:
    """One action segment: a row of a train / validation file, or of the test timestamps file.

    Times are in seconds, frame numbers as in the file (1-based, inclusive). The label fields are
    ``None`` in the test file; ``narration_timestamp`` is ``None`` where the file leaves it empty
    (the actions the official README lists as having no narration timestamp).
    """

    narration_id: str
    participant_id: str
    video_id: str
    narration_timestamp: float | None
    start_timestamp: float
    stop_timestamp: float
    start_frame: int
    stop_frame: int
    narration: str | None = None
    verb: str | None = None
    verb_class: int | None = None
    noun: str | None = None
    noun_class: int | None = None
    all_nouns: tuple[str, ...] = ()
    all_noun_classes: tuple[int, ...] = ()
    line: int = 0  # the CSV line the action was read from, for error messages

    @property
    def labelled(self) -> bool:
        return self.verb_class is not None


@dataclass(frozen=True)
class EpicClass:
    """A verb or noun class: its index, key, the words it groups and their category."""

    id: int
    key: str
    instances: tuple[str, ...]
    category: str


@dataclass(frozen=True)
class EpicVideoInfo:
    """A row of ``EPIC_100_video_info.csv``."""

    video_id: str
    duration: float
    fps: float
    width: int
    height: int

    @property
    def num_frames(self) -> int:
        return round(self.duration * self.fps)


# --- CSV reading --------------------------------------------------------------------------


class _Row:
    """One CSV row with typed accessors whose errors name the file, line and narration_id."""

    def __init__(self, path: Path, line: int, values: dict[str, str], name: str | None,
                 lines: str | None = None) -> None:
        self.path = path
        self.line = line  # the row's first line
        self.lines = lines or f"line {line}"  # (``lines 5-9`` for a row over several lines)
        self.values = values
        self.name = name

    def error(self, message: str) -> AnnotationError:
        where = f"{self.path}, {self.lines}"
        if self.name:  # (an unbalanced quote's field runs over lines: its first 60 characters)
            shown = self.name
            if len(shown) > 60 or "\n" in shown:
                shown = f"{shown.splitlines()[0][:60]} ..."
            where += f" (narration_id {shown})"
        return AnnotationError(f"{where}: {message}")

    def text(self, column: str) -> str:
        value = self.values[column].strip()
        if not value:
            raise self.error(f"column {column!r} is empty; expected a value")
        return value

    def optional_text(self, column: str) -> str | None:
        return self.values[column].strip() or None

    def _parsed(self, column: str, parse: Callable[[str], _T], expected: str) -> _T:
        value = self.text(column)
        try:
            return parse(value)
        except ValueError:
            raise self.error(f"column {column!r} is {value!r}; expected {expected}") from None

    def integer(self, column: str) -> int:
        return self._parsed(column, parse_integer, "an integer")

    def real(self, column: str) -> float:
        number = self._parsed(column, parse_number, "a number")
        if not math.isfinite(number):
            raise self.error(f"column {column!r} is {self.values[column].strip()!r}; expected a finite number")
        return number

    def timestamp(self, column: str) -> float:
        return self._parsed(column, parse_timestamp, "a timestamp HH:MM:SS.ss")

    def optional_timestamp(self, column: str) -> float | None:
        return self.timestamp(column) if self.values[column].strip() else None

    def literal_list(self, column: str, item_type: type) -> tuple:
        value = self.text(column)
        try:
            items = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            items = None
        decimal = item_type is not int or _INTEGER_LIST.fullmatch(value)  # (not [1_0], [0x1] that literal_eval reads)
        if not (decimal and isinstance(items, list) and all(isinstance(item, item_type) for item in items)):
            raise self.error(f"column {column!r} is {value!r}; expected a list of {item_type.__name__}, e.g. [3]")
        return tuple(items)


def read_csv_rows(path: Path, required: Sequence[str], name_column: str | None = None) -> Iterator[_Row]:
    """The rows of a headed CSV file, after checking that the header holds the ``required`` columns.

    Rows with fewer or more fields than the header are errors, not padded or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist (set data.init_args.root, or "
                                f"data.init_args.annotations_dir where the annotations are elsewhere)")
    header, records = read_headed_csv(path)  # (a byte-order mark is not part of the first column's name)
    missing = [column for column in required if column not in header]
    if missing:
        raise AnnotationError(
            f"{path}, header: missing column(s) {missing}; expected a header with {list(required)}, found {header}"
        )
    for record in records:
        values = record.values
        name = values.get(name_column) if name_column else None
        row = _Row(path, record.first_line, values, name, record.lines)
        if None in values:
            raise row.error(f"{len(header) + len(values[None])} fields; expected the header's {len(header)}")
        if any(value is None for value in values.values()):
            count = sum(value is not None for value in values.values())
            raise row.error(f"{count} fields; expected the header's {len(header)}")
        yield row


def parse_timestamp(text: str) -> float:
    """``"HH:MM:SS.ss"`` (any number of decimals) -> seconds; ``ValueError`` if malformed."""
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a timestamp HH:MM:SS.ss")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def format_timestamp(seconds: float, decimals: int = 2) -> str:
    """Seconds -> ``"HH:MM:SS.ss"`` as the official files write it (``decimals`` after the point)."""
    if seconds < 0:
        raise ValueError(f"timestamps are >= 0, got {seconds}")
    hundredths = round(seconds * 10**decimals)
    whole, fraction = divmod(hundredths, 10**decimals)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{fraction:0{decimals}d}"


def read_actions(path: Path) -> list[EpicAction]:
    """Read ``EPIC_100_{train,validation}.csv`` (labelled) or ``EPIC_100_test_timestamps.csv``.

    A file is labelled when its header has any of the label columns (``verb``, ``verb_class``,
    ...); then all 15 official columns are required (so a misnamed one is an error, not a
    file read as unlabelled), otherwise the 8 timing columns. Checks each row's types, that
    the frames and times are ordered, and that narration_ids are unique.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist (set data.init_args.root, or "
                                f"data.init_args.annotations_dir where the annotations are elsewhere)")
    header, _ = read_headed_csv(path)  # (the header only; read_csv_rows reads and checks the rest)
    labelled = any(column in header for column in EPIC_LABEL_COLUMNS)
    actions: list[EpicAction] = []
    lines_by_id: dict[str, int] = {}
    for row in read_csv_rows(path, EPIC_ACTION_COLUMNS if labelled else EPIC_TIMESTAMP_COLUMNS, "narration_id"):
        action = _parse_action(row, labelled)
        if action.narration_id in lines_by_id:
            raise row.error(f"narration_id repeats line {lines_by_id[action.narration_id]}; expected unique ids")
        lines_by_id[action.narration_id] = row.line
        actions.append(action)
    return actions


def _parse_action(row: _Row, labelled: bool) -> EpicAction:
    start_frame, stop_frame = row.integer("start_frame"), row.integer("stop_frame")
    if start_frame < 1 or stop_frame < start_frame:
        raise row.error(
            f"frames {start_frame}..{stop_frame}; expected 1 <= start_frame <= stop_frame (1-based, inclusive)"
        )
    start_time, stop_time = row.timestamp("start_timestamp"), row.timestamp("stop_timestamp")
    if stop_time < start_time:
        raise row.error(f"stop_timestamp {stop_time:.2f} s is before start_timestamp {start_time:.2f} s")
    narration_id, participant_id, video_id = row.text("narration_id"), row.text("participant_id"), row.text("video_id")
    if not video_id.startswith(f"{participant_id}_"):
        raise row.error(f"video_id {video_id} is not a video of participant {participant_id}; "
                        f"expected {participant_id}_<number>")
    if not narration_id.startswith(f"{video_id}_"):
        raise row.error(f"narration_id {narration_id} is not a narration of video {video_id}; "
                        f"expected {video_id}_<number>")
    fields = dict(
        narration_id=narration_id,
        participant_id=participant_id,
        video_id=video_id,
        narration_timestamp=row.optional_timestamp("narration_timestamp"),
        start_timestamp=start_time,
        stop_timestamp=stop_time,
        start_frame=start_frame,
        stop_frame=stop_frame,
        line=row.line,
    )
    if labelled:
        all_nouns = row.literal_list("all_nouns", str)
        all_noun_classes = row.literal_list("all_noun_classes", int)
        if len(all_nouns) != len(all_noun_classes) or not all_nouns:
            raise row.error(
                f"all_nouns {list(all_nouns)} and all_noun_classes {list(all_noun_classes)}; "
                "expected two lists of the same, non-zero length"
            )
        noun_class = row.integer("noun_class")
        if noun_class != all_noun_classes[0]:
            raise row.error(f"noun_class {noun_class} is not the first of all_noun_classes {list(all_noun_classes)}; "
                            "expected the main noun's class first, as in the official files")
        fields.update(
            narration=row.optional_text("narration"),
            verb=row.text("verb"),
            verb_class=row.integer("verb_class"),
            noun=row.text("noun"),
            noun_class=noun_class,
            all_nouns=all_nouns,
            all_noun_classes=all_noun_classes,
        )
    return EpicAction(**fields)


def read_classes(path: Path) -> list[EpicClass]:
    """Read ``EPIC_100_verb_classes.csv`` or ``EPIC_100_noun_classes.csv``; ids must be 0, 1, 2, ..."""
    classes: list[EpicClass] = []
    for row in read_csv_rows(path, EPIC_CLASS_COLUMNS):
        class_id = row.integer("id")
        if class_id != len(classes):
            raise row.error(f"class id {class_id}; expected {len(classes)} (ids count from 0 in file order)")
        classes.append(EpicClass(class_id, row.text("key"), row.literal_list("instances", str), row.text("category")))
    if not classes:
        raise AnnotationError(f"{path}: no classes; expected one row per class")
    return classes


def read_tail_classes(path: Path, column: Literal["verb", "noun"]) -> frozenset[int]:
    """The class ids of ``EPIC_100_tail_verbs.csv`` (column ``verb``) or ``..._tail_nouns.csv`` (``noun``)."""
    return frozenset(row.integer(column) for row in read_csv_rows(path, (column,)))


def read_participant_ids(path: Path) -> frozenset[str]:
    """The participants of ``EPIC_100_unseen_participant_ids_{validation,test}.csv``."""
    return frozenset(row.text("participant_id") for row in read_csv_rows(path, ("participant_id",)))


def read_video_info(path: Path) -> dict[str, EpicVideoInfo]:
    """``EPIC_100_video_info.csv`` as ``{video_id: EpicVideoInfo}``; a video listed twice is an
    error naming both lines."""
    videos: dict[str, EpicVideoInfo] = {}
    lines: dict[str, int] = {}
    for row in read_csv_rows(path, EPIC_VIDEO_INFO_COLUMNS):
        video_id, resolution = row.text("video_id"), row.text("resolution")
        if video_id in lines:
            raise row.error(f"video_id {video_id!r} again (first at line {lines[video_id]}); expected one row a video")
        lines[video_id] = row.line
        size = _RESOLUTION.fullmatch(resolution)
        if size is None:
            raise row.error(f"resolution {resolution!r}; expected WIDTHxHEIGHT, e.g. 1920x1080")
        duration, fps = row.real("duration"), row.real("fps")
        if duration <= 0 or fps <= 0:
            raise row.error(f"duration {duration} s at {fps} fps; expected both > 0")
        videos[video_id] = EpicVideoInfo(video_id, duration, fps, int(size.group(1)), int(size.group(2)))
    return videos


# --- the DataModule -----------------------------------------------------------------------


class EpicKitchensDataModule(VideoDataModule):
    """EPIC-KITCHENS-100 action recognition (verb and noun heads) from frames or videos.

    Args:
        root: folder holding ``<participant_id>/rgb_frames/`` or ``<participant_id>/videos/``.
        annotations_dir: folder of the annotation CSVs; defaults to ``<root>/annotations``.
        layout: ``"frames"`` (extracted JPEGs) or ``"video"`` (MP4 files, decoded with PyAV).
        train_file: annotations of the ``train`` split.
        val_file: annotations of the ``val`` split.
        test_file: annotations of the ``test`` split (labelled or timestamps only).
        verb_classes_file: the verb class list.
        noun_classes_file: the noun class list.
        tail_verbs_file: tail verb classes (``tail_verb`` subset); ``None`` leaves the subset out.
        tail_nouns_file: tail noun classes (``tail_noun`` subset); ``None`` leaves it out.
        unseen_val_file: participants of ``val`` absent from training (``unseen`` subset); ``None``
            leaves it out.
        unseen_test_file: the same for ``test``. The list follows the split, not the file: to
            score the validation CSV with test views, set ``test_split: val`` (of the base
            DataModule) rather than pointing ``test_file`` at it.
        video_info_file: fps and duration of every video, needed by the video layout.
        frame_template: file name of frame number ``n`` (1-based) in a frame folder.
        video_extension: extension of the video files.
        video_threads: decoder threads per video (0: FFmpeg chooses; None: 1 with DataLoader
            workers, else 0).
        missing_videos: ``"error"`` (default) stops the parse of a split when frame folders or
            video files of its annotated videos are missing, or (frames layout) when a folder
            short of its video's last annotated frame has a gap in its numbering or ends
            before some of its segments start; ``"drop"`` leaves out those videos' segments
            (only the segments that start past the frames, in the last case). Both write the
            list of them (one row per video, its first annotation row) to a report. Segments
            running past a folder's last frame are read up to it, with a warning.
        missing_report_dir: where the report ``missing_epic100_<split>.tsv`` goes; default the
            trainer's log directory, or the working directory outside a trainer.
        **kwargs: the shared options of :class:`~lightning_gsf.data.base.VideoDataModule`.
    """

    dataset_name = "epic100"

    def __init__(
        self,
        root: Path,
        annotations_dir: Path | None = None,
        layout: Literal["frames", "video"] = "frames",
        train_file: str = "EPIC_100_train.csv",
        val_file: str = "EPIC_100_validation.csv",
        test_file: str = "EPIC_100_test_timestamps.csv",
        verb_classes_file: str = "EPIC_100_verb_classes.csv",
        noun_classes_file: str = "EPIC_100_noun_classes.csv",
        tail_verbs_file: str | None = "EPIC_100_tail_verbs.csv",
        tail_nouns_file: str | None = "EPIC_100_tail_nouns.csv",
        unseen_val_file: str | None = "EPIC_100_unseen_participant_ids_validation.csv",
        unseen_test_file: str | None = "EPIC_100_unseen_participant_ids_test.csv",
        video_info_file: str = "EPIC_100_video_info.csv",
        frame_template: str = "frame_{:010d}.jpg",
        video_extension: str = ".MP4",
        video_threads: int | None = None,
        missing_videos: MissingPolicy = "error",
        missing_report_dir: str | Path | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.missing_videos = checked_missing_policy(missing_videos)
        self.missing_report_dir = Path(missing_report_dir) if missing_report_dir is not None else None
        self.media_layout = MediaLayout(layout, frame_template, first_index=1,
                                        video_threads=decoder_threads(video_threads, self.num_workers))
        self.root = Path(root)
        self.annotations_dir = Path(annotations_dir) if annotations_dir is not None else self.root / "annotations"
        self.split_files = {"train": train_file, "val": val_file, "test": test_file}
        self.verb_classes_file = verb_classes_file
        self.noun_classes_file = noun_classes_file
        self.tail_files = {"tail_verb": tail_verbs_file, "tail_noun": tail_nouns_file}
        self.unseen_files = {"val": unseen_val_file, "test": unseen_test_file}
        self.video_info_file = video_info_file
        self.video_extension = video_extension

    def annotation_path(self, name: str) -> Path:
        return self.annotations_dir / name

    @cached_property
    def verb_classes(self) -> list[EpicClass]:
        return read_classes(self.annotation_path(self.verb_classes_file))

    @cached_property
    def noun_classes(self) -> list[EpicClass]:
        return read_classes(self.annotation_path(self.noun_classes_file))

    @property
    def num_classes(self) -> dict[str, int]:
        return {"verb": len(self.verb_classes), "noun": len(self.noun_classes)}

    @cached_property
    def video_info(self) -> dict[str, EpicVideoInfo]:
        return read_video_info(self.annotation_path(self.video_info_file))

    def build_reader(self) -> ClipReader:
        return self.media_layout.reader()

    def source(self, action: EpicAction) -> Path:
        """The frame folder or video file of an action, in the configured layout."""
        participant = self.root / action.participant_id
        if self.media_layout.kind == "frames":
            return participant / "rgb_frames" / action.video_id
        return participant / "videos" / f"{action.video_id}{self.video_extension}"

    def parse_split(self, split: str) -> list[ClipSample]:
        path = self.annotation_path(self.split_files[split])
        actions = read_actions(path)
        tail = {
            name: self._tail_classes(name.removeprefix("tail_"), self.annotation_path(file))
            for name, file in self.tail_files.items()
            if file is not None
        }
        unseen_file = self.unseen_files.get(split)
        unseen = read_participant_ids(self.annotation_path(unseen_file)) if unseen_file else None
        samples = [self._sample(action, path, tail, unseen) for action in actions]
        return self._with_media(samples, actions, path, split)

    def _tail_classes(self, head: str, path: Path) -> frozenset[int]:
        """The tail classes of ``head`` in ``path``, checked to be among the head's classes."""
        classes = read_tail_classes(path, head)  # type: ignore[arg-type]
        count = len(self.verb_classes if head == "verb" else self.noun_classes)
        outside = sorted(c for c in classes if not 0 <= c < count)
        if outside:
            raise AnnotationError(f"{path}: {head} classes {outside[:5]} are not among the {count} {head} classes; "
                                  f"expected ids 0..{count - 1}")
        return classes

    def _with_media(self, samples: Sequence[ClipSample], actions: Sequence[EpicAction], path: Path,
                    split: str) -> list[ClipSample]:
        """``samples`` (of ``actions``, in order) checked against their media once per video.

        A missing frame folder or video file goes to ``missing_videos`` (:func:`report_missing_media`,
        one report row per video). In the frames layout, the frame file of each video's last
        annotated frame is looked up; only where it is missing is the folder listed
        (:meth:`MediaLayout.count_frames`): segments that run past the extracted frames are read
        up to the last one (one warning); a folder with a gap in its numbering is reported like
        a missing one, and so are segments that start past its last frame (the video's row names
        them; ``"drop"`` leaves out those segments only).
        """
        segments: dict[str, list[tuple[EpicAction, ClipSample]]] = {}
        for action, sample in zip(actions, samples):
            segments.setdefault(action.video_id, []).append((action, sample))
        absent: list[tuple[SampleCandidate, str]] = []
        extracted: dict[str, int] = {}  # frame counts of the folders short of their last annotated frame
        past_the_frames: set[str] = set()  # segments starting after their folder's last frame
        for video_id, video_segments in segments.items():
            first = video_segments[0][0]
            video = SampleCandidate(id=video_id, source=self.source(first), where=f"{path}, line {first.line}")
            problem, frames = self._media_problem(video.source, video_segments)
            if problem is not None:
                absent.append((video, problem))
            elif frames is not None:
                extracted[video_id] = frames
                past = [(action, sample) for action, sample in video_segments if sample.start >= frames]
                if past:
                    action, sample = past[0]
                    absent.append((video, f"its {frames} extracted frames end before {len(past)} of its segments "
                                          f"start (line {action.line}: frames {sample.start + 1}..{sample.stop})"))
                    past_the_frames.update(sample.id for _, sample in past)
        report_missing_media(absent, len(segments), missing=self.missing_videos,
                             report_path=missing_report_path(self, split))
        dropped = {video.id for video, _ in absent if video.id not in extracted}
        beyond: list[tuple[str, Path, int, int]] = []
        kept = []
        for action, sample in zip(actions, samples):
            if action.video_id in dropped or sample.id in past_the_frames:
                continue
            frames = extracted.get(action.video_id)
            if frames is not None and sample.stop > frames:
                beyond.append((f"{path}, line {action.line}", sample.source, sample.stop, frames))
                sample = replace(sample, stop=frames)
            kept.append(sample)
        warn_ranges_past_frames(beyond)
        return kept

    def _media_problem(self, source: Path, segments: Sequence[tuple[EpicAction, ClipSample]]
                       ) -> tuple[str | None, int | None]:
        """``(problem, frames)`` of one video's media for its ``segments``: what makes it
        missing or unreadable (None if nothing), and its frame count where its frame folder
        ends before its last annotated frame (None where it does not, or is not counted)."""
        if (absence := self.media_layout.absence(source)) is not None:
            return absence, None
        last = max(sample.stop for _, sample in segments)
        if self.media_layout.kind != "frames" or self.media_layout.has_frame(source, last - 1):
            return None, None
        try:
            return None, self.media_layout.count_frames(source)
        except SampleReadError as error:
            return f"unreadable: {error}", None

    def _sample(
        self,
        action: EpicAction,
        path: Path,
        tail: dict[str, frozenset[int]],
        unseen: frozenset[str] | None,
    ) -> ClipSample:
        where = f"{path}, line {action.line} (narration_id {action.narration_id})"
        labels = None
        subsets: dict[str, bool] = {}
        if action.labelled:
            labels = {"verb": action.verb_class, "noun": action.noun_class}
            for head, classes, file in (
                ("verb", self.verb_classes, self.verb_classes_file),
                ("noun", self.noun_classes, self.noun_classes_file),
            ):
                if not 0 <= labels[head] < len(classes):
                    raise AnnotationError(
                        f"{where}: {head}_class {labels[head]} is outside the {len(classes)} classes of {file}; "
                        f"expected 0..{len(classes) - 1}"
                    )
            # (the secondary nouns are no label, but a class no file has is a corrupt row all the same)
            nouns = len(self.noun_classes)
            outside = [c for c in action.all_noun_classes if not 0 <= c < nouns]
            if outside:
                raise AnnotationError(
                    f"{where}: all_noun_classes {list(action.all_noun_classes)} holds {outside}, outside the "
                    f"{nouns} classes of {self.noun_classes_file}; expected 0..{nouns - 1}"
                )
            subsets.update({name: labels[name.removeprefix("tail_")] in classes for name, classes in tail.items()})
        if unseen is not None:
            subsets["unseen"] = action.participant_id in unseen
        start, stop, fps = self._frame_range(action, where)
        return ClipSample(
            id=action.narration_id,
            source=self.source(action),
            start=start,
            stop=stop,
            labels=labels,
            subsets=subsets,
            fps=fps,
            metadata={"participant_id": action.participant_id, "video_id": action.video_id},
            where=f"{path}, line {action.line}",
        )

    def _frame_range(self, action: EpicAction, where: str) -> tuple[int, int, float | None]:
        """``(start, stop, fps)``: the segment as 0-based, half-open indices of the layout's frames."""
        if self.media_layout.kind == "frames":
            return action.start_frame - 1, action.stop_frame, None
        info = self.video_info.get(action.video_id)
        if info is None:
            raise AnnotationError(
                f"{where}: video {action.video_id} is not in {self.video_info_file}; "
                "expected its fps and duration there (the video layout needs them)"
            )
        if info.num_frames < 1:
            raise AnnotationError(
                f"{where}: video {action.video_id} has no frame by {self.video_info_file} ({info.duration:.2f} s at "
                f"{info.fps:g} fps); expected its duration and rate there"
            )
        if action.stop_timestamp > info.duration + _END_TOLERANCE_SECONDS:
            raise AnnotationError(
                f"{where}: the segment ends at {action.stop_timestamp:.2f} s, past the end of video "
                f"{action.video_id} ({info.duration:.2f} s, {info.num_frames} frames at {info.fps:g} fps)"
            )
        start = min(round(action.start_timestamp * info.fps), info.num_frames - 1)
        stop = min(max(round(action.stop_timestamp * info.fps), start + 1), info.num_frames)
        return start, stop, info.fps
