"""Something-Something v1 and v2: parsers on the real annotation files, the flip swap, DataModules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lightning_gsf.data import ssv2
from lightning_gsf.data.errors import AnnotationError, SampleReadError
from lightning_gsf.data.something import (
    SOMETHING_SOMETHING_NUM_CLASSES,
    class_name_from_template,
    left_right_flip_pairs,
    mirror_class_name,
    read_class_names,
    read_id_class_csv,
    sorted_class_index,
)
from lightning_gsf.data.sources import MediaLayout, SampleCandidate, count_frame_files, locate_samples
from lightning_gsf.data.ssv1 import SomethingSomethingV1DataModule
from lightning_gsf.data.ssv2 import SomethingSomethingV2DataModule
from media_writers import (
    TINY_DATA_SETTINGS,
    check_loaders,
    fit_one_epoch_with_config,
    is_flipped,
    write_frame_folder,
    write_video,
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
        ("12; Holding something \n13;Flying something\n", r"line 2: unknown class 'Flying something'"),  # (spaces kept off)
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
        ([{"id": "", "template": "Holding [something]"}], r"entry 0: expected an object with an 'id'"),
        ([{"id": "3", "template": 5}], r"entry 0 \(id 3\): expected a 'template' string, got 5"),
    ],
    ids=["unknown-class", "no-id", "no-template", "empty-id", "template-not-a-string"],
)
def test_ssv2_split_errors_name_file_and_entry(tmp_path: Path, entries: list, message: str) -> None:
    path = tmp_path / "something-something-v2-train.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(AnnotationError, match=message):
        ssv2.read_split(path, {"Holding something": 0})


@pytest.mark.parametrize("index", ["\u00b2", "\u0661"])  # (str.isdigit is True for both; int() fails on the first)
def test_ssv2_label_map_takes_ascii_digits_only(tmp_path: Path, index: str) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"Holding something": "0", "Closing something": index}))
    with pytest.raises(AnnotationError, match=r"class 'Closing something': expected the index as a string of digits"):
        ssv2.read_label_map(path)


@pytest.mark.parametrize("second", ["2", "0"], ids=["gap", "repeated"])
def test_ssv2_label_map_rejects_gaps_and_repeats(tmp_path: Path, second: str) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"Holding something": "0", "Closing something": second}))
    with pytest.raises(AnnotationError, match="indices 0..1, each exactly once"):
        ssv2.read_label_map(path)


def test_ssv2_split_takes_integer_ids_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "something-something-v2-train.json"
    path.write_text(json.dumps([{"id": 151151, "template": "Holding [something]"}]))
    assert ssv2.read_split(path, {"Holding something": 0}) == [("151151", 0)]
    assert ssv2.read_split(path, None) == [("151151", None)]


# ---------------------------------------------------------------- DataModules on tiny real-layout datasets


# Real entries of the validation excerpt: four for training (two of them with a left/right
# mirror class: 151151 -> 166, 183708 -> 94), two for validation; two real test ids.
SSV2_TRAIN_POSITIONS, SSV2_VAL_POSITIONS, SSV2_TEST_IDS = (0, 4, 115, 3), (1, 2), ("1420", "166429")


def _build_ssv2(tmp_path: Path, ssv2_dir: Path, layout: str) -> tuple[dict, dict, dict[str, int]]:
    """Write a tiny SSv2 in its real layout; return its data arguments, labels and video numbers."""
    entries = json.loads((ssv2_dir / "something-something-v2-validation.excerpt.json").read_text())
    classes = ssv2.read_label_map(ssv2_dir / "something-something-v2-labels.json")
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    splits = {
        "train": [entries[i] for i in SSV2_TRAIN_POSITIONS],
        "validation": [entries[i] for i in SSV2_VAL_POSITIONS],
        "test": [{"id": video_id} for video_id in SSV2_TEST_IDS],
    }
    expected: dict[str, dict[str, int] | None] = {}
    numbers: dict[str, int] = {}
    for split, split_entries in splits.items():
        (annotations / f"something-something-v2-{split}.json").write_text(json.dumps(split_entries))
        for entry in split_entries:
            number = len(numbers) + 1
            numbers[entry["id"]] = number
            template = entry.get("template")
            expected[entry["id"]] = None if template is None else {"class": classes[class_name_from_template(template)]}
            if layout == "video":
                write_video(tmp_path / "videos" / f"{entry['id']}.webm", number, 10 + number, codec="libvpx")
            else:
                write_frame_folder(tmp_path / "videos" / entry["id"], number, 10 + number, "{:06d}.jpg")
    arguments = dict(
        root=tmp_path / "videos",
        annotations_dir=annotations,
        labels_file=str(ssv2_dir / "something-something-v2-labels.json"),  # an absolute path is kept as is
        layout=layout,
        missing_report_dir=tmp_path / "logs",
        **TINY_DATA_SETTINGS,
    )
    return arguments, expected, numbers


@pytest.mark.parametrize("layout", ["video", "frames"])
def test_ssv2_datamodule_yields_labelled_batches(tmp_path: Path, ssv2_dir: Path, layout: str) -> None:
    arguments, expected, numbers = _build_ssv2(tmp_path, ssv2_dir, layout)
    datamodule = SomethingSomethingV2DataModule(**arguments)
    assert datamodule.num_classes == {"class": 174}
    check_loaders(datamodule, expected, numbers)
    assert [sample.num_frames for sample in datamodule.samples("train")] == [11, 12, 13, 14]


def test_ssv2_test_answers_label_the_test_split(tmp_path: Path, ssv2_dir: Path) -> None:
    arguments, expected, numbers = _build_ssv2(tmp_path, ssv2_dir, "frames")
    (arguments["annotations_dir"] / "answers.csv").write_text("1420;Holding something\n166429;Closing something\n")
    datamodule = SomethingSomethingV2DataModule(**arguments, test_answers_file="answers.csv")
    expected.update({"1420": {"class": 16}, "166429": {"class": 5}})
    check_loaders(datamodule, expected, numbers)


def test_ssv2_test_answers_missing_a_test_video_name_the_file_and_the_video(tmp_path: Path, ssv2_dir: Path) -> None:
    arguments, _, _ = _build_ssv2(tmp_path, ssv2_dir, "frames")
    (arguments["annotations_dir"] / "answers.csv").write_text("1420;Holding something\n")
    datamodule = SomethingSomethingV2DataModule(**arguments, test_answers_file="answers.csv")
    with pytest.raises(AnnotationError, match=r"answers.csv: no answer for 1 test videos of .*something-something-v2-test"
                                              r".json, e.g. id 166429"):
        datamodule.samples("test")


def _write_ssv1_annotations(annotations: Path, names: list[str], rows: dict[str, list[tuple[str, str | None]]]) -> Path:
    """SSv1's labels file (the real class names) and one ``id;class`` CSV per split (``id``
    alone where the class is None) in ``annotations``."""
    annotations.mkdir()
    (annotations / "something-something-v1-labels.csv").write_text("\n".join(names) + "\n")
    for split, split_rows in rows.items():
        lines = [video_id if name is None else f"{video_id};{name}" for video_id, name in split_rows]
        (annotations / f"something-something-v1-{split}.csv").write_text("\n".join(lines) + "\n")
    return annotations


def test_ssv1_datamodule_yields_labelled_batches(tmp_path: Path, shared_data: Path) -> None:
    """SSv1 in its layout: ``<root>/<id>/00001.jpg`` and ``id;class`` CSVs (ids here are made up,
    as no real v1 list is public; the class names are the real ones)."""
    names = read_class_names(shared_data / "ssv1" / "mmaction2_sthv1_label_map.txt")
    index = sorted_class_index(names, "labels")
    rows = {
        "train": [("1", "Pushing something from left to right"), ("2", "Holding something"), ("3", "Closing something")],
        "validation": [("4", "Pulling something from right to left"), ("5", "Opening something")],
        "test": [("6", None), ("7", None)],
    }
    annotations = _write_ssv1_annotations(tmp_path / "annotations", names, rows)
    expected: dict[str, dict[str, int] | None] = {}
    for split_rows in rows.values():
        for video_id, name in split_rows:
            write_frame_folder(tmp_path / "frames" / video_id, int(video_id), 9, "{:05d}.jpg")
            expected[video_id] = None if name is None else {"class": index[name]}
    datamodule = SomethingSomethingV1DataModule(
        root=tmp_path / "frames", annotations_dir=annotations, missing_report_dir=tmp_path, **TINY_DATA_SETTINGS
    )
    assert expected["1"] == {"class": 93} and expected["4"] == {"class": 87}  # the v2 indices
    check_loaders(datamodule, expected, {video_id: int(video_id) for video_id in expected})
    # Each split from its own file (the default names), not another split's.
    assert {split: [sample.id for sample in datamodule.samples(split)] for split in ("train", "val", "test")} == {
        "train": ["1", "2", "3"], "val": ["4", "5"], "test": ["6", "7"]}


def test_flip_swaps_left_right_labels_exactly_when_the_clip_is_flipped(tmp_path: Path, ssv2_dir: Path) -> None:
    arguments, expected, _ = _build_ssv2(tmp_path, ssv2_dir, "frames")
    datamodule = SomethingSomethingV2DataModule(**arguments)
    dataset = datamodule.dataset("train", training=True)
    mirrored = {166: 167, 94: 93}
    outcomes: set[tuple[bool, bool]] = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            item = dataset[index]
            flipped = is_flipped(item["clip"])
            original = expected[item["id"]]["class"]
            swapped = item["labels"]["class"] != original
            assert swapped == (flipped and original in mirrored)
            if swapped:
                assert item["labels"]["class"] == mirrored[original]
            outcomes.add((original in mirrored, flipped))
    assert outcomes == {(True, True), (True, False), (False, True), (False, False)}


def test_no_swap_when_flip_is_disabled(tmp_path: Path, ssv2_dir: Path) -> None:
    arguments, expected, _ = _build_ssv2(tmp_path, ssv2_dir, "frames")
    datamodule = SomethingSomethingV2DataModule(**{**arguments, "flip": False})
    dataset = datamodule.dataset("train", training=True)
    for index in range(len(dataset)):
        item = dataset[index]
        assert not is_flipped(item["clip"])
        assert item["labels"] == expected[item["id"]]


def test_missing_video_is_an_error_naming_the_annotation(tmp_path: Path, ssv2_dir: Path) -> None:
    arguments, _, _ = _build_ssv2(tmp_path, ssv2_dir, "video")
    (tmp_path / "videos" / "151151.webm").unlink()
    datamodule = SomethingSomethingV2DataModule(**arguments)
    with pytest.raises(SampleReadError, match=r"1 of 4 annotated videos are missing.*something-something-v2-train.json, id 151151"):
        datamodule.samples("train")
    report = (tmp_path / "logs" / "missing_ssv2_train.tsv").read_text().splitlines()
    assert len(report) == 2 and report[1].startswith("151151\t")


@pytest.mark.parametrize(("present", "count"), [(range(1, 8), 7), ([1], 1)])
def test_frame_count_is_the_run_of_consecutive_files(tmp_path: Path, present, count: int) -> None:
    for number in present:
        (tmp_path / f"{number:05d}.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / "7.jpg").write_text("another spelling of a number, not a frame of this template")
    assert count_frame_files(tmp_path, "{:05d}.jpg", first_index=1) == count


def test_a_frame_folder_of_other_names_names_the_template(tmp_path: Path) -> None:
    """An empty folder has no frames; one whose files the template does not name (another
    dataset's naming, a wrong frame_template) says so, rather than "no frames"."""
    (tmp_path / ".DS_Store").write_bytes(b"")
    assert count_frame_files(tmp_path, "{:05d}.jpg", first_index=1) == 0
    for number in (1, 2):
        (tmp_path / f"{number:06d}.jpg").write_bytes(b"")
    with pytest.raises(SampleReadError, match=r"none of its 2 files is named as the frame template '\{:05d\}.jpg' "
                                              r"names frames \(00001.jpg, ...\), e.g. '000001.jpg': another frame_template\?"):
        count_frame_files(tmp_path, "{:05d}.jpg", first_index=1)


@pytest.mark.parametrize("other", ["{:05d}.png", "{:05d}.JPG", "{:05d}"])
def test_a_frame_folder_in_two_formats_is_an_error_not_a_shorter_video(tmp_path: Path, other: str) -> None:
    """Frames 1-5 as the template names them and 6-10 in another format or letter case: not a
    five-frame video (the run of the template's names) but an error naming the folder and a
    file of the other format."""
    for number in range(1, 6):
        (tmp_path / f"{number:05d}.jpg").write_bytes(b"")
    for number in range(6, 11):
        (tmp_path / other.format(number)).write_bytes(b"")
    with pytest.raises(SampleReadError, match=rf"^{tmp_path}: 5 of its files are frames named otherwise than the frame "
                                              rf"template '\{{:05d\}}.jpg' names them \(another format or letter "
                                              rf"case\), e.g. '{re.escape(other.format(6))}' beside '00001.jpg'"):
        count_frame_files(tmp_path, "{:05d}.jpg", first_index=1)


@pytest.mark.parametrize(
    ("present", "first_index", "message"),
    [
        ([1, 2, 3, 5, 6], 1, r"frame 00004.jpg is missing, but 2 later frames \(from 00005.jpg\) exist"),
        ([2, 3], 1, r"frame 00001.jpg is missing, but 2 later frames \(from 00002.jpg\) exist"),
        ([0, 1, 2], 1, r"frame 00000.jpg is numbered below the first frame index 1 \(frames numbered from 0"),
    ],
)
def test_a_frame_folder_with_a_gap_is_an_error_not_a_shorter_video(tmp_path: Path, present, first_index, message):
    for number in present:
        (tmp_path / f"{number:05d}.jpg").write_bytes(b"")
    with pytest.raises(SampleReadError, match=message) as error:
        count_frame_files(tmp_path, "{:05d}.jpg", first_index=first_index)
    assert str(tmp_path) in str(error.value)


def test_a_frame_folder_with_a_gap_is_reported_with_the_missing_media(tmp_path: Path, ssv2_dir: Path) -> None:
    arguments, _, _ = _build_ssv2(tmp_path, ssv2_dir, "frames")
    frames = sorted((tmp_path / "videos" / "74225").iterdir())
    frames[1].unlink()  # a gap after the first frame
    datamodule = SomethingSomethingV2DataModule(**arguments, missing_videos="drop")
    assert [sample.id for sample in datamodule.samples("train")] == ["151151", "183708", "137878"]
    report = (tmp_path / "logs" / "missing_ssv2_train.tsv").read_text().splitlines()
    assert report[1].split("\t")[2].startswith(f"unreadable: {tmp_path / 'videos' / '74225'}: frame ")


def test_empty_frame_folder_is_reported(tmp_path: Path, ssv2_dir: Path) -> None:
    arguments, _, _ = _build_ssv2(tmp_path, ssv2_dir, "frames")
    for frame in (tmp_path / "videos" / "74225").iterdir():
        frame.unlink()
    datamodule = SomethingSomethingV2DataModule(**arguments, missing_videos="drop")
    assert [sample.id for sample in datamodule.samples("train")] == ["151151", "183708", "137878"]
    report = (tmp_path / "logs" / "missing_ssv2_train.tsv").read_text().splitlines()
    assert report[1].split("\t")[:3] == ["74225", str(tmp_path / "videos" / "74225"), "no frames in [0, 0)"]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["configs/ssv2/gsf_resnet50_8f.yaml", "configs/ssv2/tsm_resnet50_8f.yaml"])
