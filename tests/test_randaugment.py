"""Clip RandAugment: the release's op arguments, PIL's pixel semantics, one transform per clip, explicit draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from lightning_gsf.data import randaugment
from lightning_gsf.data.randaugment import OP_NAMES, ClipRandAugment, apply_op, op_argument

FILL = (124, 116, 104)
GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
PIXEL_OPS = tuple(name for name in OP_NAMES if name not in GEOMETRIC_OPS)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_clip(num_frames: int = 3, height: int = 48, width: int = 64, seed: int = 0, high: int = 256) -> torch.Tensor:
    return torch.randint(0, high, (num_frames, 3, height, width), dtype=torch.uint8, generator=_generator(seed))


def smooth_clip(height: int = 48, width: int = 64) -> torch.Tensor:
    """One frame of slowly varying colour, where interpolation kernels barely matter."""
    y = torch.linspace(0, 1, height).view(height, 1)
    x = torch.linspace(0, 1, width).view(1, width)
    red = 127.5 + 127.5 * torch.sin(6 * x + 3 * y)
    green = (255 * x * y).expand(height, width)
    blue = 127.5 + 127.5 * torch.cos(5 * y - 2 * x)
    return torch.stack([red, green, blue]).round().to(torch.uint8).unsqueeze(0)


def to_pil(clip: torch.Tensor) -> Image.Image:
    return Image.fromarray(clip[0].permute(1, 2, 0).numpy())


def from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).unsqueeze(0)


def abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.to(torch.int16) - b.to(torch.int16)).abs()


# A strong argument for each op (magnitude 9, both signs for the signed ones).
OP_CASES = [(name, False) for name in OP_NAMES] + [(name, True) for name in GEOMETRIC_OPS]


# ------------------------------------------------------------------------------------------
# One transform for every frame
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("name", "negate"), OP_CASES)
def test_op_keeps_shape_dtype_and_identical_frames(name: str, negate: bool, interpolation: str) -> None:
    frame = random_clip(1, seed=3, high=240)  # not the full range, so AutoContrast acts
    clip = frame.expand(4, -1, -1, -1).contiguous()
    out = apply_op(name, clip, op_argument(name, 9.0, negate), interpolation, FILL)
    assert out.shape == clip.shape and out.dtype == torch.uint8
    assert not torch.equal(out, clip), "magnitude 9 should change a random frame"
    for t in range(1, 4):
        assert torch.equal(out[t], out[0])


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("name", "negate"), OP_CASES)
def test_op_on_a_clip_equals_op_on_each_frame(name: str, negate: bool, interpolation: str) -> None:
    first, second = random_clip(1, seed=1), smooth_clip()
    argument = op_argument(name, 9.0, negate)
    out = apply_op(name, torch.cat([first, second]), argument, interpolation, FILL)
    assert torch.equal(out[:1], apply_op(name, first, argument, interpolation, FILL))
    assert torch.equal(out[1:], apply_op(name, second, argument, interpolation, FILL))


@pytest.mark.parametrize("seed", range(6))
def test_clip_augment_is_one_draw_for_the_whole_clip(seed: int) -> None:
    augment = ClipRandAugment(probability=1.0)
    # Identical frames stay identical.
    frame = random_clip(1, seed=seed)
    out = augment(frame.expand(5, -1, -1, -1).contiguous(), _generator(seed))
    assert all(torch.equal(out[t], out[0]) for t in range(5))
    # Two different frames: as if each were augmented alone with the clip's draws.
    clip = torch.cat([random_clip(1, seed=seed + 100), smooth_clip()])
    out = augment(clip, _generator(seed))
    for t in range(2):
        alone = augment(clip[t : t + 1], _generator(seed))
        assert torch.equal(out[t : t + 1], alone)


# ------------------------------------------------------------------------------------------
# Randomness
# ------------------------------------------------------------------------------------------


def _augment_clips(seed: int, augment: ClipRandAugment | None = None) -> list[torch.Tensor]:
    augment = augment or ClipRandAugment()
    generator = _generator(seed)
    return [augment(random_clip(2, seed=k), generator) for k in range(4)]


def test_same_seed_same_output_different_seeds_differ() -> None:
    runs = {seed: _augment_clips(seed) for seed in range(4)}
    again = _augment_clips(2)
    assert all(torch.equal(a, b) for a, b in zip(runs[2], again))
    for i in range(4):
        for j in range(i + 1, 4):
            assert not all(torch.equal(a, b) for a, b in zip(runs[i], runs[j])), (i, j)


def test_global_rng_untouched_and_irrelevant() -> None:
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = _augment_clips(5)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(456)
    second = _augment_clips(5)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("seed", range(5))
def test_draw_order_is_the_documented_one(seed: int) -> None:
    num_ops = 3
    augment = ClipRandAugment(num_ops=num_ops, probability=0.7)
    generator = _generator(seed)
    sampled = augment.sample(generator)
    # Redo the documented draws by hand.
    mirror = _generator(seed)
    indices = torch.randint(len(OP_NAMES), (num_ops,), generator=mirror)
    apply = torch.rand(num_ops, generator=mirror, dtype=torch.float64)
    noise = torch.randn(num_ops, generator=mirror, dtype=torch.float64)
    negate = torch.rand(num_ops, generator=mirror, dtype=torch.float64)
    interpolation = ("bilinear", "bicubic")[int(torch.randint(2, (1,), generator=mirror))]
    expected = []
    for i in range(num_ops):
        if apply[i] < 0.7:
            name = OP_NAMES[int(indices[i])]
            magnitude = min(max(9.0 + 0.5 * float(noise[i]), 0.0), 10.0)
            expected.append((name, magnitude, op_argument(name, magnitude, bool(negate[i] > 0.5)), interpolation))
    assert [tuple(op) for op in sampled] == expected
    # The generator advanced by exactly those draws, whatever was picked.
    assert torch.equal(generator.get_state(), mirror.get_state())
    generator = _generator(seed)
    augment(random_clip(1), generator)
    assert torch.equal(generator.get_state(), mirror.get_state())


def test_probability_zero_returns_the_clip_unchanged() -> None:
    clip = random_clip(3)
    augment = ClipRandAugment(probability=0.0)
    for seed in range(20):
        out = augment(clip, _generator(seed))
        assert torch.equal(out, clip)
        assert out.data_ptr() != clip.data_ptr()


def test_probability_one_runs_every_op() -> None:
    augment = ClipRandAugment(num_ops=2, probability=1.0)
    assert all(len(augment.sample(_generator(seed))) == 2 for seed in range(20))


def test_ops_picked_uniformly_with_replacement() -> None:
    augment = ClipRandAugment(num_ops=2, probability=1.0)
    generator = _generator(0)
    counts = dict.fromkeys(OP_NAMES, 0)
    repeats = 0
    for _ in range(3000):
        names = [op.name for op in augment.sample(generator)]
        repeats += names[0] == names[1]
        for name in names:
            counts[name] += 1
    assert set(counts) == set(OP_NAMES) and all(300 < count < 500 for count in counts.values())  # 400 each
    assert 100 < repeats < 310  # 3000 / 15 = 200 picks of the same op twice


def test_magnitude_draws_clipped_to_0_10() -> None:
    wide = ClipRandAugment(magnitude=5.0, magnitude_std=20.0, probability=1.0)
    generator = _generator(0)
    magnitudes = [op.magnitude for _ in range(200) for op in wide.sample(generator)]
    assert min(magnitudes) == 0.0 and max(magnitudes) == 10.0
    assert all(0.0 <= m <= 10.0 for m in magnitudes)
    assert any(0.0 < m < 10.0 for m in magnitudes)
    # The release's setting: mean 9, std 0.5.
    default = ClipRandAugment(probability=1.0)
    generator = _generator(1)
    magnitudes = torch.tensor([op.magnitude for _ in range(2000) for op in default.sample(generator)])
    assert magnitudes.max() == 10.0 and magnitudes.min() > 6.5
    unclipped = magnitudes[magnitudes < 10.0]
    assert abs(float(magnitudes.mean()) - 8.99) < 0.05 and 0.4 < float(unclipped.std()) < 0.5
    # No spread: exactly the magnitude.
    fixed = ClipRandAugment(magnitude=7.0, magnitude_std=0.0, probability=1.0)
    assert {op.magnitude for op in fixed.sample(_generator(2))} == {7.0}


# ------------------------------------------------------------------------------------------
# Arguments from magnitudes
# ------------------------------------------------------------------------------------------

ARGUMENTS = {
    # name: arguments at magnitudes 0, 5, 9, 10
    "AutoContrast": (None, None, None, None),
    "Equalize": (None, None, None, None),
    "Invert": (None, None, None, None),
    "Rotate": (0.0, 15.0, 27.0, 30.0),
    "Posterize": (0, 2, 3, 4),
    "Solarize": (0, 128, 230, 256),
    "SolarizeAdd": (0, 55, 99, 110),
    "Color": (0.1, 1.0, 1.72, 1.9),
    "Contrast": (0.1, 1.0, 1.72, 1.9),
    "Brightness": (0.1, 1.0, 1.72, 1.9),
    "Sharpness": (0.1, 1.0, 1.72, 1.9),
    "ShearX": (0.0, 0.15, 0.27, 0.3),
    "ShearY": (0.0, 0.15, 0.27, 0.3),
    "TranslateXRel": (0.0, 0.225, 0.405, 0.45),
    "TranslateYRel": (0.0, 0.225, 0.405, 0.45),
}
SIGNED = set(GEOMETRIC_OPS)


def test_argument_table_covers_the_release_ops() -> None:
    assert OP_NAMES == tuple(ARGUMENTS)


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize(("index", "magnitude"), list(enumerate((0.0, 5.0, 9.0, 10.0))))
def test_argument_from_magnitude(name: str, index: int, magnitude: float) -> None:
    expected = ARGUMENTS[name][index]
    for negate in (False, True):
        argument = op_argument(name, magnitude, negate)
        if expected is None:
            assert argument is None
        elif isinstance(expected, int):
            assert type(argument) is int and argument == expected
        else:
            sign = -1.0 if (negate and name in SIGNED) else 1.0
            assert argument == pytest.approx(sign * expected, abs=1e-12)


# ------------------------------------------------------------------------------------------
# Pixel ops against PIL
# ------------------------------------------------------------------------------------------


def _solarize_add_pil(image: Image.Image, amount: int) -> Image.Image:
    lut = [min(255, i + amount) if i < 128 else i for i in range(256)]
    return image.point(lut * 3)


# (name, argument, what PIL does, largest difference allowed in uint8 levels)
PIL_CASES = [
    ("Invert", None, ImageOps.invert, 0),
    ("AutoContrast", None, ImageOps.autocontrast, 0),
    ("Equalize", None, ImageOps.equalize, 0),
    *[("Solarize", t, lambda im, t=t: ImageOps.solarize(im, t), 0) for t in (0, 128, 230, 255, 256)],
    *[("Posterize", b, lambda im, b=b: ImageOps.posterize(im, b), 0) for b in (1, 2, 3, 4, 8)],
    *[("SolarizeAdd", a, lambda im, a=a: _solarize_add_pil(im, a), 0) for a in (0, 55, 99, 110)],
    *[("Brightness", f, lambda im, f=f: ImageEnhance.Brightness(im).enhance(f), 0) for f in (0.1, 1.0, 1.72, 1.9)],
    # torchvision's greyscale floors where PIL rounds: at most one level apart.
    *[("Color", f, lambda im, f=f: ImageEnhance.Color(im).enhance(f), 1) for f in (0.1, 1.0, 1.72, 1.9)],
    # torchvision's mean grey is the float mean of floored greys, PIL's a rounded integer.
    *[("Contrast", f, lambda im, f=f: ImageEnhance.Contrast(im).enhance(f), 1) for f in (0.1, 1.0, 1.72, 1.9)],
    # Same kernel and border; rounding of the smoothed frame differs.
    *[("Sharpness", f, lambda im, f=f: ImageEnhance.Sharpness(im).enhance(f), 1) for f in (0.1, 1.0, 1.72, 1.9)],
]


def narrow_clip() -> torch.Tensor:
    """The smooth frame squeezed into another narrow range per channel (a dim, tinted frame):
    AutoContrast and Equalize change it, unlike frames that span 0-255 in every channel."""
    low, span = torch.tensor([40.0, 90.0, 3.0]).view(1, 3, 1, 1), torch.tensor([97.0, 60.0, 201.0]).view(1, 3, 1, 1)
    return (low + smooth_clip().float() * span / 255).round().to(torch.uint8)


@pytest.mark.parametrize("image", ["noise", "smooth", "narrow"])
@pytest.mark.parametrize(("name", "argument", "pil_op", "tolerance"), PIL_CASES)
def test_pixel_op_matches_pil(name: str, argument: object, pil_op, tolerance: int, image: str) -> None:
    frame = {"noise": lambda: random_clip(1, seed=7), "smooth": smooth_clip, "narrow": narrow_clip}[image]()
    ours = apply_op(name, frame, argument)
    theirs = from_pil(pil_op(to_pil(frame)))
    assert int(abs_diff(ours, theirs).max()) <= tolerance


@pytest.mark.parametrize("seed", range(12))
def test_auto_contrast_is_pil_on_any_range(seed: int) -> None:
    """Random per-channel ranges, flat channels included: PIL's table to the level."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.randint(0, 256, (3,), generator=generator)
    high = torch.minimum(low + torch.randint(0, 120, (3,), generator=generator), torch.tensor(255))
    frame = (low.view(1, 3, 1, 1) + torch.rand(1, 3, 20, 24, generator=generator) * (high - low + 1).view(1, 3, 1, 1))
    frame = frame.floor().clamp(max=255).to(torch.uint8)
    assert torch.equal(apply_op("AutoContrast", frame, None), from_pil(ImageOps.autocontrast(to_pil(frame))))


