"""Finding each annotated video on disk: its source, its frame count, and what is missing.

The datasets served here (Something-Something v1/v2, Kinetics-400, Diving48) annotate whole
videos, so a sample's frame range is ``[0, number of frames)``. Only Diving48's annotations give
that number; for the others it comes from the media: the run of consecutively numbered frame
files in a folder, or the frames of a video file (read from its header, or by demuxing its
packets when the header does not say, as for WebM). Counting a large dataset's videos takes a
while, so the counts can be kept in a cache file (``counted_as,num_frames`` lines, keyed by
the video file or the frame folder's first frame file) and reused.

Missing media are never dropped silently. Every missing (or empty) source is collected and
written, with the annotation row that asked for it, to a report file; then, depending on
``missing="error" | "drop"``, parsing stops with an error giving the count, the first few and
the report's path, or the samples are dropped and the count and the report's path are logged.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import string
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from lightning_gsf.atomic_files import atomic_file
from lightning_gsf.data.base import ClipSample, VideoDataModule
from lightning_gsf.data.errors import AnnotationError, ConfigurationError, MissingMediaError, SampleReadError
from lightning_gsf.data.video import ClipReader, FrameFolderReader, VideoFileReader, count_video_frames

__all__ = [
    "MediaKind",
    "MediaLayout",
    "MissingPolicy",
    "SampleCandidate",
    "WholeVideoDataModule",
    "checked_missing_policy",
    "count_frame_files",
    "locate_samples",
]

logger = logging.getLogger(__name__)

MediaKind = Literal["video", "frames"]
MissingPolicy = Literal["error", "drop"]


def checked_missing_policy(value: str) -> MissingPolicy:
    """``value`` if it is a policy for missing media (``"error"`` or ``"drop"``); a ConfigurationError otherwise."""
    if value not in ("error", "drop"):
        raise ConfigurationError(f"missing_videos must be 'error' or 'drop', got {value!r}")
    return value


# How many missing sources an error message lists before pointing to the report file.
_LISTED_IN_ERROR = 5
_PROGRESS_EVERY = 10_000


@dataclass(frozen=True)
class MediaLayout:
    """How a dataset stores its videos: one video file, or one folder of frame files, per video.

    Attributes:
        kind: ``"video"`` (decoded with PyAV) or ``"frames"`` (a folder of JPEG files).
        frame_template: file name of a frame, formatted with its number (``"{:05d}.jpg"``,
            ``"img_{:05d}.jpg"``, ``"frame{:06d}.jpg"``).
        first_index: the number of the first frame file (1 for the original release's frames).
        video_threads: decoder threads per video (0: FFmpeg chooses).
    """

    kind: MediaKind = "video"
    frame_template: str = "{:05d}.jpg"
    first_index: int = 1
    video_threads: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("video", "frames"):
            raise ConfigurationError(f"layout must be 'video' or 'frames', got {self.kind!r}")
        try:
            self.frame_template.format(self.first_index)
            frame_number_pattern(self.frame_template)  # ("{0:05d}_{0:05d}" formats, but holds two fields)
        except (IndexError, KeyError, ValueError) as error:
            raise ConfigurationError(
                f"frame_template {self.frame_template!r} must format one frame number, e.g. '{{:05d}}.jpg' ({error})"
            ) from error

    def reader(self) -> ClipReader:
        if self.kind == "frames":
            return FrameFolderReader(self.frame_template, self.first_index)
        return VideoFileReader(threads=self.video_threads)

    def absence(self, source: Path) -> str | None:
        """Why ``source`` is not one video on disk, for the missing-media report: ``"no such
        file"`` (or folder), or what stands at its path instead; None where it is one."""
        if self.kind == "frames":
            if source.is_dir():
                return None
            return "a file, not a folder of frames" if source.exists() else "no such folder"
        if source.is_file():
            return None
        return "a folder, not a video file" if source.is_dir() else "no such file"

    def has_frame(self, folder: Path, index: int) -> bool:
        """Whether the frame file of 0-based frame ``index`` is in ``folder`` (frames layout)."""
        return (folder / self.frame_template.format(index + self.first_index)).is_file()

    def counted_as(self, source: Path) -> str:
        """What a frame count of ``source`` depends on, the key of the frame-count cache: the
        video file's path, or the path of the folder's first frame file (its template and first
        index: a folder counted from another first index, or with another template, counts
        again)."""
        return str(source / self.frame_template.format(self.first_index)) if self.kind == "frames" else str(source)

    def count_frames(self, source: Path) -> int:
        if self.kind == "frames":
            return count_frame_files(source, self.frame_template, self.first_index)
        return count_video_frames(source)


def decoder_threads(video_threads: int | None, num_workers: int) -> int:
    """Decoder threads per video: ``video_threads``, or when None one thread per DataLoader
    worker process (the workers already share the cores; FFmpeg's own threads on top would
    oversubscribe them) and FFmpeg's choice (0) when the main process decodes."""
    if video_threads is not None:
        return video_threads
    return 1 if num_workers > 0 else 0


def count_frame_files(folder: Path, template: str, first_index: int = 1) -> int:
    """Number of frame files ``template.format(first_index), ...`` in ``folder``, which must be
    one run of consecutive numbers starting at ``first_index``.

    A gap (a missing frame with later ones present) or frames numbered below ``first_index``
    raise :class:`SampleReadError` naming the folder and the frame, rather than cut the video
    short, and so do files none of which the template names (another dataset's naming) and
    frames in two formats (``00001.jpg`` ... beside ``00006.png`` ...: the video would end at
    the last of the first run); the parse reports it with the other unreadable media. One
    directory listing, no stat per file.
    """
    names = os.listdir(folder)
    numbers = sorted(frame_numbers(names, template))
    if not numbers and (files := sorted(name for name in names if not name.startswith("."))):
        raise SampleReadError(
            f"{folder}: none of its {len(files)} files is named as the frame template {template!r} names frames "
            f"({template.format(first_index)}, ...), e.g. {files[0]!r}: another frame_template?"
        )
    if numbers and (others := _frames_spelled_otherwise(names, template, numbers)):
        raise SampleReadError(
            f"{folder}: {len(others)} of its files are frames named otherwise than the frame template {template!r} "
            f"names them (another format or letter case), e.g. {others[0]!r} beside {template.format(numbers[0])!r}: "
            "one format per folder"
        )
    count = 0
    for number in numbers:
        if number < first_index:
            raise SampleReadError(
                f"{folder}: frame {template.format(number)} is numbered below the first frame index "
                f"{first_index} (frames numbered from {numbers[0]}? set the dataset's first frame index)"
            )
        if number != first_index + count:
            raise SampleReadError(
                f"{folder}: frame {template.format(first_index + count)} is missing, but "
                f"{len(numbers) - count} later frames (from {template.format(number)}) exist"
            )
        count += 1
    return count


def _frames_spelled_otherwise(names: Iterable[str], template: str, numbers: Iterable[int]) -> list[str]:
    """The ``names``, sorted, that ``template`` would name but for their extension or letter case
    (``00006.png``, ``00006.JPG`` for ``{:05d}.jpg``), where ``numbers`` are those it names as
    they are; another padding of the number (``6.jpg``) is not a frame of the template's and is
    not counted here either."""
    def stem(name: str) -> str:
        return os.path.splitext(name)[0].casefold()

    spelled = {template.format(number) for number in numbers}
    template_stem = stem(template)
    return sorted(name for name in names if name not in spelled and frame_numbers([stem(name)], template_stem))


def frame_number_pattern(template: str) -> re.Pattern[str]:
    """A pattern whose one group is the digits of a name that ``template`` (one number field
    between a literal prefix and suffix, such as ``frame_{:010d}.jpg``) could format; a
    ValueError for a template of no or several fields."""
    (prefix, field, _, _), *rest = string.Formatter().parse(template)
    suffix = rest[0][0] if rest else ""
    if field is None or rest[1:] or (rest and rest[0][1] is not None):
        raise ValueError(f"frame template {template!r} must hold one number field")
    return re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix))


