"""Readers of the plain annotation formats that several datasets share.

Each dataset module parses its own rows and entries; what lives here is only the outer layer
(a JSON document of a known top-level type, a file of one class name per line), so that every
dataset reports a malformed file with the same :class:`AnnotationError` wording.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning_gsf.data.errors import AnnotationError

__all__ = ["read_class_name_lines", "read_json"]


def read_json(path: Path, expected: type) -> Any:
    """The JSON document in ``path``, checked to be an ``expected`` (``list`` or ``dict``) at the top."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, expected):
        raise AnnotationError(
            f"{path}: expected a JSON {expected.__name__} at the top level, got {type(data).__name__}"
        )
    return data


def read_class_name_lines(path: Path) -> list[str]:
    """One class name per line, in file order; surrounding spaces and blank lines are ignored."""
    names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    names = [name for name in names if name]
    if not names:
        raise AnnotationError(f"{path}: expected one class name per line, found none")
    return names
