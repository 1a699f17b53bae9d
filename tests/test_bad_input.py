"""Bad input, every dataset: each kind of breakage gives a clear error or, opted in, an exact skip.

One matrix, run over every dataset's real pipeline (annotation parser -> sample list -> reader
-> transforms). A dataset is one entry of :data:`DATASETS` (a builder writing a tiny, valid
copy of its format); a kind of bad input is one entry of the corruption tables. For each pair:

- by default the pipeline stops with ``AnnotationError`` / ``SampleReadError`` whose message
  names the file (and the CSV line or JSON entry for annotations);
- with the opt-in settings (``skip_unreadable=True``, and ``missing_videos="drop"`` where the
  dataset checks its media at parse time) an unreadable sample is skipped, a warning names it,
  and exactly the affected samples are counted as skipped or dropped. Annotation errors are
  never skipped.
- a config with an unknown key or a wrongly typed value is refused by ``gsf`` naming the key.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision.io import write_jpeg

from lightning_gsf.cli import main as gsf_main
from lightning_gsf.data.base import VideoDataModule
from lightning_gsf.data.diving48 import Diving48DataModule
from lightning_gsf.data.epic import EpicKitchensDataModule
from lightning_gsf.data.errors import AnnotationError, SampleReadError
from lightning_gsf.data.kinetics import VIDEO_TEMPLATE_FLAT, Kinetics400DataModule
from lightning_gsf.data.ssv1 import SomethingSomethingV1DataModule
from lightning_gsf.data.ssv2 import SomethingSomethingV2DataModule
from lightning_gsf.data.synthetic import generate_synthetic_dataset
from conftest import SHARED_DATA
from media_writers import write_frame_folder, write_video

TINY = dict(num_segments=2, batch_size=2, num_workers=0, input_size=16, resize_size=16, seed=0)
NUM_FRAMES = 12
# Two of the real classes, in the real class lists (a list must hold all 174).
CLASSES = ["Pushing something from left to right", "Pulling something from right to left"]


@dataclass
class BuiltDataset:
    """A tiny valid dataset on disk, and how to break its annotations."""

    module: type[VideoDataModule]
    kwargs: dict[str, Any]
    append_malformed_row: Callable[[], str]  # returns what the error must name (e.g. "line 5")
    append_unknown_label_row: Callable[[], str]
    lenient: dict[str, Any] = field(default_factory=dict)  # the opt-in to skipping

    def datamodule(self, **overrides: Any) -> VideoDataModule:
        return self.module(**{**self.kwargs, **overrides})


def _append_line(path: Path, line: str, where: str) -> Callable[[], str]:
    def append() -> str:
        with path.open("a") as file:
            file.write(line + "\n")
        return f"{path.name}, {where}"

    return append


def _append_json_entry(path: Path, entry: Any) -> Callable[[], str]:
    def append() -> str:
        entries = json.loads(path.read_text())
        entries.append(entry)
        path.write_text(json.dumps(entries))
        return f"{path.name}, entry {len(entries) - 1}"

    return append


def build_ssv1(root: Path) -> BuiltDataset:
    annotations = root / "annotations"
    annotations.mkdir(parents=True)
    shutil.copy(SHARED_DATA / "ssv1" / "mmaction2_sthv1_label_map.txt", annotations / "labels.csv")
    ids = ["101", "102", "103"]
    (annotations / "train.csv").write_text("".join(f"{i};{CLASSES[n % 2]}\n" for n, i in enumerate(ids)))
    (annotations / "val.csv").write_text(f"104;{CLASSES[0]}\n")
    for number, video_id in enumerate([*ids, "104"], start=1):
        write_frame_folder(root / "frames" / video_id, number, NUM_FRAMES, "{:05d}.jpg")
    train = annotations / "train.csv"
    return BuiltDataset(
        SomethingSomethingV1DataModule,
        dict(root=root / "frames", annotations_dir=annotations, labels_file="labels.csv", train_file="train.csv",
             val_file="val.csv", test_file="val.csv", missing_report_dir=root / "logs", **TINY),
        _append_line(train, "105 no separator here", "line 4"),
        _append_line(train, "105;Flying something", "line 4"),
        lenient=dict(skip_unreadable=True, missing_videos="drop"),
    )  # fmt: skip


def build_ssv2(root: Path) -> BuiltDataset:
    annotations = root / "annotations"
    annotations.mkdir(parents=True)
    shutil.copy(SHARED_DATA / "ssv2" / "something-something-v2-labels.json", annotations / "labels.json")

    def entry(video_id: str, n: int) -> dict:
        name = CLASSES[n % 2]
        return {"id": video_id, "template": name.replace("something", "[something]"), "placeholders": ["a cup"]}

    ids = ["201", "202", "203"]
    (annotations / "train.json").write_text(json.dumps([entry(i, n) for n, i in enumerate(ids)]))
    (annotations / "val.json").write_text(json.dumps([entry("204", 0)]))
    for number, video_id in enumerate([*ids, "204"], start=1):
        write_video(root / "videos" / f"{video_id}.mp4", number, NUM_FRAMES)
    train = annotations / "train.json"
    return BuiltDataset(
        SomethingSomethingV2DataModule,
        dict(root=root / "videos", annotations_dir=annotations, labels_file="labels.json", train_file="train.json",
             val_file="val.json", test_file="val.json", video_suffix=".mp4", missing_report_dir=root / "logs", **TINY),
        _append_json_entry(train, {"no id": "205"}),
        _append_json_entry(train, {"id": "205", "template": "Flying [something]", "placeholders": []}),
        lenient=dict(skip_unreadable=True, missing_videos="drop"),
    )  # fmt: skip


def build_kinetics(root: Path, shared: Path) -> BuiltDataset:
    annotations = root / "annotations"
    annotations.mkdir(parents=True)
    (annotations / "labels.txt").write_bytes((shared / "kinetics400" / "label_map_k400.txt").read_bytes())
    header = "label,youtube_id,time_start,time_end,split\n"
    rows = {"train": [("abseiling", "aaaaaaaaaaa"), ("air drumming", "bbbbbbbbbbb"), ("abseiling", "ccccccccccc")],
            "val": [("air drumming", "ddddddddddd")]}  # fmt: skip
    number = 0
    for split, split_rows in rows.items():
        lines = [f'"{label}",{youtube_id},10,20,{split}' for label, youtube_id in split_rows]
        (annotations / f"kinetics-400_{split}.csv").write_text(header + "\n".join(lines) + "\n")
        for _, youtube_id in split_rows:
            number += 1
            write_video(root / "videos" / split / f"{youtube_id}_000010_000020.mp4", number, NUM_FRAMES)
    val_rows = (annotations / "kinetics-400_val.csv").read_text()
    (annotations / "kinetics-400_test.csv").write_text(val_rows.replace(",val", ",test"))
    train = annotations / "kinetics-400_train.csv"
    return BuiltDataset(
        Kinetics400DataModule,
        dict(root=root / "videos", annotations_dir=annotations, class_names_file=str(annotations / "labels.txt"),
             path_template=VIDEO_TEMPLATE_FLAT, missing_report_dir=root / "logs", **TINY),
        _append_line(train, "abseiling,eeeeeeeeeee", "line 5"),
        _append_line(train, '"flying carpets",eeeeeeeeeee,10,20,train', "line 5"),
        lenient=dict(skip_unreadable=True, missing_videos="drop"),
    )  # fmt: skip


def build_diving48(root: Path, shared: Path) -> BuiltDataset:
    annotations = root / "annotations"
    annotations.mkdir(parents=True)

    def entries(names: list[str]) -> list[dict]:
        return [{"vid_name": name, "label": label, "start_frame": 0, "end_frame": NUM_FRAMES}
                for label, name in enumerate(names)]  # fmt: skip

    splits = {"train": ["dive_a", "dive_b", "dive_c"], "test": ["dive_d"]}
    number = 0
    for split, names in splits.items():
        (annotations / f"Diving48_V2_{split}.json").write_text(json.dumps(entries(names)))
        for name in names:
            number += 1
            write_video(root / "videos" / f"{name}.mp4", number, NUM_FRAMES)
    train = annotations / "Diving48_V2_train.json"
    return BuiltDataset(
        Diving48DataModule,
        dict(root=root / "videos", annotations_dir=annotations,
             vocab_file=str(shared / "diving48" / "Diving48_vocab.json"),
             layout="video", video_suffix=".mp4", missing_report_dir=root / "logs", **TINY),
        _append_json_entry(train, {"vid_name": "dive_e", "label": "seven", "start_frame": 0, "end_frame": 5}),
        _append_json_entry(train, {"vid_name": "dive_e", "label": 480, "start_frame": 0, "end_frame": 5}),
        lenient=dict(skip_unreadable=True, missing_videos="drop"),
    )  # fmt: skip


@pytest.fixture(scope="module")
def pristine_epic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("epic_pristine") / "epic"
    # Two actions per video: breaking one video breaks two samples, the others stay readable.
    generate_synthetic_dataset(
        root, num_train=6, num_val=2, num_test=1, size=32, actions_per_video=(2, 2), overwrite=True
    )
    return root


def build_epic(root: Path, pristine: Path, layout: str) -> BuiltDataset:
    shutil.copytree(pristine, root, dirs_exist_ok=True)
    train = root / "annotations" / "EPIC_100_train.csv"
    last = train.read_text().strip().splitlines()[-1].split(",")
    line = f"line {len(train.read_text().strip().splitlines()) + 1}"
    unknown = [*last[:10], "999", *last[11:]]
    unknown[0] = last[0] + "_unknown"
    return BuiltDataset(
        EpicKitchensDataModule,
        dict(root=root, layout=layout, missing_report_dir=root / "logs", **TINY),
        _append_line(train, ",".join(last[:5]), line),
        _append_line(train, ",".join(unknown), line),
        lenient=dict(skip_unreadable=True, missing_videos="drop"),
    )


DATASETS: dict[str, tuple[str, Callable[..., BuiltDataset]]] = {
    # name: (layout layout, builder(root, shared_data, pristine_epic))
    "epic-frames": ("frames", lambda root, shared, epic: build_epic(root, epic, "frames")),
    "epic-video": ("video", lambda root, shared, epic: build_epic(root, epic, "video")),
    "ssv1": ("frames", lambda root, shared, epic: build_ssv1(root)),
    "ssv2": ("video", lambda root, shared, epic: build_ssv2(root)),
    "kinetics400": ("video", lambda root, shared, epic: build_kinetics(root, shared)),
    "diving48": ("video", lambda root, shared, epic: build_diving48(root, shared)),
}


@pytest.fixture
def build(tmp_path, shared_data, request) -> Callable[[str], BuiltDataset]:
    def builder(name: str) -> BuiltDataset:
        epic = request.getfixturevalue("pristine_epic") if name.startswith("epic") else None
        return DATASETS[name][1](tmp_path / name, shared_data, epic)

    return builder


# --- unreadable media ---------------------------------------------------------------------------


def _corrupt(path: Path) -> None:
    """Same length, random bytes: no container header, no stream."""
    noise = torch.randint(0, 256, (path.stat().st_size,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    path.write_bytes(noise.numpy().tobytes())


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _folder_instead_of_file(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _file_instead_of_folder(path: Path) -> None:
    shutil.rmtree(path)
    path.write_bytes(b"")


def _frame_files(folder: Path, start: int, stop: int) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")
    return files[start:stop]


def _remove_frames_in_range(sample) -> range:
    """Delete the second half of the sample's frames (still inside the range its annotation gives)."""
    broken = range((sample.start + sample.stop) // 2, sample.stop)
    for path in _frame_files(sample.source, broken.start, broken.stop):
        path.unlink()
    return broken


def _empty_frame_folder(sample) -> None:
    for path in _frame_files(sample.source, 0, None):
        path.unlink()


def _frames_of_two_sizes(sample) -> range:
    """Re-write the first half of the sample's frames at another size: every clip mixes both."""
    broken = range(sample.start, (sample.start + sample.stop) // 2)
    for path in _frame_files(sample.source, broken.start, broken.stop):
        write_jpeg(torch.full((3, 20, 20), 128, dtype=torch.uint8), str(path))
    return broken


# Each breakage returns the frame indices it broke, or None when it broke the whole file or folder.
VIDEO_BREAKAGES: dict[str, Callable[[Any], range | None]] = {
    "corrupt_video": lambda sample: _corrupt(sample.source),
    "truncated_video": lambda sample: _truncate(sample.source),
    "empty_video": lambda sample: _empty(sample.source),
    "folder_instead_of_video": lambda sample: _folder_instead_of_file(sample.source),
}
FRAME_BREAKAGES: dict[str, Callable[[Any], range | None]] = {
    "missing_frames": _remove_frames_in_range,
    "no_frames": _empty_frame_folder,
    "frame_of_another_size": _frames_of_two_sizes,
    "file_instead_of_folder": lambda sample: _file_instead_of_folder(sample.source),
}
# A frame-folder dataset without frame ranges in its annotations (SSv1) counts the frames on
# disk, so frames missing at the end of a folder only shorten the video: that is no error.
BOUNDED_BY_ANNOTATION = {"epic-frames"}

MEDIA_CASES = [
    pytest.param(name, kind, id=f"{name}-{kind}")
    for name, (layout, _) in DATASETS.items()
    for kind in (VIDEO_BREAKAGES if layout == "video" else FRAME_BREAKAGES)
    if not (kind == "missing_frames" and name not in BOUNDED_BY_ANNOTATION)
]


def run_training_pipeline(datamodule: VideoDataModule) -> tuple[int, int]:
    """Load every training sample once, in order; returns (samples in the split, samples skipped)."""
    datamodule.setup("fit")
    dataset = datamodule.train_dataloader().dataset
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["clip"].shape == (TINY["num_segments"], 3, TINY["input_size"], TINY["input_size"])
    return len(dataset), dataset.num_skipped


def _break_first_sample(built: BuiltDataset, kind: str) -> tuple[Path, int, int]:
    """Break the first training sample's media; returns its source, the samples it breaks, and the split size."""
    samples = built.datamodule().samples("train")
    victim = samples[0]
    broken = (VIDEO_BREAKAGES | FRAME_BREAKAGES)[kind](victim)

    def is_affected(sample) -> bool:
        overlap = broken is None or range(max(sample.start, broken.start), min(sample.stop, broken.stop))
        return sample.source == victim.source and bool(overlap)

    return victim.source, sum(map(is_affected, samples)), len(samples)


@pytest.mark.parametrize(("dataset", "kind"), MEDIA_CASES)
def test_unreadable_media_stops_with_an_error_naming_the_file(build, dataset, kind):
    built = build(dataset)
    row = built.datamodule().samples("train")[0].where  # (the sample _break_first_sample breaks)
    source, _, _ = _break_first_sample(built, kind)
    with pytest.raises(SampleReadError) as error:
        run_training_pipeline(built.datamodule())
    assert str(source) in str(error.value) or source.name in str(error.value)
    assert row and row in str(error.value), "the annotation row is named too"


@pytest.mark.parametrize(("dataset", "kind"), MEDIA_CASES)
def test_unreadable_media_is_skipped_and_counted_when_opted_in(build, dataset, kind, caplog):
    built = build(dataset)
    source, affected, annotated = _break_first_sample(built, kind)
    with caplog.at_level(logging.WARNING):
        kept, skipped = run_training_pipeline(built.datamodule(**built.lenient))
    dropped = annotated - kept
    assert dropped + skipped == affected, f"dropped {dropped} at parse time, skipped {skipped} at load time"
    # The warning names the file, or the report of dropped videos it points to does.
    report_dir = built.kwargs.get("missing_report_dir")
    reports = [path.read_text() for path in report_dir.glob("*.tsv")] if report_dir else []
    assert any(source.name in text for text in [record.getMessage() for record in caplog.records] + reports)


@pytest.mark.parametrize(
    ("dataset", "kind", "problem"),
    [
        ("kinetics400", "folder_instead_of_video", "a folder, not a video file"),
        ("epic-frames", "file_instead_of_folder", "a file, not a folder of frames"),
        ("epic-video", "folder_instead_of_video", "a folder, not a video file"),
        ("kinetics400", "empty_video", "unreadable"),
    ],
)
def test_what_stands_where_a_video_should_be_is_said(build, dataset, kind, problem):
    """Something else at a video's path is named as what it is, not as a missing file."""
    built = build(dataset)
    source, _, _ = _break_first_sample(built, kind)
    with pytest.raises(SampleReadError, match=r"missing or unreadable") as error:
        built.datamodule().setup("fit")
    assert f"{source} ({problem}" in str(error.value)


# --- annotations ---------------------------------------------------------------------------------


@pytest.mark.parametrize("breakage", ["malformed_row", "unknown_label"])
@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("opted_in", [False, True], ids=["default", "skip_unreadable"])
def test_bad_annotation_rows_stop_with_file_and_row_even_when_skipping(build, dataset, breakage, opted_in):
    built = build(dataset)
    where = (built.append_malformed_row if breakage == "malformed_row" else built.append_unknown_label_row)()
    datamodule = built.datamodule(**(built.lenient if opted_in else {}))
    with pytest.raises(AnnotationError) as error:
        run_training_pipeline(datamodule)
    assert where in str(error.value)


# --- configs ------------------------------------------------------------------------------------

DATA_CLASSES = {
    "epic": "lightning_gsf.data.epic.EpicKitchensDataModule",
    "ssv1": "lightning_gsf.data.ssv1.SomethingSomethingV1DataModule",
    "ssv2": "lightning_gsf.data.ssv2.SomethingSomethingV2DataModule",
    "kinetics400": "lightning_gsf.data.kinetics.Kinetics400DataModule",
    "diving48": "lightning_gsf.data.diving48.Diving48DataModule",
}
ROOTS = {"epic": {"root": "/data"}}


@pytest.mark.parametrize(
    ("section", "setting", "named"),
    [
        ("data", {"num_segmnets": 8}, "num_segmnets"),  # a typo: an unknown key
        ("data", {"num_segments": "eight"}, "num_segments"),  # a wrong type
        ("model", {"temporal_modle": "gsf"}, "temporal_modle"),
        ("model", {"dropout": "half"}, "dropout"),
        ("trainer", {"max_epoch": 3}, "max_epoch"),
    ],
)
@pytest.mark.parametrize("dataset", list(DATA_CLASSES))
def test_config_with_unknown_key_or_wrong_type_is_refused_naming_the_key(
    dataset, section, setting, named, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(sys, "argv", ["gsf"])  # the arguments are passed, not read from pytest's command line
    init_args = ROOTS.get(dataset, {"root": "/data", "annotations_dir": "/data"})
    config: dict[str, Any] = {"data": {"class_path": DATA_CLASSES[dataset], "init_args": dict(init_args)}}
    if section == "data":
        config["data"]["init_args"].update(setting)
    else:
        config[section] = setting
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    with pytest.raises(SystemExit) as exit_info:
        gsf_main(["fit", f"--config={path}", "--print_config"])
    assert exit_info.value.code != 0
    assert named in capsys.readouterr().err


# --- annotation files: encodings and class lists -------------------------------------------------


def test_annotation_text_with_a_byte_order_mark_reads_as_without(tmp_path):
    """Every reader goes through ``read_text``: a spreadsheet's byte-order mark is not part of
    the first class name (a Kinetics label map's first class was lost to it)."""
    from lightning_gsf.data.annotation_files import read_class_name_lines, read_json
    from lightning_gsf.data.kinetics import read_label_map

    names = tmp_path / "names.txt"
    names.write_text("\ufeffabseiling\nair drumming\n", encoding="utf-8")
    assert read_class_name_lines(names) == ["abseiling", "air drumming"]
    assert list(read_label_map(names)) == ["abseiling", "air drumming"]
    document = tmp_path / "doc.json"
    document.write_text("\ufeff[1, 2]", encoding="utf-8")
    assert read_json(document, list) == [1, 2]


@pytest.mark.parametrize("reader", ["class_names", "json", "epic_csv", "kinetics_csv", "ssv1_csv"])
def test_annotation_text_in_another_encoding_names_the_file_and_line(tmp_path, reader):
    from lightning_gsf.data import annotation_files, epic, kinetics, something

    path = tmp_path / "latin1.txt"
    path.write_bytes("first line\nCaf\xe9 something\n".encode("latin-1"))
    read = {"class_names": annotation_files.read_class_name_lines,
            "json": lambda p: annotation_files.read_json(p, list), "epic_csv": epic.read_actions,
            "kinetics_csv": kinetics.read_csv, "ssv1_csv": lambda p: something.read_id_class_csv(p, None)}[reader]
    with pytest.raises(AnnotationError, match=r"latin1.txt, line 2: not UTF-8 text \(byte 0xe9\)"):
        read(path)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        # 13,092 rows past the quote: more than the csv module's field size limit.
        ("epic100/EPIC_100_test_timestamps.csv", r"line 5: not a CSV row \(field larger than field limit"),
        # Its quoted noun lists end the stray quote's field 22 lines on: a row of lines 5-26.
        ("epic100/EPIC_100_validation.csv",
         r"lines 5-26 \(narration_id P01_11_100,P01,P01_11,00:05:27.840,00:05:27.28,00:05:31.97,1 ...\): 3 fields"),
        # 96 rows past the quote, in one field to the end of the file.
        ("kinetics400/kinetics-400_test.excerpt.csv", r"lines 5-101: expected 4 fields \(youtube_id,"),
    ],
)
def test_a_stray_quote_names_the_line_it_is_on(tmp_path, source, message):
    """An unbalanced quote makes the csv module read on through later lines (to the end of the
    file, past its field size limit, where the file quotes nothing else): the error names the
    line of the quote, where the row starts, not the line where the csv module stopped."""
    from lightning_gsf.data import epic, kinetics

    lines = (SHARED_DATA / source).read_text().splitlines(keepends=True)
    lines[4] = '"' + lines[4]
    path = tmp_path / Path(source).name
    path.write_text("".join(lines))
    read = kinetics.read_csv if source.startswith("kinetics") else epic.read_actions
    with pytest.raises(AnnotationError, match=rf"^{path}, {message}") as error:
        read(path)
    assert len(str(error.value)) < 1000  # (not the swallowed rows)


@pytest.mark.parametrize(
    ("source", "repeated"),
    [("epic100/EPIC_100_validation.csv", "verb_class"), ("epic100/EPIC_100_video_info.csv", "fps"),
     ("epic100/EPIC_100_verb_classes.csv", "key"), ("kinetics400/kinetics-400_val.excerpt.csv", "label")],
)
def test_a_header_naming_a_column_twice_is_refused(tmp_path, source, repeated):
    """A column named twice in a CSV header: a row would keep only the later column's value (a
    verb class or a frame rate read from the wrong column, silently); the error names the file,
    the header's line and the column."""
    from lightning_gsf.data import epic, kinetics

    header, *rows = (SHARED_DATA / source).read_text().splitlines()
    index = header.split(",").index(repeated)
    path = tmp_path / Path(source).name
    # (each row repeats its own value, so only the header is at fault)
    path.write_text("\n".join([f"{header},{repeated}"] + [f"{row},{next(csv.reader([row]))[index]}" for row in rows[:20]])
                    + "\n")
    read = {"validation": epic.read_actions, "video_info": epic.read_video_info, "verb_classes": epic.read_classes,
            "kinetics": kinetics.read_csv}[next(k for k in ("validation", "video_info", "verb_classes", "kinetics")
                                                if k in source)]
    with pytest.raises(AnnotationError, match=rf"^{path}, line 1: the header names column\(s\) '{repeated}' more than "
                                              "once$"):
        read(path)


def test_a_misspelled_kinetics_train_label_is_named(tmp_path):
    """With the classes taken from the train CSV, a misspelled label makes 401: the error names
    the rarest labels and their lines, the misspelling first."""
    from lightning_gsf.data import kinetics

    header, *rows = (SHARED_DATA / "kinetics400" / "kinetics-400_val.excerpt.csv").read_text().splitlines(keepends=True)
    assert rows[1].startswith('"air drumming",')
    (tmp_path / "kinetics-400_train.csv").write_text(header + "".join(rows) + rows[1].replace("air", "Air", 1)
                                                     + "".join(rows))
    datamodule = kinetics.Kinetics400DataModule(root=tmp_path, annotations_dir=tmp_path)
    misspelled = "Air drumming"
    with pytest.raises(AnnotationError, match=rf"kinetics-400_train.csv: 401 labels, where Kinetics-400 has 400 "
                                              rf"classes; the rarest: '{misspelled}' \(1 row, first on line "
                                              rf"{len(rows) + 2}\), "):
        datamodule.class_names


@pytest.mark.parametrize("dataset,listed", [("ssv1", 175), ("ssv1", 173), ("ssv2", 175), ("diving48", 49)])
def test_a_class_list_of_another_length_is_refused(tmp_path, dataset, listed):
    """The head has the dataset's classes; a list with one more or one fewer would shift every
    later index (silently, where the split names no class the list lacks)."""
    if dataset == "ssv1":
        names = (SHARED_DATA / "ssv1" / "mmaction2_sthv1_label_map.txt").read_text().splitlines()
        names = names + ["Juggling something"] if listed > 174 else names[:-1]
        (tmp_path / "labels.csv").write_text("\n".join(names) + "\n")
        datamodule = SomethingSomethingV1DataModule(root=tmp_path, annotations_dir=tmp_path, labels_file="labels.csv")
        read = lambda: datamodule.class_to_index  # noqa: E731
        expected = 174
    elif dataset == "ssv2":
        classes = json.loads((SHARED_DATA / "ssv2" / "something-something-v2-labels.json").read_text())
        classes["Juggling something"] = str(len(classes))
        (tmp_path / "labels.json").write_text(json.dumps(classes))
        datamodule = SomethingSomethingV2DataModule(root=tmp_path, annotations_dir=tmp_path, labels_file="labels.json")
        read = lambda: datamodule.class_to_index  # noqa: E731
        expected = 174
    else:
        vocabulary = json.loads((SHARED_DATA / "diving48" / "Diving48_vocab.json").read_text())
        (tmp_path / "vocab.json").write_text(json.dumps(vocabulary + [["Back", "1som", "NoTwis", "TUCK"]]))
        datamodule = Diving48DataModule(root=tmp_path, annotations_dir=tmp_path, vocab_file="vocab.json")
        read = lambda: datamodule.class_names  # noqa: E731
        expected = 48
    with pytest.raises(AnnotationError, match=rf"{listed} classes, where .* has {expected}"):
        read()


def test_a_truncated_submission_or_checkpoint_is_named(tmp_path):
    from lightning_gsf.convert import read_original_state_dict
    from lightning_gsf.submission import read_submission

    submission = tmp_path / "submission.json"
    submission.write_text('{"version": "0.2", "results": {"a": {"verb": {"0": 1.')
    with pytest.raises(ValueError, match=r"submission.json: not a readable submission"):
        read_submission(submission)
    checkpoint = tmp_path / "gsf.pth.tar"
    torch.save({"model_state_dict": {"w": torch.zeros(100)}}, checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"gsf.pth.tar: not a readable checkpoint"):
        read_original_state_dict(checkpoint)
