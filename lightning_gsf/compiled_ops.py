"""GSF's C++ CPU kernels (and TSM's shift) as ``torch.library`` custom ops, for ``torch.compile``.

The compiler cannot trace GSF's eager fast path (autograd functions around loops on raw
memory, the use counts of a gradient), and the plain-op formulation it traced instead
(``GSF.forward_compilable``) cost 1.16x a compiled TSN on the CPU. These ops put the same C++
kernels into the compiled graph as opaque nodes: the compiler neither traces nor fuses them,
it learns their outputs' shapes, strides and dtypes from fake implementations and their
backward from an autograd function (another op). Around them the graph keeps the cheap parts
in plain ops (batch statistics, the running statistics' update, the fusion parameters).

- ``infer_`` writes GSF's output over its input, without autograd (GSF
  built ``inplace``, as the backbones build it); ``infer`` returns a new tensor. Their CPU
  kernels are C++, registered when the kernels build, not Python.
- ``forward_`` / ``backward_``: training, the steps of ``_KernelGSF``, in place on the input
  and on the output's gradient, in the autograd function :class:`GateShiftFuse`.
- ``temporal_shift`` / ``temporal_shift_backward``: TSM's shift on the CPU into a new tensor
  (one C++ pass over the map) and its adjoint.
- ``shifted_convolution`` / ``shifted_convolution_backward``: TSM's shift and the convolution
  that reads it, without the shifted copy (the input shifted in its own memory and restored).

The training ops' Python bodies run eagerly when the compiled graph runs; they import
:mod:`lightning_gsf.gsf_fast` then (it imports this module).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor

from lightning_gsf import cpu_kernels

# The namespace carries a digest of this file: the compiler caches compiled graphs on disk
# keyed by the traced graph, which names these ops but not their schemas, fake
# implementations or autograd formula (all defined here); a changed file gets new op names,
# so a graph cached against the old ones is never loaded.
NAMESPACE = "lightning_gsf_" + hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
# Inputs in whatever layout the compiler chose (inductor runs CPU convolutions channels-last):
# the kernels take NCHW and channels-last maps, and the outputs follow the input's layout.
# (The default, the traced strides, made inductor copy every GSF input to NCHW and back.)
_TAGS = (torch.Tag.flexible_layout,)

# The ops whose CPU kernels are C++ (inference, TSM's shift): defined here, their kernels
# registered when the C++ kernels are built (cpu_kernels._register_compiled_ops); called
# before that, they have no CPU kernel.
_LIBRARY = torch.library.Library(NAMESPACE, "FRAGMENT")


@torch.compiler.assume_constant_result
def kernels_built() -> bool:
    """Whether the C++ kernels are built (building them on first call; the build puts them
    behind the ops defined on ``_LIBRARY``): a constant to the compiler, which would otherwise
    trace the build."""
    return cpu_kernels.cpu_kernels() is not None


def usable(x: Tensor) -> bool:
    """Whether compiled GSF should run ``x`` through these ops (traceable: the tensor checks
    of :func:`lightning_gsf.cpu_kernels.usable`, on the compiler's stand-in for ``x``, and
    the kernels' layouts: one stride over the pixels, and the pixels or the channels
    contiguous, as NCHW and channels-last maps and their channel slices have)."""
    if x.dim() != 4 or x.device.type != "cpu" or x.dtype not in cpu_kernels.DTYPES or not kernels_built():
        return False  # (forward_compilable raises the shape error)
    if not cpu_kernels.addressable(x):
        return False
    return x.dtype == torch.float32 or _capability_has_vectors()


@torch.compiler.assume_constant_result
def _capability_has_vectors() -> bool:
    return cpu_kernels.built_capability() in cpu_kernels.ISA_FLAGS


def _ops():
    ops = cpu_kernels.cpu_kernels()
    if ops is None:
        raise RuntimeError("GSF's compiled CPU ops need the C++ kernels, which failed to build (see the log)")
    return ops


# ---------------------------------------------------------------------------------------------
# inference: schemas and fakes here, CPU kernels in C++ (compiled_infer_ / compiled_infer in
# csrc/gsf_cpu.cpp, registered when they build): the compiled graph calls them through the
# dispatcher with no Python in between. A Python custom op's wrapping cost ~80 us a call, cold
# after every backbone layer: about 1.3 ms of a compiled ResNet-50 clip, T=8 (16 GSFs).

_INFER_ARGUMENTS = ("int processed, int num_segments, Tensor mean, Tensor var, float eps, Tensor bn_weight, "
                    "Tensor bn_bias, Tensor conv_weight, Tensor conv_bias, Tensor fusion_weight_1, "
                    "Tensor fusion_weight_2, Tensor fusion_bias_1, Tensor fusion_bias_2")
# infer_: GSF without autograd, its output written over x (GSF built inplace, as the backbones
# build it); infer: the same into a new tensor dense in x's layout. mean and var: the
# statistics the batch norm uses; the fusion convs' parameters one group at a time, as the
# module holds them (no concatenation in the graph).
_LIBRARY.define(f"infer_(Tensor(a!) x, {_INFER_ARGUMENTS}) -> ()", tags=_TAGS)
_LIBRARY.define(f"infer(Tensor x, {_INFER_ARGUMENTS}) -> Tensor", tags=_TAGS)
infer_ = getattr(torch.ops, NAMESPACE).infer_.default
infer = getattr(torch.ops, NAMESPACE).infer.default


@torch.library.register_fake(f"{NAMESPACE}::infer_", lib=_LIBRARY)
def _(x, *arguments):
    return None


@torch.library.register_fake(f"{NAMESPACE}::infer", lib=_LIBRARY)
def _(x, *arguments):
    return _dense_like(x)


# ---------------------------------------------------------------------------------------------
# training

@torch.library.custom_op(f"{NAMESPACE}::forward_", mutates_args=("x",), device_types="cpu", tags=_TAGS)
def forward_(x: Tensor, mean: Tensor, invstd: Tensor, bn_weight: Tensor, bn_bias: Tensor, conv_weight: Tensor,
             conv_bias: Tensor, fusion_weight: Tensor, fusion_bias: Tensor, processed: int,
             num_segments: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """GSF's output written over ``x``, returning what its backward needs: ``(v's copy, gate,
    weights, means)`` (see ``_kernel_forward``), given the batch norm's ``mean`` and
    ``invstd`` (float32)."""
    from lightning_gsf import gsf_fast

    work = x if cpu_kernels.addressable(x) else x.contiguous()  # (a layout the kernels do not address)
    with torch.autocast("cpu", enabled=False):
        _, copy, gate, weights, (means,) = gsf_fast._kernel_forward(
            gsf_fast._CppKernels(_ops()), work, mean.contiguous(), invstd.contiguous(), processed, num_segments, True,
            True, bn_weight, bn_bias, conv_weight, conv_bias, fusion_weight, fusion_bias,
            channels_last=_channels_last(work))
    if work is not x:
        x.copy_(work)
    return copy, gate, weights, means


@forward_.register_fake
def _(x, mean, invstd, bn_weight, bn_bias, conv_weight, conv_bias, fusion_weight, fusion_bias, processed,
      num_segments):
    nt, _, h, w = x.shape
    copy = _dense_like(x[:, :processed])
    gate = x.new_empty((nt, 2, h * w), dtype=torch.float32)
    weights = x.new_empty((nt // num_segments, num_segments, 2, processed // 2), dtype=torch.float32)
    means = x.new_empty((nt, 2, processed), dtype=torch.float32)
    return copy, gate, weights, means


@torch.library.custom_op(f"{NAMESPACE}::backward_", mutates_args=("grad_out",), device_types="cpu", tags=_TAGS)
def backward_(grad_out: Tensor, v: Tensor, gate: Tensor, weights: Tensor, means: Tensor, mean: Tensor,
              invstd: Tensor, bn_weight: Tensor, bn_bias: Tensor, conv_weight: Tensor, fusion_weight: Tensor,
              num_segments: int, batch_statistics: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`forward_`'s backward: the input's gradient written over its output's,
    ``grad_out`` (whose last ``C - P`` channels are already the input's), returning the
    gradients of ``(bn_weight, bn_bias, conv_weight, conv_bias, fusion_weight,
    fusion_bias)``; ``v`` is the copy (in ``x``'s layout)."""
    from lightning_gsf import gsf_fast

    # The compiler may hand the saved tensors over in layouts of its choosing (seen: the
    # weights in a compiled ResNet-50): small ones are made contiguous, v a map the kernels
    # address, and the input's gradient goes over grad_out only where grad_out is dense in v's
    # layout (else into a new tensor, copied over grad_out after).
    v = v if cpu_kernels.addressable(v) else v.contiguous()
    channels_last = _channels_last(v)
    p = v.shape[1]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    over = grad_out.is_contiguous(memory_format=memory_format) and _channels_last(grad_out) == channels_last
    grad_x = grad_out if over else gsf_fast._output_after(grad_out[:, p:], p, channels_last)
    with torch.autocast("cpu", enabled=False):
        grads = gsf_fast._CppKernels(_ops()).backward(
            grad_out, grad_x, v, gate.contiguous(), weights.contiguous(), mean.contiguous(), invstd.contiguous(),
            bn_weight, bn_bias, conv_weight, fusion_weight, (means.contiguous(),), num_segments, batch_statistics,
            channels_last)
    if not over:
        grad_out.copy_(grad_x)
    return tuple(grad.contiguous() for grad in grads)


