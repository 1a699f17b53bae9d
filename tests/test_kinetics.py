"""Kinetics-400: the CSV parser on the real files, path templates, missing videos, DataModule."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from lightning_gsf.data import kinetics
from lightning_gsf.data.errors import AnnotationError, MissingMediaError, SampleReadError
from lightning_gsf.data.kinetics import Kinetics400DataModule
from media_writers import (
    TINY_DATA_SETTINGS,
    check_loaders,
    fit_one_epoch_with_config,
    write_frame_folder,
    write_video,
)


@pytest.fixture(scope="module")
def k400_dir(shared_data: Path) -> Path:
    return shared_data / "kinetics400"


def test_val_excerpt_parses_quoted_labels(k400_dir: Path) -> None:
    clips = kinetics.read_csv(k400_dir / "kinetics-400_val.excerpt.csv")
    assert len(clips) == 400
    assert clips[0] == kinetics.KineticsClip("0wR5jVB-WPk", 417, 427, "val", "abseiling")
    # "air drumming",--nQbRBEz2s,104,114,val,0 : a quoted label and an id starting with dashes
    assert clips[1] == kinetics.KineticsClip("--nQbRBEz2s", 104, 114, "val", "air drumming")
    labels = {clip.label for clip in clips}
    assert "passing American football (in game)" in labels
    assert "massaging person's head" in labels


def test_label_map_is_the_sorted_val_labels(k400_dir: Path) -> None:
    names = kinetics.read_label_map(k400_dir / "label_map_k400.txt")
    clips = kinetics.read_csv(k400_dir / "kinetics-400_val.excerpt.csv")
    assert len(names) == kinetics.KINETICS400_NUM_CLASSES
    assert names == sorted({clip.label for clip in clips})


def test_test_excerpt_has_no_labels(k400_dir: Path) -> None:
    clips = kinetics.read_csv(k400_dir / "kinetics-400_test.excerpt.csv", labelled=False)
    assert len(clips) == 100
    assert clips[0] == kinetics.KineticsClip("--6bJUbfpnQ", 17, 27, "test", None)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (kinetics.VIDEO_TEMPLATE_BY_CLASS, "val/air drumming/--nQbRBEz2s_000104_000114.mp4"),
        (kinetics.VIDEO_TEMPLATE_FLAT, "val/--nQbRBEz2s_000104_000114.mp4"),
        ("{split}/{label_underscored}/{clip_id}", "val/air_drumming/--nQbRBEz2s_000104_000114"),
    ],
)
def test_relative_path_templates(template: str, expected: str) -> None:
    clip = kinetics.KineticsClip("--nQbRBEz2s", 104, 114, "val", "air drumming")
    assert clip.relative_path(template) == Path(expected)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("youtube_id,time_start,time_end,split\nabc,1,11,val\n", r"line 1: header .* lacks the columns \['label'\]"),
        ("label,youtube_id,time_start,time_end,split\nabseiling,abc,1,11,val\nabseiling,abd,one,11,val\n",
         r"line 3: expected a whole number of seconds in 'time_start'"),
        ("label,youtube_id,time_start,time_end,split\nabseiling,abc,1_0,11,val\n",
         r"line 2: expected a whole number of seconds in 'time_start', got '1_0'"),
        ("label,youtube_id,time_start,time_end,split\n\"air drumming\",abc,1,11\n", r"line 2: expected 5 fields"),
        ("label,youtube_id,time_start,time_end,split\nabseiling,abc,11,1,val\n", r"line 2: expected 0 <= time_start < time_end"),
        ("label,youtube_id,time_start,time_end,split\nabseiling,abc,11,11,val\n", r"line 2: expected 0 <= time_start < time_end"),
        # ("17.0" is a whole second some copies write; 17.5 names no clip file)
        ("label,youtube_id,time_start,time_end,split\nabseiling,abc,17.5,27,val\n",
         r"line 2: expected a whole number of seconds in 'time_start', got '17.5'"),
        # (an empty split made the path "/abc_...mp4", outside the dataset root)
        ("label,youtube_id,time_start,time_end,split\nabseiling,abc,1,11, \n", r"line 2: empty youtube_id, split or label"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "kinetics-400_train.csv"
    path.write_text(content)
    with pytest.raises(AnnotationError, match=message) as error:
        kinetics.read_csv(path, labelled=True)
    assert str(path) in str(error.value)


# ---------------------------------------------------------------- DataModule on a tiny real-layout dataset


# Real rows (quoted labels with spaces and parentheses among them), re-split into a tiny dataset.
TRAIN_ROWS, VAL_ROWS = (0, 1, 161, 196), (2, 208)


def _build_kinetics(tmp_path: Path, k400_dir: Path, template: str, layout: str = "video") -> tuple[dict, dict, dict]:
    with (k400_dir / "kinetics-400_val.excerpt.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    test_rows = list(csv.DictReader((k400_dir / "kinetics-400_test.excerpt.csv").open(newline="")))[:2]
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    names = kinetics.read_label_map(k400_dir / "label_map_k400.txt")
    expected: dict[str, dict[str, int] | None] = {}
    numbers: dict[str, int] = {}
    for split, split_rows in (("train", [rows[i] for i in TRAIN_ROWS]), ("val", [rows[i] for i in VAL_ROWS]),
                              ("test", test_rows)):
        split_rows = [{**row, "split": split} for row in split_rows]
        with (annotations / f"kinetics-400_{split}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(split_rows[0]))
            writer.writeheader()
            writer.writerows(split_rows)
        for row in split_rows:
            clip = kinetics.KineticsClip(row["youtube_id"], int(row["time_start"]), int(row["time_end"]), split,
                                         row.get("label"))
            numbers[clip.clip_id] = len(numbers) + 1
            expected[clip.clip_id] = None if clip.label is None else {"class": names.index(clip.label)}
            path = tmp_path / "kinetics400" / clip.relative_path(template)
            if layout == "video":
                write_video(path, numbers[clip.clip_id], 12)
            else:
                write_frame_folder(path, numbers[clip.clip_id], 12, "img_{:05d}.jpg")
    arguments = dict(
        root=tmp_path / "kinetics400",
        annotations_dir=annotations,
        class_names_file=str(k400_dir / "label_map_k400.txt"),
        path_template=template,
        layout=layout,
        missing_report_dir=tmp_path / "logs",
        **TINY_DATA_SETTINGS,
    )
    return arguments, expected, numbers


@pytest.mark.parametrize(
    ("template", "layout"),
    [
        (kinetics.VIDEO_TEMPLATE_BY_CLASS, "video"),
        (kinetics.VIDEO_TEMPLATE_FLAT, "video"),
        ("{split}/{label_underscored}/{clip_id}", "frames"),
        (kinetics.FRAMES_TEMPLATE, "frames"),
    ],
)
def test_datamodule_yields_labelled_batches(tmp_path: Path, k400_dir: Path, template: str, layout: str) -> None:
    arguments, expected, numbers = _build_kinetics(tmp_path, k400_dir, template, layout)
    datamodule = Kinetics400DataModule(**arguments)
    assert datamodule.num_classes == {"class": 400}
    check_loaders(datamodule, expected, numbers)
    assert not (tmp_path / "logs").exists()  # nothing missing, no report


def _train_csv_of(tmp_path: Path, k400_dir: Path, skip: int | None = None) -> Path:
    """A train CSV of the real val excerpt's rows (one per class, all 400), one class left out
    with ``skip``; rows in reverse order (the excerpt's are alphabetical, so the class order
    could not tell sorting from reading order)."""
    header, *rows = (k400_dir / "kinetics-400_val.excerpt.csv").read_text().splitlines(keepends=True)
    kept = [row for i, row in enumerate(rows, start=1) if i != skip]
    folder = tmp_path / "annotations_all"
    folder.mkdir()
    (folder / "kinetics-400_train.csv").write_text(header + "".join(reversed(kept)))
    return folder


def test_classes_default_to_the_sorted_train_labels(tmp_path: Path, k400_dir: Path) -> None:
    annotations = _train_csv_of(tmp_path, k400_dir)
    datamodule = Kinetics400DataModule(root=tmp_path, annotations_dir=annotations, class_names_file=None)
    assert datamodule.class_names == sorted(kinetics.read_label_map(k400_dir / "label_map_k400.txt"))
    assert datamodule.class_names[:3] == ["abseiling", "air drumming", "answering questions"]


def test_class_lists_of_other_than_400_classes_are_refused(tmp_path: Path, k400_dir: Path) -> None:
    """A train CSV missing a class would shift every later index; a label map of Kinetics-600
    would make a 600-way head."""
    annotations = _train_csv_of(tmp_path, k400_dir, skip=5)
    datamodule = Kinetics400DataModule(root=tmp_path, annotations_dir=annotations, class_names_file=None)
    with pytest.raises(AnnotationError, match=r"kinetics-400_train.csv: 399 labels, where Kinetics-400 has 400 classes; the rarest: "):
        datamodule.num_classes
    label_map = tmp_path / "label_map.txt"
    label_map.write_text((k400_dir / "label_map_k400.txt").read_text() + "zumba dancing\n")
    datamodule = Kinetics400DataModule(root=tmp_path, annotations_dir=tmp_path, class_names_file="label_map.txt")
    with pytest.raises(AnnotationError, match=r"label_map.txt: 401 classes"):
        datamodule.num_classes


def test_without_a_label_map_a_missing_train_csv_says_what_to_give(tmp_path: Path, k400_dir: Path) -> None:
    """Even ``gsf validate`` needs the class list; without a label map it comes from the train CSV."""
    datamodule = Kinetics400DataModule(root=tmp_path, annotations_dir=tmp_path, class_names_file=None)
    with pytest.raises(AnnotationError, match=r"kinetics-400_train.csv: not found; .*class_names_file \(label_map_k400.txt\)"):
        datamodule.num_classes


def test_the_path_template_follows_the_layout(tmp_path: Path) -> None:
    """Frames default to one folder per clip; a video template with frames is refused by name."""
    frames = Kinetics400DataModule(root=tmp_path, annotations_dir=tmp_path, layout="frames")
    assert frames.path_template == kinetics.FRAMES_TEMPLATE == "{split}/{clip_id}"
    assert Kinetics400DataModule(root=tmp_path, annotations_dir=tmp_path).path_template == kinetics.VIDEO_TEMPLATE_BY_CLASS
    with pytest.raises(ValueError, match=r"names a video file, but layout is 'frames': .*'\{split\}/\{clip_id\}'"):
        Kinetics400DataModule(root=tmp_path, annotations_dir=tmp_path, layout="frames",
                              path_template=kinetics.VIDEO_TEMPLATE_BY_CLASS)


def _remove_one_train_video(tmp_path: Path) -> str:
    missing = tmp_path / "kinetics400" / "train" / "air drumming" / "--nQbRBEz2s_000104_000114.mp4"
    missing.unlink()
    return str(missing)


def test_missing_videos_stop_with_an_error_and_a_report(tmp_path: Path, k400_dir: Path) -> None:
    arguments, _, _ = _build_kinetics(tmp_path, k400_dir, kinetics.VIDEO_TEMPLATE_BY_CLASS)
    missing = _remove_one_train_video(tmp_path)
    datamodule = Kinetics400DataModule(**arguments)
    with pytest.raises(MissingMediaError, match=r"1 of 4 annotated videos are missing.*kinetics-400_train.csv, line 3") as error:
        datamodule.samples("train")
    report = tmp_path / "logs" / "missing_kinetics400_train.tsv"
    assert str(report) in str(error.value)
    assert isinstance(error.value, SampleReadError)
    assert (error.value.report_path, error.value.count) == (report, 1)
    assert report.read_text().splitlines()[1].split("\t")[:3] == ["--nQbRBEz2s_000104_000114", missing, "no such file"]


def test_missing_videos_can_be_dropped_with_a_report(tmp_path: Path, k400_dir: Path, caplog) -> None:
    arguments, expected, numbers = _build_kinetics(tmp_path, k400_dir, kinetics.VIDEO_TEMPLATE_BY_CLASS)
    _remove_one_train_video(tmp_path)
    datamodule = Kinetics400DataModule(**arguments, missing_videos="drop")
    with caplog.at_level("WARNING"):
        samples = datamodule.samples("train")
    assert [sample.id for sample in samples] == [
        "0wR5jVB-WPk_000417_000427", "034KeIezQZ8_000000_000010", "-huT_p-r_zA_001989_001999"
    ]
    assert "1 of 4 annotated videos are missing" in caplog.text
    assert (tmp_path / "logs" / "missing_kinetics400_train.tsv").is_file()
    check_loaders(datamodule, expected, numbers)


def test_a_label_map_listing_a_class_twice_is_refused(tmp_path: Path, k400_dir: Path) -> None:
    names = (k400_dir / "label_map_k400.txt").read_text().splitlines()
    path = tmp_path / "label_map.txt"
    path.write_text("\n".join([*names, names[3]]) + "\n")
    with pytest.raises(AnnotationError, match=rf"label_map.txt: class names listed more than once: \['{names[3]}'\]"):
        kinetics.read_label_map(path)


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_labelled_split_without_its_label_column_is_refused(tmp_path: Path, k400_dir: Path, split: str) -> None:
    """Read as unlabelled, the split would train or score on nothing; the test split may lack it."""
    arguments, _, _ = _build_kinetics(tmp_path, k400_dir, kinetics.VIDEO_TEMPLATE_BY_CLASS)
    path = arguments["annotations_dir"] / f"kinetics-400_{split}.csv"
    rows = list(csv.DictReader(path.open(newline="")))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[name for name in rows[0] if name != "label"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(AnnotationError, match=rf"kinetics-400_{split}.csv, line 1: header .* lacks the columns \['label'\]"):
        Kinetics400DataModule(**arguments).samples(split)


def test_the_frame_count_cache_keeps_the_counts_of_other_splits(tmp_path: Path, k400_dir: Path) -> None:
    """Counting a second split adds its counts to the cache's, not in their place."""
    arguments, _, _ = _build_kinetics(tmp_path, k400_dir, "{split}/{label_underscored}/{clip_id}", layout="frames")
    cache = tmp_path / "frame_counts.csv"
    val = Kinetics400DataModule(**arguments, frame_count_cache=cache).samples("val")
    train = Kinetics400DataModule(**arguments, frame_count_cache=cache).samples("train")
    counted = {line.rsplit(",", 1)[0] for line in cache.read_text().splitlines()[1:]}
    assert counted == {str(sample.source / "img_00001.jpg") for sample in [*val, *train]} and len(counted) == 6


