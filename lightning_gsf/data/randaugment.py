"""Clip-level RandAugment, as the original GSF release trains with it.

The GSF release (github swathikirans/GSF, ``main.py``) augments training clips with
``rand_augment_transform('rand-m9-mstd0.5', {'translate_const': 117, 'img_mean': (124, 116, 104)})``
from its ``utils/transforms.py``, which is Ross Wightman's RandAugment from timm
(``timm/data/auto_augment.py``) applied to the list of PIL frames of a clip. This module
re-implements that policy on uint8 ``(T, C, H, W)`` tensors, with explicit randomness.

The policy
----------
* ``num_ops`` (2) operations per clip, each picked uniformly, with replacement, from the 15 below.
* Each picked operation runs with probability ``probability`` (0.5). When it runs, its magnitude
  ``m`` is drawn from a normal distribution with mean ``magnitude`` (9) and standard deviation
  ``magnitude_std`` (0.5), then clipped to ``[0, 10]``; the operation's argument follows from
  the level ``m / 10`` once, and every frame of the clip gets the same argument.
* Arguments (level ``l = m / 10``; "signed" means negated with probability 1/2):

  ============== ===================================================================
  AutoContrast   none: per channel, stretch [min, max] to [0, 255]
  Equalize       none: per channel histogram equalisation (PIL's lookup table)
  Invert         none: ``255 - x``
  Rotate         ``30 l`` degrees, signed, counter-clockwise about the image centre
  Posterize      keep ``int(4 l)`` high bits; 0 bits gives a black frame, >= 8 keeps it
  Solarize       invert pixels ``>= int(256 l)`` (a threshold of 256 changes nothing)
  SolarizeAdd    add ``int(110 l)`` to pixels below 128, saturating at 255
  Color          saturation factor ``1.8 l + 0.1`` (blend with the greyscale frame)
  Contrast       factor ``1.8 l + 0.1`` (blend with a flat frame of the mean grey)
  Brightness     factor ``1.8 l + 0.1`` (blend with black)
  Sharpness      factor ``1.8 l + 0.1`` (blend with the 3 x 3 smoothed frame)
  ShearX/ShearY  shear factor ``0.3 l``, signed
  TranslateXRel  ``0.45 l`` of the width, signed
  TranslateYRel  ``0.45 l`` of the height, signed
  ============== ===================================================================

* Geometric operations follow PIL's ``Image.transform(AFFINE)``: the six coefficients
  ``(a, b, c, d, e, f)`` map an output point ``(x, y)`` (pixel centres at ``i + 0.5``) to the
  input point ``(a x + b y + c, d x + e y + f)``. So ShearX takes ``x + k y`` (a shear about the
  top-left corner, not the centre), TranslateXRel with a positive fraction moves the content
  *left* (up for Y), and Rotate uses PIL's matrix about ``(W / 2, H / 2)``. Output pixels whose
  source point falls outside the frame take the release's fill colour ``img_mean`` =
  (124, 116, 104) (RGB); others interpolate with edge pixels repeated, as PIL does.
* Interpolation for the geometric operations is bilinear or bicubic with equal odds.

Randomness and draw order
-------------------------
Every random number comes from the ``torch.Generator`` passed to ``__call__``, always the same
number of draws per call (``4 * num_ops + 1``), in this order:

1. ``torch.randint(15, (num_ops,))``: the operations' indices into ``OP_NAMES``;
2. ``torch.rand(num_ops)``: an operation runs when its value is ``< probability``;
3. ``torch.randn(num_ops)``: magnitude ``clip(magnitude + magnitude_std * z, 0, 10)``;
4. ``torch.rand(num_ops)``: a signed argument is negated when its value is ``> 0.5``;
5. ``torch.randint(2, (1,))``: the clip's interpolation, 0 bilinear, 1 bicubic.

Draws are made even for operations that do not run or take no argument, so the generator
advances by the same amount whatever was picked.

Differences from the release (PIL frames) and why
-------------------------------------------------
Sizes are measured against Pillow 13 on 48 x 64 frames, both uniform noise (the worst case) and a
smooth synthetic image; "levels" are uint8 steps.

* The release draws the interpolation per frame (``random.choice`` inside each PIL call); here
  one draw serves the whole clip, so all frames get an identical warp.
* Geometric operations: ``F.affine``/``F.rotate`` on tensors support only nearest and
  bilinear, round instead of truncating, and blend the fill colour in along the boundary
  where PIL uses a hard in/out test (``F.rotate``, 13.5 degrees, bilinear: up to ~125 levels
  off on ~3% of the pixels, the boundary band). So the ops warp with ``_warp``: PIL's source
  points and hard fill, sampled by ``grid_sample`` in float32 and truncated. Bilinear, it is
  within one level of PIL everywhere (noise included); bicubic, within one level on smooth
  frames almost everywhere (a review saw 2 levels on 0.15 % of a 37 x 53 frame's pixels),
  while on noise PyTorch's cubic kernel (``a = -0.75``; PIL's transform uses
  ``a = -1``) is up to ~25 levels (~3 on average) apart. ``_warp_like_pil`` re-implements PIL's
  sampling in float64 and is identical to Pillow 13 for all five operations (the reference the
  tests hold both to), but took ~250 ms (bilinear) to ~500 ms (bicubic) per warp of an
  8 x 256 x 456 EPIC clip on one thread where ``_warp`` takes 10-30 ms: with it, RandAugment
  cost 72-111 ms per clip of Kinetics / EPIC size on average, with ``_warp`` 12-18 ms.
* Color (``F.adjust_saturation``): torchvision's greyscale is
  ``floor(0.2989 R + 0.587 G + 0.114 B)``, PIL's "L" rounds ``(19595 R + 38470 G + 7471 B) / 2**16``;
  the output differs by at most 1 level (up to ~47% of pixels at factor 0.1).
* Contrast (``F.adjust_contrast``): torchvision blends with the float mean of its floored
  greyscale, PIL with ``int(mean + 0.5)`` of its rounded greyscale; at most 1 level (up to ~90% of
  pixels at factor 0.1 when the two means straddle a level).
* Sharpness (``F.adjust_sharpness``): same smoothing kernel ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13``
  and the same untouched one-pixel border; at most 1 level, on under 0.3% of pixels.
* Brightness, Invert, Solarize, SolarizeAdd, Posterize, Equalize and AutoContrast: identical to
  PIL on the test images (AutoContrast by PIL's own lookup table; torchvision's
  ``F.autocontrast`` was a level off on ~2.5 % of the values of frames short of 0-255).
* Posterize with 0 bits (magnitude < 2.5, practically never drawn at 9 +- 0.5) gives a black
  clip, as the Pillow of the release's time did (its mask arithmetic gives 0); Pillow 13
  refuses 0 bits.
* The bounds above are per operation. Where two run in a row, a one-level difference from the
  first can cross a Posterize bin, SolarizeAdd's threshold or a step of Equalize's table and
  grow (a review replaying 400 clips through PIL saw about a fifth of the frames more than 2
  levels apart after both operations); each operation alone stays within its bound.
* An operation runs when ``u < probability`` (the release: unless ``u > probability``), which
  differs only for ``u == probability`` exactly, and makes ``probability = 0`` a no-op.
* The draws come from a ``torch.Generator``, not Python's ``random`` and NumPy's global RNG as
  in the release, so the same seed gives different (identically distributed) choices.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torchvision.transforms.v2 import functional as F

__all__ = ["OP_NAMES", "ClipRandAugment", "SampledOp", "apply_op", "op_argument"]

# The magnitude scale: level = magnitude / _MAX_MAGNITUDE, and magnitudes are clipped to it.
_MAX_MAGNITUDE = 10.0

_INTERPOLATIONS = ("bilinear", "bicubic")


# --------------------------------------------------------------------------------------------
# Geometric operations: PIL-style affine warps on the whole clip.
# --------------------------------------------------------------------------------------------


def _lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # PIL's form: exact when a == b or t == 0, which keeps flat areas and whole-pixel shifts exact.
    return a + (b - a) * t


def _cubic(v0: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, v3: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # The cubic through v1 (t = 0) and v2 (t = 1) that PIL's transform uses (cubic convolution
    # with a = -1), in its Horner form.
    c1 = v2 - v0
    c2 = 2 * (v0 - v1) + v2 - v3
    c3 = -v0 + v1 - v2 + v3
    return v1 + t * (c1 + t * (c2 + t * c3))


def _source_points(coeffs: tuple[float, float, float, float, float, float], height: int, width: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, y, inside)``, each ``(H, W)``: the source point (float64) of every output pixel
    centre ``(j + 0.5, i + 0.5)`` under PIL's output-to-input affine ``coeffs``, and whether it
    falls in the frame ``[0, W) x [0, H)`` (outside, the pixel takes the fill colour)."""
    a, b, c, d, e, f = coeffs
    ys = torch.arange(height, dtype=torch.float64).add_(0.5).view(height, 1)
    xs = torch.arange(width, dtype=torch.float64).add_(0.5).view(1, width)
    src_x = a * xs + b * ys + c
    src_y = d * xs + e * ys + f
    return src_x, src_y, (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)


