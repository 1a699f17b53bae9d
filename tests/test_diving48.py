"""Diving48: the vocabulary and V2 split parsers on the real files, bad entries, DataModule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_gsf.data import diving48
from lightning_gsf.data.errors import AnnotationError


@pytest.fixture(scope="module")
def diving_dir(shared_data: Path) -> Path:
    return shared_data / "diving48"


def test_vocabulary_has_48_classes(diving_dir: Path) -> None:
    names = diving48.read_vocabulary(diving_dir / "Diving48_vocab.json")
    assert len(names) == diving48.DIVING48_NUM_CLASSES
    assert names[0] == "Back 15som 05Twis FREE"


@pytest.mark.parametrize(
    ("file_name", "count", "labels_used"),
    [("Diving48_V2_train.excerpt.json", 188, 47), ("Diving48_V2_test.excerpt.json", 94, 47)],
)
def test_v2_excerpts_parse(diving_dir: Path, file_name: str, count: int, labels_used: int) -> None:
    entries = diving48.read_split(diving_dir / file_name)
    assert len(entries) == count
    assert len({entry.label for entry in entries}) == labels_used
    assert 30 not in {entry.label for entry in entries}  # label 30 is used by no V2 video
    assert all(entry.start == 0 and entry.stop >= 24 for entry in entries)


def test_first_train_entry(diving_dir: Path) -> None:
    entry = diving48.read_split(diving_dir / "Diving48_V2_train.excerpt.json")[0]
    assert entry == diving48.DivingEntry(vid_name="-mmq0PT-u8k_00155", label=0, start=0, stop=48)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"vid_name": "a", "label": 48, "start_frame": 0, "end_frame": 30}, r"entry 1 \(a\): label 48 is outside"),
        ({"vid_name": "a", "label": 3, "start_frame": 30, "end_frame": 30}, r"entry 1 \(a\): expected 0 <= start_frame"),
        ({"vid_name": "a", "label": "3", "start_frame": 0, "end_frame": 30}, r"entry 1 \(a\): expected an integer 'label'"),
        ({"label": 3, "start_frame": 0, "end_frame": 30}, r"entry 1: expected an object with a 'vid_name'"),
    ],
)
def test_bad_entries_name_file_and_entry(tmp_path: Path, entry: dict, message: str) -> None:
    path = tmp_path / "Diving48_V2_train.json"
    good = {"vid_name": "ok", "label": 0, "start_frame": 0, "end_frame": 30}
    path.write_text(json.dumps([good, entry]))
    with pytest.raises(AnnotationError, match=message) as error:
        diving48.read_split(path)
    assert str(path) in str(error.value)
