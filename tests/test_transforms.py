"""Clip transforms: exact crops for fixed seeds, one transform for all frames, explicit randomness."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.transforms.v2 import functional as F

from lightning_gsf.data import transforms
from lightning_gsf.data.randaugment import ClipRandAugment
from lightning_gsf.data.transforms import (
    EvalClipTransform,
    TrainClipTransform,
    crop_positions,
    multi_scale_crop_sizes,
)

TSN_SCALES = (1.0, 0.875, 0.75, 0.66)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_clip(num_frames: int = 3, height: int = 60, width: int = 80, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (num_frames, 3, height, width), dtype=torch.uint8, generator=_generator(seed))


def coordinate_clip(num_frames: int, height: int, width: int) -> torch.Tensor:
    """A clip whose channels hold each pixel's row, column and frame, so a crop shows where it came from."""
    rows = torch.arange(height).view(1, height, 1).expand(num_frames, height, width)
    cols = torch.arange(width).view(1, 1, width).expand(num_frames, height, width)
    frames = torch.arange(num_frames).view(num_frames, 1, 1).expand(num_frames, height, width)
    return torch.stack([rows, cols, frames], dim=1).to(torch.uint8)


def test_multi_scale_crop_sizes_pinned() -> None:
    # Short side 240: sides 240, 210, 180, 158, paired with at most one step of distortion.
    assert multi_scale_crop_sizes(240, 320, 224, TSN_SCALES) == [
        (240, 240), (240, 210), (210, 240), (210, 210), (210, 180),
        (180, 210), (180, 180), (180, 158), (158, 180), (158, 158),
    ]  # fmt: skip
    # Short side 256 (the usual pre-resize): 256 * 0.66 = 168.96 is cut to 168, as TSN's int().
    assert multi_scale_crop_sizes(256, 340, 224, TSN_SCALES) == [
        (256, 256), (256, 224), (224, 256), (224, 224), (224, 192),
        (192, 224), (192, 192), (192, 168), (168, 192), (168, 168),
    ]  # fmt: skip


@pytest.mark.parametrize(("short_side", "size"), [(220, 220), (221, 221), (222, 224), (224, 224), (226, 224), (227, 227)])
def test_multi_scale_crop_sizes_snap_to_the_input_size(short_side: int, size: int) -> None:
    # int(226 * 1.0) = 226 is within 3 pixels of 224 (fewer than 3 apart, as TSN's test), so the
    # crop is taken at 224 directly; 221 and 227 are 3 apart and kept.
    assert multi_scale_crop_sizes(short_side, 300, 224, (1.0,)) == [(size, size)]


@pytest.mark.parametrize("portrait", [False, True], ids=["landscape", "portrait"])
@pytest.mark.parametrize("short_side", [222, 223])
def test_a_crop_snapped_past_the_frame_stays_inside_it(short_side: int, portrait: bool) -> None:
    """A 222 or 223 px short side snaps its full-size crop up to 224: the crop is cut to the frame,
    not padded with black beyond it (every crop of a uniform clip is that uniform value), whether
    the short side is the height or the width."""
    transform = TrainClipTransform(input_size=224, scales=(1.0,), flip=False)
    size = (300, short_side) if portrait else (short_side, 300)
    clip = torch.full((2, 3, *size), 200, dtype=torch.uint8)
    for seed in range(12):  # (every crop position)
        out, _ = transform(clip, _generator(seed))
        assert out.shape == (2, 3, 224, 224) and bool((out == 200).all()), seed


def test_crop_positions_pinned() -> None:
    # A 26 x 26 crop in a 40 x 60 frame: row slack 14, column slack 34, in steps of 14 // 4 = 3
    # and 34 // 4 = 8 pixels (the release's GroupMultiScaleCrop.fill_fix_offset).
    assert crop_positions(40, 60, 26, 26, more_positions=False) == [(6, 16), (0, 0), (0, 32), (12, 0), (12, 32)]
    assert crop_positions(40, 60, 26, 26) == [
        (6, 16), (0, 0), (0, 32), (12, 0), (12, 32),  # centre, corners
        (6, 0), (6, 32), (0, 16), (12, 16),  # middles of the edges
        (3, 8), (3, 24), (9, 8), (9, 24),  # quarter points
    ]  # fmt: skip


