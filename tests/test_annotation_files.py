"""Reading annotation files (lightning_gsf/data/annotation_files.py): numbers, headed CSV rows
and their lines, JSON documents, class-name lists, and errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_gsf.data.annotation_files import (
    parse_integer,
    parse_number,
    read_class_name_lines,
    read_headed_csv,
    read_json,
    read_text,
)
from lightning_gsf.data.errors import AnnotationError


def test_a_missing_annotation_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"^annotation file {tmp_path / 'nope.csv'} does not exist "
                                                r"\(data.init_args.annotations_dir names the folder"):
        read_text(tmp_path / "nope.csv")


@pytest.mark.parametrize(("text", "value"), [("-1", -1), ("+3", 3), (" 12 ", 12), ("0", 0)])
def test_integers_take_a_sign_and_surrounding_blanks(text: str, value: int) -> None:
    assert parse_integer(text) == value


@pytest.mark.parametrize(("text", "value"), [("1e3", 1000.0), ("2.5E-1", 0.25), ("25.", 25.0), (".5", 0.5),
                                             (" 59.94 ", 59.94), ("-0.5", -0.5)])
def test_numbers_in_every_decimal_spelling(text: str, value: float) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["1_0", "nan", "inf", "1e", "", "٣"])
def test_not_numbers(text: str) -> None:
    with pytest.raises(ValueError, match="is not a decimal number"):
        parse_number(text)


def test_blank_lines_are_skipped_and_rows_keep_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n\n1,2\n\n\n3,4\n")
    header, rows = read_headed_csv(path)
    assert header == ["a", "b"]
    assert [(row.lines, row.values) for row in rows] == [("line 3", {"a": "1", "b": "2"}),
                                                         ("line 6", {"a": "3", "b": "4"})]


def test_a_csv_file_with_carriage_return_line_endings_reads(tmp_path: Path) -> None:
    """Old Mac line endings (a lone ``\\r``) end rows as ``\\n`` does: the csv module sees them."""
    path = tmp_path / "rows.csv"
    path.write_bytes(b"a,b\r1,2\r3,4\r")
    header, rows = read_headed_csv(path)
    assert header == ["a", "b"]
    assert [(row.first_line, row.values) for row in rows] == [(2, {"a": "1", "b": "2"}), (3, {"a": "3", "b": "4"})]


def test_fields_past_the_header_are_kept_under_none(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n1,2,3,4\n5\n")
    _, rows = read_headed_csv(path)
    assert [row.values for row in rows] == [{"a": "1", "b": "2", None: ["3", "4"]}, {"a": "5", "b": None}]


def test_a_json_document_of_another_top_level_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text('{"Pushing something": "0"}')
    with pytest.raises(AnnotationError, match=rf"^{path}: expected a JSON list at the top level, got dict$"):
        read_json(path, list)


def test_class_name_lines_skip_blank_lines_and_surrounding_spaces(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("abseiling\n\n  air drumming \n\n")
    assert read_class_name_lines(path) == ["abseiling", "air drumming"]


@pytest.mark.parametrize("text", ["", "\n  \n\n"])
def test_a_class_list_without_names_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "classes.txt"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=rf"^{path}: expected one class name per line, found none$"):
        read_class_name_lines(path)


def test_a_json_file_that_does_not_parse_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text('[{"id": "1"}')
    with pytest.raises(AnnotationError, match=rf"^{path}: not valid JSON \("):
        read_json(path, list)


def test_a_row_over_two_lines_names_both(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text('a,b\n1,"x\ny"\n3,4\n')
    _, rows = read_headed_csv(path)
    assert [row.lines for row in rows] == ["lines 2-3", "line 4"]


def test_an_empty_csv_file_has_no_header_and_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("\n\n")
    header, rows = read_headed_csv(path)
    assert header == [] and list(rows) == []