def test_posterize_zero_bits_is_black() -> None:
    # The release's Pillow turned 0 bits into a black frame (Pillow >= 10 refuses 0 bits).
    assert torch.equal(apply_op("Posterize", random_clip(2), 0), torch.zeros(2, 3, 48, 64, dtype=torch.uint8))


# ------------------------------------------------------------------------------------------
# Geometric ops against PIL
# ------------------------------------------------------------------------------------------


def _pil_geometric(name: str, argument: float, image: Image.Image, resample: int) -> Image.Image:
    width, height = image.size
    if name == "Rotate":
        return image.rotate(argument, resample=resample, fillcolor=FILL)
    coeffs = {
        "ShearX": (1, argument, 0, 0, 1, 0),
        "ShearY": (1, 0, 0, argument, 1, 0),
        "TranslateXRel": (1, 0, argument * width, 0, 1, 0),
        "TranslateYRel": (1, 0, 0, 0, 1, argument * height),
    }[name]
    return image.transform(image.size, Image.AFFINE, coeffs, resample=resample, fillcolor=FILL)


GEOMETRIC_CASES = [(name, m, negate) for name in GEOMETRIC_OPS for m in (3.0, 9.0, 10.0) for negate in (False, True)]
RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("name", "magnitude", "negate"), GEOMETRIC_CASES)
def test_reference_warp_matches_pil_exactly(name: str, magnitude: float, negate: bool, interpolation: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Same sampling grid, edge clamping, in/out test for the fill, interpolation formulas and
    # truncation as PIL's Image.transform / Image.rotate: identical output, noise or smooth.
    monkeypatch.setattr(randaugment, "_warp", randaugment._warp_like_pil)
    argument = op_argument(name, magnitude, negate)
    for frame in (random_clip(1, seed=11), smooth_clip(), random_clip(1, height=37, width=50, seed=12)):
        ours = apply_op(name, frame, argument, interpolation, FILL)
        theirs = from_pil(_pil_geometric(name, argument, to_pil(frame), RESAMPLE[interpolation]))
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("name", "magnitude", "negate"), GEOMETRIC_CASES)
def test_fast_warp_is_within_a_level_of_pil_on_smooth_frames(name: str, magnitude: float, negate: bool,
                                                             interpolation: str) -> None:
    """The grid_sample warp the ops use: within one level of PIL everywhere with bilinear
    interpolation, noise included; with bicubic on smooth frames (on noise PyTorch's cubic
    kernel, a = -0.75, is a few levels from PIL's a = -1 on average), the fill the same."""
    argument = op_argument(name, magnitude, negate)
    frames = [smooth_clip(), random_clip(1, height=37, width=50, seed=12, high=100)]
    if interpolation == "bilinear":
        frames.append(random_clip(1, seed=11))
    for frame in frames:
        ours = apply_op(name, frame, argument, interpolation, FILL)
        theirs = from_pil(_pil_geometric(name, argument, to_pil(frame), RESAMPLE[interpolation]))
        if frame.max() < 100:  # (noise below the fill colour: the fill pixels are the uncovered ones)
            assert torch.equal(_fill_mask(ours), _fill_mask(theirs))
        tolerance = 1 if interpolation == "bilinear" or frame is frames[0] else 60
        assert (ours.int() - theirs.int()).abs().max() <= tolerance
    noise = random_clip(1, seed=11)
    difference = apply_op(name, noise, argument, "bicubic", FILL).int() - from_pil(
        _pil_geometric(name, argument, to_pil(noise), Image.BICUBIC)).int()
    assert difference.abs().float().mean() < 5