def _warp_like_pil(
    clip: torch.Tensor,
    coeffs: tuple[float, float, float, float, float, float],
    interpolation: str,
    fill: tuple[int, int, int],
) -> torch.Tensor:
    """Warp every frame with PIL's output-to-input affine ``coeffs``, as ``Image.transform`` does.

    An output pixel ``(i, j)`` has its centre at ``(j + 0.5, i + 0.5)``; its source point is
    ``(a x + b y + c, d x + e y + f)``. A source point outside ``[0, W) x [0, H)`` gives the fill
    colour; any other is interpolated between the pixels around it (pixel centres at ``k + 0.5``,
    indices clamped to the frame), clamped to [0, 255] and truncated, as PIL does.
    """
    frames, channels, height, width = clip.shape
    src_x, src_y, inside = _source_points(coeffs, height, width)
    # Pixel-index coordinates: the pixel left of (above) the point, and the offset from it.
    src_x, src_y = src_x - 0.5, src_y - 0.5
    x0, y0 = src_x.floor(), src_y.floor()
    tx, ty = src_x - x0, src_y - y0
    x0, y0 = x0.clamp(-2, width).long(), y0.clamp(-2, height).long()  # far points are filled anyway
    # Pixels as rows of T * C values, so that each tap gathers whole rows.
    flat = clip.permute(2, 3, 0, 1).reshape(height * width, frames * channels).to(torch.float64)
    tx, ty = tx.view(-1, 1), ty.view(-1, 1)

    def taps(dy: int, dxs: tuple[int, ...]) -> list[torch.Tensor]:
        # The pixels at rows y0 + dy and columns x0 + dx (clamped), each as (H * W, T * C).
        row_start = (y0 + dy).clamp(0, height - 1) * width
        return [flat.index_select(0, (row_start + (x0 + dx).clamp(0, width - 1)).view(-1)) for dx in dxs]

    if interpolation == "bilinear":
        offsets = (0, 1)
        top, bottom = (_lerp(*taps(dy, offsets), tx) for dy in offsets)
        warped = _lerp(top, bottom, ty)
    else:
        offsets = (-1, 0, 1, 2)
        warped = _cubic(*(_cubic(*taps(dy, offsets), tx) for dy in offsets), ty)
    warped = warped.clamp_(0, 255).floor_().to(torch.uint8)
    warped = warped.view(height, width, frames, channels).permute(2, 3, 0, 1).contiguous()
    fill_colour = torch.tensor(fill, dtype=torch.uint8).view(1, channels, 1, 1)
    return torch.where(inside, warped, fill_colour)


