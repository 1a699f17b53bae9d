"""What may hold a layer's output gradient besides the autograd engine, for the tests of
layers that write their input's gradient over it (:mod:`lightning_gsf.gradient_reuse`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

#: hook: a hook keeps the gradient; hook_view: a view of it; two_consumers: a sum's backward
#: hands the output and another tensor one gradient; retain_grad: the output keeps its
#: gradient; expanded: the gradient is one value expanded over the map (not dense).
HOLDERS = ("hook", "hook_view", "two_consumers", "retain_grad", "expanded")


class GradientSpy(torch.autograd.Function):
    """Identity that records the data pointer of the gradient passing through it backwards."""

    pointers: list[int] = []

    @staticmethod
    def forward(ctx, x):  # noqa: D102
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        GradientSpy.pointers.append(grad.data_ptr())
        return grad


def between_spies(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                  consumer: Callable[[torch.Tensor], torch.Tensor]) -> tuple[int, int]:
    """``consumer(spy(layer(spy(x * 1))))`` backwards: the data pointers of the gradient after
    the layer (its output's) and before it (its input's)."""
    GradientSpy.pointers.clear()
    consumer(GradientSpy.apply(layer(GradientSpy.apply(x * 1.0)))).backward()
    after_layer, before_layer = GradientSpy.pointers
    return after_layer, before_layer


def holding_consumer(holder: str, weights: torch.Tensor, other: torch.Tensor,
                     kept: list) -> Callable[[torch.Tensor], torch.Tensor]:
    """A loss of the layer's output ``y`` (``(y * weights).sum()`` but for ``expanded``) where
    ``holder`` also holds its gradient: ``kept`` gets ``(held tensor, its value then)`` for
    the hooks and ``y`` for ``retain_grad``; ``other`` is the second consumer's tensor."""

    def consumer(y: torch.Tensor) -> torch.Tensor:
        if holder == "hook":
            y.register_hook(lambda g: kept.append((g, g.clone())))
        elif holder == "hook_view":
            y.register_hook(lambda g: kept.append((g[:, :4], g[:, :4].clone())))
        elif holder == "retain_grad":
            y.retain_grad()
            kept.append(y)
        if holder == "two_consumers":  # the sum's backward hands both inputs one tensor
            return ((y + other) * weights).sum()
        if holder == "expanded":  # the sum's backward: one value expanded over the map
            return y.sum()
        return (y * weights).sum()

    return consumer


def check_holders_kept_their_values(holder: str, kept: list, weights: torch.Tensor, other: torch.Tensor) -> None:
    """What ``holding_consumer`` let others hold still has the value it had (before the consumer
    runs again: the second consumer's tensor would gather a second gradient)."""
    if holder == "two_consumers":
        torch.testing.assert_close(other.grad, weights, rtol=0, atol=0)
    if holder in ("hook", "hook_view"):
        held, value = kept[0]
        torch.testing.assert_close(held, value, rtol=0, atol=0)
    if holder == "retain_grad":
        torch.testing.assert_close(kept[0].grad, weights, rtol=0, atol=0)