def _fill_mask(clip: torch.Tensor) -> torch.Tensor:
    return (clip == torch.tensor(FILL, dtype=torch.uint8).view(1, 3, 1, 1)).all(dim=1)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("name", "negate"), [(name, negate) for name in GEOMETRIC_OPS for negate in (False, True)])
def test_geometric_fill_where_pil_fills(name: str, negate: bool, interpolation: str) -> None:
    # Pixel values in [0, 100) never interpolate to the fill colour, so fill pixels are uncovered ones.
    frame = random_clip(1, seed=13, high=100)
    argument = op_argument(name, 10.0, negate)
    ours = _fill_mask(apply_op(name, frame, argument, interpolation, FILL))
    theirs = _fill_mask(from_pil(_pil_geometric(name, argument, to_pil(frame), RESAMPLE[interpolation])))
    assert ours.any()
    assert torch.equal(ours, theirs)


def test_rotate_fills_all_four_corners() -> None:
    frame = random_clip(1, seed=14, high=100)
    for degrees in (30.0, -30.0):
        mask = _fill_mask(apply_op("Rotate", frame, degrees, "bilinear", FILL))[0]
        assert mask[0, 0] and mask[0, -1] and mask[-1, 0] and mask[-1, -1]
        assert not mask[24, 32]


