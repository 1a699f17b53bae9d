"""Gate-Shift-Fuse (GSF), Sudhakaran, Escalera and Lanz, TPAMI 2023.

GSF is a shape-preserving module ``(N*T, C, H, W) -> (N*T, C, H, W)`` placed on the
output of one convolution of a 2D CNN, before that convolution's BatchNorm. On the first
``P`` channels it

1. *gates*: a tiny 3D conv on ``relu(bn(x))`` yields one tanh gate per group,
2. *shifts*: the gated half of group 1 moves one frame back in time, group 2 one frame
   forward, with zero padding, so each frame sees its neighbours,
3. *fuses*: a sigmoid weight, computed from the spatially pooled shifted and residual
   features by a conv over (channels, time), blends the shifted and residual features,
4. interleaves the two halves of each group, so the next layer mixes them.

The remaining ``C - P`` channels pass through untouched. ``forward_reference`` follows
``shared/spec/gsf.md`` step by step and is kept for reading and for tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gsf_channels(channels: int, ratio: float) -> int:
    """Number of channels GSF processes: ``int(C * ratio)``, rounded up to even."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"GSF ratio must be in (0, 1], got {ratio}")
    processed = int(channels * ratio)
    if processed % 2:
        processed += 1
    if processed % 4 or processed > channels:
        raise ValueError(
            f"GSF cannot split {channels} channels at ratio {ratio}: it processes {processed} "
            "channels, which must be a multiple of 4 (two groups whose halves interleave) "
            f"and at most {channels}"
        )
    return processed


class GSF(nn.Module):
    """Gate-Shift-Fuse on the first ``int(channels * ratio)`` channels of each frame.

    Args:
        channels: channels ``C`` of the input feature map.
        num_segments: frames ``T`` per clip; inputs are ``(N*T, C, H, W)`` with the frames
            of one clip consecutive.
        ratio: fraction of the channels that GSF processes (0.25 for ResNet, 1.0 for the
            Inception backbones in the paper).

    Parameter names (``conv3D``, ``bn``, ``channel_conv1``, ``channel_conv2``) are those of
    the original release, so its checkpoints map onto this module one to one.
    """

    def __init__(self, channels: int, num_segments: int, ratio: float = 0.25) -> None:
        super().__init__()
        if num_segments < 1:
            raise ValueError(f"num_segments must be >= 1, got {num_segments}")
        self.channels = channels
        self.num_segments = num_segments
        self.ratio = ratio
        self.processed = gsf_channels(channels, ratio)
        p = self.processed
        self.bn = nn.BatchNorm3d(p)
        self.conv3D = nn.Conv3d(p, 2, kernel_size=3, padding=1, groups=2)
        self.channel_conv1 = nn.Conv2d(2, 1, kernel_size=3, padding=1)
        self.channel_conv2 = nn.Conv2d(2, 1, kernel_size=3, padding=1)
        for conv in (self.channel_conv1, self.channel_conv2):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def extra_repr(self) -> str:
        return f"channels={self.channels}, processed={self.processed}, num_segments={self.num_segments}"

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"GSF expects (N*T, {self.channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[0] % self.num_segments:
            raise ValueError(
                f"GSF got {x.shape[0]} frames, not a multiple of num_segments={self.num_segments}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_reference(x)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The computation of ``shared/spec/gsf.md``, written for reading, not for speed."""
        self._check_input(x)
        nt, _, h, w = x.shape
        t, p = self.num_segments, self.processed
        n, half = nt // t, p // 2
        # (N*T, P, H, W) -> (N, P, T, H, W)
        v = x[:, :p].reshape(n, t, p, h, w).permute(0, 2, 1, 3, 4)
        gate = torch.tanh(self.conv3D(F.relu(self.bn(v))))  # (N, 2, T, H, W)

        fused = []
        for k, fuse_conv in enumerate((self.channel_conv1, self.channel_conv2)):
            v_k = v[:, k * half:(k + 1) * half]
            y = gate[:, k:k + 1] * v_k
            residual = v_k - y
            if k == 0:  # group 1 moves backwards in time: s[t] = y[t + 1]
                shifted = F.pad(y[:, :, 1:], (0, 0, 0, 0, 0, 1))
            else:  # group 2 moves forwards in time: s[t] = y[t - 1]
                shifted = F.pad(y[:, :, :-1], (0, 0, 0, 0, 1, 0))
            pooled = torch.stack([shifted.mean(dim=(3, 4)), residual.mean(dim=(3, 4))], dim=1)
            weight = torch.sigmoid(fuse_conv(pooled))[:, 0, :, :, None, None]  # (N, P/2, T, 1, 1)
            f = shifted * weight + residual * (1 - weight)
            # interleave: channel j*Q + i -> 2*i + j
            f = f.reshape(n, 2, half // 2, t, h, w).transpose(1, 2).reshape(n, half, t, h, w)
            fused.append(f)

        out = torch.cat(fused, dim=1).permute(0, 2, 1, 3, 4).reshape(nt, p, h, w)
        return torch.cat([out, x[:, p:]], dim=1)