def _warp(
    clip: torch.Tensor,
    coeffs: tuple[float, float, float, float, float, float],
    interpolation: str,
    fill: tuple[int, int, int],
) -> torch.Tensor:
    """:func:`_warp_like_pil` through ``torch.nn.functional.grid_sample`` in float32: the same
    source points, the same hard fill outside the frame, edge pixels repeated inside it, and
    truncation; bicubic with PyTorch's kernel (``a = -0.75``, PIL's transform ``a = -1``).
    About 20x faster (an EPIC clip of 8 x 256 x 456 frames: 12 ms bilinear where the exact
    warp took ~250 ms); the values differ (``tests/test_randaugment.py`` bounds by how much)."""
    frames, channels, height, width = clip.shape
    src_x, src_y, inside = _source_points(coeffs, height, width)
    # align_corners=False: -1 and 1 are the frame's outer edges, so a pixel centre k + 0.5 is
    # 2 (k + 0.5) / size - 1, and PIL's continuous coordinate x is 2 x / size - 1.
    grid = torch.stack([src_x * (2.0 / width) - 1.0, src_y * (2.0 / height) - 1.0], dim=-1).float()
    warped = torch.nn.functional.grid_sample(
        clip.float(), grid.expand(frames, height, width, 2), mode=interpolation, padding_mode="border",
        align_corners=False,
    )
    # Truncated as PIL does, with float32's error at the sampled pixel centres forgiven (an
    # identity warp returns the clip itself).
    warped = warped.add_(1e-3).clamp_(0, 255).floor_().to(torch.uint8)
    fill_colour = torch.tensor(fill, dtype=torch.uint8).view(1, channels, 1, 1)
    return torch.where(inside, warped, fill_colour)