def test_unknown_label_names_file_and_line(tmp_path: Path, k400_dir: Path) -> None:
    arguments, _, _ = _build_kinetics(tmp_path, k400_dir, kinetics.VIDEO_TEMPLATE_BY_CLASS)
    train_csv = arguments["annotations_dir"] / "kinetics-400_train.csv"
    train_csv.write_text(train_csv.read_text() + "\"flying carpets\",abcdefghijk,1,11,train,0\n")
    with pytest.raises(AnnotationError, match=r"kinetics-400_train.csv, line 6: unknown label 'flying carpets'"):
        Kinetics400DataModule(**arguments).samples("train")


def test_frame_count_cache_is_written_then_used(tmp_path: Path, k400_dir: Path) -> None:
    arguments, _, _ = _build_kinetics(tmp_path, k400_dir, "{split}/{label_underscored}/{clip_id}", layout="frames")
    cache = tmp_path / "frame_counts.csv"
    first = Kinetics400DataModule(**arguments, frame_count_cache=cache).samples("val")
    assert [sample.num_frames for sample in first] == [12, 12]
    lines = cache.read_text().splitlines()
    assert lines[0] == "counted_as,num_frames"
    assert lines[1] == f"{first[0].source / 'img_00001.jpg'},12"  # (the first frame of Kinetics' template)
    # A cached count wins over the folder, which is then no longer listed.
    rows = cache.read_text().replace(",12\n", ",7\n")
    cache.write_text(rows)
    second = Kinetics400DataModule(**arguments, frame_count_cache=cache).samples("val")
    assert [sample.num_frames for sample in second] == [7, 7]
    # Another first frame index does not take these counts: counted again, the folders are found
    # not to start at frame 0.
    with pytest.raises(Exception, match="img_00000.jpg is missing"):
        Kinetics400DataModule(**arguments, first_frame_index=0, frame_count_cache=cache).samples("val")
    # Counts of another layout (or root, or template) are not taken for these: counted again.
    cache.write_text("".join(f"{sample.source}.mp4,24\n" for sample in first).join(["counted_as,num_frames\n", ""]))
    third = Kinetics400DataModule(**arguments, frame_count_cache=cache).samples("val")
    assert [sample.num_frames for sample in third] == [12, 12]


