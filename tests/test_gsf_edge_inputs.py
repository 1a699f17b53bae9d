"""GSF's fast paths on inputs off the network's beaten track, against the literal spec
(``forward_reference``): half-precision modules, in-place calls on views and on expanded
maps, in-place inference on a tensor autograd still needs, and BatchNorm's rule for eval
mode with ``track_running_stats`` turned off. (Triton's kernels run under the interpreter.)"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from test_gsf import make_gsf, make_input

FAST_PATHS = ["forward", "forward_cpu", "forward_torch", "forward_triton"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_a_half_precision_module_normalises_with_float32_statistics(dtype, training):
    """fp16 / bf16 module and map: the PyTorch-ops path (fp16's on the CPU) gives the spec's
    numbers within the dtype's rounding; it failed on float32 statistics with half-precision
    BN parameters."""
    module = make_gsf(16, 2, 1.0, seed=0).train(training).to(dtype)
    reference = copy.deepcopy(module)
    x = make_input(2, 2, 16, 5, seed=0).to(dtype)
    expected = reference.forward_reference(x.clone())
    torch.testing.assert_close(module.forward_torch(x.clone()), expected, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(module.bn.running_mean, reference.bn.running_mean, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", ["forward", "forward_torch"])
def test_a_half_precision_module_trains(dtype, path):
    """fp16 / bf16 module and map (``precision="16-true"``, or bf16 where the C++ kernels do not
    build): the backward gives the float32 spec's gradients within the dtype's rounding; it
    raised in the batch norm's backward, given half-precision BN weights beside float32
    statistics. (The reference runs in float32 on the same rounded input and parameters.)"""
    module = make_gsf(16, 2, 1.0, seed=0).train().to(dtype)
    reference = copy.deepcopy(module).float()
    x = make_input(2, 2, 16, 5, seed=0)
    leaf, leaf_reference = x.to(dtype).requires_grad_(), x.to(dtype).float().requires_grad_()
    out = getattr(module, path)(leaf * 1)
    expected = reference.forward_reference(leaf_reference * 1)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out.float() * upstream).sum().backward()
    (expected * upstream).sum().backward()
    assert leaf.grad.dtype == dtype
    torch.testing.assert_close(leaf.grad.float(), leaf_reference.grad, rtol=5e-2, atol=5e-2)
    for (name, parameter), reference_parameter in zip(module.named_parameters(), reference.parameters()):
        assert parameter.grad.dtype == dtype, name
        # (a bias's gradient sums terms of either sign: its rounding error is the terms', ~1 here)
        scale = max(reference_parameter.grad.abs().max().item(), 1.0)
        torch.testing.assert_close(parameter.grad.float(), reference_parameter.grad, rtol=0, atol=3e-2 * scale,
                                   msg=name)


@pytest.mark.parametrize("view", ["channel_slice", "frame_slice", "transposed"])
@pytest.mark.parametrize("path", FAST_PATHS)
def test_in_place_on_a_view_with_autograd_writes_out_of_place(path, view):
    """An in-place GSF given a view of a non-leaf while autograd records: the spec's values and
    gradient (out of place); the PyTorch-ops path had raised, unable to return two tensors
    from a function that writes into a view."""
    module = make_gsf(16, 2, 0.5, seed=1).train()
    module.inplace = True
    reference = copy.deepcopy(module)
    base = make_input(2, 2, 20 if view == "channel_slice" else 16, 5, seed=1)
    cut = {"channel_slice": lambda t: t[:, 2:18], "frame_slice": lambda t: t[2:],
           "transposed": lambda t: t.transpose(2, 3)}[view]
    if view == "frame_slice":
        base = torch.cat([base[:2], base])
    leaf, leaf_reference = base.clone().requires_grad_(), base.clone().requires_grad_()
    out = getattr(module, path)(cut(leaf * 1.0))
    expected = reference.forward_reference(cut(leaf_reference * 1.0))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(leaf.grad, leaf_reference.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("path", FAST_PATHS)
def test_in_place_inference_on_a_view_writes_into_the_view(path):
    """Only a view *while autograd records* is written out of place: under ``no_grad`` the
    view's memory (its base's) takes the output."""
    module = make_gsf(16, 4, 0.25, seed=0).eval()
    module.inplace = True
    base = make_input(3, 4, 16, 5, seed=0)
    expected = module.forward_reference(base[:8].clone())
    with torch.no_grad():
        view = base[:8]
        out = getattr(module, path)(view)
    assert out.data_ptr() == view.data_ptr()
    torch.testing.assert_close(base[:8], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("path", FAST_PATHS)
def test_in_place_on_an_expanded_map_writes_out_of_place(path, training):
    """Frames expanded from one (stride 0): written in place, one frame's output would land on
    another's input; out of place, the spec's values (Triton's in-place write had given wrong
    ones)."""
    module = make_gsf(16, 2, 0.5, seed=2).train(training)
    module.inplace = True
    reference = copy.deepcopy(module)
    x = make_input(1, 1, 16, 5, seed=2).expand(4, 16, 5, 5)
    with torch.no_grad():
        out, expected = getattr(module, path)(x), reference.forward_reference(x.clone())
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("path", FAST_PATHS)
def test_in_place_inference_tells_autograd_it_wrote(path, training):
    """In place under ``no_grad`` on a tensor a graph saved (``exp`` saves its output): the
    backward raises autograd's in-place error, as after ``nn.ReLU(inplace=True)``, rather than
    differentiating with the overwritten values (the C++ and Triton kernels' writes did not
    count as modifications)."""
    module = make_gsf(16, 2, 0.5, seed=3).train(training)
    module.inplace = True
    leaf = make_input(2, 2, 16, 5, seed=3).requires_grad_()
    x = leaf.exp()
    with torch.no_grad():
        assert getattr(module, path)(x) is x
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        x.sum().backward()


@pytest.mark.parametrize("path", FAST_PATHS)
def test_eval_without_tracking_but_with_running_statistics_uses_them(path):
    """``track_running_stats`` turned off after the statistics were made: in eval mode
    BatchNorm still normalises with them, and so does every path (they took batch
    statistics)."""
    module = make_gsf(16, 2, 0.5, seed=4).eval()
    module.bn.track_running_stats = False
    reference = copy.deepcopy(module)
    x = make_input(2, 2, 16, 5, seed=4)
    leaf, leaf_reference = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = getattr(module, path)(leaf * 1.0)
    expected = reference.forward_reference(leaf_reference * 1.0)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    out.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(leaf.grad, leaf_reference.grad, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(module(x.clone()), reference.forward_reference(x.clone()), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("path", FAST_PATHS)
def test_eval_without_running_statistics_uses_batch_statistics(path, grad):
    """A batch norm built without running statistics (``track_running_stats=False``) normalises
    with the batch's statistics in eval mode too, as BatchNorm3d does."""
    module = make_gsf(16, 4, 0.5, seed=0)
    module.bn = nn.BatchNorm3d(module.processed, track_running_stats=False)
    module.eval()
    reference = copy.deepcopy(module)
    x = make_input(2, 4, 16, 5, seed=0)
    with torch.set_grad_enabled(grad):
        out = getattr(module, path)(x.clone())
    torch.testing.assert_close(out, reference.forward_reference(x.clone()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", [*FAST_PATHS, "forward_compiled_ops"])
def test_an_eval_backward_keeps_the_statistics_of_its_forward(path):
    """An eval forward recorded by autograd, then a training call (which updates the running
    statistics in place) before its backward: the backward differentiates the forward that
    ran, with the statistics it normalised by (the kernel paths had saved the buffer itself
    and raised autograd's in-place error)."""
    module = make_gsf(16, 4, 0.5, seed=0).eval()
    clean = copy.deepcopy(module)
    x = make_input(2, 4, 16, 5, seed=0).requires_grad_()
    x_clean = x.detach().clone().requires_grad_()
    out = getattr(module, path)(x * 1.0)
    with torch.no_grad():
        getattr(module.train(), path)(make_input(2, 4, 16, 5, seed=1))
    assert not torch.equal(module.bn.running_mean, clean.bn.running_mean)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * upstream).sum().backward()
    (clean.forward_reference(x_clean * 1.0) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_clean.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval", "eval_no_grad"])
@pytest.mark.parametrize("path", FAST_PATHS)
def test_a_one_pixel_wide_map_with_a_loose_stride_over_its_width(path, mode):
    """A (N*T, C, H, 1) map transposed from (N*T, C, 1, H): torch calls it contiguous (the stride
    of a size-1 dimension does not count), but its width stride is H, not 1. The C++ kernels
    had refused it ("pixels or channels must be contiguous"); now the paths that cannot address
    it pass it on, with the spec's values and gradients."""
    module = make_gsf(8, 2, 1.0, seed=3).train(mode == "train")
    reference = copy.deepcopy(module)
    base = make_input(2, 2, 8, 5, seed=3)[..., :1, :].contiguous()  # (4, 8, 1, 5)
    assert base.transpose(2, 3).is_contiguous() and base.transpose(2, 3).stride(3) == 5
    leaf, leaf_reference = base.clone().requires_grad_(), base.clone().requires_grad_()
    if mode == "eval_no_grad":
        with torch.no_grad():
            out, expected = getattr(module, path)(leaf.transpose(2, 3)), reference.forward_reference(leaf.transpose(2, 3))
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
        return
    out = getattr(module, path)(leaf.transpose(2, 3) * 1.0)
    expected = reference.forward_reference(leaf_reference.transpose(2, 3) * 1.0)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(leaf.grad, leaf_reference.grad, rtol=1e-4, atol=1e-5)
    for name, parameter in module.named_parameters():
        torch.testing.assert_close(parameter.grad, dict(reference.named_parameters())[name].grad,
                                   rtol=1e-4, atol=1e-5, msg=name)
