"""Temporal Shift Module (TSM; Lin, Gan and Han, ICCV 2019), the baseline GSF is compared to.

In its default "residual shift" form TSM shifts the input of the first convolution of every
residual block: the first ``C/fold_div`` channels take the next frame's values, the next
``C/fold_div`` the previous frame's, zero padded at the clip ends; the rest are unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from lightning_gsf import compiled_ops, cpu_kernels, gradient_reuse

T = TypeVar("T")


def _shift_copy(x: torch.Tensor, num_segments: int, fold: int, backwards_first: bool) -> torch.Tensor:
    """``x`` with channels ``[0, fold)`` moved one frame and ``[fold, 2*fold)`` one frame the
    other way (zero padded per clip), the rest copied: one write into an uninitialised
    tensor of ``x``'s memory format (no zero fill, no concatenation).

    ``backwards_first``: channels ``[0, fold)`` take frame ``t + 1`` (TSM's forward shift);
    otherwise they take ``t - 1`` and the next fold ``t + 1`` (its adjoint, used in backward).
    """
    return _shift_copy_into(x, torch.empty_like(x), num_segments, fold, backwards_first)


def _shift_copy_into(x: torch.Tensor, out: torch.Tensor, num_segments: int, fold: int,
                     backwards_first: bool) -> torch.Tensor:
    """:func:`_shift_copy` into ``out`` (``x``'s shape, any layout); returns ``out``."""
    nt, c, h, w = x.shape
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


def _unshift_in_place(grad: torch.Tensor, num_segments: int, fold: int) -> torch.Tensor:
    """The adjoint of the forward shift, written over ``grad`` (non-overlapping): channels
    ``[0, fold)`` move one frame later, ``[fold, 2 * fold)`` one frame earlier, zero where
    they leave the clip; the other channels are not touched. One frame at a time, in the
    order that reads each frame before it is overwritten (a copy between overlapping slices
    would be refused)."""
    nt, c, h, w = grad.shape
    clips = grad.view(nt // num_segments, num_segments, c, h, w)
    to_later, to_earlier = clips[:, :, :fold], clips[:, :, fold:2 * fold]
    for t in range(num_segments - 1, 0, -1):
        to_later[:, t].copy_(to_later[:, t - 1])
    to_later[:, 0].zero_()
    for t in range(num_segments - 1):
        to_earlier[:, t].copy_(to_earlier[:, t + 1])
    to_earlier[:, -1].zero_()
    return grad


class _TemporalShift(torch.autograd.Function):
    """The shift with its adjoint (the opposite shift) as backward.

    Left to autograd, the slice copies of :func:`_shift_copy` would each send a zero-filled
    full-size gradient back to ``x`` and sum them: several passes over the feature map for
    a module that does no arithmetic. The adjoint moves the ``2 * fold`` shifted channels
    within the output's gradient where nothing else holds it (:mod:`gradient_reuse`: in a
    ResNet block the gradient comes fresh from the convolution that read the shift), else
    it is one more shifted copy. On CUDA each way is one Triton kernel
    (:mod:`lightning_gsf.shift_kernels`), on the CPU C++ (:class:`_CppShift`).
    """

    @staticmethod
    def forward(ctx, x, num_segments, fold):  # noqa: D102
        ctx.num_segments, ctx.fold = num_segments, fold
        kernels = _shift_kernels(x, fold)
        if kernels is not None:
            return kernels.shift(x, num_segments, fold)
        return _shift_copy(x, num_segments, fold, backwards_first=True)

    @staticmethod
    @gradient_reuse.taking_counts
    def backward(ctx, grad_out, counts):  # noqa: D102
        # (with create_graph, slice copies: differentiable again, for a double backward)
        kernels = None if torch.is_grad_enabled() else _shift_kernels(grad_out, ctx.fold)
        if gradient_reuse.writable(grad_out, counts):  # (the shift works in either layout)
            in_place = kernels is not None and kernels.unshifts_in_place(grad_out)
            unshift = kernels.unshift_ if in_place else _unshift_in_place
            return unshift(grad_out, ctx.num_segments, ctx.fold), None, None
        if kernels is not None:
            return kernels.shift(grad_out, ctx.num_segments, ctx.fold, backwards_first=False), None, None
        return _shift_copy(grad_out, ctx.num_segments, ctx.fold, backwards_first=False), None, None


class _CppShift:
    """TSM's shift in the C++ CPU kernels, for the training calls that
    :class:`_ShiftedConvolution` does not take (the consumer not a plain convolution, a
    float32 map under autocast): the shifted copy in one pass over the map (the compiled
    graph's op), the adjoint over the gradient moving the two shifted folds only (also
    :class:`_ShiftedConvolution`'s). Against the slice copies and per-frame copies of PyTorch
    ops, at ResNet-50's TSM sites (T = 8, 160 px, float32, one thread, ms a clip): the copy
    17.4-18.2 -> 12.6-13.0 in channels-last, 11.9-12.4 -> 11.0-11.5 in NCHW; the adjoint
    5.5-5.6 -> 2.1-2.2 and 2.7-2.8 -> 1.4. The same values either way (the shift only moves
    them)."""

    @staticmethod
    def shift(x: torch.Tensor, num_segments: int, fold: int, backwards_first: bool = True) -> torch.Tensor:
        if backwards_first:
            return compiled_ops.temporal_shift(x, num_segments, fold)
        return compiled_ops.temporal_shift_backward(x, x, num_segments, fold)

    @staticmethod
    def unshifts_in_place(grad: torch.Tensor) -> bool:
        """Whether :meth:`unshift_` takes ``grad`` (:func:`_moved_in_place_by_cpp`)."""
        return _moved_in_place_by_cpp(grad)

    @staticmethod
    def unshift_(grad: torch.Tensor, num_segments: int, fold: int) -> torch.Tensor:
        cpu_kernels.cpu_kernels().temporal_shift_adjoint_(grad, num_segments, fold)
        return grad


def _shift_kernels(x: torch.Tensor, fold: int) -> ModuleType | type[_CppShift] | None:
    """The shift's kernels for ``x``: :mod:`lightning_gsf.shift_kernels` (one Triton launch each
    way, for the GPU, where the slice copies' launches cost the host more than their copies
    cost the GPU) for CUDA tensors where Triton is installed; :class:`_CppShift` for CPU
    tensors where the C++ kernels are built; else None (PyTorch's slice copies)."""
    if not x.is_cuda:
        return _CppShift if type(x) is torch.Tensor and compiled_ops.shift_usable(x, fold) else None
    try:
        from lightning_gsf import shift_kernels
    except ImportError:
        return None
    return shift_kernels


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
        if compiled_ops.shift_usable(x, c // fold_div):  # (inductor's own code for it was slow)
            return compiled_ops.temporal_shift(x, num_segments, c // fold_div)
        return _shift_compilable(x, num_segments, c // fold_div)
    if x.requires_grad and torch.is_grad_enabled() and gradient_reuse.applies_to(x):
        gradient_reuse.prepare()  # measured once, before any backward runs
    return _TemporalShift.apply(x, num_segments, c // fold_div)


def _moved_in_place_by_cpp(x: torch.Tensor) -> bool:
    """Whether the C++ in-place shifts (``temporal_shift_`` and its undoing, the adjoint) take
    ``x``: a plain float32 or bfloat16 CPU map, dense (NCHW or channels-last), in a layout the
    kernels address."""
    return (x.dim() == 4 and cpu_kernels.takes(x) and (x.is_contiguous() or x.is_contiguous(
        memory_format=torch.channels_last)) and cpu_kernels.addressable(x))


def shifts_in_place(x: torch.Tensor, fold_div: int = 8) -> bool:
    """Whether :func:`call_with_shifted` shifts ``x`` in its own memory: an inference tensor in
    inference mode (no autograd, no version counter that an in-place write could upset), on
    the CPU in float32 or bfloat16, dense (NCHW or channels-last) in a layout the C++ kernels
    address, two folds within the channels, the kernels built; not while compiling."""
    return (not torch.compiler.is_compiling()  # (first: the compiler cannot trace the inference checks)
            and torch.is_inference_mode_enabled() and x.is_inference() and _shifted_in_place_by_cpp(x, fold_div))


def _shifted_in_place_by_cpp(x: torch.Tensor, fold_div: int) -> bool:
    """Whether the C++ in-place shift takes ``x`` (:func:`_moved_in_place_by_cpp`) with two
    folds within its channels, the kernels built."""
    return (_moved_in_place_by_cpp(x) and 2 * (x.shape[1] // fold_div) <= x.shape[1]
            and cpu_kernels.cpu_kernels() is not None)


def convolves_in_place(x: torch.Tensor, conv: object, fold_div: int = 8) -> bool:
    """Whether :func:`call_with_shifted` runs ``conv(temporal_shift(x))`` as
    :class:`_ShiftedConvolution` (``x`` shifted in its own memory around the convolution and
    its weight gradient): outside inference mode (training, or ``no_grad``), ``conv`` a plain
    CPU ``nn.Conv2d`` (numeric padding, zero padded, no hooks) that computes in ``x``'s dtype
    (its weight's, or autocast's, which would otherwise cast ``x``), and ``x`` one the C++
    in-place shifts take; not while compiling."""
    return (not torch.compiler.is_compiling() and _is_plain_convolution(conv)
            and not torch.is_inference_mode_enabled() and not x.is_inference()
            and conv.weight.is_cpu and x.dtype == _computing_dtype(conv.weight)
            and _shifted_in_place_by_cpp(x, fold_div))


def _convolves_shifted_when_compiled(x: torch.Tensor, conv: object, fold: int) -> bool:
    """Whether the compiled graph runs ``conv(temporal_shift(x))`` as the op
    :func:`compiled_ops.shifted_convolution` (``x`` shifted in its own memory around the
    convolution, in training and inference): ``conv`` a plain ``nn.Conv2d`` (as for
    :func:`convolves_in_place`) that computes in ``x``'s dtype, ``x`` a float32 or bfloat16 CPU
    map, the C++ kernels built. Traceable."""
    return (_is_plain_convolution(conv) and x.device.type == "cpu" and x.dtype in cpu_kernels.DTYPES
            and x.dtype == _computing_dtype(conv.weight) and compiled_ops.shift_usable(x, fold))


def _is_plain_convolution(conv: object) -> bool:
    """Whether ``conv`` is an ``nn.Conv2d`` itself (no subclass's ``forward``), zero padded by
    numbers (not ``"same"``), without hooks: a call of ``F.conv2d`` with its parameters."""
    return (type(conv) is nn.Conv2d and isinstance(conv.padding, tuple) and conv.padding_mode == "zeros"
            and not _has_hooks(conv))


def _computing_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype a CPU convolution with ``weight`` computes in: autocast's where it is on."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else weight.dtype


def _has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` runs hooks, its own or global ones, forward or backward."""
    hooks = nn.modules.module
    return any((module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
                module._backward_pre_hooks, hooks._global_forward_hooks, hooks._global_forward_pre_hooks,
                hooks._global_backward_hooks, hooks._global_backward_pre_hooks))


def _saved_frames(x: torch.Tensor, num_segments: int, fold: int) -> torch.Tensor:
    """Room for what the in-place shift overwrites and no frame keeps: each clip's first frame
    of channels ``[0, fold)`` and last of ``[fold, 2 * fold)``, in ``x``'s layout."""
    nt, _, h, w = x.shape
    memory_format = torch.channels_last if not x.is_contiguous() else torch.contiguous_format
    return torch.empty((nt // num_segments * 2, fold, h, w), dtype=x.dtype, memory_format=memory_format)


@contextlib.contextmanager
def _shifted_in_place(x: torch.Tensor, num_segments: int, fold: int) -> Iterator[torch.Tensor]:
    """``x`` shifted in its own memory (the C++ ``temporal_shift_``, which leaves its version
    counter alone), restored exactly on leaving, also on an exception."""
    ops = cpu_kernels.cpu_kernels()
    saved = _saved_frames(x, num_segments, fold)
    ops.temporal_shift_(x, saved, num_segments, fold)
    try:
        yield x
    finally:
        ops.temporal_unshift_(x, saved, num_segments, fold)


class _ShiftedConvolution(torch.autograd.Function):
    """``conv2d(temporal_shift(x), weight, bias)`` without the shifted copy, on the CPU.

    TSM's shifted map is read by one convolution only, while ``x`` itself is needed afterwards
    (the identity path) and is held for backward anyway (by the ReLU that made it, or the
    convolution of the identity path). So the shift is written over ``x`` for the
    convolution and undone after it, and again in backward for the weight gradient; the input
    gradient (a new tensor, the convolution's) gets the adjoint in place. Nothing is kept for
    backward that TSN would not keep: the shifted copy that the convolution would save made
    TSM's activation memory 1.26x TSN's (ResNet-50, 8 x 112). In time it is about even: the
    four in-place moves of a quarter of the channels cost a little more than the copy on
    channels-last maps and less on NCHW ones. The values are those of the convolution of the
    copy: the same operations on the same numbers in the same layout.

    Under autocast (``x`` already in its dtype) the forward's convolution casts the weight
    as autocast does, and the backward casts it again and returns the weight's and bias's
    gradients in their own dtypes, as autograd's ``to`` would.

    Safe because nothing else reads ``x`` while it is shifted (the autograd engine runs one
    backward's CPU nodes one after another, in one thread) and because it is restored bit for
    bit. Not for several backwards of one graph run at once from several threads (which
    PyTorch allows with ``retain_graph``): two of them could shift the same ``x`` at once.
    With ``create_graph`` the backward is made of differentiable operations (shifted
    copies)."""

    @staticmethod
    def forward(ctx, x, weight, bias, geometry, num_segments, fold):  # noqa: D102
        ctx.geometry = geometry  # (stride, padding, dilation, groups)
        ctx.num_segments, ctx.fold = num_segments, fold
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(x, weight)
        with _shifted_in_place(x, num_segments, fold):
            return F.conv2d(x, weight, bias, *ctx.geometry)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        has_bias = ctx.bias_dtype is not None
        mask = [*ctx.needs_input_grad[:2], has_bias and ctx.needs_input_grad[2]]

        def convolution_backward(shifted: torch.Tensor) -> list[torch.Tensor | None]:
            grads = torch.ops.aten.convolution_backward(
                grad_out, shifted, weight.to(x.dtype), [weight.shape[0]] if has_bias else None, stride, padding,
                dilation, False, [0, 0], groups, mask)
            return [None if grad is None else grad.to(dtype)  # (autocast's casts, undone)
                    for grad, dtype in zip(grads, (x.dtype, weight.dtype, ctx.bias_dtype))]

        if torch.is_grad_enabled() or not _moved_in_place_by_cpp(x):
            # create_graph (differentiable, for a double backward), or a saved x that came back
            # unlike the forward's (a saved-tensor hook's copy in another layout, say)
            grad_x, grad_weight, grad_bias = convolution_backward(
                _shift_copy(x, ctx.num_segments, ctx.fold, backwards_first=True))
            if grad_x is not None:
                grad_x = _shift_copy(grad_x, ctx.num_segments, ctx.fold, backwards_first=False)
            return grad_x, grad_weight, grad_bias, None, None, None
        if mask[1]:  # (the weight's gradient reads the shifted input; the input's only its shape)
            with _shifted_in_place(x, ctx.num_segments, ctx.fold):
                grad_x, grad_weight, grad_bias = convolution_backward(x)
        else:
            grad_x, grad_weight, grad_bias = convolution_backward(x)
        if grad_x is not None:  # (a new tensor, the convolution's: the adjoint goes over it)
            unshift = _CppShift.unshift_ if _CppShift.unshifts_in_place(grad_x) else _unshift_in_place
            unshift(grad_x, ctx.num_segments, ctx.fold)
        return grad_x, grad_weight, grad_bias, None, None, None


def call_with_shifted(x: torch.Tensor, consumer: Callable[[torch.Tensor], T], num_segments: int,
                      fold_div: int = 8) -> T:
    """``consumer(temporal_shift(x))``, for a caller that needs ``x`` itself again afterwards
    (TSM's identity path, an Inception block's other branches), without the shifted copy where
    the C++ kernels allow:

    - in inference (:func:`shifts_in_place`), ``x`` itself is shifted (the C++
      ``temporal_shift_``: an eighth of the channels moves each way, no map is allocated; the
      frames the shift overwrites are kept aside) and restored exactly when ``consumer``
      returns or raises. So ``consumer`` must not write into its input, and whatever keeps a
      reference to it (a forward hook on the next convolution, say) sees ``x`` restored;
    - where ``consumer`` is a plain convolution (:func:`convolves_in_place`; training among
      others), the same around the convolution and its weight gradient
      (:class:`_ShiftedConvolution`);
    - under ``torch.compile``, the same around a plain convolution as one op
      (:func:`compiled_ops.shifted_convolution`)."""
    if torch.compiler.is_compiling():
        return _compiled_call_with_shifted(x, consumer, num_segments, fold_div)
    in_inference = shifts_in_place(x, fold_div)
    if not in_inference and not convolves_in_place(x, consumer, fold_div):
        return consumer(temporal_shift(x, num_segments, fold_div))
    nt, c = x.shape[:2]
    if nt % num_segments:
        raise ValueError(f"temporal_shift got {nt} frames, not a multiple of num_segments={num_segments}")
    fold = c // fold_div
    if not in_inference:
        geometry = (consumer.stride, consumer.padding, consumer.dilation, consumer.groups)
        return _ShiftedConvolution.apply(x, consumer.weight, consumer.bias, geometry, num_segments, fold)
    with _shifted_in_place(x, num_segments, fold):
        return consumer(x)


def _compiled_call_with_shifted(x: torch.Tensor, consumer: Callable[[torch.Tensor], T], num_segments: int,
                                fold_div: int) -> T:
    """:func:`call_with_shifted` while compiling."""
    fold = x.shape[1] // fold_div if x.dim() == 4 else 0
    if x.dim() != 4 or x.shape[0] % num_segments or not _convolves_shifted_when_compiled(x, consumer, fold):
        return consumer(temporal_shift(x, num_segments, fold_div))  # (which raises on a wrong shape)
    # (autocast casts a convolution's parameters to its dtype, x's here; the op computes in
    # its inputs' dtypes)
    weight = consumer.weight.to(x.dtype)
    bias = None if consumer.bias is None else consumer.bias.to(x.dtype)
    return compiled_ops.shifted_convolution(x, weight, bias, consumer.stride, consumer.padding, consumer.dilation,
                                            consumer.groups, num_segments, fold)


class TemporalShift(nn.Module):
    """TSM as a parameter-free module with the same ``(N*T, C, H, W)`` interface as GSF;
    :meth:`call_with_shifted` for a block that needs the unshifted input afterwards."""

    def __init__(self, num_segments: int, fold_div: int = 8) -> None:
        super().__init__()
        self.num_segments = num_segments
        self.fold_div = fold_div

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}, fold_div={self.fold_div}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return temporal_shift(x, self.num_segments, self.fold_div)

    def call_with_shifted(self, x: torch.Tensor, consumer: Callable[[torch.Tensor], T]) -> T:
        """``consumer(self(x))``; on the CPU with ``x`` itself shifted in place and restored after
        (:func:`call_with_shifted`: in inference, or around a plain convolution), unless hooks
        or a subclass's ``forward`` expect the module to be called."""
        if self._called_as_usual():
            return consumer(self(x))
        return call_with_shifted(x, consumer, self.num_segments, self.fold_div)

    def _called_as_usual(self) -> bool:
        return _has_hooks(self) or type(self).forward is not TemporalShift.forward