def test_ssv2_config_trains_one_epoch(tmp_path: Path, ssv2_dir: Path, config: str) -> None:
    arguments, _, _ = _build_ssv2(tmp_path, ssv2_dir, "video")
    fit_one_epoch_with_config(config, arguments, tmp_path / "runs")
    assert list((tmp_path / "runs").rglob("*.ckpt"))


@pytest.mark.parametrize("labelled", [True, False])
def test_a_repeated_video_id_names_both_lines(tmp_path: Path, labelled: bool) -> None:
    """In a labelled list and in the test list of ids alone (which named neither line)."""
    path = tmp_path / "something-something-v1-train.csv"
    lines = ["1;Pushing something", "2;Pulling something", "1;Pulling something"]
    path.write_text("".join((line if labelled else line.split(";")[0]) + "\n" for line in lines))
    classes = {"Pushing something": 0, "Pulling something": 1} if labelled else None
    with pytest.raises(AnnotationError, match=r"train.csv, line 3: video id '1' repeats line 1$"):
        read_id_class_csv(path, classes)


@pytest.mark.parametrize("labelled", [True, False])
def test_a_repeated_video_id_in_a_json_list_names_both_entries(tmp_path: Path, ssv2_dir: Path,
                                                               ssv2_classes: dict, labelled: bool) -> None:
    entries = json.loads((ssv2_dir / "something-something-v2-validation.excerpt.json").read_text())[:3]
    entries.append(dict(entries[1], template=entries[0]["template"]))  # (the same id, another class)
    path = tmp_path / "list.json"
    path.write_text(json.dumps(entries if labelled else [{"id": entry["id"]} for entry in entries]))
    expected = rf"list.json, entry 3: video id '{entries[1]['id']}' repeats entry 1$"
    with pytest.raises(AnnotationError, match=expected):
        ssv2.read_split(path, ssv2_classes if labelled else None)


