"""Which frames of a segment a clip is made of: TSN segment sampling as pure, seeded functions.

A segment is the half-open range ``[start, stop)`` of 0-based frame indices. It is split into
``num_segments`` (T) equal parts and one frame is taken from each part (Wang et al., "Temporal
Segment Networks", ECCV 2016):

- ``train_indices``: a uniformly random frame inside each part (drawn from the passed
  ``torch.Generator``, never from the global RNG);
- ``release_train_indices``: the original release's training sampler (TSN's), for exact
  reproductions: parts of ``n // T`` whole frames, a random frame in each;
- ``eval_indices``: the frame at the centre of each part (TSN's test-time formula, computed
  exactly rather than in floating point);
- ``multi_clip_indices``: ``num_clips`` clips for multi-clip testing: one clip is
  ``eval_indices``; ``K >= 2`` clips take the frames at offsets ``0, 1/K, ..., (K-1)/K`` of each
  part (the original release's two clips: the first frame and the middle frame of each part).

The parts are measured exactly, not in whole frames: part ``i`` covers the continuous range
``[i * n / T, (i + 1) * n / T)`` of the ``n = stop - start`` frames, and a position ``x`` in it
maps to frame ``start + floor(x)``. Integer arithmetic on ``T``-ths of a frame keeps this exact.
Unlike TSN's training sampler, whose parts are ``n // T`` whole frames (so the last
``n mod T`` frames are never sampled), every frame of the segment can be sampled, and segments
shorter than T frames (down to a single frame) simply repeat frames instead of needing a
special case. Indices are therefore always sorted and inside ``[start, stop)``.
``TRAIN_SAMPLERS`` names the two training samplers for configs (``exact`` and ``release``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lightning_gsf.data.errors import ConfigurationError

__all__ = [
    "TRAIN_SAMPLERS", "eval_indices", "multi_clip_indices", "release_train_indices", "train_indices", "train_sampler",
]


def _check_range(start: int, stop: int, num_segments: int) -> int:
    """Validate the arguments and return the number of frames ``stop - start``."""
    if start < 0:
        raise ValueError(f"segment start must be >= 0, got start={start}")
    if stop <= start:
        raise ValueError(f"segment [start, stop) must hold at least one frame, got [{start}, {stop})")
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    return stop - start


def train_indices(start: int, stop: int, num_segments: int, generator: torch.Generator) -> list[int]:
    """One uniformly random frame in each of ``num_segments`` equal parts of ``[start, stop)``.

    Frame ``i`` of the clip is ``start + floor((i + u_i) * n / T)`` with ``u_i`` uniform on a grid
    of ``n`` steps in ``[0, 1)``, i.e. ``start + (i * n + r_i) // T`` with integer ``r_i`` in
    ``[0, n)``.
    """
    num_frames = _check_range(start, stop, num_segments)
    offsets = torch.randint(0, num_frames, (num_segments,), generator=generator).tolist()
    return [start + (i * num_frames + r) // num_segments for i, r in enumerate(offsets)]


def release_train_indices(start: int, stop: int, num_segments: int, generator: torch.Generator) -> list[int]:
    """The original release's (and TSN's) training sampler: parts of ``n // T`` whole frames.

    Frame ``i`` is ``start + i * (n // T) + r_i`` with integer ``r_i`` uniform in ``[0, n // T)``,
    so the last ``n mod T`` frames are never drawn (a 31-frame clip at T = 16 always gives frames
    0-15). A segment of fewer than T frames gives the release's centre frames,
    ``int(tick / 2 + tick * i)`` with ``tick = n / T`` in floating point as there (for T a power
    of two the exact centres, ``eval_indices``; for n = 6, T = 7 frame 2 where those give 3).
    """
    num_frames = _check_range(start, stop, num_segments)
    part = num_frames // num_segments
    if part == 0:
        tick = num_frames / num_segments
        return [start + int(tick / 2.0 + tick * i) for i in range(num_segments)]
    offsets = torch.randint(0, part, (num_segments,), generator=generator).tolist()
    return [start + i * part + r for i, r in enumerate(offsets)]


#: ``(start, stop, num_segments, generator) -> indices`` by the name a config gives
#: (``data.train_sampling``).
TRAIN_SAMPLERS: dict[str, Callable[[int, int, int, torch.Generator], list[int]]] = {
    "exact": train_indices,
    "release": release_train_indices,
}


def train_sampler(name: str) -> Callable[[int, int, int, torch.Generator], list[int]]:
    """The training sampler a config names (``data.train_sampling``); an unknown name is an error."""
    if name not in TRAIN_SAMPLERS:
        raise ConfigurationError(f"train_sampling must be one of {sorted(TRAIN_SAMPLERS)}, got {name!r}")
    return TRAIN_SAMPLERS[name]


def eval_indices(start: int, stop: int, num_segments: int) -> list[int]:
    """The centre frame of each of ``num_segments`` equal parts of ``[start, stop)``."""
    return multi_clip_indices(start, stop, num_segments, num_clips=1)[0]


def multi_clip_indices(start: int, stop: int, num_segments: int, num_clips: int) -> list[list[int]]:
    """``num_clips`` clips of ``num_segments`` frames each.

    One clip is the centre frame of each part (``eval_indices``). With ``K >= 2`` clips, clip
    ``k`` takes, in part ``i``, the frame at relative position ``k / K``:
    ``start + floor((i + k / K) * n / T)``; for two clips the start and the middle of each part,
    the original release's ``int(tick * i)`` and ``int(tick * i + tick / 2)`` with ``tick = n / T``,
    computed exactly here, in integers. (The release's floating point can land one frame early
    where the exact value is a whole number: for some n at T = 7, 10, 12 or 24; at the configs'
    T = 8 and 16 the two agree for every n up to 1999.) The clips interleave and later clips sit
    later in every part.
    """
    num_frames = _check_range(start, stop, num_segments)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if num_clips == 1:
        # (i + 1/2) * n / T == (2 * i + 1) * n / (2 * T), exactly in integers.
        return [[start + (2 * i + 1) * num_frames // (2 * num_segments) for i in range(num_segments)]]
    # (i + k / K) * n / T == (i * K + k) * n / (T * K)
    denominator = num_segments * num_clips
    return [
        [start + (i * num_clips + k) * num_frames // denominator for i in range(num_segments)]
        for k in range(num_clips)
    ]