@backward_.register_fake
def _(grad_out, v, gate, weights, means, mean, invstd, bn_weight, bn_bias, conv_weight, fusion_weight, num_segments,
      batch_statistics):
    parameters = (bn_weight, bn_bias, conv_weight, conv_weight.new_empty(2), fusion_weight, fusion_weight.new_empty(2))
    return tuple(torch.empty_like(parameter, memory_format=torch.contiguous_format) for parameter in parameters)


class GateShiftFuse(torch.autograd.Function):
    """Training: :func:`forward_` over its input, :func:`backward_` over its output's gradient.

    The ops mutate; the compiler keeps the meaning of that (functionalisation) and writes in
    place where nothing else reads the tensor (inductor's re-inplacing), as for GSF's input, a
    convolution's output that only GSF reads, and its output's gradient: no copy of the
    ``C - P`` channels GSF passes through, in either direction (functional ops with a
    ``register_autograd`` formula copied them, 2.6 % of a compiled ResNet-50 step). Outside
    the compiler (called directly), the backward copies the gradient first: another node may
    hold it."""

    @staticmethod
    def forward(ctx, x, mean, invstd, bn_weight, bn_bias, conv_weight, conv_bias, fusion_weight, fusion_bias,
                processed, num_segments, batch_statistics):  # noqa: D102
        ctx.mark_dirty(x)
        saved = forward_(x, mean, invstd, bn_weight, bn_bias, conv_weight, conv_bias, fusion_weight, fusion_bias,
                         processed, num_segments)
        ctx.save_for_backward(*saved, mean, invstd, bn_weight, bn_bias, conv_weight, fusion_weight)
        ctx.num_segments, ctx.batch_statistics = num_segments, batch_statistics
        return x

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        # The input's gradient is written over grad_out, in the layout of the forward's copy
        # of v: a gradient in the other layout, expanded, or broadcast over frames (stride 0:
        # every frame would write the same memory) is made dense in that layout first.
        saved = ctx.saved_tensors
        memory_format = torch.channels_last if _channels_last(saved[0]) else torch.contiguous_format
        if torch.compiler.is_compiling():
            grad_out = grad_out.contiguous(memory_format=memory_format)  # (the same tensor when it is)
        else:
            grad_out = grad_out.clone(memory_format=memory_format)  # another node may hold it
        grads = backward_(grad_out, *saved, ctx.num_segments, ctx.batch_statistics)
        return grad_out, None, None, *grads, None, None, None