def rotate_coeffs(degrees: float, height: int, width: int) -> tuple[float, float, float, float, float, float]:
    """PIL's ``Image.rotate`` coefficients: counter-clockwise ``degrees`` about ``(W / 2, H / 2)``."""
    theta = -math.radians(degrees)
    cos, sin = round(math.cos(theta), 15), round(math.sin(theta), 15)
    cx, cy = width / 2.0, height / 2.0
    # Rotate about the centre: input = R (output - centre) + centre.
    return (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)


def _rotate(clip: torch.Tensor, degrees: float, interpolation: str, fill: tuple[int, int, int]) -> torch.Tensor:
    height, width = clip.shape[-2:]
    return _warp(clip, rotate_coeffs(degrees, height, width), interpolation, fill)


def _shear_x(clip: torch.Tensor, factor: float, interpolation: str, fill: tuple[int, int, int]) -> torch.Tensor:
    return _warp(clip, (1.0, factor, 0.0, 0.0, 1.0, 0.0), interpolation, fill)


def _shear_y(clip: torch.Tensor, factor: float, interpolation: str, fill: tuple[int, int, int]) -> torch.Tensor:
    return _warp(clip, (1.0, 0.0, 0.0, factor, 1.0, 0.0), interpolation, fill)


def _translate_x_rel(
    clip: torch.Tensor, fraction: float, interpolation: str, fill: tuple[int, int, int]
) -> torch.Tensor:
    return _warp(clip, (1.0, 0.0, fraction * clip.shape[-1], 0.0, 1.0, 0.0), interpolation, fill)


def _translate_y_rel(
    clip: torch.Tensor, fraction: float, interpolation: str, fill: tuple[int, int, int]
) -> torch.Tensor:
    return _warp(clip, (1.0, 0.0, 0.0, 0.0, 1.0, fraction * clip.shape[-2]), interpolation, fill)


# --------------------------------------------------------------------------------------------
# Pixel operations. They take (and ignore) the interpolation and fill of the geometric ones.
# --------------------------------------------------------------------------------------------


def _auto_contrast(clip: torch.Tensor, _arg: None, *_: object) -> torch.Tensor:
    # PIL's lookup table, per frame and channel: level i -> int(i * scale + offset) in double
    # precision, scale = 255 / (high - low), offset = -low * scale; a flat channel stays as it
    # is. (torchvision's float32 (x - low) * scale, truncated, falls a level short on some.)
    frames, channels = clip.shape[:2]
    flat = clip.reshape(frames, channels, -1)
    low = flat.amin(dim=-1, keepdim=True).double()
    high = flat.amax(dim=-1, keepdim=True).double()
    # (a true division: ``255.0 / tensor`` multiplies by the reciprocal, a rounding off PIL's)
    scale = torch.where(high > low, torch.full_like(low, 255.0).div((high - low).clamp(min=1)), 1.0)
    offset = torch.where(high > low, -low * scale, 0.0)
    levels = torch.arange(256, dtype=torch.float64)
    table = (levels * scale + offset).trunc().clamp(0, 255).to(torch.uint8)  # (frames, channels, 256)
    return table.gather(-1, flat.long()).reshape(clip.shape)