def test_a_byte_order_mark_is_not_part_of_the_first_id(tmp_path: Path) -> None:
    path = tmp_path / "something-something-v1-train.csv"
    path.write_bytes("\ufeff17;Pushing something\n".encode("utf-8"))
    assert read_id_class_csv(path, {"Pushing something": 0}) == [("17", 0)]


def test_a_sample_annotated_twice_is_an_error_for_every_dataset(tmp_path: Path) -> None:
    """``locate_samples``, which every whole-video dataset parses through, refuses a repeated id."""
    candidates = [SampleCandidate(id=name, source=tmp_path / name, where=f"list.json, entry {i}")
                  for i, name in enumerate(["a", "b", "a"])]
    with pytest.raises(AnnotationError, match=r"list.json, entry 2: sample id 'a' repeats list.json, entry 0"):
        locate_samples(candidates, MediaLayout("frames", "{:05d}.jpg", 1, 1), missing="drop",
                       report_path=tmp_path / "missing.tsv")


@pytest.mark.parametrize("layout", ["frames", "video"])
def test_an_annotated_range_past_the_extracted_frames_is_read_to_the_last_frame(tmp_path: Path, caplog,
                                                                                 layout: str) -> None:
    """A frame folder or video with fewer frames than its annotation's stop: the sample ends at
    the last frame and the parse warns; a range that starts past them is reported missing."""
    if layout == "frames":
        source = tmp_path / "clip"
        source.mkdir()
        for number in range(1, 6):
            (source / f"{number:05d}.jpg").write_bytes(b"")
    else:
        write_video(source := tmp_path / "clip.mp4", 1, 5)
    candidates = [
        SampleCandidate(id="short", source=source, where="list.json, entry 0", start=1, stop=8),
        SampleCandidate(id="past", source=source, where="list.json, entry 1", start=6, stop=8),
    ]
    with caplog.at_level("WARNING"):
        samples = locate_samples(candidates, MediaLayout(layout, "{:05d}.jpg", 1, 1), missing="drop",
                                 report_path=tmp_path / "missing.tsv")
    assert [(sample.id, sample.start, sample.stop) for sample in samples] == [("short", 1, 5)]
    # (the range that starts past them is dropped and reported, not read short: not counted here)
    assert "1 annotated frame ranges run past their extracted frames, by up to 3 frames" in caplog.text
    assert "list.json, entry 0: frames up to 8 annotated, 5 in" in caplog.text
    report = (tmp_path / "missing.tsv").read_text().splitlines()
    assert report[1].split("\t")[2] == "no frames in [6, 5)"


