"""EPIC-KITCHENS-100: the parsers on the real annotation files, bad input, and the DataModule
on a generated dataset in both storage layouts."""

from __future__ import annotations

import csv
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch

from lightning_gsf.data.epic import (
    EPIC_ACTION_COLUMNS,
    EpicAction,
    EpicKitchensDataModule,
    format_timestamp,
    parse_timestamp,
    read_actions,
    read_classes,
    read_participant_ids,
    read_tail_classes,
    read_video_info,
)
from lightning_gsf.data.errors import AnnotationError, ConfigurationError, MissingMediaError, SampleReadError
from lightning_gsf.data.sources import MediaLayout
from lightning_gsf.data.synthetic import generate_synthetic_dataset


@pytest.fixture(scope="module")
def epic(shared_data) -> Path:
    return shared_data / "epic100"


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("epic") / "synthetic"
    generate_synthetic_dataset(
        root, num_train=10, num_val=6, num_test=4, size=32, fps=25, min_frames=8, max_frames=14,
        actions_per_video=(2, 4), seed=1,
    )  # fmt: skip
    return root


def stub_media(root: Path, annotations: Path, layout: str = "frames") -> Path:
    """Frame folders holding each video's last annotated frame as an empty file (or empty
    video files) for every video of the val and test CSVs under ``root``: what the parse
    checks exists, for tests of the annotations alone."""
    for name in ("EPIC_100_validation.csv", "EPIC_100_test_timestamps.csv"):
        if not (annotations / name).is_file():
            continue
        for action in read_actions(annotations / name):
            participant = root / action.participant_id
            if layout == "frames":
                folder = participant / "rgb_frames" / action.video_id
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"frame_{action.stop_frame:010d}.jpg").touch()  # (so the folder is never listed)
            else:
                (participant / "videos").mkdir(parents=True, exist_ok=True)
                (participant / "videos" / f"{action.video_id}.MP4").touch()
    return root


def datamodule(root: Path, **kwargs) -> EpicKitchensDataModule:
    options = dict(num_segments=4, batch_size=2, num_workers=0, input_size=32, resize_size=32, seed=0,
                   missing_report_dir=root)
    options.update(kwargs)
    return EpicKitchensDataModule(root, **options)


# --- the real annotation files -----------------------------------------------------------


def test_validation_file(epic):
    actions = read_actions(epic / "EPIC_100_validation.csv")
    assert len(actions) == 9668 and all(action.labelled for action in actions)
    assert actions[0] == EpicAction(
        narration_id="P01_11_0", participant_id="P01", video_id="P01_11", narration_timestamp=0.56,
        start_timestamp=0.0, stop_timestamp=1.89, start_frame=1, stop_frame=113, narration="take plate",
        verb="take", verb_class=0, noun="plate", noun_class=2, all_nouns=("plate",), all_noun_classes=(2,), line=2,
    )  # fmt: skip
    last = actions[-1]
    assert (last.narration_id, last.line, last.noun_class, last.start_frame) == ("P32_10_9", 9669, 46, 7798)
    # The official README's "no narration timestamp" rows are empty in the CSV.
    assert sum(action.narration_timestamp is None for action in actions) == 70
    assert sum(len(action.all_nouns) > 1 for action in actions) == 1602


def test_test_timestamps_file(epic):
    actions = read_actions(epic / "EPIC_100_test_timestamps.csv")
    assert len(actions) == 13092 and not any(action.labelled for action in actions)
    first = actions[0]
    assert (first.narration_id, first.video_id, first.start_frame, first.stop_frame) == ("P01_101_0", "P01_101", 143, 193)
    assert (first.narration_timestamp, first.start_timestamp, first.stop_timestamp) == (2.851, 2.86, 3.87)
    assert first.verb_class is None and first.all_nouns == ()


def test_class_tail_unseen_and_video_info_files(epic):
    verbs, nouns = read_classes(epic / "EPIC_100_verb_classes.csv"), read_classes(epic / "EPIC_100_noun_classes.csv")
    assert (len(verbs), len(nouns)) == (97, 300)
    assert (verbs[0].key, verbs[0].category, "grab" in verbs[0].instances) == ("take", "retrieve", True)
    assert (verbs[96].key, verbs[96].instances) == ("unfreeze", ("unfreeze",))
    assert (nouns[0].key, nouns[0].instances[:2], nouns[0].category) == ("tap", ("tap", "tap:water"), "appliances")
    tail_verbs = read_tail_classes(epic / "EPIC_100_tail_verbs.csv", "verb")
    tail_nouns = read_tail_classes(epic / "EPIC_100_tail_nouns.csv", "noun")
    assert (len(tail_verbs), len(tail_nouns), 10 in tail_verbs, 56 in tail_nouns) == (86, 228, True, True)
    assert read_participant_ids(epic / "EPIC_100_unseen_participant_ids_validation.csv") == {"P18", "P32"}
    assert read_participant_ids(epic / "EPIC_100_unseen_participant_ids_test.csv") == {"P33", "P34", "P36"}
    videos = read_video_info(epic / "EPIC_100_video_info.csv")
    assert len(videos) == 700
    p01 = videos["P01_01"]
    assert (p01.width, p01.height, round(p01.fps, 2), round(p01.duration, 3)) == (1920, 1080, 59.94, 1652.153)


def test_datamodule_samples_from_the_real_validation_file(epic, tmp_path):
    frames = datamodule(stub_media(tmp_path, epic), annotations_dir=epic)
    assert frames.num_classes == {"verb": 97, "noun": 300}
    samples = frames.samples("val")
    first = samples[0]
    assert (first.id, first.start, first.stop, dict(first.labels)) == ("P01_11_0", 0, 113, {"verb": 0, "noun": 2})
    assert first.source == tmp_path / "P01" / "rgb_frames" / "P01_11"
    assert first.metadata == {"participant_id": "P01", "video_id": "P01_11"}
    tail_verbs = read_tail_classes(epic / "EPIC_100_tail_verbs.csv", "verb")
    tail_nouns = read_tail_classes(epic / "EPIC_100_tail_nouns.csv", "noun")
    for sample in samples:
        assert sample.subsets["unseen"] == (sample.metadata["participant_id"] in {"P18", "P32"})
        assert sample.subsets["tail_verb"] == (sample.labels["verb"] in tail_verbs)
        assert sample.subsets["tail_noun"] == (sample.labels["noun"] in tail_nouns)
    assert sum(sample.subsets["unseen"] for sample in samples) == 1065
    assert {sample.subsets["tail_noun"] for sample in samples} == {True, False}
    test = frames.samples("test")
    assert test[0].labels is None and set(test[0].subsets) == {"unseen"}
    assert (test[0].start, test[0].stop) == (142, 193)