@pytest.mark.parametrize("slack", range(9))
def test_crop_positions_stay_inside_the_frame(slack: int) -> None:
    # Whatever the slack (frame side minus crop side), the far corner is at 4 * (slack // 4) <= slack.
    positions = crop_positions(26 + slack, 30 + slack, 26, 30)
    assert all(0 <= top <= slack and 0 <= left <= slack for top, left in positions)
    assert positions[4] == (4 * (slack // 4), 4 * (slack // 4))


@pytest.mark.parametrize(
    ("more_positions", "seed", "expected_top", "expected_left", "expected_flip"),
    [
        (True, 0, 0, 16, True),
        (True, 1, 0, 4, False),
        (True, 7, 0, 12, True),
        (True, 9, 0, 0, False),
        (False, 1, 0, 16, False),
        (False, 3, 0, 0, True),
        (False, 10, 0, 8, False),
    ],
)
def test_train_crop_and_flip_pinned(
    more_positions: bool, seed: int, expected_top: int, expected_left: int, expected_flip: bool
) -> None:
    # One scale whose crop equals the input size, so no resize blurs the coordinates.
    clip = coordinate_clip(2, 64, 80)
    transform = TrainClipTransform(input_size=64, scales=(1.0,), more_positions=more_positions)
    out, flipped = transform(clip, _generator(seed))
    expected = clip[..., expected_top : expected_top + 64, expected_left : expected_left + 64]
    assert flipped == expected_flip
    assert torch.equal(out, F.horizontal_flip(expected) if expected_flip else expected)


def _record_crops(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int, int]]:
    crops: list[tuple[int, int, int, int]] = []
    original = transforms.F.resized_crop

    def recording_resized_crop(clip: torch.Tensor, top: int, left: int, height: int, width: int, *args, **kwargs):
        crops.append((top, left, height, width))
        return original(clip, top, left, height, width, *args, **kwargs)

    monkeypatch.setattr(transforms.F, "resized_crop", recording_resized_crop)
    return crops


@pytest.mark.parametrize(
    ("seed", "expected_crop", "expected_flip"),
    [(0, (0, 48, 48, 32), True), (1, (0, 4, 64, 64), False), (2, (4, 4, 48, 64), True), (3, (16, 32, 32, 48), True)],
)
def test_multi_scale_crop_pinned(
    monkeypatch: pytest.MonkeyPatch, seed: int, expected_crop: tuple[int, int, int, int], expected_flip: bool
) -> None:
    # 64 x 80 frames, sides 64, 48 and 32: (top, left, height, width) of the crop before resizing.
    crops = _record_crops(monkeypatch)
    out, flipped = TrainClipTransform(input_size=48, scales=(1.0, 0.75, 0.5))(random_clip(1, 64, 80), _generator(seed))
    assert crops == [expected_crop] and flipped == expected_flip and out.shape == (1, 3, 48, 48)


def test_train_crop_is_resized_with_antialiasing() -> None:
    # Seed 1 takes the 64 x 64 crop at (0, 4) unflipped (above); it is shrunk to 48 x 48
    # antialiased, as the evaluation resize (and the release's PIL resize).
    clip = random_clip(1, 64, 80)
    out, flipped = TrainClipTransform(input_size=48, scales=(1.0, 0.75, 0.5))(clip, _generator(1))
    assert not flipped
    assert torch.equal(out, F.resize(clip[..., 0:64, 4:68], [48, 48], antialias=True))


@pytest.mark.parametrize("more_positions", [True, False], ids=["13-positions", "5-positions"])
def test_train_crops_cover_every_size_and_position(monkeypatch: pytest.MonkeyPatch, more_positions: bool) -> None:
    crops = _record_crops(monkeypatch)
    transform = TrainClipTransform(input_size=32, scales=TSN_SCALES, more_positions=more_positions)
    clip = random_clip(num_frames=1, height=40, width=60)
    for seed in range(1500):  # 130 (size, position) pairs, each drawn about 11 times
        transform(clip, _generator(seed))
    sizes = {(height, width) for _, _, height, width in crops}
    assert sizes == set(multi_scale_crop_sizes(40, 60, 32, TSN_SCALES))
    for height, width in sizes:
        seen = {(top, left) for top, left, h, w in crops if (h, w) == (height, width)}
        assert seen == set(crop_positions(40, 60, height, width, more_positions))


@pytest.mark.parametrize("randaugment", [False, True], ids=["plain", "randaugment"])
@pytest.mark.parametrize("seed", range(8))
def test_flip_happens_exactly_when_reported(seed: int, randaugment: bool) -> None:
    clip = random_clip()
    flipping = TrainClipTransform(input_size=32, flip=True, randaugment=randaugment)
    not_flipping = TrainClipTransform(input_size=32, flip=False, randaugment=randaugment)
    out, flipped = flipping(clip, _generator(seed))
    reference, never_flipped = not_flipping(clip, _generator(seed))
    assert not never_flipped
    # (RandAugment, when on, runs first and draws first: the same for both.)
    assert torch.equal(out, F.horizontal_flip(reference) if flipped else reference)


def test_both_flip_outcomes_occur() -> None:
    flags = {TrainClipTransform(input_size=32)(random_clip(), _generator(seed))[1] for seed in range(16)}
    assert flags == {False, True}


@pytest.mark.parametrize("randaugment", [False, True], ids=["plain", "randaugment"])
@pytest.mark.parametrize("seed", range(4))
def test_train_transform_is_the_same_for_every_frame(seed: int, randaugment: bool) -> None:
    clip = random_clip(num_frames=1).expand(4, -1, -1, -1).contiguous()
    out, _ = TrainClipTransform(input_size=32, randaugment=randaugment)(clip, _generator(seed))
    assert all(torch.equal(frame, out[0]) for frame in out)


@pytest.mark.parametrize("randaugment", [False, True], ids=["plain", "randaugment"])
def test_train_transform_is_deterministic_and_leaves_the_global_rng_alone(randaugment: bool) -> None:
    transform = TrainClipTransform(input_size=32, randaugment=randaugment)
    clip = random_clip()
    state = torch.random.get_rng_state()
    first, first_flip = transform(clip, _generator(5))
    second, second_flip = transform(clip, _generator(5))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, second) and first_flip == second_flip


