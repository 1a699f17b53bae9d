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

The remaining ``C - P`` channels pass through untouched. :meth:`GSF.forward_reference`
follows ``shared/spec/gsf.md`` step by step, for reading and for tests. :meth:`GSF.forward`
computes the same numbers by a fast path of :mod:`lightning_gsf.gsf_fast`, in the
backbone's ``(N*T, C, H, W)`` layout with fewer passes over the feature map and far less
memory saved for backward: Triton kernels on CUDA, C++ kernels for float32 CPU tensors (bf16
too on AVX2 / AVX-512), PyTorch operations otherwise, and two formulations for
``torch.compile``. ``docs/performance.md`` says how and what each costs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_gsf import compiled_ops, cpu_kernels, gsf_fast


def gsf_channels(channels: int, ratio: float) -> int:
    """Number of channels GSF processes: ``int(C * r / 100)`` for the ratio in percent
    ``r = 100 * ratio``, rounded up to even, as the original release computes it from its
    integer percentage. (``int(C * ratio)`` differs for some: 180 channels at 35 % give
    ``int(63.0) = 63`` but ``int(180 * 0.35) = int(62.99...) = 62``.)"""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"GSF ratio must be in (0, 1], got {ratio}")
    percent = round(ratio * 100, 9)  # 0.29 * 100 is 28.999999999999996; the release's r is 29
    processed = int(channels * percent / 100)
    if processed % 2:
        processed += 1
    if processed < 4:
        raise ValueError(
            f"GSF cannot split {channels} channels at ratio {ratio}: it would process {processed} "
            "channels, and needs at least 4 (two groups whose halves interleave)"
        )
    if processed % 4 or processed > channels:
        raise ValueError(
            f"GSF cannot split {channels} channels at ratio {ratio}: it processes {processed} "
            "channels, which must be a multiple of 4 (two groups whose halves interleave) "
            f"and at most {channels}"
        )
    return processed


