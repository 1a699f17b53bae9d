"""Temporal Shift Module (TSM; Lin, Gan and Han, ICCV 2019), the baseline GSF is compared to.

In its default "residual shift" form TSM shifts the input of the first convolution of every
residual block: the first ``C/fold_div`` channels take the next frame's values, the next
``C/fold_div`` the previous frame's, zero padded at the clip ends; the rest are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def temporal_shift(x: torch.Tensor, num_segments: int, fold_div: int = 8) -> torch.Tensor:
    """Shift ``(N*T, C, H, W)`` features by one frame along time, TSM style.

    Channels ``[0, C/fold_div)`` take frame ``t + 1``, the next ``C/fold_div`` frame ``t - 1``,
    zero at the clip ends; the rest are copied. The output is written once into a tensor
    allocated uninitialised (no zero fill, no concatenation), keeping ``x``'s memory format.
    """
    if x.dim() != 4:
        raise ValueError(f"temporal_shift expects (N*T, C, H, W), got shape {tuple(x.shape)}")
    nt, c, h, w = x.shape
    if nt % num_segments:
        raise ValueError(f"temporal_shift got {nt} frames, not a multiple of num_segments={num_segments}")
    fold = c // fold_div
    out = torch.empty_like(x)
    # Splitting the frame dimension is a view for any strides (channels_last included).
    src = x.view(nt // num_segments, num_segments, c, h, w)
    dst = out.view(nt // num_segments, num_segments, c, h, w)
    dst[:, :-1, :fold] = src[:, 1:, :fold]  # t <- t + 1
    dst[:, -1:, :fold] = 0
    dst[:, 1:, fold:2 * fold] = src[:, :-1, fold:2 * fold]  # t <- t - 1
    dst[:, :1, fold:2 * fold] = 0
    dst[:, :, 2 * fold:] = src[:, :, 2 * fold:]
    return out


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