def test_video_layout_indexes_the_video_by_its_own_frame_rate(epic, tmp_path):
    """The CSV frame numbers count frames extracted at 60 fps; a 29.97 fps video has half as many."""
    stub_media(stub_media(tmp_path, epic), epic, layout="video")
    video = {s.id: s for s in datamodule(tmp_path, annotations_dir=epic, layout="video").samples("val")}
    frames = {s.id: s for s in datamodule(tmp_path, annotations_dir=epic).samples("val")}
    slow = video["P09_07_0"]  # P09_07 is a 29.97 fps video
    assert (slow.start, slow.stop, slow.source.name) == (33, 58, "P09_07.MP4")
    assert (frames["P09_07_0"].start, frames["P09_07_0"].stop) == (64, 116)
    # P29_05_563 ends 0.013 s after the video: clipped to the last frame rather than refused.
    clipped = video["P29_05_563"]
    assert clipped.stop == round(1821.736567 * 59.9400599400599)


@pytest.mark.parametrize(("text", "seconds"), [("00:00:01.89", 1.89), ("01:02:03.5", 3723.5), ("00:11:16.158", 676.158)])
def test_timestamps_round_trip(text, seconds):
    assert parse_timestamp(text) == pytest.approx(seconds)
    assert parse_timestamp(format_timestamp(seconds, decimals=3)) == pytest.approx(seconds)


# --- bad input ---------------------------------------------------------------------------

GOOD_ROWS = [
    ["P01_01_0", "P01", "P01_01", "00:00:00.500", "00:00:00.20", "00:00:00.80", "6", "20", "take cup", "take", "0", "cup", "1", "['cup']", "[1]"],
    ["P01_01_1", "P01", "P01_01", "00:00:01.500", "00:00:01.00", "00:00:01.60", "26", "40", "put cup", "put", "1", "cup", "1", "['cup']", "[1]"],
]  # fmt: skip


def write_annotations(root: Path, rows: list[list[str]], columns=EPIC_ACTION_COLUMNS) -> Path:
    """A complete, valid ``<root>/annotations`` folder whose validation file holds ``rows``."""
    folder = root / "annotations"
    folder.mkdir(parents=True, exist_ok=True)
    tables = {
        "EPIC_100_validation.csv": [list(columns), *rows],
        "EPIC_100_verb_classes.csv": [["id", "key", "instances", "category"], [0, "take", "['take']", "retrieve"], [1, "put", "['put']", "leave"]],
        "EPIC_100_noun_classes.csv": [["id", "key", "instances", "category"], [0, "tap", "['tap']", "appliances"], [1, "cup", "['cup']", "crockery"]],
        "EPIC_100_tail_verbs.csv": [["verb"], [1]],
        "EPIC_100_tail_nouns.csv": [["noun"], [0]],
        "EPIC_100_unseen_participant_ids_validation.csv": [["participant_id"], ["P02"]],
        "EPIC_100_video_info.csv": [["video_id", "duration", "fps", "resolution"], ["P01_01", "2.0", "25.0", "32x24"]],
    }  # fmt: skip
    for name, table in tables.items():
        with (folder / name).open("w", newline="") as file:
            csv.writer(file, lineterminator="\n").writerows(table)
    return folder / "EPIC_100_validation.csv"


def with_field(row_index: int, column: str, value: str, **more: str) -> list[list[str]]:
    """GOOD_ROWS with ``column`` (and the ``more`` columns) of one row replaced."""
    rows = [list(row) for row in GOOD_ROWS]
    for name, text in {column: value, **more}.items():
        rows[row_index][EPIC_ACTION_COLUMNS.index(name)] = text
    return rows


def test_the_valid_example_parses(tmp_path):
    path = write_annotations(tmp_path, GOOD_ROWS)
    samples = datamodule(stub_media(tmp_path, tmp_path / "annotations", "video"), layout="video").samples("val")
    assert [(s.start, s.stop, s.fps) for s in samples] == [(5, 20, 25.0), (25, 40, 25.0)]
    assert samples[1].subsets == {"tail_verb": True, "tail_noun": False, "unseen": False}
    assert len(read_actions(path)) == 2


# (a 2.0 s video at 25 fps: 50 frames; the end tolerance lets a segment end 0.05 s past it)
@pytest.mark.parametrize(
    ("start_time", "stop_time", "frames"),
    [
        ("00:00:01.00", "00:00:01.00", (25, 26)),  # an instant: one frame, not an empty segment
        ("00:00:01.01", "00:00:01.02", (25, 26)),  # both round to frame 25
        ("00:00:01.98", "00:00:02.00", (49, 50)),  # up to the last frame
        ("00:00:02.02", "00:00:02.04", (49, 50)),  # starts past the end, within the tolerance: the last frame
        ("00:00:00.00", "00:00:02.00", (0, 50)),  # the whole video
    ],
)
def test_the_video_layout_turns_every_segment_into_at_least_one_frame(tmp_path, start_time, stop_time, frames):
    write_annotations(tmp_path, with_field(1, "start_timestamp", start_time, stop_timestamp=stop_time))
    samples = datamodule(stub_media(tmp_path, tmp_path / "annotations", "video"), layout="video").samples("val")
    assert (samples[1].start, samples[1].stop) == frames


def test_a_single_frame_action_parses(tmp_path):
    """start_frame == stop_frame is one frame (the columns are inclusive), and an instant in time."""
    path = write_annotations(tmp_path, with_field(1, "start_frame", "30", stop_frame="30", start_timestamp="00:00:01.20",
                                                  stop_timestamp="00:00:01.20"))
    action = read_actions(path)[1]
    assert (action.start_frame, action.stop_frame, action.start_timestamp, action.stop_timestamp) == (30, 30, 1.2, 1.2)
    samples = datamodule(stub_media(tmp_path, tmp_path / "annotations"), annotations_dir=tmp_path / "annotations")
    assert [(s.start, s.stop) for s in samples.samples("val")][1] == (29, 30)