def frame_numbers(names: Iterable[str], template: str) -> list[int]:
    """The frame numbers of the ``names`` that ``template`` formats (see
    :func:`frame_number_pattern`); other names are ignored."""
    pattern = frame_number_pattern(template)
    numbers = []
    for name in names:
        match = pattern.fullmatch(name)
        if match and template.format(int(match.group(1))) == name:  # the template's own spelling
            numbers.append(int(match.group(1)))
    return numbers


@dataclass(frozen=True)
class SampleCandidate:
    """An annotated video before it is found on disk.

    Attributes:
        id: the sample id (a video id, a clip name).
        source: where its frame folder or video file should be.
        where: the annotation row that names it (``"<file>, line 12"``), for messages.
        labels: ``{head: class}`` or None (unlabelled split).
        start: first frame of the annotated range (0-based).
        stop: one past its last frame when the annotation says, else None: the whole video,
            whose frames are counted.
        metadata: passed on to the ClipSample.
    """

    id: str
    source: Path
    where: str
    labels: Mapping[str, int] | None = None
    start: int = 0
    stop: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


#: The frame-count cache's header: counts keyed by what they were counted from
#: (:meth:`MediaLayout.counted_as`), so that another root, layout, frame template or first frame
#: index counts again.
FRAME_COUNT_CACHE_HEADER = ("counted_as", "num_frames")