class GSF(nn.Module):
    """Gate-Shift-Fuse on the first ``gsf_channels(channels, ratio)`` channels of each frame
    (the spec's ``int(C * r / 100)`` of the ratio in percent, made even; its halves must be even too).

    Args:
        channels: channels ``C`` of the input feature map.
        num_segments: frames ``T`` per clip; inputs are ``(N*T, C, H, W)`` with the frames
            of one clip consecutive.
        ratio: fraction of the channels that GSF processes (0.25 for ResNet, 1.0 for the
            Inception backbones in the paper).
        inplace: write the output into the input's storage (like ``nn.ReLU(inplace=True)``),
            which saves allocating a feature map and copying its ``C - P`` untouched
            channels. Safe where GSF sits, on a convolution's output that nothing else reads
            (autograd's version check raises if something saved it for backward). Ignored
            (the output is a new tensor) for a leaf that requires grad, a view while autograd
            records, a map whose elements share memory (an expanded tensor), and under
            ``torch.compile`` where the C++ kernels do not take the input (the plain-op
            formulation is out of place).
        fusion_init: the two fusion convs' initial weights: ``"kaiming"`` (Kaiming normal,
            fan_out, ReLU), as the authors' ResNet initialises every ``Conv2d``, or
            ``"default"`` (PyTorch's own), as their BNInception and InceptionV3 leave them.

    Parameter names (``conv3D``, ``bn``, ``channel_conv1``, ``channel_conv2``) are those of
    the original release, so its checkpoints map onto this module one to one.
    """

    def __init__(self, channels: int, num_segments: int, ratio: float = 0.25, inplace: bool = False,
                 fusion_init: Literal["kaiming", "default"] = "kaiming") -> None:
        super().__init__()
        if num_segments < 1:
            raise ValueError(f"num_segments must be >= 1, got {num_segments}")
        if fusion_init not in ("kaiming", "default"):
            raise ValueError(f"fusion_init must be 'kaiming' or 'default', got {fusion_init!r}")
        self.channels = channels
        self.num_segments = num_segments
        self.ratio = ratio
        self.inplace = inplace
        self.processed = gsf_channels(channels, ratio)
        p = self.processed
        self.bn = nn.BatchNorm3d(p)
        self.conv3D = nn.Conv3d(p, 2, kernel_size=3, padding=1, groups=2)
        self.channel_conv1 = nn.Conv2d(2, 1, kernel_size=3, padding=1)
        self.channel_conv2 = nn.Conv2d(2, 1, kernel_size=3, padding=1)
        if fusion_init == "kaiming":
            for conv in (self.channel_conv1, self.channel_conv2):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def extra_repr(self) -> str:
        inplace = ", inplace=True" if self.inplace else ""
        return f"channels={self.channels}, processed={self.processed}, num_segments={self.num_segments}{inplace}"

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"GSF expects (N*T, {self.channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[0] % self.num_segments:
            raise ValueError(
                f"GSF got {x.shape[0]} frames, not a multiple of num_segments={self.num_segments}"
            )

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The computation of ``shared/spec/gsf.md``, written for reading, not for speed."""
        self.check_input(x)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fast path for the device at hand, the same numbers as
        :meth:`forward_reference`: :meth:`forward_triton` on CUDA (float32 / bf16 / fp16,
        where Triton is installed), :meth:`forward_cpu` for float32 CPU tensors and bfloat16
        ones on AVX2 / AVX-512 CPUs (where the C++ kernels build), :meth:`forward_torch`
        otherwise; under ``torch.compile`` :meth:`forward_compiled_ops` where the C++
        kernels take the input, else :meth:`forward_compilable`; the reference with
        synchronised batch norm while training. A float32 input under autocast (GSF called on
        a float32 tensor) runs in float32, as it came. CPU inference with the running
        statistics, the common case, is decided first: one call of the C++ ``infer``."""
        if not torch.is_grad_enabled() and gsf_fast.infers_in_one_call(self, x):
            # CPU inference, the common case, decided first and with little Python: every GSF of
            # a network pays this per call (the longer way cost ResNet-50 ~1 % of its inference).
            self.check_input(x)
            return gsf_fast.infer_with_running_statistics(self, x)
        if isinstance(self.bn, nn.SyncBatchNorm) and self.bn.training:
            # Synchronised statistics span every process; only nn.SyncBatchNorm computes them.
            return self.forward_reference(x)
        if torch.compiler.is_compiling():
            if compiled_ops.usable(x):
                return self.forward_compiled_ops(x)
            return self.forward_compilable(x)
        if x.dtype == torch.float32 and gsf_fast.autocast_enabled(x.device.type):
            # The fast paths' matmuls would run in the autocast dtype and their hand-written
            # backward meet float32 and bf16 operands: keep GSF in its input's float32.
            with torch.autocast(x.device.type, enabled=False):
                return self._fast_path(x)
        return self._fast_path(x)

    def _fast_path(self, x: torch.Tensor) -> torch.Tensor:
        if gsf_fast.triton_takes(x):
            return self.forward_triton(x)
        if cpu_kernels.usable(x):
            return self.forward_cpu(x)
        return self.forward_torch(x)

    # The fast paths, each in :mod:`lightning_gsf.gsf_fast` (``forward`` picks one).

    def forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`lightning_gsf.gsf_fast.forward_torch`: PyTorch operations."""
        return gsf_fast.forward_torch(self, x)

    def forward_cpu(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`lightning_gsf.gsf_fast.forward_cpu`: the C++ kernels (float32 / bf16 CPU tensors)."""
        return gsf_fast.forward_cpu(self, x)

    def forward_triton(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`lightning_gsf.gsf_fast.forward_triton`: the Triton kernels (CUDA tensors)."""
        return gsf_fast.forward_triton(self, x)

    def forward_compiled_ops(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`lightning_gsf.gsf_fast.forward_compiled_ops`: the C++ kernels as custom ops (``torch.compile``)."""
        return gsf_fast.forward_compiled_ops(self, x)

    def forward_compilable(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`lightning_gsf.gsf_fast.forward_compilable`: plain differentiable ops (``torch.compile``)."""
        return gsf_fast.forward_compilable(self, x)