@pytest.mark.parametrize(
    ("rows", "columns", "message"),
    [
        (GOOD_ROWS, EPIC_ACTION_COLUMNS[:7] + EPIC_ACTION_COLUMNS[8:], r"header: missing column\(s\) \['stop_frame'\]"),
        ([GOOD_ROWS[0], GOOD_ROWS[1][:12]], EPIC_ACTION_COLUMNS, r"line 3 \(narration_id P01_01_1\): 12 fields; expected the header's 15"),
        ([GOOD_ROWS[0] + ["extra"]], EPIC_ACTION_COLUMNS, r"line 2 \(narration_id P01_01_0\): 16 fields"),
        (with_field(1, "start_timestamp", "00:00:1.0"), EPIC_ACTION_COLUMNS, r"line 3 \(narration_id P01_01_1\): column 'start_timestamp' is '00:00:1.0'; expected a timestamp"),
        (with_field(0, "stop_timestamp", ""), EPIC_ACTION_COLUMNS, r"line 2 \(narration_id P01_01_0\): column 'stop_timestamp' is empty"),
        (with_field(0, "start_frame", "6a"), EPIC_ACTION_COLUMNS, r"line 2 \(narration_id P01_01_0\): column 'start_frame' is '6a'; expected an integer"),
        (with_field(1, "stop_frame", "12"), EPIC_ACTION_COLUMNS, r"line 3 \(narration_id P01_01_1\): frames 26..12; expected 1 <= start_frame <= stop_frame"),
        (with_field(1, "stop_timestamp", "00:00:00.90"), EPIC_ACTION_COLUMNS, r"line 3 \(narration_id P01_01_1\): stop_timestamp 0.90 s is before start_timestamp 1.00 s"),
        (with_field(0, "start_frame", "0"), EPIC_ACTION_COLUMNS, r"line 2 .*frames 0..20"),
        (with_field(0, "verb_class", "take"), EPIC_ACTION_COLUMNS, r"column 'verb_class' is 'take'; expected an integer"),
        # (numbers Python reads, no annotation file means: 1_3 is 13 to int(), ١٣ too)
        (with_field(0, "start_frame", "1_3"), EPIC_ACTION_COLUMNS, r"column 'start_frame' is '1_3'; expected an integer"),
        (with_field(0, "verb_class", "\u0661"), EPIC_ACTION_COLUMNS, r"column 'verb_class' is '\u0661'; expected an integer"),
        (with_field(0, "start_timestamp", "00:00:0\u0660.20"), EPIC_ACTION_COLUMNS, r"column 'start_timestamp' is .*; expected a timestamp"),
        (with_field(0, "all_noun_classes", "[0x1]"), EPIC_ACTION_COLUMNS, r"column 'all_noun_classes' is '\[0x1\]'; expected a list of int"),
        (with_field(0, "all_noun_classes", "[1"), EPIC_ACTION_COLUMNS, r"column 'all_noun_classes' is '\[1'; expected a list of int"),
        (with_field(0, "all_nouns", "['cup', 'tap']"), EPIC_ACTION_COLUMNS, r"expected two lists of the same, non-zero length"),
        (with_field(1, "narration_id", "P01_01_0"), EPIC_ACTION_COLUMNS, r"line 3 \(narration_id P01_01_0\): narration_id repeats line 2"),
        (with_field(1, "participant_id", "P02"), EPIC_ACTION_COLUMNS, r"line 3 \(narration_id P01_01_1\): video_id P01_01 is not a video of participant P02"),
        (with_field(1, "video_id", "P01_02"), EPIC_ACTION_COLUMNS, r"line 3 \(narration_id P01_01_1\): narration_id P01_01_1 is not a narration of video P01_02"),
        (with_field(0, "noun_class", "0"), EPIC_ACTION_COLUMNS, r"line 2 \(narration_id P01_01_0\): noun_class 0 is not the first of all_noun_classes \[1\]"),
        # (a label column misnamed: an error, not a file read as unlabelled, whose labels would be lost)
        (GOOD_ROWS, tuple(c + " " if c == "verb_class" else c for c in EPIC_ACTION_COLUMNS), r"header: missing column\(s\) \['verb_class'\]; .* found \[.*'verb_class '"),
        # (a long narration_id is cut to 60 characters in the message)
        (with_field(1, "narration_id", "P01_01_" + "9" * 80, stop_frame="12"), EPIC_ACTION_COLUMNS, r"\(narration_id P01_01_9{53} \.\.\.\): frames 26..12"),
        (with_field(0, "all_nouns", "[1]"), EPIC_ACTION_COLUMNS, r"column 'all_nouns' is '\[1\]'; expected a list of str"),
        (with_field(0, "all_nouns", "[]", all_noun_classes="[]"), EPIC_ACTION_COLUMNS, r"line 2 .*expected two lists of the same, non-zero length"),
        # (ids share prefixes: P01_10 and P01_101 are both real videos)
        (with_field(1, "video_id", "P011_01", narration_id="P011_01_1"), EPIC_ACTION_COLUMNS, r"line 3 .*video_id P011_01 is not a video of participant P01"),
        (with_field(1, "narration_id", "P01_011_1"), EPIC_ACTION_COLUMNS, r"line 3 .*narration_id P01_011_1 is not a narration of video P01_01"),
    ],
    ids=["missing-column", "short-row", "long-row", "bad-timestamp", "empty-timestamp", "bad-frame", "stop-before-start",
         "stop-time-before-start",
         "frame-zero", "bad-class", "underscored-frame", "arabic-indic-class", "arabic-indic-timestamp", "hex-list", "bad-list", "list-lengths", "duplicate-id", "other-participant", "other-video",
         "noun-class-not-first", "misnamed-label-column", "long-id", "str-list", "empty-lists", "prefix-participant",
         "prefix-video"],
)  # fmt: skip
def test_bad_rows_name_the_file_line_and_narration_id(tmp_path, rows, columns, message):
    path = write_annotations(tmp_path, rows, columns)
    with pytest.raises(AnnotationError, match=message) as error:
        read_actions(path)
    assert str(error.value).startswith(str(path))


def test_a_labelled_file_with_blank_lines_before_its_header_keeps_its_labels(tmp_path):
    path = write_annotations(tmp_path, GOOD_ROWS)
    path.write_text("\n\n" + path.read_text())
    actions = read_actions(path)
    assert [(a.verb_class, a.noun_class) for a in actions] == [(int(r[10]), int(r[12])) for r in GOOD_ROWS]