@pytest.mark.parametrize("negate", [False, True])
def test_fill_side_of_shear_and_translate(negate: bool) -> None:
    frame = random_clip(1, seed=15, high=100)
    sign = -1 if negate else 1
    # PIL's ShearX reads x + k y: with k > 0 the bottom-right is uncovered, the top row is untouched.
    mask = _fill_mask(apply_op("ShearX", frame, sign * 0.3, "bilinear", FILL))[0]
    assert mask[-1, -1 if sign > 0 else 0] and not mask[-1, 0 if sign > 0 else -1] and not mask[0].any()
    mask = _fill_mask(apply_op("ShearY", frame, sign * 0.3, "bilinear", FILL))[0]
    assert mask[-1 if sign > 0 else 0, -1] and not mask[:, 0].any()
    # A positive translation moves the content left (up), uncovering the right (bottom) side.
    mask = _fill_mask(apply_op("TranslateXRel", frame, sign * 0.25, "bilinear", FILL))[0]
    assert mask[:, -16:].all() if sign > 0 else mask[:, :16].all()
    assert not mask[:, 16:-16].any()
    mask = _fill_mask(apply_op("TranslateYRel", frame, sign * 0.25, "bilinear", FILL))[0]
    assert mask[-12:].all() if sign > 0 else mask[:12].all()
    assert not mask[12:-12].any()


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_whole_pixel_translation_moves_a_marked_pixel(interpolation: str) -> None:
    frame = torch.zeros(1, 3, 48, 64, dtype=torch.uint8)
    frame[0, :, 20, 30] = torch.tensor([255, 200, 150], dtype=torch.uint8)
    out = apply_op("TranslateXRel", frame, 0.25, interpolation, FILL)  # 16 pixels left
    assert out[0, :, 20, 14].tolist() == [255, 200, 150]
    assert int(out[0, :, :, :48].sum()) == 255 + 200 + 150
    out = apply_op("TranslateYRel", frame, -0.25, interpolation, FILL)  # 12 pixels down
    assert out[0, :, 32, 30].tolist() == [255, 200, 150]
    assert int(out[0, :, 12:, :].sum()) == 255 + 200 + 150


