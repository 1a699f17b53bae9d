"""Kinetics-400: the CSV parser on the real files, path templates, missing videos, DataModule."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_gsf.data import kinetics
from lightning_gsf.data.errors import AnnotationError


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
        ("label,youtube_id,time_start,time_end,split\n\"air drumming\",abc,1,11\n", r"line 2: expected 5 fields"),
        ("label,youtube_id,time_start,time_end,split\nabseiling,abc,11,1,val\n", r"line 2: expected 0 <= time_start < time_end"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "kinetics-400_train.csv"
    path.write_text(content)
    with pytest.raises(AnnotationError, match=message) as error:
        kinetics.read_csv(path, labelled=True)
    assert str(path) in str(error.value)
