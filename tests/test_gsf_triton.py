"""GSF's Triton kernels (``GSF.forward_triton``, the CUDA fast path) against the literal
spec of ``tests/test_gsf.py``.

Without a GPU the kernels run under Triton's interpreter on CPU tensors (``conftest.py``
sets ``TRITON_INTERPRET=1``), so the CPU suite checks their arithmetic: values, input and
parameter gradients, running statistics, in place and not, channels-last, no autograd,
bf16. ``tests/test_gpu.py`` runs the same path compiled on CUDA.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lightning_gsf import gsf as gsf_module
from lightning_gsf.gsf import GSF
from test_gsf import (CASES, assert_close_to_float64, check_path_matches_naive_spec, make_gsf, make_input,
                      naive_gsf, split_with)

@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("channels,num_segments,ratio,batch,size", CASES)
def test_triton_path_matches_naive_spec(channels, num_segments, ratio, batch, size, training, inplace):
    check_path_matches_naive_spec("forward_triton", channels, num_segments, ratio, batch, size + 2, training, inplace)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_triton_path_on_several_tiles(training, inplace, channels_last):
    """Groups of 36 channels (three channel tiles, the last partial) on 13x13 maps (two pixel
    tiles): the same numbers and gradients; channels-last in, channels-last out (over the
    input itself when in place)."""
    module = check_path_matches_naive_spec("forward_triton", 80, 2, 0.9, 2, 13, training, inplace,
                                           channels_last=channels_last)
    assert module.processed // 2 > 2 * gsf_module._triton_kernels().BLOCK_CHANNELS


@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
@pytest.mark.parametrize("no_grad", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_triton_path_without_autograd(training, no_grad, inplace):
    module = make_gsf(24, 3, 0.5, seed=5).train(training)
    module.inplace = inplace
    naive_module = copy.deepcopy(module).double()
    x = make_input(2, 3, 24, 6, seed=5)
    expected = naive_gsf(x.double(), naive_module, training)
    with no_grad():
        output = module.forward_triton(x)
    assert (output.data_ptr() == x.data_ptr()) == inplace
    assert_close_to_float64(output, expected.output)
    assert_close_to_float64(module.bn.running_mean, expected.running_mean)
    assert_close_to_float64(module.bn.running_var, expected.running_var)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_triton_path_keeps_bf16(training):
    """A bf16 input stays bf16 (output and input gradient), close to the float32 spec;
    parameter gradients stay in the parameters' float32."""
    module = make_gsf(16, 4, 0.5, seed=0).train(training)
    reference = copy.deepcopy(module)
    x = make_input(2, 4, 16, 6, seed=0)
    x_bf16 = x.bfloat16().requires_grad_()
    out = module.forward_triton(x_bf16 * 1.0)
    expected = reference.forward_reference(x.bfloat16().float())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)
    out.float().sum().backward()
    assert x_bf16.grad.dtype == torch.bfloat16
    assert all(param.grad.dtype == torch.float32 for param in module.parameters())


@settings(max_examples=10, deadline=None)
@given(
    quarter=st.integers(min_value=1, max_value=5),
    extra=st.integers(min_value=0, max_value=6),
    num_segments=st.integers(min_value=1, max_value=4),
    batch=st.integers(min_value=1, max_value=2),
    height=st.integers(min_value=1, max_value=12),
    width=st.integers(min_value=1, max_value=12),
    training=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_triton_path_equals_reference_property(quarter, extra, num_segments, batch, height, width, training, seed):
    """Any split (group sizes that are not multiples of the channel tile), map size (not
    multiples of the pixel tile, single pixels, single rows) and clip length."""
    assume(not training or batch * num_segments * height * width > 1)  # BN needs 2 values per channel
    channels, ratio = split_with(quarter, extra)
    module = make_gsf(channels, num_segments, ratio, seed).train(training)
    reference = copy.deepcopy(module).double()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch * num_segments, channels, height, width, generator=generator).requires_grad_()
    x_ref = x.detach().double().requires_grad_()
    out, out_ref = module.forward_triton(x), reference.forward_reference(x_ref)
    assert_close_to_float64(out, out_ref)
    out.square().sum().backward()
    out_ref.square().sum().backward()
    assert_close_to_float64(x.grad, x_ref.grad)
    assert_close_to_float64(module.bn.running_var, reference.bn.running_var)


def test_forward_uses_triton_only_for_cuda_tensors(monkeypatch):
    calls = []
    monkeypatch.setattr(GSF, "forward_triton", lambda self, x: calls.append(x) or x)
    module = make_gsf(16, 4, 0.25, seed=0)
    module(make_input(1, 4, 16, 3, seed=0))
    assert calls == []


def test_without_triton_the_triton_path_says_so(monkeypatch):
    monkeypatch.setattr(gsf_module, "_triton_kernels", lambda: None)
    module = make_gsf(16, 4, 0.25, seed=0)
    with pytest.raises(RuntimeError, match="needs Triton"):
        module.forward_triton(make_input(1, 4, 16, 3, seed=0))