def read_frame_count_cache(path: Path) -> dict[str, int]:
    """``{what was counted: frames}`` from a cache written by :func:`write_frame_count_cache`;
    empty, with a warning, for a cache of another format (it is then rewritten)."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != FRAME_COUNT_CACHE_HEADER:
            logger.warning("%s: header %s, not %s (a cache keyed by sample id, of an earlier version?): "
                           "counting the frames again", path, reader.fieldnames, ",".join(FRAME_COUNT_CACHE_HEADER))
            return {}
        counts = {}
        for row in reader:
            try:
                counts[row["counted_as"]] = int(row["num_frames"])
            except (TypeError, ValueError) as error:
                raise ValueError(f"{path}, line {reader.line_num}: expected '<path>,<frames>', got {row}; "
                                 f"delete the file to count the frames again") from error
            if counts[row["counted_as"]] < 0:
                raise ValueError(f"{path}, line {reader.line_num}: a negative frame count, {row['num_frames']}; "
                                 f"delete the file to count the frames again")
        return counts


def _write_rows_atomically(path: Path, rows: Iterable[Sequence[str | int]], delimiter: str) -> None:
    """Write a CSV file through a temporary file and a rename, so that processes parsing the same
    split at once (one per DDP rank) never see, or leave, a half-written file."""
    with atomic_file(path, "w", newline="") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)


def write_frame_count_cache(path: Path, counts: Mapping[str, int]) -> None:
    _write_rows_atomically(path, [FRAME_COUNT_CACHE_HEADER, *sorted(counts.items())], delimiter=",")


def _write_missing_report(path: Path, missing: Sequence[tuple[SampleCandidate, str]]) -> None:
    header = ("id", "source", "problem", "annotation")
    rows = [(candidate.id, str(candidate.source), problem, candidate.where) for candidate, problem in missing]
    _write_rows_atomically(path, [header, *rows], delimiter="\t")


def _check_unique_ids(candidates: Sequence[SampleCandidate]) -> None:
    """A sample id twice in a split (a repeated annotation row) is an error naming both rows."""
    first_row: dict[str, str] = {}
    for candidate in candidates:
        if candidate.id in first_row:
            raise AnnotationError(f"{candidate.where}: sample id {candidate.id!r} repeats {first_row[candidate.id]}")
        first_row[candidate.id] = candidate.where


def locate_samples(
    candidates: Sequence[SampleCandidate],
    layout: MediaLayout,
    *,
    missing: MissingPolicy,
    report_path: Path,
    frame_count_cache: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[ClipSample]:
    """Turn candidates into samples (by default spanning their whole video), handling missing media.

    Args:
        candidates: the split's annotated videos, in annotation order.
        layout: how the media are stored.
        missing: ``"error"`` stops on the first parse that finds missing or empty media;
            ``"drop"`` leaves those samples out. Either way the report is written.
        report_path: the file listing the missing media (tab-separated: id, source, problem,
            annotation row); written only when something is missing.
        frame_count_cache: a CSV of known frame counts; read if it exists, and (re)written
            when new counts were made.
        progress: called with ``(done, total)`` while counting, for long parses.
    """
    if missing not in ("error", "drop"):
        raise ValueError(f"missing must be 'error' or 'drop', got {missing!r}")
    _check_unique_ids(candidates)
    cached = read_frame_count_cache(frame_count_cache) if frame_count_cache and frame_count_cache.is_file() else {}
    counted: dict[str, int] = {}
    samples: list[ClipSample] = []
    absent: list[tuple[SampleCandidate, str]] = []
    beyond: list[tuple[str, Path, int, int]] = []
    for position, candidate in enumerate(candidates):
        if progress is not None and position and position % _PROGRESS_EVERY == 0:
            progress(position, len(candidates))
        if (absence := layout.absence(candidate.source)) is not None:
            absent.append((candidate, absence))
            continue
        # The whole video's frames, or the check of an annotated range, in either layout.
        frames = cached.get(layout.counted_as(candidate.source))
        if frames is None:
            try:
                frames = counted[layout.counted_as(candidate.source)] = layout.count_frames(candidate.source)
            except SampleReadError as error:
                absent.append((candidate, f"unreadable: {error}"))
                continue
        stop = frames if candidate.stop is None else min(candidate.stop, frames)
        if stop <= candidate.start:
            absent.append((candidate, f"no frames in [{candidate.start}, {stop})"))
            continue
        if candidate.stop is not None and frames < candidate.stop:  # (read short, not dropped: warned about)
            beyond.append((candidate.where, candidate.source, candidate.stop, frames))
        samples.append(
            ClipSample(
                id=candidate.id,
                source=candidate.source,
                start=candidate.start,
                stop=stop,
                labels=candidate.labels,
                metadata=candidate.metadata,
                where=candidate.where,
            )
        )
    warn_ranges_past_frames(beyond)
    if counted and frame_count_cache is not None:
        write_frame_count_cache(frame_count_cache, {**cached, **counted})
        logger.info("wrote %d frame counts to %s", len(cached) + len(counted), frame_count_cache)
    report_missing_media(absent, len(candidates), missing=missing, report_path=report_path)
    return samples


def warn_ranges_past_frames(beyond: Sequence[tuple[str, Path, int, int]]) -> None:
    """One warning for the annotated ranges ``(row, source, stop, frames)`` that run past their
    video's ``frames`` extracted frames; they are read up to the last one (one frame short is
    common with ffmpeg's extraction)."""
    if not beyond:
        return
    where, source, stop, frames = beyond[0]
    logger.warning(
        "%d annotated frame ranges run past their extracted frames, by up to %d frames (e.g. %s: frames up to "
        "%d annotated, %d in %s); they are read up to their last extracted frame",
        len(beyond), max(stop - frames for _, _, stop, frames in beyond), where, stop, frames, source,
    )