# ---------------------------------------------------------------------------------------------
# TSM's shift: schemas, fakes and autograd formula here, CPU kernels in C++
# (compiled_temporal_shift / compiled_temporal_shift_backward in csrc/gsf_cpu.cpp)

# temporal_shift: the shift into a new tensor in x's layout, one pass over the map. Inductor's
# own code for the shift in plain ops was slower than the convolutions around it: it wrote the
# shifted map NCHW and copied it to channels-last for the next convolution, and the
# backward's masked loads did not vectorise (a compiled TSM training step cost 1.27x a
# compiled TSN's).
_LIBRARY.define("temporal_shift(Tensor x, int num_segments, int fold) -> Tensor", tags=_TAGS)
# temporal_shift_backward: the shift's adjoint applied to its output's gradient, into a new
# tensor in the layout of its input x. Taking x keeps it for the backward, which changes what
# inductor saves around it: the shift's input is a ReLU's output, and without it inductor
# saved that ReLU's mask as a bool tensor instead, whose store its CPU code writes at some
# 8 ns a value (26 ms for a 3.3-million-value map, 0.7 ms for the float store beside it):
# three stage ends of a ResNet-50 took 85 ms of a 900 ms step that way (1.14x TSN; 1.03x with x).
_LIBRARY.define("temporal_shift_backward(Tensor grad, Tensor x, int num_segments, int fold) -> Tensor", tags=_TAGS)
temporal_shift = getattr(torch.ops, NAMESPACE).temporal_shift.default
temporal_shift_backward = getattr(torch.ops, NAMESPACE).temporal_shift_backward.default


@torch.library.register_fake(f"{NAMESPACE}::temporal_shift", lib=_LIBRARY)
def _(x, num_segments, fold):
    return _dense_like(x)


@torch.library.register_fake(f"{NAMESPACE}::temporal_shift_backward", lib=_LIBRARY)
def _(grad, x, num_segments, fold):
    return _dense_like(x)