def test_randaugment_changes_clips() -> None:
    clip = random_clip()
    plain = TrainClipTransform(input_size=32)
    augmented = TrainClipTransform(input_size=32, randaugment=True)
    differs = [not torch.equal(plain(clip, _generator(s))[0], augmented(clip, _generator(s))[0]) for s in range(4)]
    assert any(differs)


@pytest.mark.parametrize("seed", range(6))
def test_randaugment_is_the_releases_on_the_frames_as_read_before_the_crop(seed: int) -> None:
    """The release applies RandAugment to the frames as read, then the multi-scale crop and
    flip; its draws come first from the same generator."""
    clip = random_clip()
    generator = _generator(seed)
    expected = TrainClipTransform(input_size=32)(ClipRandAugment()(clip, generator), generator)
    actual = TrainClipTransform(input_size=32, randaugment=True)(clip, _generator(seed))
    assert torch.equal(actual[0], expected[0]) and actual[1] == expected[1]


@pytest.mark.parametrize(("height", "width"), [(60, 80), (80, 60), (50, 50), (34, 200)])
@pytest.mark.parametrize("randaugment", [False, True], ids=["plain", "randaugment"])
def test_train_output_shape(height: int, width: int, randaugment: bool) -> None:
    out, _ = TrainClipTransform(input_size=32, randaugment=randaugment)(random_clip(5, height, width), _generator(0))
    assert out.shape == (5, 3, 32, 32) and out.dtype == torch.uint8


def test_one_eval_crop_is_the_centre_after_resizing() -> None:
    # The short side is already resize_size, so the resize keeps the pixels and the crop is exact.
    clip = coordinate_clip(3, 48, 70)
    out = EvalClipTransform(input_size=40, resize_size=48, num_crops=1)(clip)
    assert out.shape == (1, 3, 3, 40, 40) and out.dtype == torch.uint8
    assert torch.equal(out[0], clip[..., 4:44, 15:55])


def test_one_eval_crop_resizes_the_short_side() -> None:
    out = EvalClipTransform(input_size=40, resize_size=48, num_crops=1)(random_clip(2, 96, 140))
    reference = F.center_crop(F.resize(random_clip(2, 96, 140), [48, 70], antialias=True), [40, 40])
    assert torch.equal(out[0], reference)


@pytest.mark.parametrize(
    ("height", "width", "expected_slices"),
    [
        # The release's GroupFullResSample: steps of (side - crop) // 4, crops at 0, 2 and 4 steps
        # along the width, 2 steps along the height (48 x 70: steps 2 and 7). On portrait frames
        # ours step along the height instead (the release's would step along the width).
        (48, 70, [(slice(4, 44), slice(0, 40)), (slice(4, 44), slice(14, 54)), (slice(4, 44), slice(28, 68))]),
        (70, 48, [(slice(0, 40), slice(4, 44)), (slice(14, 54), slice(4, 44)), (slice(28, 68), slice(4, 44))]),
        (48, 48, [(slice(4, 44), slice(0, 40)), (slice(4, 44), slice(4, 44)), (slice(4, 44), slice(8, 48))]),
    ],
    ids=["landscape", "portrait", "square"],
)
def test_three_eval_crops_positions(height: int, width: int, expected_slices: list[tuple[slice, slice]]) -> None:
    # The short side is already resize_size, so the resize keeps the pixels.
    clip = coordinate_clip(2, height, width)
    out = EvalClipTransform(input_size=40, resize_size=48, num_crops=3)(clip)
    assert out.shape == (3, 2, 3, 40, 40)
    for crop, (rows, cols) in zip(out, expected_slices):
        assert torch.equal(crop, clip[..., rows, cols])