def test_ssv1_video_layout_finds_mp4_files_or_the_given_suffix(tmp_path: Path, shared_data: Path) -> None:
    """Something-Something v1 from video files: ``<id>.mp4`` by default, or ``video_suffix``'s."""
    names = read_class_names(shared_data / "ssv1" / "mmaction2_sthv1_label_map.txt")
    rows = {"train": [("1", "Holding something")], "validation": [("1", "Holding something")], "test": [("1", None)]}
    annotations = _write_ssv1_annotations(tmp_path / "annotations", names, rows)
    write_video(tmp_path / "videos" / "1.mp4", 1, 9)
    write_video(tmp_path / "videos" / "1.avi", 1, 7)
    for suffix, frames in ((None, 9), (".avi", 7)):
        datamodule = SomethingSomethingV1DataModule(
            root=tmp_path / "videos", annotations_dir=annotations, layout="video",
            missing_report_dir=tmp_path, **({} if suffix is None else {"video_suffix": suffix}), **TINY_DATA_SETTINGS,
        )
        (sample,) = datamodule.samples("train")
        assert (sample.id, sample.num_frames) == ("1", frames)


def test_a_class_name_listed_twice_is_refused() -> None:
    """(174 lines with a name twice would pass the count, and the indices would skip a number.)"""
    with pytest.raises(AnnotationError, match=r"^labels.csv: class name 'Holding something' is listed twice$"):
        sorted_class_index(["Holding something", "Closing something", "Holding something"], "labels.csv")


