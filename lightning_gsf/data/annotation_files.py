"""Readers of the plain annotation formats that several datasets share.

Each dataset module parses its own rows and entries; what lives here is only the outer layer
(a JSON document of a known top-level type, a file of one class name per line), so that every
dataset reports a malformed file with the same :class:`AnnotationError` wording.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_gsf.data.errors import AnnotationError

__all__ = ["CsvRow", "check_class_count", "parse_integer", "parse_number", "read_class_name_lines", "read_headed_csv",
           "read_json", "read_text", "text_stream"]


def read_text(path: Path) -> str:
    """The text of an annotation file, UTF-8 with or without a byte-order mark (which
    spreadsheet exports and some editors write; it must not become part of the first field);
    a file in another encoding is an :class:`AnnotationError` naming the file and the line."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file {path} does not exist (data.init_args.annotations_dir names the "
                                "folder of the annotation files)") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise AnnotationError(
            f"{path}, line {line}: not UTF-8 text (byte {data[error.start]:#04x}); save the file as UTF-8"
        ) from None


_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_integer(text: str) -> int:
    """``text`` (surrounding blanks aside) as a decimal integer in ASCII digits, else ``ValueError``:
    Python's ``int`` also reads ``1_13`` as 113 and other scripts' digits, which no annotation
    file means."""
    if not _INTEGER.fullmatch(text.strip()):
        raise ValueError(f"{text!r} is not a decimal integer")
    return int(text)


def parse_number(text: str) -> float:
    """``text`` (surrounding blanks aside) as a decimal number in ASCII digits (``25``, ``59.94``,
    ``1e3``), else ``ValueError``: not ``1_0``, other scripts' digits, ``nan`` or ``inf``,
    which Python's ``float`` reads."""
    if not _NUMBER.fullmatch(text.strip()):
        raise ValueError(f"{text!r} is not a decimal number")
    return float(text)


def text_stream(path: Path) -> io.StringIO:
    """:func:`read_text` as a file for the ``csv`` module (line endings left to it)."""
    return io.StringIO(read_text(path), newline="")


@dataclass(frozen=True)
class CsvRow:
    """One row of a headed CSV file: ``values`` as :class:`csv.DictReader` gives them (fields
    past the header's under the key None, missing ones None), and the lines it spans."""

    first_line: int
    last_line: int
    values: dict[str | None, Any]

    @property
    def lines(self) -> str:
        """``line 5``; ``lines 5-9`` for a row whose quoted field runs over several lines (in
        the official formats, which quote no line break, an unbalanced ``"``)."""
        if self.last_line == self.first_line:
            return f"line {self.first_line}"
        return f"lines {self.first_line}-{self.last_line}"


class _CountedLines:
    """The lines of a text stream, counted as the ``csv`` module reads them."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream
        self.count = 0

    def __iter__(self) -> _CountedLines:
        return self

    def __next__(self) -> str:
        line = next(self.stream)
        self.count += 1
        return line


def read_headed_csv(path: Path) -> tuple[list[str], Iterator[CsvRow]]:
    """The header of a CSV annotation file (:func:`text_stream`) and an iterator over its
    rows, blank lines skipped, each with the line it starts on: an error in a row that runs
    over several lines then names the line where it went wrong, not the line where the
    ``csv`` module stopped. A row the ``csv`` module cannot read (a stray quote that swallows
    the rest of the file past its field size limit) is an :class:`AnnotationError` naming
    that line, and so is a header that names a column twice."""
    lines = _CountedLines(text_stream(path))
    reader = csv.reader(lines)

    def next_row() -> tuple[int, list[str]] | None:
        while True:
            first_line = lines.count + 1
            try:
                values = next(reader)
            except StopIteration:
                return None
            except csv.Error as error:
                raise AnnotationError(f"{path}, line {first_line}: not a CSV row ({error}); an unbalanced '\"' "
                                      "on this line?") from None
            if values:
                return first_line, values

    first = next_row()
    header = first[1] if first else []
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:  # (a row would keep only the later column's value)
        raise AnnotationError(f"{path}, line {first[0]}: the header names column(s) {', '.join(map(repr, repeated))} "
                              "more than once")

    def rows() -> Iterator[CsvRow]:
        while (row := next_row()) is not None:
            first_line, values = row
            fields: dict[str | None, Any] = dict(zip(header, values))
            if len(values) > len(header):
                fields[None] = values[len(header):]
            for column in header[len(values):]:
                fields[column] = None
            yield CsvRow(first_line, lines.count, fields)

    return header, rows()


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
