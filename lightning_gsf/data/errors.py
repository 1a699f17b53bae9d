"""The two errors of the data pipeline.

They are kept apart because they call for different responses: a bad annotation is a bug in
the dataset description and must stop the run, while an unreadable sample (a corrupt video, a
missing frame) may be skipped when the user opts in with ``skip_unreadable=True``. Messages
name the file, the row or frame, and what was expected, so the user can fix the data.
"""

from __future__ import annotations


class AnnotationError(ValueError):
    """An annotation file (CSV, JSON, ...) has a row or entry that cannot be parsed.

    The message names the file, the line or entry, and what was expected there.
    """


class SampleReadError(RuntimeError):
    """The frames of one sample cannot be read (missing, corrupt, truncated or too short).

    The message names the file or folder, the frame index when one is at fault, and what was
    expected.
    """
