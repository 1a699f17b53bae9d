"""Readers of the plain annotation formats that several datasets share.

Each dataset module parses its own rows and entries; what lives here is only the outer layer
(a JSON document of a known top-level type, a file of one class name per line), so that every
dataset reports a malformed file with the same :class:`AnnotationError` wording.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from lightning_gsf.data.errors import AnnotationError

__all__ = ["check_class_count", "read_class_name_lines", "read_json", "read_text", "text_stream"]


def read_text(path: Path) -> str:
    """The text of an annotation file, UTF-8 with or without a byte-order mark (which
    spreadsheet exports and some editors write; it must not become part of the first field);
    a file in another encoding is an :class:`AnnotationError` naming the file and the line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise AnnotationError(
            f"{path}, line {line}: not UTF-8 text (byte {data[error.start]:#04x}); save the file as UTF-8"
        ) from None


def text_stream(path: Path) -> io.StringIO:
    """:func:`read_text` as a file for the ``csv`` module (line endings left to it)."""
    return io.StringIO(read_text(path), newline="")


def check_class_count(count: int, expected: int, path: Path, dataset: str) -> None:
    """A class list must hold the dataset's classes, no more and no fewer: the model's head has
    that many outputs, and a name added or missing would shift every later index."""
    if count != expected:
        raise AnnotationError(f"{path}: {count} classes, where {dataset} has {expected}; expected its class list")


def read_json(path: Path, expected: type) -> Any:
    """The JSON document in ``path``, checked to be an ``expected`` (``list`` or ``dict``) at the top."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, expected):
        raise AnnotationError(
            f"{path}: expected a JSON {expected.__name__} at the top level, got {type(data).__name__}"
        )
    return data


def read_class_name_lines(path: Path) -> list[str]:
    """One class name per line, in file order; surrounding spaces and blank lines are ignored."""
    names = [line.strip() for line in read_text(path).splitlines()]
    names = [name for name in names if name]
    if not names:
        raise AnnotationError(f"{path}: expected one class name per line, found none")
    return names