@pytest.mark.parametrize(("count", "problem"), [("-3", "a negative frame count, -3"), ("twelve", "expected '<path>,<frames>'")])
def test_a_bad_frame_count_cache_row_is_blamed_on_the_cache(tmp_path: Path, k400_dir: Path, count, problem) -> None:
    """A count that no video can have names the cache file and its line, not the video."""
    arguments, _, _ = _build_kinetics(tmp_path, k400_dir, "{split}/{label_underscored}/{clip_id}", layout="frames")
    cache = tmp_path / "frame_counts.csv"
    Kinetics400DataModule(**arguments, frame_count_cache=cache).samples("val")
    cache.write_text(cache.read_text().replace(",12\n", f",{count}\n", 1))
    with pytest.raises(ValueError, match=rf"frame_counts.csv, line 2: {re.escape(problem)}.*delete the file"):
        Kinetics400DataModule(**arguments, frame_count_cache=cache).samples("val")


def test_a_frame_count_cache_keyed_by_sample_id_is_counted_again(tmp_path: Path, k400_dir: Path, caplog) -> None:
    """A cache of the earlier format (``id,num_frames``) knew nothing of the layout it counted."""
    arguments, _, _ = _build_kinetics(tmp_path, k400_dir, "{split}/{label_underscored}/{clip_id}", layout="frames")
    cache = tmp_path / "frame_counts.csv"
    ids = [sample.id for sample in Kinetics400DataModule(**arguments).samples("val")]
    cache.write_text("id,num_frames\n" + "".join(f"{clip},24\n" for clip in ids))
    samples = Kinetics400DataModule(**arguments, frame_count_cache=cache).samples("val")
    assert [sample.num_frames for sample in samples] == [12, 12]
    assert "counting the frames again" in caplog.text
    assert cache.read_text().startswith("counted_as,num_frames\n")


