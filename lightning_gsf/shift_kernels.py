"""Triton kernels for TSM's temporal shift on CUDA: one launch each way.

In PyTorch operations the shift is five slice copies and fills forward, and its in-place
adjoint a copy per frame and fold (``lightning_gsf.temporal``): some twenty launches per
block and step, each costing the host more than the GPU its copy. Here the forward is one
kernel that writes every channel of the output once, and the backward one kernel that moves
the two shifted folds within the gradient, each program walking one clip's frames in the
order that reads a frame before overwriting it. Same numbers bit for bit (the shift only
moves values); any strides. Importing this module needs Triton; the kernels run on CUDA
tensors, or on CPU tensors under Triton's interpreter (as the CPU tests run them).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lightning_gsf.gsf_kernels import BLOCK_CHANNELS, NUM_WARPS, _block_pixels, _flat_pixels, _pixel_offsets, cdiv


@triton.jit
def _shift_kernel(x_ptr, out_ptr, num_segments, channels, fold, pixels, width, sx_n, sx_c, sx_h, sx_w,
                  so_n, so_c, so_h, so_w, BACKWARDS_FIRST: tl.constexpr, FLAT: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """``out[frame, c] = x[frame + step(c), c]``, zero where that frame is outside the clip:
    ``step`` is +1 for channels ``[0, fold)`` and -1 for ``[fold, 2 * fold)`` (the other way
    round unless ``BACKWARDS_FIRST``), 0 for the rest."""
    frame = tl.program_id(0).to(tl.int64)
    t = frame % num_segments
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    first = 1 if BACKWARDS_FIRST else -1
    step = tl.where(c < fold, first, tl.where(c < 2 * fold, -first, 0))
    inside = (c < channels) & (t + step >= 0) & (t + step < num_segments)
    p_mask = p < pixels
    values = tl.load(x_ptr + (frame + step)[:, None] * sx_n + c[:, None] * sx_c
                     + _pixel_offsets(p, width, sx_h, sx_w, FLAT)[None, :],
                     mask=inside[:, None] & p_mask[None, :], other=0.0)
    out = out_ptr + frame * so_n + c[:, None] * so_c + _pixel_offsets(p, width, so_h, so_w, FLAT)[None, :]
    tl.store(out, values, mask=(c < channels)[:, None] & p_mask[None, :])


def shift(x: torch.Tensor, num_segments: int, fold: int, backwards_first: bool = True) -> torch.Tensor:
    """``x`` ``(N*T, C, H, W)`` with channels ``[0, fold)`` taking frame ``t + 1`` and ``[fold,
    2 * fold)`` frame ``t - 1`` (``backwards_first``; else the other way round: the adjoint),
    zero beyond the clip, the rest copied: a new tensor in ``x``'s memory format."""
    out = torch.empty_like(x)
    nt, c, h, w = x.shape
    if out.numel() == 0:
        return out
    block_p = _block_pixels(h * w)
    grid = (nt, cdiv(c, BLOCK_CHANNELS), cdiv(h * w, block_p))
    _shift_kernel[grid](x, out, num_segments, c, fold, h * w, w, *x.stride(), *out.stride(),
                        BACKWARDS_FIRST=backwards_first, FLAT=_flat_pixels(x, out), BLOCK_C=BLOCK_CHANNELS,
                        BLOCK_P=block_p, num_warps=NUM_WARPS)
    return out


@triton.jit
def _unshift_kernel(grad_ptr, num_segments, channels, fold, pixels, width, s_n, s_c, s_h, s_w, FLAT: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """In place, for one clip, channel tile and pixel tile: channels ``[0, fold)`` move one
    frame later and ``[fold, 2 * fold)`` one frame earlier (``program_id(1)`` says which fold
    and tile), zero where they leave the clip. Frames are walked against the move (the last
    first for a move later), so each is read before it is overwritten, by the same program."""
    tiles = tl.num_programs(1) // 2
    later = tl.program_id(1) < tiles
    c = (tl.program_id(1) % tiles) * BLOCK_C + tl.arange(0, BLOCK_C) + tl.where(later, 0, fold)
    c_mask = (c < tl.where(later, fold, 2 * fold)) & (c < channels)  # (the second fold may be cut short)
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask = c_mask[:, None] & (p < pixels)[None, :]
    tile = c[:, None] * s_c + _pixel_offsets(p, width, s_h, s_w, FLAT)[None, :]
    clip = grad_ptr + tl.program_id(0).to(tl.int64) * num_segments * s_n + tile
    source_step = tl.where(later, -1, 1)
    for i in range(num_segments):
        t = tl.where(later, num_segments - 1 - i, i).to(tl.int64)
        source = t + source_step
        values = tl.load(clip + source * s_n, mask=mask & (source >= 0) & (source < num_segments), other=0.0)
        tl.store(clip + t * s_n, values, mask=mask)


def unshifts_in_place(grad: torch.Tensor) -> bool:
    """Whether :func:`unshift_` takes ``grad``: always (any strides; the caller has checked that
    no two of its elements share memory)."""
    return True


def unshift_(grad: torch.Tensor, num_segments: int, fold: int) -> torch.Tensor:
    """The adjoint of :func:`shift` written over ``grad`` ``(N*T, C, H, W)``, any strides that
    do not overlap: the ``2 * fold`` shifted channels move back, the others are untouched.
    Returns ``grad``."""
    nt, c, h, w = grad.shape
    block_p = _block_pixels(h * w)
    if fold > 0 and grad.numel() > 0:
        grid = (nt // num_segments, 2 * cdiv(fold, BLOCK_CHANNELS), cdiv(h * w, block_p))
        _unshift_kernel[grid](grad, num_segments, c, fold, h * w, w, *grad.stride(), FLAT=_flat_pixels(grad),
                              BLOCK_C=BLOCK_CHANNELS, BLOCK_P=block_p, num_warps=NUM_WARPS)
    return grad
