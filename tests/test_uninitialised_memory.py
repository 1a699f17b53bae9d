"""No fast path reads memory it has not written: every tensor allocated without values from
Python (``torch.empty``, ``empty_like``, ``empty_strided``, ``new_empty``: the buffers that
the Triton kernels and the glue around the C++ ones fill; what C++ allocates itself is not
covered) is filled with NaN (integers with their largest value, booleans with True) before
the kernels see it, and the results must still be the spec's.

On a GPU a fresh allocation holds whatever the caching allocator last kept there, so a
partial sum that no program writes, or an output channel that no kernel fills, gives wrong
numbers only there; on the CPU fresh memory is often zeroed, which hides exactly that. This
makes the CPU suite (Triton's kernels under the interpreter, the C++ kernels, PyTorch ops)
see it."""

from __future__ import annotations

import functools

import pytest
import torch

from lightning_gsf import gsf_fast
from lightning_gsf import temporal
from test_gsf import check_path_matches_naive_spec
from test_temporal import naive_shift


def _poisoned(allocate):
    @functools.wraps(allocate)
    def allocate_poisoned(*args, **kwargs):
        tensor = allocate(*args, **kwargs)
        if tensor.is_floating_point() or tensor.is_complex():
            tensor.fill_(float("nan"))
        elif tensor.dtype == torch.bool:
            tensor.fill_(True)
        else:
            tensor.fill_(torch.iinfo(tensor.dtype).max)
        return tensor
    return allocate_poisoned


@pytest.fixture
def poisoned_allocations(monkeypatch):
    """Fresh allocations made from Python hold NaN (integers their largest value, booleans
    True) until written;
    the fixture's value counts the floating-point ones, so a test can tell that the path it
    runs allocated at all (a poison that never lands proves nothing)."""
    counted = {"tensors": 0}

    def counting(allocate):
        poisoned = _poisoned(allocate)

        @functools.wraps(allocate)
        def allocate_counted(*args, **kwargs):
            tensor = poisoned(*args, **kwargs)
            counted["tensors"] += tensor.is_floating_point()
            return tensor
        return allocate_counted

    for name in ("empty", "empty_like", "empty_strided"):
        monkeypatch.setattr(torch, name, counting(getattr(torch, name)))
    monkeypatch.setattr(torch.Tensor, "new_empty", counting(torch.Tensor.new_empty))
    return counted


def test_the_poison_lands():
    """The wrappers fill what they allocate (a test of the tool, not of the paths)."""
    assert torch.isnan(_poisoned(torch.empty)(3)).all()
    assert (_poisoned(torch.empty_like)(torch.zeros(2, dtype=torch.int32)) == 2**31 - 1).all()
    assert _poisoned(torch.empty)(2, dtype=torch.bool).all()


GSF_CASES = [
    # (channels, num_segments, ratio, batch, size, channels_last): several channel and pixel
    # tiles, the last ones partial; one clip of one frame; channels-last
    pytest.param(80, 2, 0.9, 1, 13, False, id="tiles"),
    pytest.param(80, 2, 0.9, 1, 13, True, id="tiles_channels_last"),
    pytest.param(16, 3, 0.5, 1, 5, False, id="small"),
    pytest.param(32, 1, 0.25, 2, 3, False, id="one_segment"),
]


@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("channels,num_segments,ratio,batch,size,channels_last", GSF_CASES)
@pytest.mark.parametrize("path", ["forward_triton", "forward_cpu", "forward_torch"])
def test_gsf_paths_write_every_value_they_read(poisoned_allocations, path, channels, num_segments, ratio, batch, size,
                                               channels_last, training, inplace):
    check_path_matches_naive_spec(path, channels, num_segments, ratio, batch, size, training, inplace,
                                  channels_last=channels_last)
    assert poisoned_allocations["tensors"] > 0


@pytest.mark.parametrize("min_programs,training", [(40, True), (10**6, True), (10**6, False)],
                         ids=["cut_in_uneven_runs-train", "cut_per_block-train", "cut_per_block-eval"])
def test_triton_partial_sums_are_all_written(monkeypatch, poisoned_allocations, training, min_programs):
    """Loops cut across programs (statistics, spatial means, the channel loops of the gate's
    products and of the backward): each program's partial sum is written before it is added."""
    kernels = gsf_fast._triton_kernels()
    monkeypatch.setattr(kernels, "MIN_PROGRAMS", min_programs)
    splits, original_split = [], kernels._split
    monkeypatch.setattr(kernels, "_split", lambda *args: splits.append(original_split(*args)[0]) or
                        original_split(*args))
    check_path_matches_naive_spec("forward_triton", 80, 2, 0.9, 1, 14, training)
    assert max(splits) > 1 and poisoned_allocations["tensors"] > 0


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "crop"])
@pytest.mark.parametrize("kernels", ["triton", "default", "slice_copies"])
def test_tsm_shift_writes_every_value_it_reads(monkeypatch, poisoned_allocations, kernels, layout):
    """TSM's shift and its backward, through the Triton kernels (under the interpreter) and
    PyTorch's slice copies: the zeroed ends of the shifted channels are written, not left as
    allocated. (The CPU's default, C++, allocates in C++, out of the poison's reach: for it
    this is a values check; its adjoint writes over a gradient, whose old values would show.)"""
    if kernels == "triton":
        from lightning_gsf import shift_kernels
        monkeypatch.setattr(temporal, "_shift_kernels", lambda x, fold: shift_kernels)
    elif kernels == "slice_copies":
        monkeypatch.setattr(temporal, "_shift_kernels", lambda x, fold: None)
    leaf = torch.randn(2 * 3, 17, 5, 6, generator=torch.Generator().manual_seed(0))
    if layout == "channels_last":
        leaf = leaf.contiguous(memory_format=torch.channels_last)
    leaf.requires_grad_()
    leaf_naive = leaf.detach().clone().requires_grad_()
    view = (lambda v: v[..., 1:, :-2]) if layout == "crop" else (lambda v: v)
    out = temporal.temporal_shift(view(leaf * 1.0), 3, 4)
    expected = naive_shift(view(leaf_naive * 1.0), 3, 4)
    assert torch.equal(out, expected)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    assert torch.equal(leaf.grad, leaf_naive.grad)