def shift_usable(x: Tensor, fold: int) -> bool:
    """Whether the compiled graph shifts ``x`` by :func:`temporal_shift` (traceable): a CPU
    map of elements of 1, 2, 4 or 8 bytes, two folds within its channels, the kernels built."""
    return (x.device.type == "cpu" and x.dtype.itemsize in (1, 2, 4, 8) and 2 * fold <= x.shape[1]
            and kernels_built())


def _temporal_shift_context(ctx, inputs, output):
    x, ctx.num_segments, ctx.fold = inputs
    ctx.save_for_backward(x)


def _temporal_shift_gradient(ctx, grad):
    (x,) = ctx.saved_tensors
    return temporal_shift_backward(grad, x, ctx.num_segments, ctx.fold), None, None


torch.library.register_autograd(f"{NAMESPACE}::temporal_shift", _temporal_shift_gradient,
                                setup_context=_temporal_shift_context, lib=_LIBRARY)


# ---------------------------------------------------------------------------------------------
# TSM's shift and the convolution that reads it: schemas, fakes and autograd formula here, CPU
# kernels in C++ (compiled_shifted_convolution / compiled_shifted_convolution_backward), the
# compiled twin of the eager temporal._ShiftedConvolution. The block's input is shifted in its
# own memory around the convolution (and the weight gradient's) and restored after, so to the
# compiler the op is functional, and (for the dense float32 / bfloat16 maps the in-place shift
# takes) no shifted copy is written nor saved for backward: on a compiled ResNet-50 (T=8,
# 160 px, one thread) the shift ops took 12.7 ms of a 255 ms inference and 28 ms of a 970 ms
# training step as copies, and TSM saved 1.22x a compiled TSN's activations (8 x 112).
# As in eager inference, the input must be writable and not read by another thread meanwhile
# (where the block's input is the compiled graph's own input, the caller's tensor is shifted
# and restored).

_CONVOLUTION_GEOMETRY = "int[2] stride, int[2] padding, int[2] dilation, int groups, int num_segments, int fold"
_LIBRARY.define(f"shifted_convolution(Tensor x, Tensor weight, Tensor? bias, {_CONVOLUTION_GEOMETRY}) -> Tensor",
                tags=_TAGS)
# the gradients of x, weight and bias where output_mask asks for them, else empty tensors
_LIBRARY.define(f"shifted_convolution_backward(Tensor grad_out, Tensor x, Tensor weight, {_CONVOLUTION_GEOMETRY}, "
                "bool[3] output_mask) -> (Tensor, Tensor, Tensor)", tags=_TAGS)
shifted_convolution = getattr(torch.ops, NAMESPACE).shifted_convolution.default
shifted_convolution_backward = getattr(torch.ops, NAMESPACE).shifted_convolution_backward.default


@torch.library.register_fake(f"{NAMESPACE}::shifted_convolution", lib=_LIBRARY)
def _(x, weight, bias, stride, padding, dilation, groups, num_segments, fold):
    return torch.ops.aten.convolution(x, weight, bias, stride, padding, dilation, False, [0, 0], groups)


@torch.library.register_fake(f"{NAMESPACE}::shifted_convolution_backward", lib=_LIBRARY)
def _(grad_out, x, weight, stride, padding, dilation, groups, num_segments, fold, output_mask):
    grads = torch.ops.aten.convolution_backward(grad_out, x, weight, [weight.shape[0]] if output_mask[2] else None,
                                                stride, padding, dilation, False, [0, 0], groups, output_mask)
    return tuple(x.new_empty(0) if grad is None else grad for grad in grads)


def _shifted_convolution_context(ctx, inputs, output):
    x, weight, bias, *ctx.geometry = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight)


def _shifted_convolution_gradient(ctx, grad):
    x, weight = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    grads = shifted_convolution_backward(grad, x, weight, *ctx.geometry, mask)
    return *(grad if needed else None for grad, needed in zip(grads, mask)), *[None] * len(ctx.geometry)


torch.library.register_autograd(f"{NAMESPACE}::shifted_convolution", _shifted_convolution_gradient,
                                setup_context=_shifted_convolution_context, lib=_LIBRARY)


def _channels_last(v: Tensor) -> bool:
    """Whether the map ``v`` (``(N*T, P, H, W)``, maybe a channel slice) keeps its channels
    innermost."""
    return v.stride(1) == 1 and v.stride(3) != 1


def _dense_like(v: Tensor) -> Tensor:
    """A new tensor of ``v``'s shape and dtype, dense in ``v``'s layout."""
    memory_format = torch.channels_last if _channels_last(v) else torch.contiguous_format
    return torch.empty(v.shape, dtype=v.dtype, device=v.device, memory_format=memory_format)
