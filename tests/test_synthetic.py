"""The synthetic dataset: official EPIC-KITCHENS-100 format, determinism, and time-reversal verbs."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_gsf.data import synthetic
from lightning_gsf.data.epic import (
    read_actions,
    read_classes,
    read_participant_ids,
    read_tail_classes,
    read_video_info,
)
from lightning_gsf.data.synthetic import NOUNS, REVERSE_VERB, VERBS, generate_synthetic_dataset, tail_classes
from lightning_gsf.data.video import FrameFolderReader, VideoFileReader, count_video_frames

TINY = dict(num_train=10, num_val=5, num_test=4, size=32, fps=25, min_frames=8, max_frames=14, actions_per_video=(2, 4))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> synthetic.SyntheticDataset:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "data", seed=3, **TINY)


def header(path: Path) -> list[str]:
    with path.open(newline="") as file:
        return next(csv.reader(file))


OFFICIAL_FILES = [
    ("EPIC_100_train.csv", "EPIC_100_validation.csv"),  # no shared train file; same columns as validation
    ("EPIC_100_validation.csv", "EPIC_100_validation.csv"),
    ("EPIC_100_test_timestamps.csv", "EPIC_100_test_timestamps.csv"),
    ("EPIC_100_verb_classes.csv", "EPIC_100_verb_classes.csv"),
    ("EPIC_100_noun_classes.csv", "EPIC_100_noun_classes.csv"),
    ("EPIC_100_tail_verbs.csv", "EPIC_100_tail_verbs.csv"),
    ("EPIC_100_tail_nouns.csv", "EPIC_100_tail_nouns.csv"),
    ("EPIC_100_unseen_participant_ids_validation.csv", "EPIC_100_unseen_participant_ids_validation.csv"),
    ("EPIC_100_unseen_participant_ids_test.csv", "EPIC_100_unseen_participant_ids_test.csv"),
    ("EPIC_100_video_info.csv", "EPIC_100_video_info.csv"),
]


@pytest.mark.parametrize(("ours", "official"), OFFICIAL_FILES)
def test_files_have_the_official_columns(tiny, shared_data, ours, official):
    assert header(tiny.annotations_dir / ours) == header(shared_data / "epic100" / official)


def test_annotations_parse_and_match_the_requested_sizes(tiny):
    folder = tiny.annotations_dir
    train = read_actions(folder / "EPIC_100_train.csv")
    val = read_actions(folder / "EPIC_100_validation.csv")
    test = read_actions(folder / "EPIC_100_test_timestamps.csv")
    assert (len(train), len(val), len(test)) == (10, 5, 4)
    assert all(a.labelled for a in train + val) and not any(a.labelled for a in test)
    labelled_test = read_actions(folder / "EPIC_100_test.csv")
    assert [a.narration_id for a in labelled_test] == [a.narration_id for a in test]
    assert [c.key for c in read_classes(folder / "EPIC_100_verb_classes.csv")] == [key for key, _ in VERBS]
    assert [c.key for c in read_classes(folder / "EPIC_100_noun_classes.csv")] == [key for key, _ in NOUNS]
    assert read_participant_ids(folder / "EPIC_100_unseen_participant_ids_validation.csv") == {"P05"}
    assert read_participant_ids(folder / "EPIC_100_unseen_participant_ids_test.csv") == {"P06"}
    assert not {a.participant_id for a in train} & {"P05", "P06"}
    # (each split's first video is its unseen participant's: the unseen subset is never empty)
    assert "P05" in {a.participant_id for a in val} and "P06" in {a.participant_id for a in test}
    counts = Counter(a.verb_class for a in train)
    assert read_tail_classes(folder / "EPIC_100_tail_verbs.csv", "verb") == set(tail_classes(counts, len(VERBS)))
    for action in train + val + test:
        assert 8 <= action.stop_frame - action.start_frame + 1 <= 14
        assert action.narration_id.startswith(action.video_id + "_")


def test_validation_and_test_clips_are_not_the_training_clips_again(tmp_path):
    """Each split's videos draw from generators of their own (seed, split, position): with a
    generator shared across splits, validation would repeat the training videos' actions and
    frames, and its accuracy would measure memory."""
    dataset = generate_synthetic_dataset(tmp_path / "data", seed=0, num_train=40, num_val=20, num_test=20, size=32,
                                         videos=False, overwrite=True)
    splits = {name: read_actions(dataset.annotations_dir / f"EPIC_100_{name}.csv")
              for name in ("train", "validation", "test")}
    key = lambda action: (action.verb_class, action.noun_class, action.start_frame, action.stop_frame)  # noqa: E731
    train = {key(action) for action in splits["train"]}
    for split in ("validation", "test"):
        repeated = [action.narration_id for action in splits[split] if key(action) in train]
        assert len(repeated) <= 2, (split, repeated)  # (chance coincidences of a few classes and frame numbers)


def test_frame_numbers_timestamps_and_files_agree(tiny):
    info = read_video_info(tiny.annotations_dir / "EPIC_100_video_info.csv")
    actions = read_actions(tiny.annotations_dir / "EPIC_100_train.csv")
    for action in actions:
        video = info[action.video_id]
        assert (video.fps, video.width, video.height) == (25.0, 42, 32)
        # The 0.01 s timestamps name the same frames as the 1-based, inclusive frame numbers.
        assert round(action.start_timestamp * video.fps) == action.start_frame - 1
        assert round(action.stop_timestamp * video.fps) == action.stop_frame
        assert action.stop_frame <= video.num_frames
    for video_id, video in info.items():
        participant = video_id.split("_")[0]
        frames = sorted((tiny.root / participant / "rgb_frames" / video_id).iterdir())
        assert frames[0].name == "frame_0000000001.jpg" and len(frames) == video.num_frames
        assert count_video_frames(tiny.root / participant / "videos" / f"{video_id}.MP4", exact=True) == video.num_frames


def test_video_and_frames_hold_the_same_pictures(tiny):
    action = read_actions(tiny.annotations_dir / "EPIC_100_validation.csv")[1]
    video_path = tiny.root / action.participant_id / "videos" / f"{action.video_id}.MP4"
    indices = list(range(action.start_frame - 1, action.stop_frame))
    from_video = VideoFileReader().read(video_path, indices).float()
    from_frames = FrameFolderReader().read(tiny.root / action.participant_id / "rgb_frames" / action.video_id, indices)
    difference = (from_video - from_frames.float()).abs().mean(dim=(1, 2, 3))
    assert difference.max() < 6  # two lossy codecs of the same pictures


def test_generation_is_deterministic_for_a_seed(tiny, tmp_path):
    again = generate_synthetic_dataset(tmp_path / "again", seed=3, **TINY)
    other = generate_synthetic_dataset(tmp_path / "other", seed=4, **TINY, frames=False, videos=False)
    for path in sorted(tiny.annotations_dir.iterdir()):
        assert (again.annotations_dir / path.name).read_bytes() == path.read_bytes(), path.name
    assert (other.annotations_dir / "EPIC_100_train.csv").read_bytes() != (
        tiny.annotations_dir / "EPIC_100_train.csv"
    ).read_bytes()
    first_frames = sorted(tiny.root.glob("*/rgb_frames/*/*.jpg"))
    assert len(first_frames) == tiny.num_frames
    for path in first_frames[:: max(1, len(first_frames) // 25)]:
        assert (again.root / path.relative_to(tiny.root)).read_bytes() == path.read_bytes()
    assert not list(other.root.glob("*/rgb_frames")) and not list(other.root.glob("*/videos"))


def _object_frames(verb: int, noun: int, seed: int, length: int = 20) -> torch.Tensor:
    """The object layer (coverage times colour) of one action, drawn with a fixed generator."""
    track = synthetic._Track(length)
    action = synthetic._Action("x", verb, noun, 0, length)
    synthetic._fill_action(track, action, np.random.default_rng(seed), 64, 48)
    cover, colour = synthetic._object_cover(track, slice(0, length), np.zeros((length, 2), dtype=np.int64), 64, 48)
    return cover * colour


@pytest.mark.parametrize("pair", range(len(VERBS) // 2))
def test_a_verb_is_its_reverse_played_backwards(pair):
    forward, backward = 2 * pair, 2 * pair + 1
    assert REVERSE_VERB[forward] == backward and REVERSE_VERB[backward] == forward
    for seed in range(3):
        ahead = _object_frames(forward, noun=seed, seed=seed)
        behind = _object_frames(backward, noun=seed, seed=seed)
        assert torch.allclose(behind, ahead.flip(0), atol=1e-4)
        # ... and the verb is in the order: the clip differs from its own reverse.
        assert (ahead - ahead.flip(0)).abs().amax() > 50


def test_reverse_pairs_have_equally_likely_directions(tmp_path):
    data = generate_synthetic_dataset(tmp_path / "counts", num_train=400, num_val=1, num_test=1, frames=False, videos=False)
    counts = Counter(a.verb_class for a in read_actions(data.annotations_dir / "EPIC_100_train.csv"))
    for pair in range(len(VERBS) // 2):
        forward, backward = counts[2 * pair], counts[2 * pair + 1]
        assert abs(forward - backward) < 4 * (forward + backward) ** 0.5


@pytest.mark.parametrize(
    ("counts", "num_classes", "expected"),
    [
        ({0: 50, 1: 30, 2: 10, 3: 10}, 4, [2, 3]),  # the smallest classes up to 20% of 100
        ({0: 80, 1: 15, 2: 5}, 3, [1, 2]),  # 5 < 20, so the next smallest joins
        ({0: 10, 1: 10}, 2, [0]),  # ties broken by class id
        ({0: 10}, 2, [0, 1]),  # a class with no instance is the smallest of all
    ],
)
def test_tail_classes_follow_the_official_rule(counts, num_classes, expected):
    assert tail_classes(Counter(counts), num_classes) == expected


def test_main_writes_the_dataset_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--num-train", "3", "--num-val", "2", "--num-test", "2", "--size", "32", "--no-videos"]
    result = synthetic.main(argv)
    assert result.num_actions == {"train": 3, "val": 2, "test": 2}
    assert (out / "synthetic.json").is_file() and not list(out.glob("*/videos"))
    with pytest.raises(FileExistsError, match="not empty"):
        synthetic.main(argv)
    synthetic.main([*argv, "--overwrite"])


def test_a_split_of_one_action_is_the_unseen_participant_s(tmp_path):
    """The smallest validation and test splits still have their unseen participant (with the
    participants in turn, a split needed five videos to reach it)."""
    dataset = synthetic.generate_synthetic_dataset(tmp_path, num_train=3, num_val=1, num_test=1, size=32,
                                                   frames=False, videos=False)
    for file, unseen in (("EPIC_100_validation.csv", "P05"), ("EPIC_100_test_timestamps.csv", "P06")):
        assert [a.participant_id for a in read_actions(dataset.annotations_dir / file)] == [unseen]


@pytest.mark.parametrize(
    "options",
    [dict(size=33), dict(size=30), dict(fps=60), dict(num_val=0), dict(min_frames=9, max_frames=8),
     dict(num_participants=0)],
)
def test_bad_settings_are_refused(tmp_path, options):
    with pytest.raises(ValueError, match="expected"):
        generate_synthetic_dataset(tmp_path, **{**TINY, **options})


@pytest.mark.parametrize("pair", [0, 1, 2, 3], ids=["move-right", "move-down", "appear", "grow"])
def test_a_verb_does_what_its_name_says(pair):
    """Each verb moves, shows or grows its object as named, and its reverse does the opposite
    (the mirror-image test alone would pass with every pair's labels swapped)."""
    for seed in range(3):
        for direction, sign in ((0, 1), (1, -1)):  # the reverse verb: the opposite change
            cover = _object_frames(2 * pair + direction, noun=seed, seed=seed).sum(dim=1)  # (n, H, W)
            value = mass = cover.sum(dim=(1, 2))
            if pair < 2:  # the centre of mass along x (move-right) or y (move-down)
                positions = torch.arange(cover.shape[2 - pair], dtype=torch.float32)
                value = (cover.sum(dim=1 + pair) * positions).sum(dim=1) / mass
            assert sign * (value[-1] - value[0]) > 0, (VERBS[2 * pair + direction][0], seed)


def test_segment_lengths_and_actions_per_video_include_their_upper_bounds(tmp_path):
    settings = {**TINY, "num_train": 9, "min_frames": 6, "max_frames": 6, "actions_per_video": (3, 3)}
    data = generate_synthetic_dataset(tmp_path, **settings, frames=False, videos=False)
    actions = read_actions(data.annotations_dir / "EPIC_100_train.csv")
    assert {action.stop_frame - action.start_frame + 1 for action in actions} == {6}
    assert sorted(Counter(action.video_id for action in actions).values()) == [3, 3, 3]


def test_main_without_frames_writes_the_videos_only(tmp_path):
    """``gsf synth --no-frames``: videos, no frame folders."""
    out = tmp_path / "videos_only"
    result = synthetic.main(["--out", str(out), "--num-train", "2", "--num-val", "1", "--num-test", "1",
                             "--size", "32", "--no-frames"])
    assert result.num_actions == {"train": 2, "val": 1, "test": 1} and result.codec is not None
    assert list(out.glob("*/videos/*.MP4")) and not list(out.glob("*/rgb_frames"))
