"""Temporal Shift Module (TSM; Lin, Gan and Han, ICCV 2019), the baseline GSF is compared to.

In its default "residual shift" form TSM shifts the input of the first convolution of every
residual block: the first ``C/fold_div`` channels take the next frame's values, the next
``C/fold_div`` the previous frame's, zero padded at the clip ends; the rest are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _shift_copy(x: torch.Tensor, num_segments: int, fold: int, backwards_first: bool) -> torch.Tensor:
    """``x`` with channels ``[0, fold)`` moved one frame and ``[fold, 2*fold)`` one frame the
    other way (zero padded per clip), the rest copied: one write into an uninitialised
    tensor of ``x``'s memory format (no zero fill, no concatenation).

    ``backwards_first``: channels ``[0, fold)`` take frame ``t + 1`` (TSM's forward shift);
    otherwise they take ``t - 1`` and the next fold ``t + 1`` (its adjoint, used in backward).
    """
    nt, c, h, w = x.shape
    out = torch.empty_like(x)
    # Splitting the frame dimension is a view for any strides (channels_last included).
    src = x.view(nt // num_segments, num_segments, c, h, w)
    dst = out.view(nt // num_segments, num_segments, c, h, w)
    from_next, from_previous = (slice(0, fold), slice(fold, 2 * fold))
    if not backwards_first:
        from_next, from_previous = from_previous, from_next
    dst[:, :-1, from_next] = src[:, 1:, from_next]  # t <- t + 1
    dst[:, -1:, from_next] = 0
    dst[:, 1:, from_previous] = src[:, :-1, from_previous]  # t <- t - 1
    dst[:, :1, from_previous] = 0
    dst[:, :, 2 * fold:] = src[:, :, 2 * fold:]
    return out


def _shift_compilable(x: torch.Tensor, num_segments: int, fold: int) -> torch.Tensor:
    """The forward shift in plain differentiable ops, for ``torch.compile`` to fuse and
    differentiate (the slice writes of :func:`_shift_copy` compile into masked kernels)."""
    nt, c, h, w = x.shape
    clips = x.reshape(nt // num_segments, num_segments, c, h, w)
    from_next = F.pad(clips[:, 1:, :fold], (0, 0, 0, 0, 0, 0, 0, 1))  # t <- t + 1
    from_previous = F.pad(clips[:, :-1, fold:2 * fold], (0, 0, 0, 0, 0, 0, 1, 0))  # t <- t - 1
    return torch.cat([from_next, from_previous, clips[:, :, 2 * fold:]], dim=2).reshape(nt, c, h, w)


class _TemporalShift(torch.autograd.Function):
    """The shift with its adjoint (the opposite shift) as backward.

    Left to autograd, the slice copies of :func:`_shift_copy` would each send a zero-filled
    full-size gradient back to ``x`` and sum them: several passes over the feature map for
    a module that does no arithmetic. The adjoint is one more shifted copy.
    """

    @staticmethod
    def forward(ctx, x, num_segments, fold):  # noqa: D102
        ctx.num_segments, ctx.fold = num_segments, fold
        return _shift_copy(x, num_segments, fold, backwards_first=True)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        return _shift_copy(grad_out, ctx.num_segments, ctx.fold, backwards_first=False), None, None


def temporal_shift(x: torch.Tensor, num_segments: int, fold_div: int = 8) -> torch.Tensor:
    """Shift ``(N*T, C, H, W)`` features by one frame along time, TSM style.

    Channels ``[0, C/fold_div)`` take frame ``t + 1``, the next ``C/fold_div`` frame ``t - 1``,
    zero at the clip ends; the rest are copied. Forward and backward each write the
    feature map once, keeping ``x``'s memory format.
    """
    if x.dim() != 4:
        raise ValueError(f"temporal_shift expects (N*T, C, H, W), got shape {tuple(x.shape)}")
    nt, c = x.shape[:2]
    if nt % num_segments:
        raise ValueError(f"temporal_shift got {nt} frames, not a multiple of num_segments={num_segments}")
    if torch.compiler.is_compiling():
        return _shift_compilable(x, num_segments, c // fold_div)
    return _TemporalShift.apply(x, num_segments, c // fold_div)


class TemporalShift(nn.Module):
    """TSM as a parameter-free module with the same ``(N*T, C, H, W)`` interface as GSF."""

    def __init__(self, num_segments: int, fold_div: int = 8) -> None:
        super().__init__()
        self.num_segments = num_segments
        self.fold_div = fold_div

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}, fold_div={self.fold_div}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return temporal_shift(x, self.num_segments, self.fold_div)