def test_rotate_direction_is_counter_clockwise() -> None:
    # A bright block right of the centre goes up under a positive (counter-clockwise) angle.
    frame = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    frame[0, :, 30:34, 50:54] = 255
    out = apply_op("Rotate", frame, 30.0, "bilinear", FILL)[0, 0].to(torch.float64)
    rows = torch.arange(64, dtype=torch.float64).view(64, 1)
    inside = out * (out != FILL[0])
    centre_row = float((inside * rows).sum() / inside.sum())
    assert centre_row == pytest.approx(32 - 20 * 0.5, abs=1.0)  # 20 px from the centre, sin 30 = 0.5


def test_zero_magnitude_geometry_is_identity() -> None:
    clip = random_clip(2)
    for name in GEOMETRIC_OPS:
        for interpolation in ("bilinear", "bicubic"):
            assert torch.equal(apply_op(name, clip, op_argument(name, 0.0), interpolation, FILL), clip)


# ------------------------------------------------------------------------------------------
# Input validation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clip", "match"),
    [
        (torch.zeros(2, 3, 8, 8), "uint8"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), "shape"),
        (torch.zeros(2, 4, 8, 8, dtype=torch.uint8), "channels"),
        (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), "channels"),
    ],
)
def test_bad_clips_raise(clip: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ClipRandAugment()(clip, _generator(0))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_ops": -1},
        {"magnitude_std": -0.1},
        {"magnitude_std": float("inf")},
        {"probability": 1.5},
        {"fill": (0, 0)},
        {"fill": (0, 0, 256)},
    ],
)
def test_bad_settings_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ClipRandAugment(**kwargs)


