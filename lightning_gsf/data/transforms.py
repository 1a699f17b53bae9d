"""Clip-level spatial transforms, shared by every dataset.

A clip is a uint8 ``(T, C, H, W)`` tensor and every frame of a clip gets the *same* crop, flip
and augmentation: the model must see motion, not jitter between frames. The transforms call
``torchvision.transforms.v2.functional`` on the whole clip (v2 treats the leading ``T`` as a
batch dimension), so one call transforms all frames.

Training follows TSN (and so TSM and the original GSF release): a multi-scale crop whose sides
are scales of the frame's short side, placed at one of a few fixed positions rather than
anywhere (the fixed positions favour the borders, which a uniformly random crop rarely reaches),
resized to the input size, then a horizontal flip. Evaluation resizes and centre-crops, or takes
three crops along the long side (the release's positions).

Randomness is explicit: ``TrainClipTransform`` draws every parameter from the
``torch.Generator`` it is given, in a fixed order (RandAugment's draws when it is on, scale
pair, crop position, flip), so a sample's augmentation depends only on the generator's seed.
RandAugment is the original release's (``lightning_gsf.data.randaugment``), on the frames as
read, before the crop, as the release applies it.

Normalisation is deliberately absent: clips stay uint8 up to the model
(``lightning_gsf.normalization``), which normalises on the accelerator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms.v2 import functional as F

from lightning_gsf.data.randaugment import ClipRandAugment

__all__ = ["EvalClipTransform", "TrainClipTransform", "crop_positions", "multi_scale_crop_sizes"]

# TSN snaps a crop size within this many pixels of the input size to the input size, which
# avoids resizing a crop by a pixel or two.
_SNAP_PIXELS = 3


def _check_clip(clip: torch.Tensor) -> None:
    # What the readers return; the model treats a float clip as normalised already, so a float or
    # channels-last clip from a custom reader would otherwise go through without an error.
    if clip.ndim != 4 or clip.shape[1] != 3 or clip.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 RGB clip of shape (T, 3, H, W), got {clip.dtype} of shape "
                         f"{tuple(clip.shape)}")


def multi_scale_crop_sizes(
    height: int, width: int, input_size: int, scales: Sequence[float], max_distort: int = 1
) -> list[tuple[int, int]]:
    """The ``(crop_height, crop_width)`` pairs TSN's multi-scale crop chooses from.

    Each side is a scale of the frame's short side, and the two scales of a pair are at most
    ``max_distort`` steps apart in ``scales``, which bounds the aspect-ratio distortion.
    """
    short_side = min(height, width)
    sizes = [int(short_side * scale) for scale in scales]
    sizes = [input_size if abs(size - input_size) < _SNAP_PIXELS else size for size in sizes]
    return [
        (crop_height, crop_width)
        for i, crop_height in enumerate(sizes)
        for j, crop_width in enumerate(sizes)
        if abs(i - j) <= max_distort
    ]


# Crop positions in steps of a quarter of the slack (frame side minus crop side), rounded down
# as the release and TSN do, (row, column): the centre and the four corners, then TSN's "more
# fixed crops": the middles of the four edges and the four quarter points. With a slack that
# is no multiple of 4 the far corners stop short of the edge by up to 3 pixels, as there.
_CENTRE_AND_CORNERS = ((2, 2), (0, 0), (0, 4), (4, 0), (4, 4))
_EDGES_AND_QUARTERS = ((2, 0), (2, 4), (0, 2), (4, 2), (1, 1), (1, 3), (3, 1), (3, 3))


def crop_positions(
    height: int, width: int, crop_height: int, crop_width: int, more_positions: bool = True
) -> list[tuple[int, int]]:
    """``(top, left)`` of the fixed positions TSN's multi-scale crop chooses from (5 or 13)."""
    quarters = _CENTRE_AND_CORNERS + (_EDGES_AND_QUARTERS if more_positions else ())
    bottom, right = height - crop_height, width - crop_width
    row_step, column_step = bottom // 4, right // 4
    return [(row_step * row, column_step * col) for row, col in quarters]


def _draw(upper: int, generator: torch.Generator) -> int:
    """A uniform integer in ``[0, upper)`` from ``generator``."""
    return int(torch.randint(0, upper, (1,), generator=generator))


