"""TSN segment sampling: exact indices for fixed inputs and seeds, and properties for all inputs."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_gsf.data.sampling import (
    TRAIN_SAMPLERS,
    eval_indices,
    multi_clip_indices,
    release_train_indices,
    train_indices,
)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("seed", "start", "stop", "num_segments", "expected"),
    [
        (0, 0, 100, 8, [5, 17, 29, 45, 57, 72, 78, 87]),
        (1, 0, 100, 8, [5, 17, 28, 46, 57, 64, 86, 92]),
        (7, 0, 1000, 3, [205, 630, 907]),
        (0, 50, 53, 8, [50, 50, 51, 51, 51, 51, 52, 52]),  # fewer frames than segments
        (0, 42, 43, 4, [42, 42, 42, 42]),  # a single frame
    ],
)
def test_train_indices_pinned(seed: int, start: int, stop: int, num_segments: int, expected: list[int]) -> None:
    assert train_indices(start, stop, num_segments, _generator(seed)) == expected


@pytest.mark.parametrize(
    ("start", "stop", "num_segments", "expected"),
    [
        (0, 100, 8, [6, 18, 31, 43, 56, 68, 81, 93]),
        (0, 8, 8, [0, 1, 2, 3, 4, 5, 6, 7]),  # one frame per segment
        (10, 13, 8, [10, 10, 10, 11, 11, 12, 12, 12]),  # fewer frames than segments
        (5, 6, 4, [5, 5, 5, 5]),  # a single frame
        (3, 13, 1, [8]),
    ],
)
def test_eval_indices_pinned(start: int, stop: int, num_segments: int, expected: list[int]) -> None:
    assert eval_indices(start, stop, num_segments) == expected


def test_multi_clip_indices_pinned() -> None:
    # 30 frames in 3 parts of 10; clips at offsets 0, 1/3 and 2/3 of each part.
    assert multi_clip_indices(0, 30, 3, num_clips=3) == [[0, 10, 20], [3, 13, 23], [6, 16, 26]]


@pytest.mark.parametrize("num_frames", [1, 7, 8, 16, 30, 49, 100, 333, 1001])
@pytest.mark.parametrize("num_segments", [3, 8, 16])
def test_two_clips_are_the_release_test_indices(num_frames: int, num_segments: int) -> None:
    """The release's 2-clip test indices: int(tick * i) and int(tick * i + tick / 2), tick = n / T
    (0-based here; exact rationals, where the release's floats could round a boundary down)."""
    tick = Fraction(num_frames, num_segments)
    release = [[math.floor(tick * i) for i in range(num_segments)],
               [math.floor(tick * i + tick / 2) for i in range(num_segments)]]
    assert multi_clip_indices(0, num_frames, num_segments, num_clips=2) == release
    assert multi_clip_indices(5, 5 + num_frames, num_segments, num_clips=2) == [[5 + f for f in c] for c in release]


@pytest.mark.parametrize(("start", "stop", "num_segments"), [(0, 100, 8), (17, 20, 8), (0, 1, 16), (5, 1000, 3)])
def test_one_clip_is_eval_indices(start: int, stop: int, num_segments: int) -> None:
    assert multi_clip_indices(start, stop, num_segments, num_clips=1) == [eval_indices(start, stop, num_segments)]


def test_train_indices_reach_every_frame() -> None:
    # Unlike TSN's n // T frame parts, the exact parts leave no frame at the end unsampled.
    seen = {index for seed in range(200) for index in train_indices(0, 10, 3, _generator(seed))}
    assert seen == set(range(10))


@pytest.mark.parametrize(
    ("seed", "start", "stop", "num_segments", "expected"),
    [
        (0, 0, 100, 8, [8, 15, 29, 36, 55, 63, 79, 91]),  # parts of 12 frames: 96-99 never drawn
        (3, 0, 31, 16, list(range(16))),  # parts of one frame: always the first 16 frames
        (0, 10, 13, 8, [10, 10, 10, 11, 11, 12, 12, 12]),  # fewer frames than segments: centres
    ],
)
def test_release_train_indices_pinned(seed: int, start: int, stop: int, num_segments: int, expected: list[int]) -> None:
    assert release_train_indices(start, stop, num_segments, _generator(seed)) == expected


@pytest.mark.parametrize(("num_frames", "num_segments"), [(10, 3), (47, 16), (100, 8), (5, 8), (16, 16), (6, 7)])
def test_release_train_indices_draw_what_the_release_draws(num_frames: int, num_segments: int) -> None:
    """The release's ``_sample_indices`` (0-based here): ``i * (n // T) + randint(n // T)``, or
    the centres ``int(tick / 2 + tick * i)`` when ``n < T``. Every frame it can draw for part
    ``i`` is drawn here for part ``i``, and no other."""
    part = num_frames // num_segments
    if part == 0:  # (the release's floating point)
        tick = num_frames / float(num_segments)
        reachable = [{int(tick / 2.0 + tick * i)} for i in range(num_segments)]
    else:
        reachable = [set(range(i * part, (i + 1) * part)) for i in range(num_segments)]
    seen: list[set[int]] = [set() for _ in range(num_segments)]
    for seed in range(300):
        for i, index in enumerate(release_train_indices(0, num_frames, num_segments, _generator(seed))):
            seen[i].add(index)
    assert seen == reachable


@pytest.mark.parametrize("sampler", sorted(TRAIN_SAMPLERS))
def test_train_samplers_leave_the_global_rng_alone(sampler: str) -> None:
    state = torch.random.get_rng_state()
    TRAIN_SAMPLERS[sampler](0, 100, 8, _generator(0))
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize(
    ("start", "stop", "num_segments"),
    [(5, 5, 8), (6, 5, 8), (-1, 5, 8), (0, 10, 0)],
    ids=["empty", "reversed", "negative-start", "no-segments"],
)
def test_invalid_ranges_raise(start: int, stop: int, num_segments: int) -> None:
    for sampler in TRAIN_SAMPLERS.values():
        with pytest.raises(ValueError, match="must"):
            sampler(start, stop, num_segments, _generator(0))
    with pytest.raises(ValueError, match="must"):
        eval_indices(start, stop, num_segments)


def test_invalid_num_clips_raises() -> None:
    with pytest.raises(ValueError, match="num_clips"):
        multi_clip_indices(0, 10, 4, num_clips=0)


segments = st.tuples(
    st.integers(0, 10**6),  # start
    st.integers(1, 5000),  # number of frames
    st.integers(1, 64),  # num_segments
)


def _check_clip_indices(indices: list[int], start: int, num_frames: int, num_segments: int) -> None:
    assert len(indices) == num_segments
    assert indices == sorted(indices)
    assert all(start <= index < start + num_frames for index in indices)
    # Frame i comes from its own part [i * n / T, (i + 1) * n / T) of the segment.
    for i, index in enumerate(indices):
        assert i * num_frames // num_segments <= index - start < -(-(i + 1) * num_frames // num_segments)


@settings(max_examples=200, deadline=None)
@given(segment=segments, seed=st.integers(0, 2**32 - 1))
def test_train_indices_properties(segment: tuple[int, int, int], seed: int) -> None:
    start, num_frames, num_segments = segment
    indices = train_indices(start, start + num_frames, num_segments, _generator(seed))
    _check_clip_indices(indices, start, num_frames, num_segments)
    assert train_indices(start, start + num_frames, num_segments, _generator(seed)) == indices


@settings(max_examples=200, deadline=None)
@given(segment=segments, seed=st.integers(0, 2**32 - 1))
def test_release_train_indices_properties(segment: tuple[int, int, int], seed: int) -> None:
    start, num_frames, num_segments = segment
    indices = release_train_indices(start, start + num_frames, num_segments, _generator(seed))
    part = num_frames // num_segments
    if part:  # frame i from the whole-frame part [i * part, (i + 1) * part)
        assert len(indices) == num_segments
        assert all(i * part <= index - start < (i + 1) * part for i, index in enumerate(indices))
    else:  # the centres, exact where T is a power of two (the release computes them in floats)
        assert len(indices) == num_segments and all(start <= index < start + num_frames for index in indices)
        if num_segments & (num_segments - 1) == 0:
            assert indices == eval_indices(start, start + num_frames, num_segments)
    assert release_train_indices(start, start + num_frames, num_segments, _generator(seed)) == indices


@settings(max_examples=200, deadline=None)
@given(segment=segments, num_clips=st.integers(1, 10))
def test_multi_clip_indices_properties(segment: tuple[int, int, int], num_clips: int) -> None:
    start, num_frames, num_segments = segment
    clips = multi_clip_indices(start, start + num_frames, num_segments, num_clips)
    assert len(clips) == num_clips
    for clip in clips:
        _check_clip_indices(clip, start, num_frames, num_segments)
    # Later clips sit later in every part.
    for earlier, later in zip(clips, clips[1:]):
        assert all(a <= b for a, b in zip(earlier, later))


@settings(max_examples=300, deadline=None)
@given(segment=segments)
def test_eval_indices_match_tsn_centre_formula(segment: tuple[int, int, int]) -> None:
    # TSN's test-time sampling, int(tick / 2 + tick * i) with tick = n / T, in exact arithmetic.
    # (TSN computes it in floating point, which can land just below an integer, e.g. n=6, T=27.)
    start, num_frames, num_segments = segment
    tick = Fraction(num_frames, num_segments)
    expected = [start + int(tick / 2 + tick * i) for i in range(num_segments)]
    assert eval_indices(start, start + num_frames, num_segments) == expected
