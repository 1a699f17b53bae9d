"""The fast paths of :class:`lightning_gsf.gsf.GSF`: the numbers of its ``forward_reference``
in the backbone's ``(N*T, C, H, W)`` layout, with fewer passes over the feature map and far
less memory saved for backward (``docs/performance.md`` says how and what it costs).

- :func:`forward_triton`: on CUDA, in Triton kernels (:mod:`lightning_gsf.gsf_kernels`);
- :func:`forward_cpu`: for float32 CPU tensors (bf16 too on AVX2 / AVX-512), in C++ kernels
  (:mod:`lightning_gsf.cpu_kernels`); inference with the running statistics is one call;
- :func:`forward_torch`: in PyTorch operations, otherwise (each C++ kernel has a twin here);
- under ``torch.compile``: :func:`forward_compiled_ops`, the C++ kernels as custom ops
  (:mod:`lightning_gsf.compiled_ops`) where they take the input, else
  :func:`forward_compilable`, the same math in plain differentiable ops, which the compiler
  fuses better than the eager path's hand-written backward.

``GSF.forward`` picks one for its input and calls it through the method of the same name
(``GSF.forward_cpu`` and so on). Each takes the module as its first argument and reads its
parameters and buffers.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from lightning_gsf import compiled_ops, cpu_kernels, gradient_reuse

if TYPE_CHECKING:
    from lightning_gsf.gsf import GSF


def forward_torch(gsf: GSF, x: torch.Tensor) -> torch.Tensor:
    """The fast path in PyTorch operations (tuned on the CPU): computed in the ``(N*T, C,
    H, W)`` layout with no permutes, and saving for backward only a copy of the ``P``
    processed channels (plus a few per-frame maps), so GSF adds little activation memory
    to a training step. Without autograd (inference) it takes
    :func:`_forward_without_autograd`, which saves nothing and makes fewer passes."""
    gsf.check_input(x)
    if not torch.is_grad_enabled():
        return _forward_without_autograd(gsf, x, cpu_ops=None)

    nt, _, h, w = x.shape
    t, p = gsf.num_segments, gsf.processed
    n = nt // t
    inplace = writes_in_place(gsf, x)
    v, rest = _SplitChannels.apply(x, p, inplace)

    # The gate's 3x3x3 conv, regrouped: one matmul per group maps the P/2 channels of each
    # pixel to the 27 (temporal tap, kh, kw) products, a fold sums them over the 3x3
    # neighbourhood into each frame's 3 temporal taps, and 3 more sums over neighbouring
    # frames give the conv output. (fold scatters where the conv gathers, hence the flip.)
    batch_statistics = check_batch_statistics(gsf, x)
    taps, mean, var = _NormReluTaps.apply(
        v, gsf.bn.weight, gsf.bn.bias, gsf.bn.running_mean, gsf.bn.running_var, _taps_weight(gsf.conv3D.weight),
        gsf.bn.eps, batch_statistics,
    )
    if batch_statistics:
        update_running_statistics(gsf, mean, var, count=v.numel() // p)
    gate = _sum_temporal_taps(taps.view(n, t, 2, 3, h, w), gsf.conv3D.bias)
    gate = torch.tanh(gate)  # (N, T, 2, H, W)

    channels_last = _is_channels_last(x)
    weight, bias = fusion_parameters(gsf)
    blend = _FusionWeights.apply(v, gate, weight, bias, t, channels_last)  # (N, T, 2, P/2)
    return _GateShiftFuse.apply(v, gate, blend, rest, t, channels_last, inplace)


def forward_cpu(gsf: GSF, x: torch.Tensor) -> torch.Tensor:
    """The fast path in C++ kernels (:mod:`lightning_gsf.cpu_kernels`), for CPU tensors in
    float32 or bfloat16: each pass over the processed channels is one loop, the gate conv a
    direct convolution; inference is one C++ call, and so is the training backward (the
    gate conv's two gradients are ATen matmuls called from it). Training
    takes the same steps as :func:`forward_triton`, inference those of
    :func:`_forward_without_autograd`; it saves for backward what :func:`forward_torch`
    saves. Inputs in neither NCHW nor channels-last memory go to :func:`forward_torch`."""
    gsf.check_input(x)
    ops = cpu_kernels.cpu_kernels()
    if ops is None:
        raise RuntimeError("GSF.forward_cpu needs the C++ CPU kernels, which failed to build (see the log)")
    if not cpu_kernels.takes(x):
        raise ValueError(f"GSF.forward_cpu takes float32 or bfloat16 CPU tensors, got {x.dtype} on {x.device}")
    if not _dense_for_the_kernels(x):
        return gsf.forward_torch(x)  # the kernels address dense NCHW or channels-last maps
    if not torch.is_grad_enabled():
        return _forward_without_autograd(gsf, x, ops)
    return _forward_with_kernels(gsf, x, _CppKernels(ops))


def _forward_without_autograd(gsf: GSF, x: torch.Tensor, cpu_ops: Any | None) -> torch.Tensor:
    """``forward`` when autograd is off (inference): the same numbers in fewer, cheaper
    passes, since nothing is kept for a backward, with ``cpu_ops`` (the C++ kernels, for
    an input they take) or PyTorch operations. The output overwrites the input
    (``inplace``) once the processed channels have been read for the last time."""
    nt, _, h, w = x.shape
    t, p = gsf.num_segments, gsf.processed
    n, half = nt // t, p // 2
    v = x[:, :p]
    channels_last = _is_channels_last(x)
    if check_batch_statistics(gsf, x):
        mean, var = _batch_statistics(v) if cpu_ops is None else cpu_ops.channel_moments(v)
        update_running_statistics(gsf, mean, var, count=v.numel() // p)
    else:
        mean, var = gsf.bn.running_mean, gsf.bn.running_var
    if cpu_ops is not None:  # every pass in C++, one call
        return infer_in_cpu_kernels(gsf, x, mean, var)
    invstd = torch.rsqrt(var + gsf.bn.eps)
    # relu(bn(v)) as one scale and shift per channel: reads the strided slice v directly
    # (the native batch-norm kernel is several times slower on a strided input).
    scale = gsf.bn.weight * invstd
    shift = gsf.bn.bias - mean * scale
    # NCHW for the matmul (written so from channels-last input too), in v's dtype
    activated = torch.empty((nt, p, h, w), dtype=v.dtype, device=v.device)
    torch.mul(v, scale.view(1, p, 1, 1), out=activated).add_(shift.view(1, p, 1, 1)).relu_()
    products = torch.matmul(_taps_weight(gsf.conv3D.weight).to(v.dtype), activated.view(nt, 2, half, h * w))
    taps = _fold_taps(products.view(nt, 54, h * w), h, w).view(n, t, 2, 3, h, w)
    gate = taps[:, :, :, 1]  # the centre taps, then the temporal neighbours' taps, in place
    if t > 1:
        gate[:, 1:].add_(taps[:, :-1, :, 0])
        gate[:, :-1].add_(taps[:, 1:, :, 2])
    # tanh(z) = 2 * sigmoid(2z) - 1: PyTorch's CPU sigmoid runs several times faster than its tanh
    gate = gate.add_(gsf.conv3D.bias.to(gate.dtype).view(1, 1, 2, 1, 1)).mul_(2).sigmoid_()
    gate = gate.mul_(2).sub_(1)  # (N, T, 2, H, W)
    blend, _, _ = _fusion_weights(v, gate, *fusion_parameters(gsf), t, channels_last)
    blend = blend.permute(0, 3, 1, 2).contiguous()  # (N, T, 2, P/2), channels innermost

    # The output overwrites the input itself when in place: _write_fused reads v before
    # it writes.
    inplace = writes_in_place(gsf, x)
    return _gate_shift_fuse(v, gate, blend, x if inplace else x[:, p:], t, channels_last, inplace)


def infers_in_one_call(gsf: GSF, x: torch.Tensor) -> bool:
    """Whether ``forward`` without autograd is :func:`infer_in_cpu_kernels` with the
    running statistics: an input that :func:`lightning_gsf.cpu_kernels.usable` sends to
    the C++ kernels, in NCHW or channels-last memory; the batch norm normalising with its
    running statistics (:func:`_uses_batch_statistics`); outside ``torch.compile``."""
    bn = gsf._modules["bn"]
    return (not _uses_batch_statistics(bn) and not torch.compiler.is_compiling()
            and cpu_kernels.usable(x) and _dense_for_the_kernels(x))


def infer_in_cpu_kernels(gsf: GSF, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """GSF without autograd in one C++ call (``infer``) on a checked input, normalising
    with ``mean`` and ``var``; the output overwrites ``x`` where GSF writes in place."""
    p = gsf.processed
    inplace = writes_in_place(gsf, x)
    out = x if inplace else _output_after(x[:, p:], p, _is_channels_last(x))
    cpu_kernels.cpu_kernels().infer(x, out, p, gsf.num_segments, mean, var, gsf._modules["bn"].eps,
                                     *inference_parameters(gsf))
    if inplace:  # (a kernel's write is not an ATen op: say so, as an in-place op would)
        torch.autograd.graph.increment_version(x)
    return out


def infer_with_running_statistics(gsf: GSF, x: torch.Tensor) -> torch.Tensor:
    """:func:`infer_in_cpu_kernels` with the batch norm's running statistics (read as
    :func:`_tensor` reads them: every GSF of a network runs this in every inference call)."""
    bn = gsf._modules["bn"]
    return infer_in_cpu_kernels(gsf, x, _tensor(bn, "running_mean"), _tensor(bn, "running_var"))


def inference_parameters(gsf: GSF) -> tuple[torch.Tensor, ...]:
    """The parameters of the C++ ``infer`` (eager) and the compiled ``infer`` ops after
    ``eps``, in their schema's order: the batch norm's weight and bias, the gate conv's, then
    the fusion convs' weights and biases one group at a time (read without
    ``nn.Module.__getattr__``, see :func:`_tensor`)."""
    modules = gsf._modules
    bn, conv = modules["bn"], modules["conv3D"]
    fusion_1, fusion_2 = modules["channel_conv1"], modules["channel_conv2"]
    return (_tensor(bn, "weight"), _tensor(bn, "bias"), _tensor(conv, "weight"), _tensor(conv, "bias"),
            _tensor(fusion_1, "weight"), _tensor(fusion_2, "weight"), _tensor(fusion_1, "bias"),
            _tensor(fusion_2, "bias"))


def forward_triton(gsf: GSF, x: torch.Tensor) -> torch.Tensor:
    """The fast path in Triton kernels (:mod:`lightning_gsf.gsf_kernels`), for CUDA
    tensors: one kernel per pass over the feature map, float32 arithmetic, any memory
    layout. Saves for backward what :func:`forward_torch` saves."""
    gsf.check_input(x)
    kernels = _triton_kernels()
    if kernels is None:
        raise RuntimeError("GSF.forward_triton needs Triton (pip install triton)")
    return _forward_with_kernels(gsf, x, kernels)


def _forward_with_kernels(gsf: GSF, x: torch.Tensor, kernels: Any) -> torch.Tensor:
    """GSF through a kernel set (the Triton module, or :class:`_CppKernels`) and
    :class:`_KernelGSF`, or without autograd :func:`_kernel_forward` alone."""
    p = gsf.processed
    batch_statistics = check_batch_statistics(gsf, x)
    if batch_statistics:
        mean, invstd = _batch_statistics_through(gsf, kernels, x[:, :p])
    else:
        bn = gsf.bn
        mean = _float32_running_mean(bn)
        invstd = torch.rsqrt(_as_dtype(bn.running_var, torch.float32) + bn.eps)
    parameters = (gsf.bn.weight, gsf.bn.bias, gsf.conv3D.weight, gsf.conv3D.bias, *fusion_parameters(gsf))
    inplace = writes_in_place(gsf, x)
    if torch.is_grad_enabled():
        if gradient_reuse.applies_to(x):
            gradient_reuse.prepare()  # measured once, before any backward runs
        return _KernelGSF.apply(x, kernels, mean, invstd, p, gsf.num_segments, batch_statistics, inplace,
                                *parameters)
    out = _kernel_forward(kernels, x, mean, invstd, p, gsf.num_segments, inplace, False, *parameters)[0]
    if inplace:  # (a kernel's write is not an ATen op: say so, as an in-place op would)
        torch.autograd.graph.increment_version(x)
    return out


def _batch_statistics_through(gsf: GSF, kernels: Any, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's mean and inverse std for the batch norm, the running statistics updated:
    in one call of the kernel set where it has one (Triton's ``batch_norm_statistics``)
    and the update is the usual one (a momentum; dense float32 buffers), else from its
    ``channel_moments`` and :func:`update_running_statistics`."""
    bn = gsf.bn
    update = bn.training and bn.track_running_stats
    in_one_call = hasattr(kernels, "batch_norm_statistics") and (not update or (bn.momentum is not None and all(
        t.dtype == torch.float32 and t.is_contiguous() for t in (bn.running_mean, bn.running_var))))
    if in_one_call:
        if update:
            bn.num_batches_tracked.add_(1)
            return kernels.batch_norm_statistics(v, bn.eps, bn.running_mean, bn.running_var, bn.momentum)
        return kernels.batch_norm_statistics(v, bn.eps)
    mean, var = kernels.channel_moments(v)
    update_running_statistics(gsf, mean, var, count=v.numel() // v.shape[1])
    return mean, torch.rsqrt(var + bn.eps)


def forward_compiled_ops(gsf: GSF, x: torch.Tensor) -> torch.Tensor:
    """The C++ kernels as custom ops (:mod:`lightning_gsf.compiled_ops`), which ``forward``
    runs under ``torch.compile`` for the CPU tensors the kernels take: the compiler sees
    one opaque node per GSF (and one for its backward), the batch statistics and their
    running averages in plain ops around it. In place as in eager mode (on a copy where
    the module is not in place)."""
    gsf.check_input(x)
    p, t = gsf.processed, gsf.num_segments
    batch_statistics = check_batch_statistics(gsf, x)
    if batch_statistics:
        mean, var = _batch_statistics(x[:, :p].detach())
        update_running_statistics(gsf, mean, var, count=x.numel() // x.shape[1])
    else:
        mean, var = _float32_running_mean(gsf.bn), gsf.bn.running_var.float()
    if not torch.is_grad_enabled():
        parameters = inference_parameters(gsf)
        if writes_in_place(gsf, x):
            compiled_ops.infer_(x, p, t, mean, var, gsf.bn.eps, *parameters)
            return x
        return compiled_ops.infer(x, p, t, mean, var, gsf.bn.eps, *parameters)
    fusion_weight, fusion_bias = fusion_parameters(gsf)
    parameters = (gsf.bn.weight, gsf.bn.bias, gsf.conv3D.weight, gsf.conv3D.bias, fusion_weight, fusion_bias)
    invstd = torch.rsqrt(var + gsf.bn.eps)
    return compiled_ops.GateShiftFuse.apply(x if writes_in_place(gsf, x) else x.clone(), mean, invstd,
                                            *parameters, p, t, batch_statistics)


def forward_compilable(gsf: GSF, x: torch.Tensor) -> torch.Tensor:
    """The same numbers in plain differentiable ops, for ``torch.compile`` to fuse
    (``forward`` runs it under the compiler where the C++ kernels do not take the input:
    on CUDA, say): the hand-written backward and in-place slice writes of the eager fast
    path compile into slow, heavily masked kernels."""
    gsf.check_input(x)
    nt, _, h, w = x.shape
    t, p = gsf.num_segments, gsf.processed
    n, half = nt // t, p // 2
    v = x[:, :p]
    # BatchNorm3d over (N*T, P, H, W, 1): the statistics of (N, P, T, H, W), and the
    # module's own running-statistics logic.
    activated = F.relu(gsf.bn(v.unsqueeze(-1)).squeeze(-1))
    # The gate's 3x3x3 conv as a 2D conv with one output per (group, temporal tap),
    # then the temporal taps summed over neighbouring frames.
    taps_weight = gsf.conv3D.weight.transpose(1, 2).reshape(6, half, 3, 3)
    taps = F.conv2d(activated, taps_weight.to(activated.dtype), padding=1, groups=2)
    # In v's dtype, as the eager path: under autocast the float32 bias would promote the
    # gate, and with it every product below, the output and the layers after it.
    gate = torch.tanh(_sum_temporal_taps(taps.view(n, t, 2, 3, h, w), gsf.conv3D.bias)).to(v.dtype)

    groups = v.reshape(n, t, 2, half, h, w)
    gated = groups * gate.unsqueeze(3)
    residual = groups - gated
    shifted = torch.stack(  # group 1 takes frame t + 1, group 2 frame t - 1, zero padded
        [F.pad(gated[:, 1:, 0], (0, 0, 0, 0, 0, 0, 0, 1)), F.pad(gated[:, :-1, 1], (0, 0, 0, 0, 0, 0, 1, 0))],
        dim=2,
    )
    blend = _blend_weights(gsf, shifted.mean(dim=(-2, -1)), residual.mean(dim=(-2, -1)))
    blend = blend[..., None, None]  # (N, T, 2, P/2, 1, 1)
    fused = residual + blend * (shifted - residual)
    # interleave within each group: channel j*Q + i -> 2*i + j
    fused = fused.reshape(n, t, 2, 2, half // 2, h, w).transpose(3, 4).reshape(nt, p, h, w)
    out = torch.cat([fused.to(x.dtype), x[:, p:]], dim=1)
    if _is_channels_last(x):
        out = out.contiguous(memory_format=torch.channels_last)  # keep the input's layout
    return out


def _blend_weights(gsf: GSF, shifted_mean: torch.Tensor, residual_mean: torch.Tensor) -> torch.Tensor:
    """The fusion weights ``w`` ``(N, T, 2, P/2)`` from the spatial means ``(N, T, 2, P/2)``
    of the shifted and residual maps."""
    descriptors = torch.stack([shifted_mean, residual_mean], dim=3)  # (N, T, 2, 2, P/2)
    padded = F.pad(descriptors.permute(0, 2, 3, 4, 1), (1, 1, 1, 1))  # (N, 2, 2, P/2 + 2, T + 2)
    return torch.sigmoid(_fusion_conv(padded, *fusion_parameters(gsf))).permute(0, 3, 1, 2)


def fusion_parameters(gsf: GSF) -> tuple[torch.Tensor, torch.Tensor]:
    """Both groups' fusion convs as one weight ``(group, [shifted, residual], 3, 3)`` and
    bias ``(group,)``."""
    weight = torch.cat([gsf.channel_conv1.weight, gsf.channel_conv2.weight])
    return weight, torch.cat([gsf.channel_conv1.bias, gsf.channel_conv2.bias])


def writes_in_place(gsf: GSF, x: torch.Tensor) -> bool:
    """``inplace``, except for a leaf that requires grad (the caller's own tensor), a view
    while autograd records (autograd lets a function that writes into a view return one
    tensor only, and the PyTorch-ops path returns two) and a map whose elements share
    memory (an expanded tensor: written in place, one write would overwrite another)."""
    return (gsf.inplace and not (x.is_leaf and x.requires_grad)
            and not (x._base is not None and torch.is_grad_enabled())
            and (x.is_contiguous() or _elements_apart(x)))


def check_batch_statistics(gsf: GSF, x: torch.Tensor) -> bool:
    """Whether the batch norm uses batch statistics, which need 2+ values per channel."""
    batch_statistics = _uses_batch_statistics(gsf.bn)
    if batch_statistics and x.numel() // x.shape[1] < 2:
        raise ValueError(
            f"GSF batch norm needs more than 1 value per channel when training, got input {tuple(x.shape)}"
        )
    return batch_statistics


@torch.no_grad()
def update_running_statistics(gsf: GSF, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """Update ``bn``'s running statistics from a batch's as ``BatchNorm3d`` does (the
    (N*T, P, H, W) layout has the same statistics as (N, P, T, H, W)); ``var`` is the
    biased batch variance."""
    bn = gsf.bn
    if not (bn.training and bn.track_running_stats):
        return
    bn.num_batches_tracked.add_(1)
    # (momentum None, a cumulative average: the factor in the statistics' dtype, as
    # BatchNorm's Python float, not the int64 count's true division in float32)
    factor = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked.to(bn.running_var.dtype)
    bn.running_mean.mul_(1 - factor).add_(mean * factor)
    bn.running_var.mul_(1 - factor).add_(var * (factor * count / (count - 1)))


# The Triton kernels compute in float32: float64 inputs keep the PyTorch-ops path.
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.cache
def _triton_kernels() -> ModuleType | None:
    """:mod:`lightning_gsf.gsf_kernels`, imported on first use; None without Triton."""
    try:
        from lightning_gsf import gsf_kernels
    except ImportError:
        return None
    return gsf_kernels


def triton_takes(x: torch.Tensor) -> bool:
    """Whether :func:`forward_triton` takes ``x``: a CUDA tensor in a dtype the Triton kernels
    compute, where Triton is installed."""
    return x.is_cuda and x.dtype in _TRITON_DTYPES and _triton_kernels() is not None


class _CppKernels:
    """The C++ CPU kernels (:mod:`lightning_gsf.cpu_kernels`) behind the Triton kernel set's
    interface, so that :class:`_KernelGSF` runs either: the gate (``relu(bn(v))`` and the
    gate conv as one direct convolution), the blend, their backward and the input gradient
    are C++ loops; the gate conv's two gradients stay batched matmuls over the 27 products
    per pixel (PyTorch's are faster than a hand-written loop). Two
    differences: the blend's ``grad_v`` and the gradient at the batch norm's output,
    ``grad_normed``, come back in ``v``'s dtype and layout (Triton's ``grad_v`` in float32;
    its ``grad_normed`` is never stored), so in bf16 the input gradient is rounded at each of
    them, as in :func:`forward_torch`; and the C++ set's backward is
    :func:`_kernel_backward`'s steps as they are."""

    def __init__(self, ops: Any) -> None:
        self.ops = ops

    def channel_moments(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch norm's per-channel mean and biased variance, float32 (two passes over
        ``v``, no temporaries; not differentiated: _KernelGSF adds their gradient itself)."""
        return self.ops.channel_moments(v.detach())

    def _activated(self, v: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        activated = torch.empty(v.shape, dtype=v.dtype, device=v.device)  # NCHW, for the matmuls
        self.ops.norm_relu(v, scale.float().contiguous(), shift.float().contiguous(), activated)
        return activated

    def gate_and_weights(self, v: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, conv_weight: torch.Tensor,
                         conv_bias: torch.Tensor, fusion_weight: torch.Tensor, fusion_bias: torch.Tensor,
                         num_segments: int, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """The gate ``(NT, 2, H*W)`` with the spatial means in the same pass, then the fusion
        weights ``(N, T, 2, P/2)`` from the means; the means ``(NT, 2, P)`` kept for
        :meth:`fusion_backward`."""
        means = torch.empty((v.shape[0], 2, v.shape[1]), dtype=torch.float32, device=v.device)
        gate = self.ops.gate(v, scale.float().contiguous(), shift.float().contiguous(),
                             conv_weight.float().contiguous(), conv_bias.float().contiguous(), num_segments, means)
        weights = self.ops.fusion_weights(means, fusion_weight.float().contiguous(), fusion_bias.float().contiguous(),
                                          num_segments)
        return gate.view(v.shape[0], 2, v.shape[2] * v.shape[3]), weights, (means,)

    def fusion_backward(self, grad_weights: torch.Tensor, grad_gate: torch.Tensor, v: torch.Tensor,
                        gate: torch.Tensor, weights: torch.Tensor, saved: tuple, fusion_weight: torch.Tensor,
                        num_segments: int, channels_last: bool) -> tuple[torch.Tensor, ...]:
        """Back through the fusion weights and the gate's tanh: ``(grad_z (NT, 2, H*W),
        grad_means (NT, 2, P), grad_fusion_weight, grad_fusion_bias)``, float32; ``grad_gate``
        (the blend's) is overwritten. (``channels_last``: the kernel sets' shared interface.)"""
        (means,) = saved
        grad_means, grad_fusion_weight, grad_fusion_bias = self.ops.fusion_weights_backward(
            grad_weights.contiguous(), weights, means, fusion_weight.float().contiguous(), num_segments)
        self.ops.gate_gradient(grad_gate, v, gate, grad_means, num_segments)
        return grad_gate, grad_means, grad_fusion_weight, grad_fusion_bias

    def blend(self, v: torch.Tensor, gate: torch.Tensor, weights: torch.Tensor, out: torch.Tensor, num_segments: int,
              copy: torch.Tensor | None = None) -> None:
        self.ops.blend(v, gate, weights.float().contiguous(), out, num_segments, copy)

    def blend_backward(self, grad_out: torch.Tensor, v: torch.Tensor, gate: torch.Tensor, weights: torch.Tensor,
                       num_segments: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not cpu_kernels.addressable(grad_out, v):  # e.g. an NCHW gradient for channels-last v, or an expanded one
            grad_out = torch.empty_like(v).copy_(grad_out)
        grad_v, grad_gate, grad_weights = self.ops.blend_backward(grad_out, v, gate, weights.float().contiguous(),
                                                                  num_segments)
        return grad_v, grad_gate.view(gate.shape), grad_weights

    def gate_backward(self, v: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, bn_weight: torch.Tensor,
                      bn_bias: torch.Tensor, conv_weight: torch.Tensor, grad_z: torch.Tensor,
                      num_segments: int) -> tuple[torch.Tensor, ...]:
        nt, p, h, w = v.shape
        scale = bn_weight.float() * invstd
        shift = bn_bias.float() - mean * scale
        grad_products = self.ops.gate_backward(grad_z, num_segments, h, w, v.dtype).view(nt, 2, 27, h * w)
        activated = self._activated(v, scale, shift).view(nt, 2, p // 2, h * w)  # recomputed, not saved
        grad_taps_weight = torch.matmul(grad_products, activated.transpose(-1, -2)).sum(dim=0)  # (2, 27, P/2)
        grad_conv_weight = grad_taps_weight.view(2, 3, 3, 3, p // 2).permute(0, 4, 1, 2, 3).flip(3, 4).float()
        taps_weight = _taps_weight(conv_weight).to(v.dtype)
        grad_normed = torch.matmul(taps_weight.transpose(-1, -2), grad_products, out=activated).view(nt, p, h, w)
        sum_grad, sum_grad_xhat = self.ops.norm_relu_backward(grad_normed, v, scale.contiguous(), shift.contiguous(),
                                                              mean.contiguous(), invstd.contiguous())
        return grad_normed, grad_conv_weight, sum_grad, sum_grad_xhat

    def input_gradient(self, v: torch.Tensor, grad_normed: torch.Tensor, grad_v: torch.Tensor,
                       grad_means: torch.Tensor, gate: torch.Tensor, coef: torch.Tensor, centre: torch.Tensor,
                       slope: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, grad_x: torch.Tensor) -> None:
        self.ops.input_gradient(v, grad_normed, grad_v, grad_means.float().contiguous(), gate, coef.contiguous(),
                                centre.contiguous(), slope.contiguous(), mean.contiguous(), invstd.contiguous(),
                                grad_x)

    def backward(self, grad_out: torch.Tensor, grad_x: torch.Tensor, v: torch.Tensor, gate: torch.Tensor,
                 weights: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, bn_weight: torch.Tensor,
                 bn_bias: torch.Tensor, conv_weight: torch.Tensor, fusion_weight: torch.Tensor, fusion_saved: tuple,
                 num_segments: int, batch_statistics: bool, channels_last: bool) -> tuple[torch.Tensor, ...]:
        """:func:`_kernel_backward` in one C++ call (the C++ ``backward``, which runs the
        kernels above in turn): the fixed cost of some forty small operations per GSF and step
        saved (most of it in bf16, where the network's own layers take half the time)."""
        (means,) = fusion_saved
        return tuple(self.ops.backward(grad_out, grad_x, v, gate, weights, means, mean.contiguous(),
                                       invstd.contiguous(), bn_weight, bn_bias, conv_weight, fusion_weight,
                                       num_segments, batch_statistics))


def _taps_weight(conv_weight: torch.Tensor) -> torch.Tensor:
    """The gate conv's weight ``(2, P/2, 3, 3, 3)`` as ``(2, 27, P/2)``, (temporal tap, kh, kw)
    flipped spatially: the per-pixel products that :func:`_fold_taps` scatters."""
    return conv_weight.flip(3, 4).permute(0, 2, 3, 4, 1).reshape(2, 27, conv_weight.shape[1])


def _kernel_forward(kernels: Any, x: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, processed: int,
                    num_segments: int, inplace: bool, save: bool, bn_weight: torch.Tensor, bn_bias: torch.Tensor,
                    conv_weight: torch.Tensor, conv_bias: torch.Tensor, fusion_weight: torch.Tensor,
                    fusion_bias: torch.Tensor, channels_last: bool | None = None) -> tuple[torch.Tensor, ...]:
    """GSF's output through a kernel set (Triton's or :class:`_CppKernels`), given the batch
    norm's mean and inverse std, and (``save``) what the backward needs: ``(out, v, gate,
    weights, fusion_saved)``, where ``v`` is a copy of the processed channels, ``gate`` ``(NT,
    2, H*W)`` float32, ``weights`` the fusion weights ``(N, T, 2, P/2)`` and ``fusion_saved``
    the kernel set's tensors for its ``fusion_backward``.
    ``channels_last``: ``x``'s layout, by default read from its strides (a caller passing a
    slice of a channels-last map says so)."""
    nt, _, h, w = x.shape
    p, t = processed, num_segments
    v = x[:, :p]
    scale = _as_dtype(bn_weight, torch.float32) * invstd
    shift = _as_dtype(bn_bias, torch.float32) - mean * scale
    if channels_last is None:
        channels_last = _is_channels_last(x)
    # the gate (NT, 2, H*W) float32 and the fusion weights (N, T, 2, P/2)
    gate, weights, fusion_saved = kernels.gate_and_weights(v, scale, shift, conv_weight, conv_bias, fusion_weight,
                                                           fusion_bias, t, channels_last)
    # The copy of v: the backward's, and in place the blend's source (it reads neighbouring
    # frames and channels, so it cannot read x while it writes x).
    source = None
    if inplace or save:
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        source = torch.empty((nt, p, h, w), dtype=x.dtype, device=x.device, memory_format=memory_format)
    if inplace:
        source.copy_(v)
        kernels.blend(source, gate, weights, x[:, :p], t)
        out = x
    else:
        out = _output_after(x[:, p:], p, channels_last)
        kernels.blend(v, gate, weights, out[:, :p], t, copy=source)
    return out, source, gate, weights, fusion_saved


class _KernelGSF(torch.autograd.Function):
    """:func:`_kernel_forward` with its backward in the same kernel set (the set's
    ``backward``): the blend's adjoint, the fusion weights', then back through the gate
    conv, the ReLU and the batch norm, all summed into the input gradient in one last
    kernel."""

    @staticmethod
    def forward(ctx, x, kernels, mean, invstd, processed, num_segments, batch_statistics, inplace, bn_weight,
                bn_bias, conv_weight, conv_bias, fusion_weight, fusion_bias):  # noqa: D102
        if inplace:
            ctx.mark_dirty(x)
        out, v, gate, weights, fusion_saved = _kernel_forward(
            kernels, x, mean, invstd, processed, num_segments, inplace, True, bn_weight, bn_bias, conv_weight,
            conv_bias, fusion_weight, fusion_bias)
        ctx.save_for_backward(v, gate, weights, mean, invstd, bn_weight, bn_bias, conv_weight, fusion_weight,
                              *fusion_saved)
        ctx.kernels, ctx.num_segments, ctx.batch_statistics = kernels, num_segments, batch_statistics
        ctx.fusion_saved = len(fusion_saved)  # (the kernel set's own tensors, saved last)
        ctx.channels_last = _is_channels_last(x)
        return out

    @staticmethod
    @gradient_reuse.taking_counts
    @once_differentiable  # (the kernels' backward is not itself differentiable: say so clearly)
    def backward(ctx, grad_out, counts):  # noqa: D102
        saved = ctx.saved_tensors
        p = saved[0].shape[1]
        memory_format = torch.channels_last if ctx.channels_last else torch.contiguous_format
        if gradient_reuse.writable(grad_out, counts, memory_format):
            grad_x = grad_out  # its last C - P channels are already the input's gradient
        else:
            grad_x = _output_after(grad_out[:, p:], p, ctx.channels_last)
        common = len(saved) - ctx.fusion_saved
        grads = ctx.kernels.backward(grad_out, grad_x, *saved[:common], tuple(saved[common:]), ctx.num_segments,
                                     ctx.batch_statistics, ctx.channels_last)
        return grad_x, None, None, None, None, None, None, None, *grads


def _kernel_backward(kernels: Any, grad_out: torch.Tensor, grad_x: torch.Tensor, v: torch.Tensor, gate: torch.Tensor,
                     weights: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, bn_weight: torch.Tensor,
                     bn_bias: torch.Tensor, conv_weight: torch.Tensor, fusion_weight: torch.Tensor,
                     fusion_saved: tuple, num_segments: int, batch_statistics: bool,
                     channels_last: bool) -> tuple[torch.Tensor, ...]:
    """The backward of :func:`_kernel_forward` (given what it saved), step by step through a
    kernel set's kernels (the C++ set runs these steps in one C++ call; Triton's ``backward``
    the same, the batch norm's output gradient recomputed rather than stored): the input's
    gradient written into ``grad_x[:, :P]`` (whose other channels the caller has filled), and
    the parameters' ``(bn_weight, bn_bias, conv_weight, conv_bias, fusion_weight,
    fusion_bias)`` gradients returned. The blend's adjoint, the fusion weights' and the gate's
    tanh, then back through the gate conv, the ReLU and the batch norm, all summed in one last
    kernel."""
    t = num_segments
    nt, p, h, w = v.shape
    grad_v, grad_gate, grad_weights = kernels.blend_backward(grad_out[:, :p], v, gate, weights, t)
    grad_z, grad_means, grad_fusion_weight, grad_fusion_bias = kernels.fusion_backward(
        grad_weights, grad_gate, v, gate, weights, fusion_saved, fusion_weight, t, channels_last)
    grad_normed, grad_conv_weight, sum_grad, sum_grad_xhat = kernels.gate_backward(
        v, mean, invstd, bn_weight, bn_bias, conv_weight, grad_z, t)
    coef, centre, slope = _batch_norm_backward_terms(bn_weight, invstd, sum_grad, sum_grad_xhat, nt * h * w,
                                                     batch_statistics)
    kernels.input_gradient(v, grad_normed, grad_v, grad_means, gate, coef, centre, slope, mean, invstd, grad_x[:, :p])
    return _parameter_gradients(sum_grad_xhat, sum_grad, grad_conv_weight, grad_z, grad_fusion_weight,
                                grad_fusion_bias, bn_weight, bn_bias, conv_weight, fusion_weight)


def _batch_norm_backward_terms(bn_weight: torch.Tensor, invstd: torch.Tensor, sum_grad: torch.Tensor,
                               sum_grad_xhat: torch.Tensor, count: int,
                               batch_statistics: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(coef, centre, slope)`` per channel, float32: the batch norm's input gradient is
    ``coef * (g - centre - xhat * slope)`` for the gradient ``g`` at its output, whose sums
    over the ``count`` values of a channel are given (with running statistics ``centre`` and
    ``slope`` are 0: the statistics are constants)."""
    coef = _as_dtype(bn_weight, torch.float32) * invstd
    if batch_statistics:  # the statistics' own gradient, over N*T*H*W values per channel
        return coef, sum_grad / count, sum_grad_xhat / count
    zeros = torch.zeros_like(coef)
    return coef, zeros, zeros


def _parameter_gradients(sum_grad_xhat: torch.Tensor, sum_grad: torch.Tensor, grad_conv_weight: torch.Tensor,
                         grad_z: torch.Tensor, grad_fusion_weight: torch.Tensor, grad_fusion_bias: torch.Tensor,
                         bn_weight: torch.Tensor, bn_bias: torch.Tensor, conv_weight: torch.Tensor,
                         fusion_weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The kernel backward's ``(bn_weight, bn_bias, conv_weight, conv_bias, fusion_weight,
    fusion_bias)`` gradients, each in its parameter's dtype (the conv bias's from the gate's
    pre-activation gradient ``grad_z`` ``(NT, 2, H*W)``)."""
    return (_as_dtype(sum_grad_xhat, bn_weight.dtype), _as_dtype(sum_grad, bn_bias.dtype),
            _as_dtype(grad_conv_weight, conv_weight.dtype), _as_dtype(grad_z.sum(dim=(0, 2)), conv_weight.dtype),
            _as_dtype(grad_fusion_weight, fusion_weight.dtype), _as_dtype(grad_fusion_bias, fusion_weight.dtype))


def _as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``: ``t`` itself where it is, with no operation dispatched (the kernel
    paths' glue runs per GSF and step; each dispatch costs the host microseconds)."""
    return t if t.dtype == dtype else t.to(dtype)


def _float32_running_mean(bn: nn.Module) -> torch.Tensor:
    """The batch norm's running mean in float32 for the kernel paths: a copy where autograd
    records, since the backward saves it and a training call before the backward updates the
    buffer in place (as :func:`forward_torch` saves a copy); else the buffer itself where
    it is float32."""
    if torch.is_grad_enabled():
        return bn.running_mean.to(torch.float32, copy=True)
    return _as_dtype(bn.running_mean, torch.float32)


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    """``getattr(module, name)`` for a parameter or buffer, read from the module's own dicts
    where it is there: ``nn.Module.__getattr__`` costs ~0.5 us a call, and an inference call of
    GSF reads ten of them. (A parametrised weight is not in ``_parameters``: getattr computes it.)"""
    tensor = module._parameters.get(name)
    if tensor is None:
        tensor = module._buffers.get(name)
    return tensor if tensor is not None else getattr(module, name)


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for the device type (``torch.is_autocast_enabled(device_type)``
    from torch 2.4 on, the older per-device functions before; False for a device type that
    has no autocast, such as ``meta``)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
    except RuntimeError:  # "unknown device type for autocast"
        return False


def _output_after(rest: torch.Tensor, processed: int, channels_last: bool) -> torch.Tensor:
    """A new ``(N*T, P + C', H, W)`` tensor (NCHW or channels-last) whose last ``C'`` channels
    are a copy of ``rest``; the first ``processed`` channels are left for the caller."""
    nt, tail, h, w = rest.shape
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((nt, processed + tail, h, w), dtype=rest.dtype, device=rest.device, memory_format=memory_format)
    out[:, processed:].copy_(rest)
    return out


def _uses_batch_statistics(bn: nn.Module) -> bool:
    """Whether ``bn`` normalises with the batch's statistics. Its own mode decides, as in
    forward_reference (a "freeze all BN" helper may set bn.eval() inside a training GSF), by
    BatchNorm's rule: in eval mode, the running statistics wherever there are any
    (track_running_stats turned off after they were made keeps them, and BatchNorm uses them).
    The buffers are read as :func:`_tensor` reads them: CPU inference asks this in every call."""
    return bn.training or (_tensor(bn, "running_mean") is None and _tensor(bn, "running_var") is None)


def _elements_apart(x: torch.Tensor) -> bool:
    """Whether no two elements of ``x`` share memory, by its strides (a sufficient test: taken
    from the smallest stride up, each dimension must step past everything the smaller ones
    reach; an expanded dimension, stride 0, never does)."""
    reach = 0
    for stride, size in sorted((s, n) for s, n in zip(x.stride(), x.shape) if n > 1):
        if stride <= reach:
            return False
        reach += stride * (size - 1)
    return True


def _is_channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _dense_for_the_kernels(x: torch.Tensor) -> bool:
    """Whether ``x`` is a dense NCHW or channels-last map with the strides the C++ kernels
    address. (torch calls a map contiguous whatever the stride of a size-1 dimension: a
    ``(N*T, C, H, 1)`` map transposed from ``(N*T, C, 1, H)`` is contiguous, its width
    stride ``H``, which the kernels do not take.)"""
    return (x.is_contiguous() or _is_channels_last(x)) and cpu_kernels.addressable(x)


def _pixels_by_channels(v: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``(NT, P, H, W)`` as ``(NT, H*W, P)``, a view (NCHW, or channels-last slices)."""
    nt, p, h, w = v.shape
    if channels_last:
        return v.permute(0, 2, 3, 1).reshape(nt, h * w, p)
    return v.reshape(nt, p, h * w).transpose(1, 2)


def _fusion_conv(padded: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Both groups' fusion convs (3x3 over channels and time) on zero-padded descriptors
    ``(N, group, [shifted, residual], P/2 + 2, T + 2)``, giving ``(N, group, P/2, T)``.

    Written as a product with the 3x3 windows (a view) rather than ``F.conv2d``: on the CPU,
    oneDNN's fixed cost for so small a convolution exceeds the work several times.
    """
    windows = padded.unfold(3, 3, 1).unfold(4, 3, 1)  # (N, 2, 2, P/2, T, 3, 3)
    logits = torch.einsum("ngicthw,gihw->ngct", windows, weight.to(padded.dtype))
    return logits + bias.to(padded.dtype).view(1, 2, 1, 1)


def _spatial_means(v: torch.Tensor, gate: torch.Tensor, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame, ``mean(v)`` and both groups' ``mean(gate_k * v)`` over the pixels, as
    ``(NT, 3, P)``, from one batched matmul of the columns ``[1, gate_1, gate_2] / (H*W)``
    (returned too) with ``v``'s ``(H*W, P)``: one pass over ``v``."""
    nt, p, h, w = v.shape
    columns = F.pad(gate, (0, 0, 0, 0, 1, 0), value=1.0).view(nt, 3, h * w).to(v.dtype) / (h * w)
    return torch.bmm(columns, _pixels_by_channels(v, channels_last)), columns


def _fusion_weights(v: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    num_segments: int, channels_last: bool) -> tuple[torch.Tensor, ...]:
    """The fusion weights ``w`` ``(N, group, P/2, T)`` of GSF on ``v`` with ``gate`` ``(N, T,
    2, H, W)``, and for a backward the columns and padded descriptors they came from.

    The fusion convs see the spatial means of the shifted and residual maps, and
    ``mean(shift(y)) = shift(mean(y))``, ``mean(v - y) = mean(v) - mean(y)``: so the maps are
    never pooled themselves: :func:`_spatial_means` gives ``mean(v)`` and both groups'
    ``mean(gate_k * v)`` in one pass over ``v``.
    """
    nt, p, h, w = v.shape
    n, t, half = nt // num_segments, num_segments, p // 2
    means, columns = _spatial_means(v, gate, channels_last)
    v_mean = means[:, 0].view(n, t, 2, half).permute(0, 2, 3, 1)  # (N, 2, P/2, T)
    # group k's mean(gate_k * v_k): the diagonal of (gate_1, gate_2) x (group 1, group 2)
    y_mean = means[:, 1:].view(n, t, 2, 2, half).diagonal(dim1=2, dim2=3).permute(0, 3, 2, 1)
    # (N, group, [shifted, residual], P/2, T), zero padded for the 3x3 convs
    padded = means.new_zeros(n, 2, 2, half + 2, t + 2)
    torch.sub(v_mean, y_mean, out=padded[:, :, 1, 1:-1, 1:-1])
    padded[:, 0, 0, 1:-1, 1:t].copy_(y_mean[:, 0, :, 1:])  # group 1 takes frame t + 1
    padded[:, 1, 0, 1:-1, 2:t + 1].copy_(y_mean[:, 1, :, :-1])  # group 2 frame t - 1
    return _fusion_conv(padded, weight, bias).sigmoid_(), columns, padded


class _FusionWeights(torch.autograd.Function):
    """:func:`_fusion_weights`, as ``(N, T, 2, P/2)``, with its own backward: one autograd
    node instead of some thirty small ones, whose bookkeeping cost more than their work."""

    @staticmethod
    def forward(ctx, v, gate, weight, bias, num_segments, channels_last):  # noqa: D102
        blend, columns, padded = _fusion_weights(v, gate, weight, bias, num_segments, channels_last)
        ctx.save_for_backward(v, columns, padded, weight, blend)
        ctx.channels_last = channels_last
        return blend.permute(0, 3, 1, 2).contiguous()  # channels innermost, for the blend

    @staticmethod
    @once_differentiable  # its hand-written backward is not itself differentiable
    def backward(ctx, grad_blend):  # noqa: D102
        v, columns, padded, weight, blend = ctx.saved_tensors
        grad_means, grad_gate, grad_weight, grad_bias = _fusion_weights_backward(
            grad_blend, v, padded, weight, blend, ctx.channels_last)
        nt, p, h, w = v.shape
        # means = columns @ (H*W, P) view of v
        grad_v = torch.bmm(grad_means.transpose(1, 2), columns).view(nt, p, h, w)
        return grad_v, grad_gate, grad_weight, grad_bias, None, None


def _fusion_weights_backward(grad_blend: torch.Tensor, v: torch.Tensor, padded: torch.Tensor, weight: torch.Tensor,
                             blend: torch.Tensor, channels_last: bool) -> tuple[torch.Tensor, ...]:
    """The adjoint of :func:`_fusion_weights` for the gradient ``(N, T, 2, P/2)`` of its
    weights: ``(grad_means (NT, 3, P), grad_gate (N, T, 2, H, W), grad_weight, grad_bias)``,
    where ``v``'s gradient is ``grad_means^T @ columns`` (left to the caller)."""
    nt, p, h, w = v.shape
    n, _, half, t = blend.shape
    grad_logits = grad_blend.permute(0, 2, 3, 1).to(blend.dtype) * blend * (1 - blend)  # (N, 2, P/2, T)
    windows = padded.unfold(3, 3, 1).unfold(4, 3, 1)
    grad_weight = torch.einsum("ngicthw,ngct->gihw", windows, grad_logits)
    grad_bias = grad_logits.sum(dim=(0, 2, 3))
    # the convs' adjoint: a full correlation with the flipped kernels
    grad_windows = F.pad(grad_logits, (1, 1, 1, 1)).unfold(2, 3, 1).unfold(3, 3, 1)  # (N, 2, P/2, T, 3, 3)
    grad_descriptors = torch.einsum("ngcthw,gihw->ngict", grad_windows, weight.flip(2, 3).to(blend.dtype))
    grad_shifted, grad_residual = grad_descriptors.unbind(dim=2)  # (N, 2, P/2, T) each
    # residual = mean(v) - mean(y); shifted: group 1 from frame t + 1, group 2 from t - 1
    grad_y_mean = grad_residual.neg()
    grad_y_mean[:, 0, :, 1:] += grad_shifted[:, 0, :, :-1]
    grad_y_mean[:, 1, :, :-1] += grad_shifted[:, 1, :, 1:]
    grad_means = blend.new_zeros(n, t, 3, 2, half)
    grad_means[:, :, 0] = grad_residual.permute(0, 3, 1, 2)
    grad_means[:, :, 1:].diagonal(dim1=2, dim2=3).copy_(grad_y_mean.permute(0, 3, 2, 1))
    grad_means = grad_means.view(nt, 3, p)
    grad_columns = torch.bmm(grad_means, _pixels_by_channels(v, channels_last).transpose(1, 2))
    grad_gate = grad_columns[:, 1:].reshape(n, t, 2, h, w) / (h * w)
    return grad_means, grad_gate, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype)


def _sum_temporal_taps(taps: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Gate pre-activation from per-frame taps ``(N, T, 2, 3, H, W)``: a 3-tap temporal conv
    with zero padding is ``tap1[t] + tap0[t - 1] + tap2[t + 1]``."""
    gate = taps[:, :, :, 1] + bias.view(1, 1, 2, 1, 1)
    if taps.shape[1] > 1:
        gate = gate + F.pad(taps[:, :-1, :, 0], (0, 0, 0, 0, 0, 0, 1, 0))
        gate = gate + F.pad(taps[:, 1:, :, 2], (0, 0, 0, 0, 0, 0, 0, 1))
    return gate


def _norm_relu(v: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float, weight: torch.Tensor,
               bias: torch.Tensor) -> torch.Tensor:
    """``relu(bn(v))`` with given statistics, contiguous NCHW, through the native
    inference-mode batch-norm kernel (faster on the CPU than one broadcast ``addcmul`` with
    per-channel scale and shift)."""
    # (the statistics are float32 for half / bf16 maps too: the affine parameters follow them,
    # as the native kernel's mixed-type path takes a half / bf16 input with float32 parameters)
    normed = F.batch_norm(v, mean, var, _as_dtype(weight, mean.dtype), _as_dtype(bias, mean.dtype), False, 0.0, eps)
    # relu in place: on CPU a fresh feature-map-sized tensor costs more (page faults) than a pass.
    return normed.relu_().to(v.dtype).contiguous()


# Below this many pixels per map, F.fold / F.unfold are the faster way to sum / spread the
# gate's taps (one call against nine); from 20x20 on, the slice versions win.
_SLICE_FOLD_MIN_PIXELS = 400


def _fold_taps(products: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sum per-pixel products ``(NT, 6 * 9, H*W)``, ordered (channel, kh, kw), over each
    pixel's 3x3 neighbourhood: ``F.fold`` with kernel 3 and padding 1, giving ``(NT, 6, H, W)``.

    On large maps nine shifted slice-adds walk memory faster than ``F.fold`` on the CPU; on
    small ones ``F.fold``'s single call wins (fewer dispatches).
    """
    if height * width < _SLICE_FOLD_MIN_PIXELS:
        return F.fold(products, (height, width), kernel_size=3, padding=1)
    nt = products.shape[0]
    grid = products.view(nt, 6, 3, 3, height, width)
    out = grid[:, :, 1, 1].clone()
    for kh in range(3):
        for kw in range(3):
            dy, dx = kh - 1, kw - 1  # the product at pixel (y, x) lands on (y + dy, x + dx)
            if dy == dx == 0:
                continue
            out[:, :, max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] += (
                grid[:, :, kh, kw, max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)])
    return out


def _unfold_taps(grad_taps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The adjoint of :func:`_fold_taps`: ``F.unfold`` with kernel 3 and padding 1,
    ``(NT, 6, H, W) -> (NT, 6 * 9, H*W)``, by slice copies on large maps (faster than
    ``F.unfold`` on the CPU), zero where the neighbour falls outside the map."""
    if height * width < _SLICE_FOLD_MIN_PIXELS:
        return F.unfold(grad_taps, kernel_size=3, padding=1)
    nt = grad_taps.shape[0]
    out = grad_taps.new_empty(nt, 6, 3, 3, height, width)
    for kh in range(3):
        for kw in range(3):
            dy, dx = kh - 1, kw - 1  # pixel (y, x) reads its neighbour (y + dy, x + dx)
            tap = out[:, :, kh, kw]
            tap[:, :, max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)].copy_(
                grad_taps[:, :, max(dy, 0):height - max(-dy, 0), max(dx, 0):width - max(-dx, 0)])
            if dy:  # the row whose neighbour is outside the map
                tap[:, :, 0 if dy < 0 else height - 1].zero_()
            if dx:
                tap[:, :, :, 0 if dx < 0 else width - 1].zero_()
    return out.view(nt, 54, height * width)


def _norm_relu_taps(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, running_mean: torch.Tensor,
                    running_var: torch.Tensor, taps_weight: torch.Tensor, eps: float,
                    batch_statistics: bool) -> tuple[torch.Tensor, ...]:
    """``relu(bn(v))`` through the gate conv's kernel, per frame: ``(NT, P, H, W) -> (NT, 6, H, W)``
    temporal taps (channel ``3 * group + tap``), with the batch-norm mean and (biased)
    variance used: batch statistics while training, running ones in eval."""
    if batch_statistics:
        mean, var = _batch_statistics(v)
    else:
        mean, var = running_mean.clone(), running_var.clone()
    activated = _norm_relu(v, mean, var, eps, weight, bias)
    nt, p, h, w = v.shape
    products = torch.matmul(taps_weight, activated.view(nt, 2, p // 2, h * w))
    taps = _fold_taps(products.view(nt, 54, h * w), h, w)
    return taps, mean, var


def _batch_statistics(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of ``(NT, P, H, W)`` (two passes, in float32 or
    wider). On the CPU this runs 3-5x faster than ``native_batch_norm``'s training mode and
    over 10x faster than ``torch.var_mean``."""
    dims = (0, 2, 3)
    mean = v.mean(dim=dims, dtype=torch.promote_types(v.dtype, torch.float32))
    var = (v - mean.view(1, -1, 1, 1)).square_().mean(dim=dims)
    return mean, var


class _NormReluTaps(torch.autograd.Function):
    """:func:`_norm_relu_taps` with its own backward.

    Only ``v`` is saved for backward: the normalised activation (``P`` channels) is
    recomputed there in one elementwise pass instead of being kept alive from forward.
    """

    @staticmethod
    def forward(ctx, v, weight, bias, running_mean, running_var, taps_weight, eps, batch_statistics):  # noqa: D102
        taps, mean, var = _norm_relu_taps(v, weight, bias, running_mean, running_var, taps_weight,
                                          eps, batch_statistics)
        ctx.save_for_backward(v, mean, var, weight, bias, taps_weight)
        ctx.eps = eps
        ctx.batch_statistics = batch_statistics
        ctx.mark_non_differentiable(mean, var)
        return taps, mean, var

    @staticmethod
    @once_differentiable  # its hand-written backward is not itself differentiable
    def backward(ctx, grad_taps, _grad_mean, _grad_var):  # noqa: D102
        v, mean, var, weight, bias, taps_weight = ctx.saved_tensors
        nt, p, h, w = v.shape
        invstd = torch.rsqrt(var + ctx.eps)
        activated = _norm_relu(v, mean, var, ctx.eps, weight, bias)
        dtype = activated.dtype
        grad_products = _unfold_taps(grad_taps.to(dtype).reshape(nt, 6, h, w), h, w)
        grad_products = grad_products.view(nt, 2, 27, h * w)
        flat = activated.view(nt, 2, p // 2, h * w)
        grad_taps_weight = torch.matmul(grad_products, flat.transpose(-1, -2)).sum(dim=0)
        grad_activated = torch.matmul(taps_weight.to(dtype).transpose(-1, -2), grad_products)
        grad_normed = torch.ops.aten.threshold_backward(grad_activated.view(nt, p, h, w), activated, 0)
        # (a half-precision input takes float32 statistics only beside a weight of their dtype)
        grad_v, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_normed, v, weight.to(mean.dtype), mean, var, mean, invstd, ctx.batch_statistics, ctx.eps,
            [True, True, True],
        )
        return (grad_v, grad_weight.to(weight.dtype), grad_bias.to(bias.dtype), None, None,
                grad_taps_weight.to(taps_weight.dtype), None, None)


def _gate_shift_fuse(v: torch.Tensor, gate: torch.Tensor, blend: torch.Tensor, rest: torch.Tensor,
                     num_segments: int, channels_last: bool, inplace: bool) -> torch.Tensor:
    """The output ``(N*T, C, H, W)``: :func:`_write_fused` into ``rest`` itself (``inplace``,
    ``rest`` is then the whole input) or into a new tensor after ``rest``'s ``C - P`` channels."""
    out = rest if inplace else _output_after(rest, v.shape[1], channels_last)
    _write_fused(out[:, :v.shape[1]], v, gate, blend, num_segments, channels_last)
    return out


def _write_fused(fused_out: torch.Tensor, v: torch.Tensor, gate: torch.Tensor, blend: torch.Tensor,
                 num_segments: int, channels_last: bool) -> None:
    """Gate, shift, blend and interleave ``v`` into ``fused_out`` (the output's first ``P``
    channels, any strides; it may be ``v``'s own memory, which is read before it is written)
    in PyTorch operations (the C++ kernels' twin: ``blend``, ``blend_in_place``).

    With ``y = gate * v`` and ``r = v - y`` per group, ``f = lerp(r, s, w) = r + w * (s - r)``
    where ``s`` is ``y`` shifted one frame (group 1 backwards, group 2 forwards; zero at the
    clip's ends, where ``f = r * (1 - w)``), and ``f`` lands interleaved: the group's channel
    ``j*Q + i`` goes to ``2*i + j``.
    """
    nt, p, h, w = v.shape
    n, t, q = nt // num_segments, num_segments, p // 4
    v7 = v.view(n, t, 2, 2, q, h, w)
    gated, residual = _empty_groups(v7, channels_last), _empty_groups(v7, channels_last)
    torch.mul(v7, gate.to(v.dtype).view(n, t, 2, 1, 1, h, w), out=gated)
    torch.sub(v7, gated, out=residual)  # from here on v is not read
    # The interleaved view of the destination, in the source order (N, T, group k, j, i, H, W).
    fused = _interleaved_view(fused_out, n, t)
    # Channels-last: the channel is the innermost memory dimension, which the interleaved
    # view splits; blend in v's channel order, then interleave with one copy.
    blended = _empty_groups(v7, channels_last) if channels_last else fused
    b7 = blend.to(v.dtype).reshape(n, t, 2, 2, q, 1, 1)
    torch.lerp(residual[:, :-1, 0], gated[:, 1:, 0], b7[:, :-1, 0], out=blended[:, :-1, 0])
    torch.lerp(residual[:, 1:, 1], gated[:, :-1, 1], b7[:, 1:, 1], out=blended[:, 1:, 1])
    torch.mul(residual[:, -1, 0], 1 - b7[:, -1, 0], out=blended[:, -1, 0])
    torch.mul(residual[:, 0, 1], 1 - b7[:, 0, 1], out=blended[:, 0, 1])
    if channels_last:
        fused.copy_(blended)


class _GateShiftFuse(torch.autograd.Function):
    """:func:`_write_fused` into the output ``(N*T, C, H, W)``, with its own backward.

    Out of place, ``rest`` is the input's last ``C - P`` channels, copied into a new output.
    In place, ``rest`` is the whole input (from :class:`_SplitChannels`), whose first ``P``
    channels get overwritten; its gradient is passed on as ``grad_out`` whole, and
    :class:`_SplitChannels` keeps only the last ``C - P`` channels of it.

    Only ``v`` (already saved by the gate) and the small ``gate`` and ``w`` are kept for
    backward, which recomputes ``y``, ``r`` and ``s``.
    """

    @staticmethod
    def forward(ctx, v, gate, blend, rest, num_segments, channels_last, inplace):  # noqa: D102
        if inplace:
            ctx.mark_dirty(rest)
        out = _gate_shift_fuse(v, gate, blend, rest, num_segments, channels_last, inplace)
        ctx.save_for_backward(v, gate, blend)
        ctx.num_segments = num_segments
        ctx.inplace = inplace
        return out

    @staticmethod
    @once_differentiable  # its hand-written backward is not itself differentiable
    def backward(ctx, grad_out):  # noqa: D102
        v, gate, blend = ctx.saved_tensors
        t = ctx.num_segments
        nt, p, h, w = v.shape
        n, half = nt // t, p // 2
        grad_rest = grad_out if ctx.inplace else grad_out[:, p:]
        v_groups = v.view(n, t, 2, half, h, w)
        g = gate.to(v.dtype).unsqueeze(3)
        b = blend.to(v.dtype)[..., None, None]
        # De-interleave into v's channel order and memory format, so that every pass below
        # walks its operands alike (in channels-last too).
        grad_fused = torch.empty_like(v)
        grad_fused.view(n, t, 2, 2, p // 4, h, w).copy_(_interleaved_view(grad_out[:, :p], n, t))
        grad_fused = grad_fused.view(n, t, 2, half, h, w)

        # f = r + w * (s - r) with y = g * v, r = v - y, s = shift(y); s - r = shift(g * v) + (g - 1) * v.
        shifted_minus_residual = v_groups * (g - 1)
        shifted_minus_residual[:, :-1, 0].addcmul_(v_groups[:, 1:, 0], g[:, 1:, 0])  # + y[t + 1]
        shifted_minus_residual[:, 1:, 1].addcmul_(v_groups[:, :-1, 1], g[:, :-1, 1])  # + y[t - 1]
        grad_blend = (grad_fused * shifted_minus_residual).sum(dim=(-2, -1))
        grad_residual = grad_fused * (1 - b)
        # grad_y - grad_residual, where grad_y = grad_fused * w moved by the shift's adjoint
        # (the opposite way): dv = dr + g * (dy - dr) and dg = sum_c v * (dy - dr).
        grad_y_minus_residual = torch.neg(grad_residual)
        grad_y_minus_residual[:, 1:, 0].addcmul_(grad_fused[:, :-1, 0], b[:, :-1, 0])
        grad_y_minus_residual[:, :-1, 1].addcmul_(grad_fused[:, 1:, 1], b[:, 1:, 1])
        grad_v = torch.addcmul(grad_residual, g, grad_y_minus_residual)
        grad_gate = (v_groups * grad_y_minus_residual).sum(dim=3)
        return (grad_v.reshape(nt, p, h, w), grad_gate.to(gate.dtype), grad_blend.to(blend.dtype),
                grad_rest, None, None, None)


class _SplitChannels(torch.autograd.Function):
    """``x -> (copy of x[:, :P], rest)``, whose backward writes the input gradient once.

    ``rest`` is ``x[:, P:]``, or with ``inplace`` ``x`` itself, whose first ``P`` channels
    :class:`_GateShiftFuse` overwrites with the output. Left to autograd, using
    ``x`` twice would give two full-size gradients summed; here both parts land in one
    ``cat``. The copy of the processed channels gives the tensor GSF saves for backward its
    own storage, so ``x`` need not outlive the forward (and may be overwritten).
    """

    @staticmethod
    def forward(ctx, x, processed, inplace):  # noqa: D102
        ctx.processed, ctx.inplace, ctx.channels = processed, inplace, x.shape[1]
        v = x[:, :processed].clone(memory_format=torch.preserve_format)
        if not inplace:
            return v, x[:, processed:]
        ctx.mark_dirty(x)  # its first P channels are left as they are: the output overwrites them
        return v, x

    @staticmethod
    def backward(ctx, grad_processed, grad_rest):  # noqa: D102
        p = ctx.processed
        if grad_rest is None:
            nt, _, h, w = grad_processed.shape
            grad_rest = grad_processed.new_zeros(nt, ctx.channels - p, h, w)
        elif ctx.inplace:  # rest's first P channels were overwritten: their gradient goes nowhere
            grad_rest = grad_rest[:, p:]
        return torch.cat([grad_processed, grad_rest], dim=1), None, None


def _empty_groups(v7: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """An uninitialised ``(N, T, 2, 2, Q, H, W)`` tensor like ``v7``, laid out densely in
    NCHW or channels-last order (an output that TensorIterator would lay out from a strided,
    broadcast input can come out in an order that no input matches)."""
    n, t, k, j, q, h, w = v7.shape
    if channels_last:
        return v7.new_empty(n, t, h, w, k, j, q).permute(0, 1, 4, 5, 6, 2, 3)
    return v7.new_empty(n, t, k, j, q, h, w)


def _interleaved_view(processed: torch.Tensor, n: int, t: int) -> torch.Tensor:
    """View ``(N*T, P, H, W)`` output channels ``k*P/2 + 2*i + j`` as ``(N, T, k, j, i, H, W)``,
    i.e. in the order of the un-interleaved source channel ``k*P/2 + j*Q + i``."""
    nt, p, h, w = processed.shape
    return processed.view(n, t, 2, p // 4, 2, h, w).permute(0, 1, 2, 4, 3, 5, 6)