@pytest.mark.slow
def test_config_trains_one_epoch(tmp_path: Path, k400_dir: Path) -> None:
    arguments, _, _ = _build_kinetics(tmp_path, k400_dir, kinetics.VIDEO_TEMPLATE_BY_CLASS)
    fit_one_epoch_with_config("configs/kinetics400/gsf_resnet50_8f.yaml", arguments, tmp_path / "runs")
    assert list((tmp_path / "runs").rglob("*.ckpt"))


@pytest.mark.parametrize(("video_threads", "num_workers", "threads"), [(None, 0, 0), (None, 2, 1), (2, 2, 2)])
def test_decoder_threads_default_to_one_per_worker(tmp_path: Path, video_threads, num_workers: int, threads: int) -> None:
    datamodule = Kinetics400DataModule(root=tmp_path, annotations_dir=tmp_path, video_threads=video_threads,
                                       num_workers=num_workers)
    assert datamodule.build_reader().threads == threads


CSV_HEADER = "label,youtube_id,time_start,time_end,split\n"


@pytest.mark.parametrize(("row", "message"), [
    (" ,abc,1,11,val\n", r"line 2: empty youtube_id, split or label"),
    ("abseiling,abc,-1,9,val\n", r"line 2: expected 0 <= time_start < time_end, got -1, 9")])