def test_blank_lines_in_an_id_class_csv_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "something-something-v1-train.csv"
    path.write_text("12;Holding something\n\n  \n13;Holding something\n\n")
    assert read_id_class_csv(path, {"Holding something": 0}) == [("12", 0), ("13", 0)]
    path.write_text("12\n\n13\n\n")
    assert read_id_class_csv(path, None) == [("12", None), ("13", None)]


@pytest.mark.parametrize(
    ("text", "class_to_index", "message"),
    [
        ("12\n13;Holding something\n", None, r"line 2: expected a video id alone, got '13;Holding something'"),
        ("12;Holding something\n ;Holding something\n", {"Holding something": 0},
         r"line 2: expected '<video id>;<class name>'"),
    ],
    ids=["a-labelled-line-in-the-test-list", "an-empty-video-id"],
)
def test_a_line_of_the_wrong_form_is_refused(tmp_path: Path, text, class_to_index, message) -> None:
    path = tmp_path / "something-something-v1-list.csv"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=message):
        read_id_class_csv(path, class_to_index)


def test_spaces_around_a_video_id_are_not_part_of_it(tmp_path: Path) -> None:
    path = tmp_path / "something-something-v1-train.csv"
    path.write_text(" 12 ;Holding something\n")
    assert read_id_class_csv(path, {"Holding something": 0}) == [("12", 0)]
    path.write_text(" 12 \n")
    assert read_id_class_csv(path, None) == [("12", None)]