def test_three_eval_crops_resize_the_short_side_to_resize_size() -> None:
    out = EvalClipTransform(input_size=40, resize_size=48, num_crops=3)(random_clip(2, 96, 140))
    resized = F.resize(random_clip(2, 96, 140), [48, 70], antialias=True)
    assert torch.equal(out[1], resized[..., 4:44, 14:54])


@pytest.mark.parametrize("num_crops", [1, 3])
@pytest.mark.parametrize(("height", "width"), [(60, 80), (80, 60), (256, 341)])
def test_eval_output_shape(num_crops: int, height: int, width: int) -> None:
    out = EvalClipTransform(input_size=32, resize_size=36, num_crops=num_crops)(random_clip(4, height, width))
    assert out.shape == (num_crops, 4, 3, 32, 32) and out.dtype == torch.uint8


TRAIN_ARGUMENTS = "expected input_size >= 1 and scales in"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: EvalClipTransform(num_crops=2), "num_crops must be 1 or 3"),
        (lambda: EvalClipTransform(input_size=224, resize_size=200), "must be >= input_size"),
        (lambda: TrainClipTransform(scales=()), TRAIN_ARGUMENTS),
        (lambda: TrainClipTransform(scales=(1.0, 1.5)), TRAIN_ARGUMENTS),
        (lambda: TrainClipTransform(scales=(1.0, 0.0)), TRAIN_ARGUMENTS),
        (lambda: TrainClipTransform(input_size=0), TRAIN_ARGUMENTS),
    ],
    ids=["two-crops", "resize-below-crop", "no-scales", "scale-above-one", "zero-scale", "zero-input-size"],
)
def test_invalid_arguments(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "clip",
    [
        torch.zeros(3, 64, 64, dtype=torch.uint8),  # no time axis
        torch.zeros(4, 3, 64, dtype=torch.uint8),  # no height axis (the channel axis holds 3)
        torch.zeros(4, 64, 80, 3, dtype=torch.uint8),  # channels last
        torch.zeros(4, 1, 64, 80, dtype=torch.uint8),  # grey
        torch.zeros(4, 4, 64, 80, dtype=torch.uint8),  # RGBA
        torch.zeros(4, 3, 64, 80),  # float: the model would take it as normalised already
    ],
    ids=["3d", "no-height", "channels-last", "grey", "rgba", "float"],
)
@pytest.mark.parametrize("randaugment", [False, True])
def test_clips_must_be_uint8_rgb_t_c_h_w(clip: torch.Tensor, randaugment: bool) -> None:
    message = r"expected a uint8 RGB clip of shape \(T, 3, H, W\), got "
    with pytest.raises(ValueError, match=message):
        EvalClipTransform()(clip)
    with pytest.raises(ValueError, match=message):
        TrainClipTransform(randaugment=randaugment)(clip, _generator(0))


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(8, 96),
    width=st.integers(8, 96),
    input_size=st.integers(8, 48),
    seed=st.integers(0, 2**32 - 1),
    more_positions=st.booleans(),
)
def test_train_transform_properties(height: int, width: int, input_size: int, seed: int, more_positions: bool) -> None:
    # Any frame size, including frames smaller than the crop (the crop is then upsampled).
    transform = TrainClipTransform(input_size=input_size, more_positions=more_positions)
    clip = random_clip(2, height, width, seed=seed % 100)
    out, flipped = transform(clip, _generator(seed))
    assert out.shape == (2, 3, input_size, input_size) and out.dtype == torch.uint8
    again, flipped_again = transform(clip, _generator(seed))
    assert torch.equal(out, again) and flipped == flipped_again


def test_a_resize_size_equal_to_the_input_size_is_a_plain_centre_crop():
    """(The short side resized to the crop's size, then the centre cropped: a common evaluation.)"""
    clip = torch.randint(0, 256, (2, 3, 40, 60), dtype=torch.uint8)
    views = EvalClipTransform(input_size=40, resize_size=40, num_crops=1)(clip)
    assert views.shape == (1, 2, 3, 40, 40)
    assert torch.equal(views[0], clip[..., 10:50])
