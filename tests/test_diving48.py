"""Diving48: the vocabulary and V2 split parsers on the real files, bad entries, DataModule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_gsf.data import diving48
from lightning_gsf.data.diving48 import Diving48DataModule
from lightning_gsf.data.errors import AnnotationError, SampleReadError
from media_writers import (
    TINY_DATA_SETTINGS,
    check_loaders,
    fit_one_epoch_with_config,
    write_frame_folder,
    write_video,
)


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
        ({"vid_name": "a", "label": True, "start_frame": 0, "end_frame": 30}, r"entry 1 \(a\): expected an integer 'label', got True"),
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


def test_a_vocabulary_listing_a_class_twice_is_refused(tmp_path: Path, diving_dir: Path) -> None:
    vocabulary = json.loads((diving_dir / "Diving48_vocab.json").read_text())
    path = tmp_path / "Diving48_vocab.json"
    path.write_text(json.dumps([*vocabulary, vocabulary[5]]))
    with pytest.raises(AnnotationError, match="Diving48_vocab.json: the vocabulary lists a class twice"):
        diving48.read_vocabulary(path)


# ---------------------------------------------------------------- DataModule on a tiny real-layout dataset


def _build_diving48(tmp_path: Path, diving_dir: Path, layout: str) -> tuple[dict, dict, dict]:
    """Real entries (names, labels) with their frame counts cut to 10..15 to keep the media tiny."""
    train = json.loads((diving_dir / "Diving48_V2_train.excerpt.json").read_text())[::60][:3]
    test = json.loads((diving_dir / "Diving48_V2_test.excerpt.json").read_text())[::40][:3]
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    expected, numbers = {}, {}
    for name, entries in (("train", train), ("test", test)):
        for entry in entries:
            numbers[entry["vid_name"]] = number = len(numbers) + 1
            expected[entry["vid_name"]] = {"class": entry["label"]}
            entry["end_frame"] = 9 + number
            if layout == "video":
                write_video(tmp_path / "rgb" / f"{entry['vid_name']}.mp4", number, entry["end_frame"])
            else:
                write_frame_folder(tmp_path / "rgb" / entry["vid_name"], number, entry["end_frame"], "frame{:06d}.jpg")
        (annotations / f"Diving48_V2_{name}.json").write_text(json.dumps(entries, indent=2))
    arguments = dict(
        root=tmp_path / "rgb",
        annotations_dir=annotations,
        vocab_file=str(diving_dir / "Diving48_vocab.json"),
        layout=layout,
        missing_report_dir=tmp_path / "logs",
        **TINY_DATA_SETTINGS,
    )
    return arguments, expected, numbers


@pytest.mark.parametrize("layout", ["frames", "video"])
def test_datamodule_yields_labelled_batches(tmp_path: Path, diving_dir: Path, layout: str) -> None:
    arguments, expected, numbers = _build_diving48(tmp_path, diving_dir, layout)
    datamodule = Diving48DataModule(**arguments)
    assert datamodule.num_classes == {"class": 48}
    check_loaders(datamodule, expected, numbers)
    # The annotation gives each video's frame range: [start_frame, end_frame).
    assert [(sample.start, sample.stop) for sample in datamodule.samples("train")] == [(0, 10), (0, 11), (0, 12)]
    assert [sample.id for sample in datamodule.samples("val")] == [sample.id for sample in datamodule.samples("test")]


@pytest.mark.parametrize("layout", ["frames", "video"])
def test_an_annotated_range_inside_the_video_is_the_sample(tmp_path: Path, diving_dir: Path, layout: str) -> None:
    """[start_frame, end_frame) of the annotation, not the whole video, is what the clip samples."""
    arguments, _, _ = _build_diving48(tmp_path, diving_dir, layout)
    path = arguments["annotations_dir"] / "Diving48_V2_train.json"
    entries = json.loads(path.read_text())
    entries[0].update(start_frame=3, end_frame=8)  # (of its 10 frames)
    path.write_text(json.dumps(entries))
    samples = Diving48DataModule(**arguments).samples("train")
    assert [(sample.start, sample.stop) for sample in samples] == [(3, 8), (0, 11), (0, 12)]


def test_missing_frame_folder_is_an_error_naming_the_entry(tmp_path: Path, diving_dir: Path) -> None:
    arguments, expected, _ = _build_diving48(tmp_path, diving_dir, "frames")
    first = next(iter(expected))
    for frame in (tmp_path / "rgb" / first).iterdir():
        frame.unlink()
    (tmp_path / "rgb" / first).rmdir()
    with pytest.raises(SampleReadError, match=rf"Diving48_V2_train.json, entry 0 \({first}\): .*no such folder"):
        Diving48DataModule(**arguments).samples("train")


@pytest.mark.slow
def test_config_trains_one_epoch(tmp_path: Path, diving_dir: Path) -> None:
    arguments, _, _ = _build_diving48(tmp_path, diving_dir, "frames")
    fit_one_epoch_with_config("configs/diving48/gsf_resnet50_8f.yaml", arguments, tmp_path / "runs")
    assert list((tmp_path / "runs").rglob("*.ckpt"))


@pytest.mark.parametrize("entry", [["Back", "15som", "05Twis", "FREE", "extra"], ["Back", 15, "05Twis", "FREE"]],
                         ids=["five-parts", "a-number"])
def test_a_vocabulary_entry_of_other_than_four_words_is_refused(tmp_path: Path, diving_dir: Path, entry) -> None:
    path = tmp_path / "Diving48_vocab.json"
    path.write_text(json.dumps([*json.loads((diving_dir / "Diving48_vocab.json").read_text()), entry]))
    with pytest.raises(AnnotationError, match="entry 48: expected"):
        diving48.read_vocabulary(path)


@pytest.mark.parametrize(("entry", "message"), [
    ({"vid_name": "", "label": 3, "start_frame": 0, "end_frame": 30}, r"entry 1: expected an object with a 'vid_name'"),
    ({"vid_name": "a", "label": -1, "start_frame": 0, "end_frame": 30}, r"entry 1 \(a\): label -1 is outside"),
    ({"vid_name": "a", "label": 3, "start_frame": -2, "end_frame": 30}, r"entry 1 \(a\): expected 0 <= start_frame")],
    ids=["empty-name", "negative-label", "negative-start"])
def test_a_split_entry_with_an_empty_name_or_a_negative_number_is_refused(tmp_path: Path, entry: dict,
                                                                          message: str) -> None:
    path = tmp_path / "Diving48_V2_train.json"
    path.write_text(json.dumps([{"vid_name": "ok", "label": 0, "start_frame": 0, "end_frame": 30}, entry]))
    with pytest.raises(AnnotationError, match=message):
        diving48.read_split(path)


def test_a_vocabulary_of_47_classes_is_refused(tmp_path: Path, diving_dir: Path) -> None:
    vocabulary = json.loads((diving_dir / "Diving48_vocab.json").read_text())
    (tmp_path / "Diving48_vocab.json").write_text(json.dumps(vocabulary[:47]))
    with pytest.raises(AnnotationError, match=r"Diving48_vocab.json: 47 classes, where Diving48 has 48"):
        Diving48DataModule(root=tmp_path, annotations_dir=tmp_path).class_names


def test_videos_take_the_video_suffix(tmp_path: Path, diving_dir: Path) -> None:
    datamodule = Diving48DataModule(root=tmp_path / "rgb", annotations_dir=diving_dir, layout="video",
                                    video_suffix=".mkv", train_file="Diving48_V2_train.excerpt.json")
    assert datamodule.candidates("train")[0].source == tmp_path / "rgb" / "-mmq0PT-u8k_00155.mkv"