@pytest.mark.parametrize("entry", ["74225", 74225, ["74225"]])
def test_ssv2_entry_that_is_not_an_object_is_refused(tmp_path: Path, entry) -> None:
    path = tmp_path / "something-something-v2-train.json"
    path.write_text(json.dumps([entry]))
    with pytest.raises(AnnotationError, match=r"entry 0: expected an object with an 'id'"):
        ssv2.read_split(path, {"Holding something": 0})


def test_ssv2_label_map_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(["Holding something"]))
    expected = rf"^{re.escape(str(path))}: expected a JSON dict at the top level, got list$"
    with pytest.raises(AnnotationError, match=expected):
        ssv2.read_label_map(path)


def test_ssv2_label_index_that_is_a_json_number_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"Holding something": 0}))
    with pytest.raises(AnnotationError,
                       match=r"class 'Holding something': expected the index as a string of digits, got 0"):
        ssv2.read_label_map(path)


@pytest.mark.parametrize("video_id", [True, " ", ""], ids=["true", "blank", "empty"])
def test_ssv2_entry_whose_id_is_true_or_blank_is_refused(tmp_path: Path, video_id) -> None:
    """(A JSON ``true`` was read as the id ``'True'``, and a blank id was kept, where the v1 lists
    refuse one: both surfaced later as a missing video.)"""
    path = tmp_path / "something-something-v2-validation.json"
    path.write_text(json.dumps([{"id": "74225"}, {"id": video_id}]))
    with pytest.raises(AnnotationError, match=r"entry 1: expected an object with an 'id'"):
        ssv2.read_split(path, None)


def test_ssv2_ids_are_read_without_the_blanks_around_them(tmp_path: Path) -> None:
    path = tmp_path / "something-something-v2-validation.json"
    path.write_text(json.dumps([{"id": " 74225 "}, {"id": 116154}]))
    assert ssv2.read_split(path, None) == [("74225", None), ("116154", None)]