class TrainClipTransform:
    """Optional RandAugment, TSN multi-scale crop and horizontal flip, the same for every frame.

    Args:
        input_size: side of the square crop fed to the model.
        scales: crop sides as fractions of the frame's short side (TSN's defaults).
        flip: flip horizontally with probability 0.5. Datasets whose labels depend on left and
            right (Something-Something) either disable it or swap the labels, using the
            ``flipped`` flag returned with the clip.
        randaugment: apply the release's RandAugment (``rand-m9-mstd0.5``:
            :class:`~lightning_gsf.data.randaugment.ClipRandAugment`) to the frames as read,
            before the crop.
        more_positions: choose the crop among 13 fixed positions (centre, corners, edge middles
            and quarter points; the default of TSN, TSM and the original GSF release) rather
            than among the centre and the four corners only.
    """

    def __init__(
        self,
        input_size: int = 224,
        scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66),
        flip: bool = True,
        randaugment: bool = False,
        more_positions: bool = True,
    ) -> None:
        if input_size < 1 or not scales or not all(0 < scale <= 1 for scale in scales):
            raise ValueError(f"expected input_size >= 1 and scales in (0, 1], got {input_size} and {tuple(scales)}")
        self.input_size = input_size
        self.scales = tuple(scales)
        self.flip = flip
        self.more_positions = more_positions
        self.randaugment = ClipRandAugment() if randaugment else None

    def __call__(self, clip: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, bool]:
        _check_clip(clip)
        if self.randaugment is not None:
            clip = self.randaugment(clip, generator)
        height, width = clip.shape[-2:]
        crop_sizes = multi_scale_crop_sizes(height, width, self.input_size, self.scales)
        crop_height, crop_width = crop_sizes[_draw(len(crop_sizes), generator)]
        # A size snapped up to input_size exceeds a frame side just short of it (222 or 223 px at
        # 224): cut to the frame. (The release crops past the frame's edge there, at negative
        # offsets, and PIL fills the outside with black: a deliberate difference.)
        crop_height, crop_width = min(crop_height, height), min(crop_width, width)
        positions = crop_positions(height, width, crop_height, crop_width, self.more_positions)
        top, left = positions[_draw(len(positions), generator)]
        clip = F.resized_crop(
            clip, top, left, crop_height, crop_width, [self.input_size, self.input_size], antialias=True
        )
        # Draw the flip even when flipping is off, so that turning it off leaves the other draws alone.
        heads = _draw(2, generator) == 1
        flipped = self.flip and heads
        if flipped:
            clip = F.horizontal_flip(clip)
        return clip, flipped


class EvalClipTransform:
    """Deterministic evaluation crops: ``(num_crops, T, C, input_size, input_size)``.

    - 1 crop: resize the short side to ``resize_size``, then take the centre crop.
    - 3 crops: resize the short side to ``resize_size``, then take three crops along the long
      side, as the original release's ``GroupFullResSample``: with steps of ``(side - crop) // 4``,
      at 0, 2 and 4 steps along the long side (left, centre, right; top, centre, bottom for
      portrait frames, where the release would still step along the width) and 2 steps along
      the short side.
    """

    def __init__(self, input_size: int = 224, resize_size: int = 256, num_crops: int = 1) -> None:
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
        if resize_size < input_size:
            raise ValueError(f"resize_size ({resize_size}) must be >= input_size ({input_size})")
        self.input_size = input_size
        self.resize_size = resize_size
        self.num_crops = num_crops

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        _check_clip(clip)
        size = self.input_size
        if self.num_crops == 1:
            clip = F.resize(clip, [self.resize_size], antialias=True)
            return F.center_crop(clip, [size, size]).unsqueeze(0)
        clip = F.resize(clip, [self.resize_size], antialias=True)
        height, width = clip.shape[-2:]
        row_step, column_step = (height - size) // 4, (width - size) // 4
        if width >= height:
            positions = [(2 * row_step, steps * column_step) for steps in (0, 2, 4)]
        else:
            positions = [(steps * row_step, 2 * column_step) for steps in (0, 2, 4)]
        return torch.stack([F.crop(clip, top, left, size, size) for top, left in positions])