@pytest.mark.parametrize(
    ("rows", "layout", "message"),
    [
        (with_field(1, "verb_class", "2"), "frames", r"line 3 \(narration_id P01_01_1\): verb_class 2 is outside the 2 classes of EPIC_100_verb_classes.csv"),
        (with_field(0, "noun_class", "-1", all_noun_classes="[-1]"), "frames", r"line 2 \(narration_id P01_01_0\): noun_class -1 is outside the 2 classes"),
        (with_field(1, "all_nouns", "['cup', 'tap']", all_noun_classes="[1, 4200]"), "frames", r"line 3 \(narration_id P01_01_1\): all_noun_classes \[1, 4200\] holds \[4200\], outside the 2 classes of EPIC_100_noun_classes.csv"),
        (with_field(1, "all_nouns", "['cup', 'tap']", all_noun_classes="[1, 2]"), "frames", r"line 3 \(narration_id P01_01_1\): all_noun_classes \[1, 2\] holds \[2\]"),
        (with_field(1, "stop_timestamp", "00:00:02.30"), "video", r"line 3 \(narration_id P01_01_1\): the segment ends at 2.30 s, past the end of video P01_01 \(2.00 s, 50 frames"),
        (with_field(1, "video_id", "P01_02", narration_id="P01_02_1"), "video", r"line 3 \(narration_id P01_02_1\): video P01_02 is not in EPIC_100_video_info.csv"),
    ],
    ids=["verb-class", "noun-class", "secondary-noun-class", "secondary-noun-one-past", "past-the-end",
         "unknown-video"],
)  # fmt: skip
def test_bad_segments_are_refused_by_the_datamodule(tmp_path, rows, layout, message):
    path = write_annotations(tmp_path, rows)
    with pytest.raises(AnnotationError, match=message) as error:
        datamodule(tmp_path, layout=layout).samples("val")
    assert str(error.value).startswith(str(path))


def test_a_video_of_no_frames_by_its_info_is_named(tmp_path):
    """A duration that rounds to no frame at the video's rate (a bad row of the video info)."""
    path = write_annotations(tmp_path, GOOD_ROWS)
    info = tmp_path / "annotations" / "EPIC_100_video_info.csv"
    info.write_text("video_id,duration,fps,resolution\nP01_01,0.01,25.0,32x24\n")
    with pytest.raises(AnnotationError, match=r"line 2 \(narration_id P01_01_0\): video P01_01 has no frame by "
                                               r".*EPIC_100_video_info.csv \(0.01 s at 25 fps\)") as error:
        datamodule(tmp_path, layout="video").samples("val")
    assert str(error.value).startswith(str(path))


def test_tail_classes_outside_the_class_list_are_refused(tmp_path):
    write_annotations(tmp_path, GOOD_ROWS)
    (tmp_path / "annotations" / "EPIC_100_tail_nouns.csv").write_text("noun\n0\n9999\n")
    with pytest.raises(AnnotationError, match=r"EPIC_100_tail_nouns.csv: noun classes \[9999\] are not among the 2 "
                                               r"noun classes; expected ids 0..1"):
        datamodule(tmp_path).samples("val")


def test_a_video_listed_twice_in_the_video_info_is_refused(tmp_path):
    write_annotations(tmp_path, GOOD_ROWS)
    info = tmp_path / "annotations" / "EPIC_100_video_info.csv"
    info.write_text("video_id,duration,fps,resolution\nP01_01,2.0,25.0,32x24\nP01_01,3.0,25.0,32x24\n")
    with pytest.raises(AnnotationError, match=r"EPIC_100_video_info.csv, line 3: video_id 'P01_01' again \(first at "
                                               r"line 2\)"):
        datamodule(tmp_path, layout="video").samples("val")


def test_bad_class_list_and_missing_files(tmp_path):
    write_annotations(tmp_path, GOOD_ROWS)
    (tmp_path / "annotations" / "EPIC_100_noun_classes.csv").write_text("id,key,instances,category\n0,tap,['tap'],a\n2,cup,['cup'],b\n")
    with pytest.raises(AnnotationError, match=r"EPIC_100_noun_classes.csv, line 3: class id 2; expected 1"):
        datamodule(tmp_path).num_classes
    with pytest.raises(FileNotFoundError, match=r"EPIC_100_train.csv does not exist \(set data.init_args.root, or data.init_args.annotations_dir"):
        datamodule(tmp_path).samples("train")


# --- the DataModule on a generated dataset -----------------------------------------------


def test_both_layouts_give_the_same_segments(synthetic_root):
    frames, video = datamodule(synthetic_root), datamodule(synthetic_root, layout="video")
    for split in ("train", "val", "test"):
        pairs = list(zip(frames.samples(split), video.samples(split), strict=True))
        assert all((f.id, f.start, f.stop, f.labels) == (v.id, v.start, v.stop, v.labels) for f, v in pairs)
        assert all(f.source.is_dir() and v.source.is_file() for f, v in pairs)


@pytest.mark.parametrize("layout", ["frames", "video"])
def test_batches_from_either_layout(synthetic_root, layout):
    dm = datamodule(synthetic_root, layout=layout, test_clips=2, test_crops=3, test_split="val")
    dm.setup()
    expected = {row["narration_id"]: row for row in csv.DictReader((synthetic_root / "annotations" / "EPIC_100_train.csv").open())}
    batch = next(iter(dm.train_dataloader()))
    assert batch["clip"].shape == (2, 4, 3, 32, 32) and batch["clip"].dtype == torch.uint8
    for narration_id, verb, noun in zip(batch["id"], batch["labels"]["verb"].tolist(), batch["labels"]["noun"].tolist()):
        assert (verb, noun) == (int(expected[narration_id]["verb_class"]), int(expected[narration_id]["noun_class"]))
    assert set(batch["subsets"]) == {"tail_verb", "tail_noun"}
    batch = next(iter(dm.test_dataloader()))
    assert batch["clip"].shape == (2, 6, 4, 3, 32, 32)
    assert set(batch["subsets"]) == {"tail_verb", "tail_noun", "unseen"}
    batch = next(iter(dm.predict_dataloader()))  # the unlabelled test timestamps, as many views as test
    assert "labels" not in batch and batch["clip"].shape == (2, 6, 4, 3, 32, 32)


def test_both_layouts_read_the_same_frames(synthetic_root):
    """Frame i of the video is frame_{i+1}.jpg: the frames match, and a one-frame shift would not."""
    frames = datamodule(synthetic_root).dataset("val", training=False)
    video = datamodule(synthetic_root, layout="video").dataset("val", training=False)
    aligned, shifted = [], []
    for index in range(len(frames)):
        sample = frames.samples[index]
        indices = list(range(sample.start, sample.stop - 1))
        from_jpeg = frames.reader.read(sample.source, indices + [sample.stop - 1]).float()
        from_video = video.reader.read(video.samples[index].source, indices).float()
        aligned.append((from_video - from_jpeg[:-1]).abs().mean())
        shifted.append((from_video - from_jpeg[1:]).abs().mean())
        assert (frames[index]["clip"].float() - video[index]["clip"].float()).abs().mean() < 5
    assert max(aligned) < 5
    assert all(same < off_by_one for same, off_by_one in zip(aligned, shifted))


