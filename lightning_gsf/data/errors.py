"""The errors of the data pipeline.

They are kept apart because they call for different responses: a bad annotation is a bug in
the dataset description and must stop the run, while an unreadable sample (a corrupt video, a
missing frame) may be skipped when the user opts in with ``skip_unreadable=True``. Annotated
videos (frame folders or video files) that are missing altogether are found while the
annotations are parsed, before any sample is read; they are a :class:`MissingMediaError`,
handled by ``missing_videos="drop"``. A missing frame inside an EPIC-KITCHENS segment's range
is a :class:`SampleReadError` when its sample is read.
Messages name the file, the row or frame, and what was expected, so the user can fix the data.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["AnnotationError", "ConfigurationError", "MissingMediaError", "ResumeMismatchError", "SampleReadError",
           "original_message"]

# How PyTorch's DataLoader re-raises a worker's error: its message holds the worker's traceback,
# whose last line is "<module>.<Type>: <the original message>".
_WORKER_ERROR = re.compile(r"\ACaught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")
_QUALIFIED_TYPE = re.compile(r"\A[\w.]+: ")


class AnnotationError(ValueError):
    """An annotation file (CSV, JSON, ...) has a row or entry that cannot be parsed.

    The message names the file, the line or entry, and what was expected there.
    """


class SampleReadError(RuntimeError):
    """The frames of one sample cannot be read (missing, corrupt, truncated or too short).

    The message names the file or folder, the frame index when one is at fault, and what was
    expected.
    """


class MissingMediaError(SampleReadError):
    """Annotated videos (files or frame folders) are missing, empty or unreadable on disk.

    Raised once per split while parsing, listing the first few; ``report_path`` is the file
    that lists them all (tab-separated: id, source, problem, annotation row).
    """

    def __init__(self, message: str, *, report_path: Path, count: int) -> None:
        super().__init__(message)
        self.report_path = report_path
        self.count = count


class ConfigurationError(ValueError):
    """A setting that cannot work: an option's value, a checkpoint or weights file it names, a
    batch larger than the split.

    The message names the setting and how to mend it; ``gsf`` prints it as one line.
    """


class ResumeMismatchError(ValueError):
    """A mid-epoch checkpoint's training order cannot go on under this run's data settings.

    The message names the settings (seed, shuffling, dataset size) that differ from the
    checkpoint's; an end-of-epoch checkpoint, or the original settings, resume.
    """


def original_message(error: BaseException) -> str:
    """``error``'s message; for an error re-raised from a ``DataLoader`` worker, the original
    message alone, without the worker's traceback that PyTorch puts before it."""
    message = str(error)
    if not _WORKER_ERROR.match(message):
        return message
    last_line = message.strip().splitlines()[-1]
    return _QUALIFIED_TYPE.sub("", last_line)