def test_a_row_with_an_empty_label_or_a_negative_start_is_refused_by_line(tmp_path: Path, row: str,
                                                                          message: str) -> None:
    path = tmp_path / "kinetics-400_train.csv"
    path.write_text(CSV_HEADER + row)
    with pytest.raises(AnnotationError, match=message):
        kinetics.read_csv(path, labelled=True)


def test_blanks_around_a_youtube_id_are_stripped(tmp_path: Path) -> None:
    path = tmp_path / "kinetics-400_val.csv"
    path.write_text(CSV_HEADER + "abseiling, abc ,1,11,val\n")
    assert kinetics.read_csv(path)[0].clip_id == "abc_000001_000011"


def test_the_frames_layout_refuses_an_upper_case_video_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="names a video file, but layout is 'frames'"):
        Kinetics400DataModule(root=tmp_path, annotations_dir=tmp_path, layout="frames",
                              path_template="{split}/{clip_id}.MP4")


def test_a_train_csv_of_401_labels_is_refused(tmp_path: Path, k400_dir: Path) -> None:
    folder = tmp_path / "annotations_all"
    folder.mkdir()
    (folder / "kinetics-400_train.csv").write_text(
        (k400_dir / "kinetics-400_val.excerpt.csv").read_text() + "\"zumba dancing\",abcdefghijk,1,11,val,0\n")
    datamodule = Kinetics400DataModule(root=tmp_path, annotations_dir=folder, class_names_file=None)
    with pytest.raises(AnnotationError, match=r"401 labels, where Kinetics-400 has 400 classes; the rarest: "
                                              r"'abseiling' \(1 row, first on line 2\)"):
        datamodule.num_classes


def test_a_clip_keeps_its_youtube_id_start_and_end(tmp_path: Path, k400_dir: Path) -> None:
    datamodule = Kinetics400DataModule(root=tmp_path, annotations_dir=k400_dir, val_file="kinetics-400_val.excerpt.csv",
                                       class_names_file="label_map_k400.txt")
    assert datamodule.candidates("val")[0].metadata == {"youtube_id": "0wR5jVB-WPk", "time_start": 417, "time_end": 427}