@pytest.mark.parametrize("seed", range(8))
def test_clip_augment_applies_the_sampled_ops_in_order_with_its_fill(seed: int) -> None:
    # every drawn operation counts (not only the last), in the drawn order, with the user's fill
    fill = (0, 255, 0)
    augment = ClipRandAugment(num_ops=3, probability=1.0, fill=fill)
    clip = torch.cat([random_clip(1, seed=seed), smooth_clip()])
    expected = clip
    for op in augment.sample(_generator(seed)):
        expected = apply_op(op.name, expected, op.argument, op.interpolation, fill)
    assert torch.equal(augment(clip, _generator(seed)), expected)


def test_interpolation_is_bilinear_or_bicubic_with_equal_odds() -> None:
    augment = ClipRandAugment(num_ops=1, probability=1.0)
    generator = _generator(0)
    picks = [augment.sample(generator)[0].interpolation for _ in range(1000)]
    assert set(picks) == {"bilinear", "bicubic"} and 400 < picks.count("bicubic") < 600


def test_zero_ops_is_allowed_and_leaves_the_clip_alone() -> None:
    clip = random_clip(2)
    augment = ClipRandAugment(num_ops=0, probability=1.0)
    assert augment.sample(_generator(0)) == []
    assert torch.equal(augment(clip, _generator(0)), clip)


@pytest.mark.parametrize("magnitude", [float("nan"), float("inf")])
def test_a_magnitude_that_is_not_finite_is_refused(magnitude: float) -> None:
    with pytest.raises(ValueError, match="magnitude must be finite"):
        ClipRandAugment(magnitude=magnitude)


@pytest.mark.parametrize("name", ["Rotate", "Invert"])
def test_an_unknown_interpolation_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="interpolation must be one of"):
        apply_op(name, random_clip(1), op_argument(name, 9.0), "nearest", FILL)
