"""Whether an autograd backward may write its input's gradient over its output's gradient.

A shape-preserving layer (GSF, TSM's shift) can often compute the input's gradient in the
memory of the output's gradient: no new tensor, and no copy of the channels the layer passes
through. That is safe only when nothing but the autograd engine holds that gradient: no hook
or ``retain_grad`` keeps it, no other consumer of the output was handed the same tensor (a
sum's backward hands both its inputs one), no view of it lives on. The engine says none of
this, so a backward counts the references to the gradient on entry and compares them with
those of a gradient known to be unshared, measured on a probe whose backward has the same
prologue (once per interpreter state: :func:`_call_references`).

Usage, in an autograd Function::

    forward:   gradient_reuse.prepare()            # (measures the probe, once per state)
    backward:  @staticmethod
               @gradient_reuse.taking_counts      # (the probe's prologue exactly)
               def backward(ctx, grad_out, counts):
                   if gradient_reuse.writable(grad_out, counts, memory_format): ...
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

# The private use counts that the check reads (present in torch 2.x).
COUNTS_USABLE = hasattr(torch.Tensor, "_use_count") and hasattr(torch._C, "_storage_Use_Count")
# CUDA gradients too, unless ``LIGHTNING_GSF_CUDA_GRADIENT_REUSE=0`` (or false / no / off): on
# CUDA it saves GSF's backward a copy of the C - P channels it passes through, and TSM's a copy
# of the whole map (tests/test_gpu.py passed both ways on an H200; a ResNet-50 GSF training
# step took 5 % less time there).
ON_CUDA = os.environ.get("LIGHTNING_GSF_CUDA_GRADIENT_REUSE", "1").strip().lower() not in ("0", "false", "no", "off")

Counts = tuple[int, int, int]


def counts_on_entry(grad: torch.Tensor) -> Counts | None:
    """Who holds ``grad``: its Python references, its C++ references and the tensors (views)
    on its storage; None for a gradient on another device than the CPU (or CUDA, with
    :data:`ON_CUDA`) or where torch lacks the private use counts. Comparable only when taken
    in the same prologue as the probe's (:func:`taking_counts`)."""
    if not COUNTS_USABLE or not applies_to(grad):
        return None
    return sys.getrefcount(grad), grad._use_count(), torch._C._storage_Use_Count(grad.untyped_storage()._cdata)


def taking_counts(backward: Callable[..., Any]) -> Callable[..., Any]:
    """A Function's ``backward(ctx, grad_out, counts)`` as ``backward(ctx, grad_out)``, with
    :func:`counts_on_entry` of ``grad_out`` taken before anything else holds it: the one
    prologue that every user and the probe share, so that their counts compare. Apply it
    outermost (``once_differentiable``, where wanted, goes inside it)."""

    @functools.wraps(backward)
    def with_counts(ctx, grad_out):
        return backward(ctx, grad_out, counts_on_entry(grad_out))

    return with_counts


class _Probe(torch.autograd.Function):
    """Records, on its node, :func:`counts_on_entry` of a freshly computed gradient that
    nothing else holds, in the prologue of :func:`taking_counts`."""

    @staticmethod
    def forward(ctx, x):  # noqa: D102
        return x.clone()

    @staticmethod
    @taking_counts
    def backward(ctx, grad_out, counts):  # noqa: D102
        ctx.counts = counts
        return grad_out


# The probe's counts, by interpreter state (:func:`_call_references`).
_PROBES: dict[int, Counts | None] = {}


def _call_references() -> int:
    """The references to a new object inside a call that takes it: 2 in CPython (the callee's
    argument and ``getrefcount``'s). A failed ``torch.compile`` leaves CPython 3.11 counting one
    more in every call, in every thread, for the rest of the process (torch 2.14; seen with a
    plain Python object too); the Python references of a gradient on a backward's entry then
    read one more as well, so the probe is measured again for that state."""
    return _references_inside_a_call(object())


def _references_inside_a_call(value: object) -> int:
    return sys.getrefcount(value)


def unshared_counts() -> Counts | None:
    """:func:`counts_on_entry` of a gradient that only the autograd engine holds, measured on
    the probe (the counts depend on the torch version, not on the Function) once per
    interpreter state (:func:`_call_references`); None where torch lacks the use counts.
    Measure it in a plain run (forwards call :func:`prepare`): a probe measured while a
    debugger holds extra frame references would set the bar as many references higher, and a
    gradient held that many more times would then pass the check."""
    state = _call_references()
    if state not in _PROBES:
        _PROBES[state] = _measure_probe()
    return _PROBES[state]


def _measure_probe() -> Counts | None:
    if not COUNTS_USABLE:
        return None
    with torch.enable_grad():
        x = torch.zeros(4, device="cpu", requires_grad=True)
        y = _Probe.apply(x)
        (y * 2.0).sum().backward()
    return y.grad_fn.counts


def prepare() -> None:
    """Measure the probe now (once per process and interpreter state), from a forward: not
    inside a backward, where a nested backward of the probe would run in the middle of
    another."""
    unshared_counts()


def writable(grad: torch.Tensor, counts: Counts | None, memory_format: torch.memory_format | None = None) -> bool:
    """Whether a backward may write over ``grad``, its output's gradient, whose ``counts`` it
    took on entry: a dense tensor in ``memory_format`` (the input's; None: NCHW or
    channels-last, either will do) that nothing but the autograd engine holds, outside a
    double backward. CPU tensors, and CUDA ones with :data:`ON_CUDA` (the default). Against
    the probe measured in the interpreter's present state; where it has not been (the state
    changed since the forward), not writable: the probe is not measured inside a backward."""
    formats = (torch.contiguous_format, torch.channels_last) if memory_format is None else (memory_format,)
    probe = _PROBES.get(_call_references())
    return (counts is not None and counts == probe and applies_to(grad) and not grad.requires_grad
            and any(grad.is_contiguous(memory_format=layout) for layout in formats))


def applies_to(x: torch.Tensor) -> bool:
    """Whether gradients on ``x``'s device may be written over at all: the CPU's, and CUDA's with
    :data:`ON_CUDA`, the default (a forward calls :func:`prepare` where this holds)."""
    return x.is_cpu or (ON_CUDA and x.is_cuda)