def missing_report_path(datamodule: VideoDataModule, split: str) -> Path:
    """``missing_<dataset>_<split>.tsv`` in ``datamodule.missing_report_dir``, by default the
    trainer's log directory, or the working directory outside a trainer."""
    directory = datamodule.missing_report_dir
    if directory is None:
        trainer = datamodule.trainer
        log_dir = trainer.log_dir if trainer is not None else None
        directory = Path(log_dir) if log_dir else Path.cwd()
    return directory / f"missing_{datamodule.dataset_name}_{split}.tsv"


def report_missing_media(
    absent: Sequence[tuple[SampleCandidate, str]], total: int, *, missing: MissingPolicy, report_path: Path
) -> None:
    """With ``absent`` (annotated videos and what is wrong with each) of ``total``: write the
    report, then raise :class:`MissingMediaError` (``missing="error"``) or warn that they are
    dropped (``"drop"``). Nothing happens when nothing is absent."""
    if not absent:
        return
    _write_missing_report(report_path, absent)
    listed = "; ".join(f"{c.where}: {c.source} ({problem})" for c, problem in absent[:_LISTED_IN_ERROR])
    summary = f"{len(absent)} of {total} annotated videos are missing or unreadable"
    if missing == "error":
        raise MissingMediaError(
            f"{summary}, e.g. {listed}. Full list: {report_path}. Fix the dataset root or layout, or set "
            f"missing_videos='drop' to train without them",
            report_path=report_path,
            count=len(absent),
        )
    logger.warning("%s; dropped them (missing_videos='drop'). Full list: %s", summary, report_path)