def copy_dataset(root: Path, destination: Path) -> Path:
    shutil.copytree(root, destination, ignore=shutil.ignore_patterns("videos"))
    return destination


def test_missing_frame_folder_and_frame_file_name_the_narration(synthetic_root, tmp_path):
    root = copy_dataset(synthetic_root, tmp_path / "data")
    dm = datamodule(root)
    samples = dm.samples("val")
    shutil.rmtree(samples[0].source)
    dataset = dm.dataset("val", training=False)
    with pytest.raises(SampleReadError, match=rf"sample '{samples[0].id}' .*frame folder {samples[0].source} does not exist"):
        dataset[0]
    last = max((s for s in samples if s.source != samples[0].source), key=lambda s: s.stop)
    for path in sorted(last.source.iterdir())[last.stop - 3 :]:
        path.unlink()  # the segment now runs past the end of the extracted frames
    with pytest.raises(SampleReadError, match=rf"sample '{last.id}' .*missing file .*{last.source.name}/frame_\d{{10}}\.jpg"):
        dataset[samples.index(last)]


def test_corrupt_video_names_the_narration(synthetic_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns("rgb_frames"))
    dm = datamodule(root, layout="video")
    sample = dm.samples("val")[0]
    data = sample.source.read_bytes()
    sample.source.write_bytes(data[: len(data) // 3])  # truncated
    with pytest.raises(SampleReadError, match=rf"sample '{sample.id}' .*{sample.source.name}"):
        dm.dataset("val", training=False)[0]


def test_skip_unreadable_logs_each_sample_and_the_count(synthetic_root, tmp_path, caplog):
    root = copy_dataset(synthetic_root, tmp_path / "data")
    dm = datamodule(root, skip_unreadable=True, eval_batch_size=3)
    samples = dm.samples("val")
    broken = {s.source for s in samples[:2]}
    for folder in broken:
        shutil.rmtree(folder)
    dm.setup("validate")
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.data.base"):
        batches = list(dm.val_dataloader())
        dm.teardown("validate")
    assert [len(b["id"]) for b in batches] == [3, 3]
    skipped = [s for s in samples if s.source in broken]
    assert dm.skipped_samples == {"val": len(skipped)}
    messages = "\n".join(record.getMessage() for record in caplog.records)
    for sample in skipped:
        assert f"'{sample.id}'" in messages and str(sample.source) in messages
    assert f"{len(skipped)} unreadable val samples were skipped" in messages


@pytest.mark.parametrize("model", [["--model", "resnet18", "gsf"], ["--no-model"]])
def test_benchmark_runs_on_both_layouts_beside_the_models_training(synthetic_root, model, monkeypatch):
    from lightning_gsf.data import benchmark

    timed = []
    measure_model = benchmark.measure_model
    monkeypatch.setattr(benchmark, "measure_model", lambda *a, **k: timed.append((a, k)) or measure_model(*a, **k))
    results = benchmark.main(["--root", str(synthetic_root), "--workers", "0", "--batches", "2", "--batch-size", "2",
                              "--input-size", "32", "--num-segments", "2", *model])
    assert [(r.layout, r.num_workers, r.clips) for r in results] == [("frames", 0, 4), ("video", 0, 4)]
    assert all(r.clips_per_second > 0 for r in results)
    if model == ["--no-model"]:
        assert not timed and all(r.model_clips_per_second is None and r.vs_model is None for r in results)
        return
    # The model trained on clips of the loader's shape, once, and every row is compared with it.
    assert timed == [(("resnet18", "gsf"), {"batch_size": 2, "num_segments": 2, "input_size": 32})]
    model_rate = results[0].model_clips_per_second
    assert model_rate > 0 and all(r.model_clips_per_second == model_rate for r in results)
    assert all(r.vs_model == pytest.approx(r.clips_per_second / model_rate) for r in results)


def test_benchmark_refuses_a_root_that_is_not_there(tmp_path, capsys):
    """A mistyped --root was replaced by a generated 72-px set, timed as if it were the data."""
    from lightning_gsf.data.benchmark import main

    with pytest.raises(SystemExit):
        main(["--root", str(tmp_path / "missing"), "--workers", "0", "--batches", "1"])
    assert f"--root {tmp_path / 'missing'}: no such dataset folder" in capsys.readouterr().err


def _serve_training_batches(monkeypatch, loader) -> None:
    """The datamodule's training loader replaced by ``loader`` (and its setup by nothing)."""
    monkeypatch.setattr(EpicKitchensDataModule, "setup", lambda self, stage=None: None)
    monkeypatch.setattr(EpicKitchensDataModule, "train_dataloader", lambda self: loader)

@pytest.mark.parametrize("workers", [0, 1, 3])
def test_benchmark_times_no_batch_a_worker_prepared_while_another_started(monkeypatch, synthetic_root, workers):
    """One untimed batch per worker (at least one): the batches the other workers made ready
    during the first one's start-up would otherwise be counted as free."""
    from lightning_gsf.data import benchmark

    handed_out = []

    class Loader(list):
        def __iter__(self):
            for batch in super().__iter__():
                handed_out.append(batch)
                yield batch

    batch = {"clip": torch.zeros(2, 1)}
    _serve_training_batches(monkeypatch, Loader([batch] * 10))
    result = benchmark.measure(synthetic_root, "frames", workers, num_batches=4, batch_size=2)
    assert result.clips == 8 and len(handed_out) == max(1, workers) + 4


def test_benchmark_rates_are_clips_over_seconds():
    from lightning_gsf.data.benchmark import Throughput

    result = Throughput("frames", 0, clips=8, seconds=2.0, model_clips_per_second=2.0)
    assert result.clips_per_second == 4.0 and result.vs_model == 2.0


def test_benchmark_times_the_counted_batches_only(monkeypatch, synthetic_root):
    """Neither the untimed first batch (the loader's start-up) nor the loader's end (worker
    shutdown, where it runs out before ``num_batches``) is in the time."""
    import types

    from lightning_gsf.data import benchmark

    clock = [0.0]

    class Loader(list):
        def __iter__(self):
            for index, batch in enumerate(super().__iter__()):
                clock[0] += 100.0 if index == 0 else 1.0
                yield batch
            clock[0] += 1000.0

    monkeypatch.setattr(benchmark, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    _serve_training_batches(monkeypatch, Loader([{"clip": torch.zeros(2, 1)}] * 5))
    result = benchmark.measure(synthetic_root, "frames", 0, num_batches=10, batch_size=2)
    assert (result.clips, result.seconds) == (8, 4.0)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_benchmark_refuses_a_loader_with_no_batch_left_to_time(monkeypatch, synthetic_root, workers):
    from lightning_gsf.data import benchmark

    batches = [{"clip": torch.zeros(2, 1)}] * max(1, workers)
    _serve_training_batches(monkeypatch, batches)
    with pytest.raises(ValueError, match="too few training clips"):
        benchmark.measure(synthetic_root, "frames", workers, num_batches=4, batch_size=2)


def test_benchmark_passes_its_options_to_every_measurement(monkeypatch, synthetic_root):
    from lightning_gsf.data import benchmark

    seen = []

    def measure(root, layout, workers, **kwargs):
        seen.append((root, layout, workers, kwargs))
        return benchmark.Throughput(layout, workers, 2, 1.0)

    monkeypatch.setattr(benchmark, "measure", measure)
    benchmark.main(["--root", str(synthetic_root), "--layouts", "video", "--workers", "1", "--batches", "3",
                    "--batch-size", "2", "--num-segments", "4", "--input-size", "48", "--video-threads", "2",
                    "--randaugment", "--no-model"])
    assert seen == [(synthetic_root, "video", 1, {"num_batches": 3, "batch_size": 2, "num_segments": 4,
                                                  "input_size": 48, "video_threads": 2, "randaugment": True})]


def test_benchmark_model_rate_is_the_batch_over_the_median_step_with_malloc_set(monkeypatch):
    import types

    from lightning_gsf import host_memory
    from lightning_gsf.data import benchmark

    calls = []
    monkeypatch.setenv(host_memory.ENVIRONMENT_VARIABLE, "default")
    monkeypatch.setattr(benchmark.host_memory, "configure", lambda mode: calls.append(("malloc", mode)))
    monkeypatch.setattr(benchmark.model_benchmark, "make_batch", lambda config: (None, None))
    monkeypatch.setattr(benchmark.model_benchmark, "build_model", lambda *args: None)
    monkeypatch.setattr(benchmark.model_benchmark, "make_steps", lambda *args: types.SimpleNamespace(train=None))
    monkeypatch.setattr(benchmark.model_benchmark, "time_round_robin",
                        lambda steps, repeats, *args: calls.append(("timed", repeats)) or {"train": [0.5, 4.0, 1.0]})
    rate = benchmark.measure_model("resnet18", "gsf", batch_size=4, num_segments=2, input_size=32, repeats=3)
    assert rate == 4.0 and calls == [("malloc", "default"), ("timed", 3)]

@pytest.mark.parametrize("layout", ["frames", "video"])
def test_a_missing_video_is_found_when_the_split_is_parsed(synthetic_root, tmp_path, layout):
    """Before any sample is read: the parse names the CSV row and the missing folder or file,
    writes one report row per video, and with ``missing_videos="drop"`` leaves its segments out."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns("rgb_frames" if layout == "video" else "videos"))
    complete = datamodule(root, layout=layout).samples("val")
    gone = complete[0]
    shutil.rmtree(gone.source) if layout == "frames" else gone.source.unlink()
    videos = {s.metadata["video_id"] for s in complete}
    reports = tmp_path / "reports"
    with pytest.raises(MissingMediaError, match=rf"1 of {len(videos)} annotated videos .*EPIC_100_validation.csv, "
                                                rf"line \d+: {gone.source} \(no such {'folder' if layout == 'frames' else 'file'}\)"):
        datamodule(root, layout=layout, missing_report_dir=reports).samples("val")
    dropped = datamodule(root, layout=layout, missing_videos="drop", missing_report_dir=reports).samples("val")
    assert [s.id for s in dropped] == [s.id for s in complete if s.source != gone.source]
    report = (reports / "missing_epic100_val.tsv").read_text().splitlines()
    assert len(report) == 2 and report[1].split("\t")[:2] == [gone.metadata["video_id"], str(gone.source)]


def _frame_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("frame_*.jpg"))


def test_segments_past_the_extracted_frames_are_read_to_the_last_one(synthetic_root, tmp_path, caplog):
    """A folder short of its video's last annotated frame is counted at parse time: segments
    running past its frames end at its last frame, with a warning naming the CSV row."""
    root = copy_dataset(synthetic_root, tmp_path / "data")
    complete = datamodule(root).samples("val")
    last = max(complete, key=lambda s: s.stop)
    for path in _frame_files(last.source)[last.stop - 2:]:
        path.unlink()
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.data.sources"):
        samples = datamodule(root).samples("val")
    assert [s.id for s in samples] == [s.id for s in complete]
    clipped = samples[[s.id for s in samples].index(last.id)]
    assert (clipped.start, clipped.stop) == (last.start, last.stop - 2)
    unchanged = [(a.start, a.stop) == (b.start, b.stop) for a, b in zip(samples, complete) if a.id != last.id]
    assert all(unchanged)
    assert re.search(rf"run past their extracted frames, by up to 2 frames .*EPIC_100_validation.csv, line \d+: "
                     rf"frames up to {last.stop} annotated, {last.stop - 2} in {last.source}", caplog.text)
    datamodule(root).dataset("val", training=False)[samples.index(clipped)]  # reads


@pytest.mark.parametrize("damage", ["short", "gap"])
def test_a_frame_folder_that_cannot_hold_its_segments_is_reported_at_parse_time(synthetic_root, tmp_path, damage):
    """Frames ending before a segment starts, or a gap in the frames (found when the video's last
    annotated frame is missing), is reported with the video's row: an error naming the row and
    the folder, or with ``missing_videos="drop"`` the segments left out (the gapped video's all,
    the short one's those that start past its frames, the others read to its last frame)."""
    root = copy_dataset(synthetic_root, tmp_path / "data")
    complete = datamodule(root).samples("val")
    last = max(complete, key=lambda s: s.start)
    frames = _frame_files(last.source)
    video_stop = max(s.stop for s in complete if s.source == last.source)
    # (a gap alone goes unseen at parse time: the folder is listed when its last annotated frame is missing)
    for path in (frames[last.start:] if damage == "short" else [frames[1], frames[video_stop - 1]]):
        path.unlink()
    past = [s for s in complete if s.source == last.source and s.start >= last.start]
    problem = (rf"its {last.start} extracted frames end before {len(past)} of its segments start \(line \d+: "
               rf"frames {last.start + 1}\.\.{last.stop}\)" if damage == "short"
               else r"unreadable: .*frame_0000000002\.jpg is missing")
    with pytest.raises(MissingMediaError, match=rf"1 of \d+ annotated videos .*EPIC_100_validation.csv, line \d+: "
                                                rf"{last.source} \({problem}"):
        datamodule(root).samples("val")
    dropped = datamodule(root, missing_videos="drop").samples("val")
    lost = {s.id for s in past} if damage == "short" else {s.id for s in complete if s.source == last.source}
    assert [s.id for s in dropped] == [s.id for s in complete if s.id not in lost]
    if damage == "short":
        assert {s.id for s in dropped if s.source == last.source}  # the video's other segments stay
        assert all(s.stop <= last.start for s in dropped if s.source == last.source)
    report = (root / "missing_epic100_val.tsv").read_text().splitlines()
    assert len(report) == 2 and report[1].split("\t")[:2] == [last.metadata["video_id"], str(last.source)]


def test_frame_folders_holding_their_last_annotated_frame_are_not_listed(synthetic_root, tmp_path, monkeypatch):
    """The parse looks up one file per video; a folder is listed only when that file is missing."""
    root = copy_dataset(synthetic_root, tmp_path / "data")

    def no_listing(self, source):
        raise AssertionError(f"listed {source}")

    monkeypatch.setattr(MediaLayout, "count_frames", no_listing)
    assert datamodule(root).samples("val")


@pytest.mark.parametrize(("video_threads", "num_workers", "threads"), [(None, 0, 0), (None, 4, 1), (3, 4, 3), (0, 4, 0)])
def test_decoder_threads_default_to_one_per_worker(tmp_path, video_threads, num_workers, threads):
    """DataLoader workers already share the cores: by default each decodes on one thread."""
    dm = datamodule(tmp_path, layout="video", video_threads=video_threads, num_workers=num_workers)
    assert dm.media_layout.video_threads == threads
    assert dm.build_reader().threads == threads


def test_timestamp_fields_and_formatting_are_checked():
    """Minutes and seconds stop at 59; a negative time cannot be written; writing rounds to
    the hundredth (0.29 is 0.28999... as a float)."""
    for text in ("00:60:00.00", "00:00:60.00"):
        with pytest.raises(ValueError, match="not a timestamp"):
            parse_timestamp(text)
    with pytest.raises(ValueError, match=">= 0"):
        format_timestamp(-0.5)
    assert format_timestamp(0.29) == "00:00:00.29"


def test_fields_are_stripped_and_an_empty_narration_is_none(tmp_path):
    path = write_annotations(tmp_path, with_field(0, "video_id", " P01_01 ", verb=" take ", narration=""))
    action = read_actions(path)[0]
    assert (action.video_id, action.verb, action.narration) == ("P01_01", "take", None)


@pytest.mark.parametrize(("row", "message"), [
    ("P01_01,2.0,1e999,32x24", r"column 'fps' is '1e999'; expected a finite number"),
    ("P01_01,2.0,25.0,32x24p", r"resolution '32x24p'; expected WIDTHxHEIGHT"),
    ("P01_01,0,25.0,32x24", r"duration 0.0 s at 25.0 fps; expected both > 0"),
], ids=["infinite-fps", "resolution-suffix", "zero-duration"])
def test_bad_video_info_rows_are_refused(tmp_path, row, message):
    info = tmp_path / "EPIC_100_video_info.csv"
    info.write_text(f"video_id,duration,fps,resolution\n{row}\n")
    with pytest.raises(AnnotationError, match=rf"line 2: {message}"):
        read_video_info(info)


def test_a_missing_or_empty_class_file_is_refused(tmp_path):
    path = tmp_path / "EPIC_100_verb_classes.csv"
    with pytest.raises(FileNotFoundError, match=r"EPIC_100_verb_classes.csv does not exist \(set data.init_args.root"):
        read_classes(path)
    path.write_text("id,key,instances,category\n")
    with pytest.raises(AnnotationError, match=r"EPIC_100_verb_classes.csv: no classes"):
        read_classes(path)


def test_a_misspelled_missing_videos_policy_is_refused(tmp_path):
    with pytest.raises(ConfigurationError, match="missing_videos must be 'error' or 'drop', got 'Drop'"):
        datamodule(tmp_path, missing_videos="Drop")


def test_the_tail_class_files_can_be_left_out(tmp_path):
    """``tail_*_file=None``: no tail subsets, only the unseen participant's."""
    write_annotations(tmp_path, GOOD_ROWS)
    dm = datamodule(stub_media(tmp_path, tmp_path / "annotations"), tail_verbs_file=None, tail_nouns_file=None)
    assert [set(s.subsets) for s in dm.samples("val")] == [{"unseen"}, {"unseen"}]


def test_a_tail_class_one_past_the_class_list_is_refused(tmp_path):
    write_annotations(tmp_path, GOOD_ROWS)
    (tmp_path / "annotations" / "EPIC_100_tail_nouns.csv").write_text("noun\n0\n2\n")  # (ids 0..1)
    with pytest.raises(AnnotationError, match=r"noun classes \[2\] are not among the 2 noun classes"):
        datamodule(stub_media(tmp_path, tmp_path / "annotations")).samples("val")


def test_only_segments_past_the_last_frame_are_warned_about(tmp_path, caplog):
    """20 extracted frames: a segment ending at frame 20 fits exactly (no warning), one
    ending at 40 is read up to frame 20, with a warning naming its line."""
    write_annotations(tmp_path, with_field(1, "start_frame", "15"))  # frames 6..20 and 15..40
    folder = tmp_path / "P01" / "rgb_frames" / "P01_01"
    folder.mkdir(parents=True)
    for n in range(1, 21):
        (folder / f"frame_{n:010d}.jpg").touch()
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.data.sources"):
        samples = datamodule(tmp_path).samples("val")
    assert [(s.start, s.stop) for s in samples] == [(5, 20), (14, 20)]
    assert "1 annotated frame ranges run past their extracted frames, by up to 20 frames" in caplog.text
    assert "line 3: frames up to 40 annotated, 20 in" in caplog.text


def test_a_blank_narration_timestamp_is_none(tmp_path):
    """A narration_timestamp of spaces is empty, as an empty narration is: None, not an error."""
    path = write_annotations(tmp_path, with_field(0, "narration_timestamp", "  "))
    assert read_actions(path)[0].narration_timestamp is None


def test_time_zero_is_formatted():
    """The first action of a video may start at 0 s (the real files have many)."""
    assert format_timestamp(0) == "00:00:00.00"
    assert format_timestamp(0.0, decimals=3) == "00:00:00.000"


def test_a_video_info_row_of_zero_fps_is_refused(tmp_path):
    info = tmp_path / "EPIC_100_video_info.csv"
    info.write_text("video_id,duration,fps,resolution\nP01_01,2.0,0,32x24\n")
    with pytest.raises(AnnotationError, match=r"line 2: duration 2.0 s at 0.0 fps; expected both > 0"):
        read_video_info(info)


def test_a_narration_id_of_sixty_characters_is_named_in_full(tmp_path):
    narration_id = "P01_01_" + "9" * 53  # 60 characters: shown whole, not cut
    path = write_annotations(tmp_path, with_field(1, "narration_id", narration_id, stop_frame="12"))
    with pytest.raises(AnnotationError, match=rf"\(narration_id {narration_id}\): frames 26..12"):
        read_actions(path)


def test_a_short_narration_id_over_two_lines_is_named_on_one_line(tmp_path):
    """A quoted narration_id holding a line break (a stray quote): the message shows its first line only."""
    path = write_annotations(tmp_path, with_field(0, "stop_frame", "3"))
    path.write_text(path.read_text().replace("\nP01_01_0,", '\n"P01_01_0\n",', 1))
    with pytest.raises(AnnotationError, match=r"lines 2-3 \(narration_id P01_01_0 \.\.\.\): frames 6..3") as error:
        read_actions(path)
    assert "\n" not in str(error.value)


def test_a_negative_tail_class_is_refused(tmp_path):
    write_annotations(tmp_path, GOOD_ROWS)
    (tmp_path / "annotations" / "EPIC_100_tail_verbs.csv").write_text("verb\n1\n-1\n")
    with pytest.raises(AnnotationError, match=r"verb classes \[-1\] are not among the 2 verb classes"):
        datamodule(stub_media(tmp_path, tmp_path / "annotations")).samples("val")


def test_a_negative_secondary_noun_class_is_refused(tmp_path):
    write_annotations(tmp_path, with_field(1, "all_nouns", "['cup', 'tap']", all_noun_classes="[1, -1]"))
    with pytest.raises(AnnotationError,
                       match=r"line 3 \(narration_id P01_01_1\): all_noun_classes \[1, -1\] holds \[-1\]"):
        datamodule(stub_media(tmp_path, tmp_path / "annotations")).samples("val")


def test_unseen_participant_ids_are_stripped(tmp_path):
    write_annotations(tmp_path, GOOD_ROWS)
    (tmp_path / "annotations" / "EPIC_100_unseen_participant_ids_validation.csv").write_text("participant_id\n P01 \n")
    samples = datamodule(stub_media(tmp_path, tmp_path / "annotations")).samples("val")
    assert [s.subsets["unseen"] for s in samples] == [True, True]


def test_each_sample_names_its_annotation_row(tmp_path):
    """The row goes into the messages of a sample that cannot be read."""
    path = write_annotations(tmp_path, GOOD_ROWS)
    samples = datamodule(stub_media(tmp_path, tmp_path / "annotations")).samples("val")
    assert [s.where for s in samples] == [f"{path}, line 2", f"{path}, line 3"]


def test_a_short_frame_folder_is_reported_with_its_first_segment_past_the_frames(tmp_path):
    write_annotations(tmp_path, GOOD_ROWS)  # frames 6..20 and 26..40 of P01_01
    folder = tmp_path / "P01" / "rgb_frames" / "P01_01"
    folder.mkdir(parents=True)
    for n in range(1, 6):
        (folder / f"frame_{n:010d}.jpg").touch()
    with pytest.raises(MissingMediaError, match=r"its 5 extracted frames end before 2 of its segments start "
                                                r"\(line 2: frames 6\.\.20\)"):
        datamodule(tmp_path).samples("val")


def test_benchmark_loads_batches_as_training_does_at_the_given_size(monkeypatch, tmp_path):
    from lightning_gsf.data import benchmark

    built = []

    class DataModule:
        def __init__(self, root, **options):
            built.append((root, options))

        def setup(self, stage):
            pass

        def train_dataloader(self):
            return [{"clip": torch.zeros(2, 1)}] * 3

    monkeypatch.setattr(benchmark, "EpicKitchensDataModule", DataModule)
    benchmark.measure(tmp_path, "video", 0, num_batches=1, batch_size=2, num_segments=4, input_size=48,
                      video_threads=2, randaugment=True)
    assert built == [(tmp_path, {"layout": "video", "num_segments": 4, "batch_size": 2, "num_workers": 0,
                                 "input_size": 48, "resize_size": 48, "video_threads": 2, "randaugment": True,
                                 "pin_memory": False, "drop_last": True})]


def test_benchmark_model_rate_follows_one_untimed_step(monkeypatch):
    import types

    from lightning_gsf.data import benchmark

    calls = []
    monkeypatch.setattr(benchmark.host_memory, "configure", lambda mode: None)
    monkeypatch.setattr(benchmark.model_benchmark, "make_batch", lambda config: (None, None))
    monkeypatch.setattr(benchmark.model_benchmark, "build_model", lambda *args: None)
    monkeypatch.setattr(benchmark.model_benchmark, "make_steps", lambda *args: types.SimpleNamespace(train=None))
    monkeypatch.setattr(benchmark.model_benchmark, "time_round_robin",
                        lambda steps, repeats, warmup, device: calls.append((repeats, warmup)) or {"train": [1.0]})
    benchmark.measure_model("resnet18", "gsf", batch_size=4, num_segments=2, input_size=32, repeats=3)
    assert calls == [(3, 1)]


def test_benchmark_without_root_times_a_generated_synthetic_set(monkeypatch):
    from lightning_gsf.data import benchmark

    generated, measured = [], []
    monkeypatch.setattr(benchmark, "generate_synthetic_dataset", lambda root: generated.append(root) or root.mkdir())
    monkeypatch.setattr(benchmark, "measure", lambda root, layout, workers, **kwargs: measured.append(root)
                        or benchmark.Throughput(layout, workers, 2, 1.0))
    benchmark.main(["--layouts", "frames", "--workers", "0", "--no-model"])
    assert len(generated) == 1 and measured == generated and generated[0].name == "synthetic"
