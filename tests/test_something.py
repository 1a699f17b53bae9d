"""Something-Something v1 and v2: parsers on the real annotation files, the flip swap, DataModules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_gsf.data import ssv2
from lightning_gsf.data.errors import AnnotationError
from lightning_gsf.data.something import (
    SOMETHING_SOMETHING_NUM_CLASSES,
    class_name_from_template,
    left_right_flip_pairs,
    mirror_class_name,
    read_class_names,
    read_id_class_csv,
    sorted_class_index,
)


@pytest.fixture(scope="module")
def ssv2_dir(shared_data: Path) -> Path:
    return shared_data / "ssv2"


@pytest.fixture(scope="module")
def ssv2_classes(ssv2_dir: Path) -> dict[str, int]:
    return ssv2.read_label_map(ssv2_dir / "something-something-v2-labels.json")


# ---------------------------------------------------------------- real annotation files


def test_ssv2_label_map_has_174_classes_in_alphabetical_order(ssv2_classes: dict[str, int]) -> None:
    assert len(ssv2_classes) == SOMETHING_SOMETHING_NUM_CLASSES
    assert ssv2_classes["Approaching something with your camera"] == 0
    assert ssv2_classes["Pulling something from left to right"] == 86
    # SSv2's own numbering is the alphabetical one, the rule the original code applies to SSv1.
    assert sorted_class_index(ssv2_classes, "labels.json") == ssv2_classes


def test_ssv1_class_names_sorted_give_the_ssv2_indices(shared_data: Path, ssv2_classes: dict[str, int]) -> None:
    path = shared_data / "ssv1" / "mmaction2_sthv1_label_map.txt"
    names = read_class_names(path)
    assert len(names) == SOMETHING_SOMETHING_NUM_CLASSES
    assert names[0] == "Holding something"  # the file is not in alphabetical order ...
    assert sorted_class_index(names, path) == ssv2_classes  # ... but sorting it gives v2's indices


def test_ssv2_validation_excerpt_parses(ssv2_dir: Path, ssv2_classes: dict[str, int]) -> None:
    rows = ssv2.read_split(ssv2_dir / "something-something-v2-validation.excerpt.json", ssv2_classes)
    assert len(rows) == 200
    # {"id":"74225", "template":"Spinning [something] that quickly stops spinning", ...}
    assert rows[0] == ("74225", ssv2_classes["Spinning something that quickly stops spinning"])
    # {"id":"151151", "template":"Turning the camera left while filming [something]", ...}
    assert rows[4] == ("151151", 166)


def test_ssv2_test_list_has_ids_only(ssv2_dir: Path) -> None:
    rows = ssv2.read_split(ssv2_dir / "something-something-v2-test.excerpt.json", None)
    assert len(rows) == 200
    assert rows[0] == ("1420", None)


def test_ssv2_test_answers_parse_as_id_class_csv(ssv2_dir: Path, ssv2_classes: dict[str, int]) -> None:
    answers = read_id_class_csv(ssv2_dir / "something-something-v2-test-answers.excerpt.csv", ssv2_classes)
    assert len(answers) == 200
    assert answers[0] == ("208583", ssv2_classes["Moving something closer to something"])


# ---------------------------------------------------------------- left/right pairs


def test_flip_pairs_are_the_three_known_pairs(ssv2_classes: dict[str, int]) -> None:
    assert left_right_flip_pairs(ssv2_classes) == {86: 87, 87: 86, 93: 94, 94: 93, 166: 167, 167: 166}


@pytest.mark.parametrize(
    ("name", "mirrored"),
    [
        ("Pushing something from left to right", "Pushing something from right to left"),
        ("Turning the camera right while filming something", "Turning the camera left while filming something"),
        ("Putting something upright on the table", "Putting something upright on the table"),
        ("Holding something", "Holding something"),
    ],
)
def test_mirror_class_name_swaps_whole_words_only(name: str, mirrored: str) -> None:
    assert mirror_class_name(name) == mirrored


def test_class_name_from_template() -> None:
    assert class_name_from_template("Putting [something] onto [something]") == "Putting something onto something"


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("12;Holding something\n13;Flying something\n", r"line 2: unknown class 'Flying something'"),
        ("12;Holding something\n13\n", r"line 2: expected '<video id>;<class name>'"),
        ("12;Holding something;extra\n", r"line 1: expected '<video id>;<class name>'"),
    ],
)
def test_id_class_csv_errors_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "something-something-v1-train.csv"
    path.write_text(content)
    with pytest.raises(AnnotationError, match=message) as error:
        read_id_class_csv(path, {"Holding something": 0})
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"id": "1", "template": "Holding [something]"}, {"id": "2", "template": "Flying [something]"}],
         r"entry 1 \(id 2\): template 'Flying \[something\]' names no class"),
        ([{"label": "x", "template": "Holding [something]"}], r"entry 0: expected an object with an 'id'"),
        ([{"id": "3", "label": "holding a cup"}], r"entry 0 \(id 3\): expected a 'template' string"),
    ],
)
def test_ssv2_split_errors_name_file_and_entry(tmp_path: Path, entries: list, message: str) -> None:
    path = tmp_path / "something-something-v2-train.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(AnnotationError, match=message):
        ssv2.read_split(path, {"Holding something": 0})


def test_ssv2_label_map_rejects_gaps(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"Holding something": "0", "Closing something": "2"}))
    with pytest.raises(AnnotationError, match="indices 0..1"):
        ssv2.read_label_map(path)