def _equalize(clip: torch.Tensor, _arg: None, *_: object) -> torch.Tensor:
    return F.equalize(clip)


def _invert(clip: torch.Tensor, _arg: None, *_: object) -> torch.Tensor:
    return F.invert(clip)


def _posterize(clip: torch.Tensor, bits: int, *_: object) -> torch.Tensor:
    # 8 bits or more keep the clip as it is; 0 bits leave nothing (a black clip), as in PIL.
    return clip.clone() if bits >= 8 else F.posterize(clip, bits)


def _solarize(clip: torch.Tensor, threshold: int, *_: object) -> torch.Tensor:
    # No uint8 value reaches a threshold of 256 (torchvision refuses thresholds above 255).
    return clip.clone() if threshold > 255 else F.solarize(clip, threshold)


def _solarize_add(clip: torch.Tensor, amount: int, *_: object) -> torch.Tensor:
    raised = (clip.to(torch.int16) + amount).clamp_(max=255).to(torch.uint8)
    return torch.where(clip < 128, raised, clip)


def _color(clip: torch.Tensor, factor: float, *_: object) -> torch.Tensor:
    return F.adjust_saturation(clip, factor)


def _contrast(clip: torch.Tensor, factor: float, *_: object) -> torch.Tensor:
    return F.adjust_contrast(clip, factor)


def _brightness(clip: torch.Tensor, factor: float, *_: object) -> torch.Tensor:
    return F.adjust_brightness(clip, factor)


def _sharpness(clip: torch.Tensor, factor: float, *_: object) -> torch.Tensor:
    return F.adjust_sharpness(clip, factor)


# --------------------------------------------------------------------------------------------
# Arguments from the magnitude. `negate` is the clip's sign draw, used by the signed ones.
# --------------------------------------------------------------------------------------------


def _no_argument(_magnitude: float, _negate: bool) -> None:
    return None


def _signed(scale: float) -> Callable[[float, bool], float]:
    def argument(magnitude: float, negate: bool) -> float:
        value = magnitude / _MAX_MAGNITUDE * scale
        return -value if negate else value

    return argument


def _enhance_factor(magnitude: float, _negate: bool) -> float:
    return magnitude / _MAX_MAGNITUDE * 1.8 + 0.1


def _posterize_bits(magnitude: float, _negate: bool) -> int:
    return int(magnitude / _MAX_MAGNITUDE * 4)


def _solarize_threshold(magnitude: float, _negate: bool) -> int:
    return int(magnitude / _MAX_MAGNITUDE * 256)


def _solarize_add_amount(magnitude: float, _negate: bool) -> int:
    return int(magnitude / _MAX_MAGNITUDE * 110)


_Op = Callable[..., torch.Tensor]

# name -> (operation on a clip, argument from (magnitude, negate)). The order is the release's
# and fixes what an op index drawn from the generator means.
_OPS: dict[str, tuple[_Op, Callable[[float, bool], object]]] = {
    "AutoContrast": (_auto_contrast, _no_argument),
    "Equalize": (_equalize, _no_argument),
    "Invert": (_invert, _no_argument),
    "Rotate": (_rotate, _signed(30.0)),
    "Posterize": (_posterize, _posterize_bits),
    "Solarize": (_solarize, _solarize_threshold),
    "SolarizeAdd": (_solarize_add, _solarize_add_amount),
    "Color": (_color, _enhance_factor),
    "Contrast": (_contrast, _enhance_factor),
    "Brightness": (_brightness, _enhance_factor),
    "Sharpness": (_sharpness, _enhance_factor),
    "ShearX": (_shear_x, _signed(0.3)),
    "ShearY": (_shear_y, _signed(0.3)),
    "TranslateXRel": (_translate_x_rel, _signed(0.45)),
    "TranslateYRel": (_translate_y_rel, _signed(0.45)),
}