class WholeVideoDataModule(VideoDataModule):
    """A DataModule whose samples are whole videos stored under one root (see the module doc).

    Subclasses turn a split's annotation file into :class:`SampleCandidate` records
    (:meth:`candidates`); this class finds them on disk, counts their frames and applies the
    missing-media policy.

    Args:
        root: the folder holding the videos (or the frame folders).
        annotations_dir: the folder holding the annotation files.
        layout: ``"video"`` (video files) or ``"frames"`` (a folder of JPEG frames per video).
        frame_template: file name of a frame, formatted with its number.
        first_frame_index: the number in the name of a video's first frame file.
        video_threads: decoder threads per video file (0: FFmpeg chooses; None: 1 with
            DataLoader workers, else 0).
        missing_videos: ``"error"`` (default) stops when annotated videos are missing or
            unreadable; ``"drop"`` leaves them out. Both write the list of them to a report.
        missing_report_dir: where the report ``missing_<dataset>_<split>.tsv`` goes; default
            the trainer's log directory, or the working directory outside a trainer.
        frame_count_cache: a CSV file (``counted_as,num_frames``: a video file's path, or a
            frame folder's first frame file) of frame counts, read when it exists and updated
            after counting, so that a large dataset is counted once; another root, layout,
            template or first frame index counts again. (A video re-encoded in place keeps its
            path: delete the cache then.)
        **kwargs: the shared DataModule settings (:class:`VideoDataModule`).
    """

    #: Short name used in report file names.
    dataset_name: ClassVar[str] = "dataset"

    def __init__(
        self,
        root: str | Path,
        annotations_dir: str | Path,
        *,
        layout: MediaKind = "video",
        frame_template: str = "{:05d}.jpg",
        first_frame_index: int = 1,
        video_threads: int | None = None,
        missing_videos: MissingPolicy = "error",
        missing_report_dir: str | Path | None = None,
        frame_count_cache: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.annotations_dir = Path(annotations_dir)
        self.media_layout = MediaLayout(layout, frame_template, first_frame_index,
                                        decoder_threads(video_threads, self.num_workers))
        self.missing_videos = checked_missing_policy(missing_videos)
        self.missing_report_dir = Path(missing_report_dir) if missing_report_dir is not None else None
        self.frame_count_cache = Path(frame_count_cache) if frame_count_cache is not None else None

    @abstractmethod
    def candidates(self, split: str) -> list[SampleCandidate]:
        """The annotated videos of ``split``, in annotation order."""

    def source(self, name: str | Path) -> Path:
        """Where the video (file or frame folder) called ``name`` lives under ``root``."""
        return self.root / name

    def source_by_id(self, video_id: str, video_suffix: str) -> Path:
        """``<root>/<video_id><video_suffix>`` in the video layout, the frame folder ``<root>/<video_id>`` otherwise."""
        return self.source(video_id + video_suffix if self.media_layout.kind == "video" else video_id)

    def parse_split(self, split: str) -> list[ClipSample]:
        return locate_samples(
            self.candidates(split),
            self.media_layout,
            missing=self.missing_videos,
            report_path=self.missing_report_path(split),
            frame_count_cache=self.frame_count_cache,
            progress=lambda done, total: logger.info("%s %s: %d / %d videos found", self.dataset_name, split, done, total),
        )

    def build_reader(self) -> ClipReader:
        return self.media_layout.reader()

    def missing_report_path(self, split: str) -> Path:
        return missing_report_path(self, split)