OP_NAMES: tuple[str, ...] = tuple(_OPS)


def op_argument(name: str, magnitude: float, negate: bool = False) -> object:
    """The argument of operation ``name`` at ``magnitude`` (in [0, 10]); ``None`` if it takes none."""
    return _OPS[name][1](magnitude, negate)


def apply_op(
    name: str,
    clip: torch.Tensor,
    argument: object,
    interpolation: str = "bilinear",
    fill: tuple[int, int, int] = (124, 116, 104),
) -> torch.Tensor:
    """Apply operation ``name`` with an already computed ``argument`` to every frame of ``clip``."""
    _check_clip(clip)
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    return _OPS[name][0](clip, argument, interpolation, fill)


def _check_clip(clip: torch.Tensor) -> None:
    if not isinstance(clip, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor clip, got {type(clip).__name__}")
    if clip.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 clip, got dtype {clip.dtype}")
    if clip.ndim != 4:
        raise ValueError(f"expected a clip of shape (T, C, H, W), got shape {tuple(clip.shape)}")
    if clip.shape[1] != 3:
        raise ValueError(f"expected 3 (RGB) channels in dimension 1, got shape {tuple(clip.shape)}")


class SampledOp(NamedTuple):
    """One operation drawn for a clip: its name, clipped magnitude, argument and interpolation."""

    name: str
    magnitude: float
    argument: object
    interpolation: str


class ClipRandAugment:
    """RandAugment ``rand-m9-mstd0.5`` of the GSF release, one draw per clip (see module docstring)."""

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 9.0,
        magnitude_std: float = 0.5,
        probability: float = 0.5,
        fill: tuple[int, int, int] = (124, 116, 104),
    ) -> None:
        if num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {num_ops}")
        if not math.isfinite(magnitude):
            raise ValueError(f"magnitude must be finite, got {magnitude}")
        if not (math.isfinite(magnitude_std) and magnitude_std >= 0):
            raise ValueError(f"magnitude_std must be finite and >= 0, got {magnitude_std}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {probability}")
        fill = tuple(int(v) for v in fill)
        if len(fill) != 3 or not all(0 <= v <= 255 for v in fill):
            raise ValueError(f"fill must be three values in [0, 255], got {fill}")
        self.num_ops = int(num_ops)
        self.magnitude = float(magnitude)
        self.magnitude_std = float(magnitude_std)
        self.probability = float(probability)
        self.fill: tuple[int, int, int] = fill  # type: ignore[assignment]

    def sample(self, generator: torch.Generator) -> list[SampledOp]:
        """Draw the clip's operations, in order, keeping only those that run.

        Consumes the generator exactly as ``__call__`` does (see the module docstring's order).
        """
        n = self.num_ops
        indices = torch.randint(len(OP_NAMES), (n,), generator=generator)
        apply = torch.rand(n, generator=generator, dtype=torch.float64)
        noise = torch.randn(n, generator=generator, dtype=torch.float64)
        negate = torch.rand(n, generator=generator, dtype=torch.float64)
        interpolation = _INTERPOLATIONS[int(torch.randint(len(_INTERPOLATIONS), (1,), generator=generator))]
        chosen = []
        for i in range(n):
            if not float(apply[i]) < self.probability:
                continue
            name = OP_NAMES[int(indices[i])]
            magnitude = min(max(self.magnitude + self.magnitude_std * float(noise[i]), 0.0), _MAX_MAGNITUDE)
            argument = op_argument(name, magnitude, float(negate[i]) > 0.5)
            chosen.append(SampledOp(name, magnitude, argument, interpolation))
        return chosen

    def __call__(self, clip: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """clip: uint8 (T, C, H, W) with C == 3; returns a uint8 clip of the same shape; every draw comes from `generator`."""
        _check_clip(clip)
        out = clip.clone()
        for op in self.sample(generator):
            out = _OPS[op.name][0](out, op.argument, op.interpolation, self.fill)
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_ops={self.num_ops}, magnitude={self.magnitude}, "
            f"magnitude_std={self.magnitude_std}, probability={self.probability}, fill={self.fill})"
        )
