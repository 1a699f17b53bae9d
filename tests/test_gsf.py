"""GSF against a literal, loop-based reading of ``shared/spec/gsf.md``.

``naive_gsf`` below is written from the spec alone, with explicit loops over channels, groups
and time for the batch norm, the gate's temporal taps, the shift, the fusion conv and the
interleave, so it shares no code (and no tensor trick) with ``lightning_gsf.gsf`` or ``gsf_fast``. Both
``GSF.forward`` (the fast path) and ``GSF.forward_reference`` must match it in values,
gradients and batch-norm running statistics.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lightning_gsf import compiled_ops, cpu_kernels
from lightning_gsf import gsf_fast
from lightning_gsf.gsf import GSF, gsf_channels

EPS = 1e-5
MOMENTUM = 0.1


@dataclass
class NaiveResult:
    output: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor


def naive_gsf(x: torch.Tensor, module: GSF, training: bool) -> NaiveResult:
    """The spec, step by step, one channel / group / frame at a time (float64 inside)."""
    num_frames, channels, height, width = x.shape
    t_len = module.num_segments
    n_clips = num_frames // t_len
    p = module.processed
    half, quarter = p // 2, p // 4
    bn_w, bn_b = module.bn.weight, module.bn.bias
    gate_w, gate_b = module.conv3D.weight, module.conv3D.bias  # (2, P/2, 3, 3, 3), (2,)
    fuse = [(module.channel_conv1.weight, module.channel_conv1.bias),
            (module.channel_conv2.weight, module.channel_conv2.bias)]

    def frame(n: int, t: int) -> torch.Tensor:  # (C, H, W) of clip n, frame t
        return x[n * t_len + t]

    # Step 3a: batch norm over (N, T, H, W) per processed channel, then ReLU.
    new_mean, new_var = module.bn.running_mean.clone(), module.bn.running_var.clone()
    normed = {}  # (n, t, c) -> (H, W)
    for c in range(p):
        values = torch.stack([frame(n, t)[c] for n in range(n_clips) for t in range(t_len)])
        if training:
            mean = values.mean()
            var = ((values - mean) ** 2).mean()
            count = values.numel()
            new_mean[c] = (1 - MOMENTUM) * new_mean[c] + MOMENTUM * mean.detach()
            new_var[c] = (1 - MOMENTUM) * new_var[c] + MOMENTUM * var.detach() * count / (count - 1)
        else:
            mean, var = module.bn.running_mean[c], module.bn.running_var[c]
        for n in range(n_clips):
            for t in range(t_len):
                value = (frame(n, t)[c] - mean) / torch.sqrt(var + EPS) * bn_w[c] + bn_b[c]
                normed[n, t, c] = torch.relu(value)

    # Step 3b: the gate, a 3x3x3 conv per group written as a sum over its three temporal taps.
    gate = {}  # (n, k, t) -> (H, W)
    for n in range(n_clips):
        for k in range(2):
            for t in range(t_len):
                total = gate_b[k] * torch.ones(height, width, dtype=x.dtype)
                for tap in range(3):
                    source_t = t + tap - 1
                    if not 0 <= source_t < t_len:
                        continue  # zero padding in time
                    group_input = torch.stack(
                        [normed[n, source_t, k * half + c] for c in range(half)]
                    )
                    total = total + F.conv2d(
                        group_input[None], gate_w[k:k + 1, :, tap], padding=1
                    )[0, 0]
                gate[n, k, t] = torch.tanh(total)

    result = {}  # (n, t, output channel) -> (H, W)
    for n in range(n_clips):
        for k in range(2):
            # Steps 4-5: gate, residual, and the shift of the gated part.
            gated, residual, shifted = {}, {}, {}
            for c in range(half):
                for t in range(t_len):
                    v = frame(n, t)[k * half + c]
                    gated[c, t] = gate[n, k, t] * v
                    residual[c, t] = v - gated[c, t]
            for c in range(half):
                for t in range(t_len):
                    source_t = t + 1 if k == 0 else t - 1  # group 1 backwards, group 2 forwards
                    if 0 <= source_t < t_len:
                        shifted[c, t] = gated[c, source_t]
                    else:
                        shifted[c, t] = torch.zeros(height, width, dtype=x.dtype)
            # Step 6: pooled descriptors and the 3x3 fusion conv over (channel, time).
            pooled = {(0, c, t): shifted[c, t].mean() for c in range(half) for t in range(t_len)}
            pooled.update({(1, c, t): residual[c, t].mean()
                           for c in range(half) for t in range(t_len)})
            weight, bias = fuse[k]
            for c in range(half):
                for t in range(t_len):
                    z = bias[0]
                    for i in range(2):
                        for dc in (-1, 0, 1):
                            for dt in (-1, 0, 1):
                                if 0 <= c + dc < half and 0 <= t + dt < t_len:
                                    z = z + weight[0, i, dc + 1, dt + 1] * pooled[i, c + dc, t + dt]
                    w = torch.sigmoid(z)
                    fused = shifted[c, t] * w + residual[c, t] * (1 - w)
                    # Step 7: channel j*Q + i of the group goes to 2*i + j.
                    j, i = divmod(c, quarter)
                    result[n, t, k * half + 2 * i + j] = fused

    frames = []
    for n in range(n_clips):
        for t in range(t_len):
            processed = torch.stack([result[n, t, c] for c in range(p)])
            frames.append(torch.cat([processed, frame(n, t)[p:]]))
    return NaiveResult(torch.stack(frames), new_mean, new_var)


def make_gsf(channels: int, num_segments: int, ratio: float, seed: int) -> GSF:
    """A GSF with non-trivial parameters and running statistics (all seeded)."""
    generator = torch.Generator().manual_seed(seed)
    module = GSF(channels, num_segments, ratio)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
        module.bn.running_mean.copy_(torch.randn(module.processed, generator=generator) * 0.1)
        module.bn.running_var.copy_(torch.rand(module.processed, generator=generator) + 0.5)
    return module


def make_input(batch: int, num_segments: int, channels: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch * num_segments, channels, size, size, generator=generator)


# The kernel paths (Triton, C++) compute in float32: compared with the float64 spec at float32
# tolerances.
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def run_path_and_naive(path, channels, num_segments, ratio, batch, size, training, inplace=False,
                         channels_last=False, seed=0):
    """``GSF.<path>`` in float32 and the naive spec in float64 on the same input, forward and
    backward: ``(module, naive_module, x, x_naive, conv_output, output, expected)``."""
    module = make_gsf(channels, num_segments, ratio, seed=channels + num_segments + seed).train(training)
    module.inplace = inplace
    naive_module = copy.deepcopy(module).double()
    x = make_input(batch, num_segments, channels, size, seed=batch + seed)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.requires_grad_()
    x_naive = x.detach().double().requires_grad_()
    conv_output = x * 1.0  # a non-leaf, as GSF's input in a network (in place applies)
    output = getattr(module, path)(conv_output)
    expected = naive_gsf(x_naive, naive_module, training)
    upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(7))
    (output * upstream).sum().backward()
    (expected.output * upstream.double()).sum().backward()
    return module, naive_module, x, x_naive, conv_output, output, expected


def assert_close_to_float64(actual, expected, msg=None):
    # gradients of parameters are sums over the whole batch: scale the tolerance with them
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected.float(), rtol=TOLERANCE["rtol"],
                               atol=TOLERANCE["atol"] * scale, msg=msg)


def check_path_matches_naive_spec(path, channels, num_segments, ratio, batch, size, training, inplace=False,
                                  channels_last=False):
    """``GSF.<path>`` against the naive spec (:func:`run_path_and_naive`): output (over the
    input when in place, in its layout), running statistics, input and parameter gradients.
    Returns the module."""
    module, naive_module, x, x_naive, conv_output, output, expected = run_path_and_naive(
        path, channels, num_segments, ratio, batch, size, training, inplace, channels_last=channels_last)
    assert (output.data_ptr() == conv_output.data_ptr()) == inplace
    assert output.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_close_to_float64(output, expected.output)
    assert_close_to_float64(module.bn.running_mean, expected.running_mean)
    assert_close_to_float64(module.bn.running_var, expected.running_var)
    assert int(module.bn.num_batches_tracked) == (1 if training else 0)
    assert_close_to_float64(x.grad, x_naive.grad)
    for (name, param), naive_param in zip(module.named_parameters(), naive_module.parameters()):
        assert_close_to_float64(param.grad, naive_param.grad, msg=name)
    return module


def check_path_takes_an_empty_batch(path, grad):
    """``GSF.<path>`` on no frames: none out, and (``grad``) an empty input gradient."""
    module = make_gsf(16, 4, 0.5, seed=2).eval()
    x = torch.randn(0, 16, 5, 5, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        out = getattr(module, path)(x * 1.0)
    assert out.shape == x.shape
    if grad:
        out.sum().backward()
        assert x.grad.shape == x.shape


def check_path_passes_no_gradient_through_the_relu_at_zero(path):
    """``GSF.<path>`` with a batch norm of zero weight and bias, whose output is exactly 0: ReLU's
    gradient there is 0, as PyTorch's, so the batch norm's and the input's gradients are the
    reference's (random parameters never give such a tie)."""
    module = make_gsf(16, 4, 0.5, seed=3).train()
    with torch.no_grad():
        module.bn.weight.zero_()
        module.bn.bias.zero_()
    reference = copy.deepcopy(module)
    x = make_input(2, 4, 16, 5, seed=3)
    inp, inp_reference = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = getattr(module, path)(inp * 1.0), reference.forward_reference(inp_reference * 1.0)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for actual, wanted in ((module.bn.weight.grad, reference.bn.weight.grad),
                           (module.bn.bias.grad, reference.bn.bias.grad), (inp.grad, inp_reference.grad)):
        torch.testing.assert_close(actual, wanted, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", ["forward_torch", "forward_compilable"])
def test_no_gradient_through_the_relu_at_zero(path):
    check_path_passes_no_gradient_through_the_relu_at_zero(path)


CASES = [
    # (channels, num_segments, ratio, batch, size)
    (16, 4, 0.25, 2, 5),
    (16, 3, 0.5, 1, 4),
    (8, 4, 1.0, 2, 3),
    (24, 2, 0.5, 3, 4),
    (12, 5, 1.0, 1, 3),
    (32, 1, 0.25, 2, 3),
]


@pytest.fixture(params=["fold", "slices"])
def taps_by(request, monkeypatch) -> str:
    """Run a test with the gate taps summed / spread by ``F.fold`` / ``F.unfold`` or by the
    slice versions, whatever the map size (the fast path picks by size)."""
    threshold = 10**9 if request.param == "fold" else 0
    monkeypatch.setattr(gsf_fast, "_SLICE_FOLD_MIN_PIXELS", threshold)
    return request.param


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("path", ["forward_reference", "forward_compilable"])
@pytest.mark.parametrize("channels,num_segments,ratio,batch,size", CASES)
def test_matches_naive_spec(channels, num_segments, ratio, batch, size, path, training):
    check_against_naive_spec(channels, num_segments, ratio, batch, size, path, training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("channels,num_segments,ratio,batch,size", CASES)
def test_fast_path_matches_naive_spec(channels, num_segments, ratio, batch, size, training, taps_by):
    check_against_naive_spec(channels, num_segments, ratio, batch, size, "forward", training)


@pytest.mark.parametrize("no_grad", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("path", ["forward", "forward_compilable"])
@pytest.mark.parametrize("channels,num_segments,ratio,batch,size", CASES)
def test_without_autograd_matches_naive_spec(channels, num_segments, ratio, batch, size, path, training,
                                             no_grad, taps_by):
    """Without autograd, ``forward`` takes its own in-place, fewer-pass path: values and BN
    running statistics against ``naive_gsf`` in float64, in place and not (and the same for
    the compilable formulation)."""
    for inplace in (False, True):
        module = make_gsf(channels, num_segments, ratio, seed=channels + num_segments).double().train(training)
        module.inplace = inplace
        naive_module = make_gsf(channels, num_segments, ratio, seed=channels + num_segments).double()
        x = make_input(batch, num_segments, channels, size, seed=batch).double()
        expected = naive_gsf(x, naive_module, training)
        with no_grad():
            output = getattr(module, path)(x.clone())
        torch.testing.assert_close(output, expected.output, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(module.bn.running_mean, expected.running_mean)
        torch.testing.assert_close(module.bn.running_var, expected.running_var)
        assert int(module.bn.num_batches_tracked) == (1 if training else 0)


def check_against_naive_spec(channels, num_segments, ratio, batch, size, path, training):
    """Values, input and parameter gradients and BN running statistics of ``GSF.<path>``
    against ``naive_gsf``, in float64."""
    module = make_gsf(channels, num_segments, ratio, seed=channels + num_segments).double()
    module.train(training)
    x = make_input(batch, num_segments, channels, size, seed=batch).double().requires_grad_()
    x_naive = x.detach().clone().requires_grad_()
    naive_module = make_gsf(channels, num_segments, ratio, seed=channels + num_segments).double()

    expected = naive_gsf(x_naive, naive_module, training)
    output = getattr(module, path)(x)
    torch.testing.assert_close(output, expected.output, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(module.bn.running_mean, expected.running_mean)
    torch.testing.assert_close(module.bn.running_var, expected.running_var)
    assert int(module.bn.num_batches_tracked) == (1 if training else 0)

    upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(7), dtype=output.dtype)
    (output * upstream).sum().backward()
    (expected.output * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_naive.grad, rtol=1e-8, atol=1e-10)
    for (name, param), naive_param in zip(module.named_parameters(), naive_module.parameters()):
        torch.testing.assert_close(param.grad, naive_param.grad, rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("channels,num_segments,ratio,batch,size", CASES)
def test_fast_equals_reference_float32(channels, num_segments, ratio, batch, size, training):
    """The acceptance criterion: max abs difference < 1e-5 in float32, forward and backward."""
    fast = make_gsf(channels, num_segments, ratio, seed=3).train(training)
    reference = make_gsf(channels, num_segments, ratio, seed=3).train(training)
    x = make_input(batch, num_segments, channels, size + 4, seed=11).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out, out_ref = fast(x), reference.forward_reference(x_ref)
    assert (out - out_ref).abs().max() < 1e-5
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * upstream).sum().backward()
    (out_ref * upstream).sum().backward()
    assert (x.grad - x_ref.grad).abs().max() < 1e-5
    for (name, param), param_ref in zip(fast.named_parameters(), reference.parameters()):
        assert (param.grad - param_ref.grad).abs().max() < 1e-5 * max(1.0, param_ref.grad.abs().max()), name
    for name, buffer in fast.named_buffers():
        assert (buffer - dict(reference.named_buffers())[name]).abs().max() < 1e-5, name


@pytest.mark.parametrize("height,width", [(1, 1), (2, 3), (5, 4), (20, 20), (23, 21)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_slice_fold_and_unfold_equal_torch(height, width, dtype, monkeypatch):
    """The slice versions of the gate's fold / unfold against ``F.fold`` / ``F.unfold``."""
    monkeypatch.setattr(gsf_fast, "_SLICE_FOLD_MIN_PIXELS", 0)
    generator = torch.Generator().manual_seed(height * 100 + width)
    products = torch.randn(3, 54, height * width, generator=generator).to(dtype)
    expected = F.fold(products.float(), (height, width), kernel_size=3, padding=1)
    folded = gsf_fast._fold_taps(products, height, width)
    assert folded.dtype == dtype and folded.shape == (3, 6, height, width)
    tolerance = {"rtol": 2e-2, "atol": 5e-2} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(folded.float(), expected, **tolerance)
    grad_taps = torch.randn(3, 6, height, width, generator=generator).to(dtype)
    # unfold only moves values: exactly equal
    assert torch.equal(gsf_fast._unfold_taps(grad_taps, height, width),
                       F.unfold(grad_taps, kernel_size=3, padding=1))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_is_called_with_a_positive_eps(training, monkeypatch):
    """torch 2.11's ``F.batch_norm`` raised "eps must be positive" for eps=0 on the GPU
    machine (torch/nn/functional.py); the pinned 2.14.1 accepts it, so check the arguments."""
    batch_norm = F.batch_norm

    def checked_batch_norm(*args, **kwargs):
        eps = kwargs["eps"] if "eps" in kwargs else args[7]
        assert eps > 0, f"batch_norm called with eps={eps}"
        return batch_norm(*args, **kwargs)

    calls = []
    monkeypatch.setattr(gsf_fast.F, "batch_norm", lambda *a, **k: calls.append(1) or checked_batch_norm(*a, **k))
    module = make_gsf(16, 4, 0.25, seed=0).train(training)
    x = make_input(2, 4, 16, 5, seed=0).requires_grad_()
    module.forward_torch(x * 1.0).sum().backward()  # (the PyTorch-ops path: the CPU kernels call no F.batch_norm)
    assert calls and x.grad is not None


@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
@pytest.mark.parametrize("no_grad", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_without_autograd_equals_reference_on_large_maps(training, no_grad, inplace, monkeypatch):
    """Without autograd the fast path skips its autograd functions. Values and running
    statistics must not change. (On the CPU in float32 this runs the C++ kernels; the
    PyTorch-ops path's slice fold of large maps is tested in float64 and by
    test_slice_fold_and_unfold_equal_torch.)"""

    def refuse(*args):
        raise AssertionError("an autograd.Function ran without autograd")

    for function in (gsf_fast._NormReluTaps, gsf_fast._GateShiftFuse, gsf_fast._SplitChannels,
                     gsf_fast._FusionWeights):
        monkeypatch.setattr(function, "apply", refuse)
    fast = make_gsf(32, 3, 0.25, seed=4).train(training)
    fast.inplace = inplace
    reference = make_gsf(32, 3, 0.25, seed=4).train(training)
    x = make_input(2, 3, 32, 24, seed=3)
    expected = reference.forward_reference(x)
    with no_grad():
        out = fast(x.clone())
    assert (out - expected).abs().max() < 1e-5
    for name, buffer in fast.named_buffers():
        assert (buffer - dict(reference.named_buffers())[name]).abs().max() < 1e-5, name


@pytest.mark.parametrize("no_grad", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("channels,ratio", [(16, 0.25), (8, 1.0)])
def test_inplace_writes_into_the_input_when_autograd_is_off(channels, ratio, training, no_grad):
    fast = make_gsf(channels, 4, ratio, seed=5).train(training)
    fast.inplace = True
    reference = make_gsf(channels, 4, ratio, seed=5).train(training)
    x = make_input(2, 4, channels, 5, seed=2)
    expected = reference.forward_reference(x)
    with no_grad():
        conv_output = x.clone()
        out = fast(conv_output)
    assert out.data_ptr() == conv_output.data_ptr()
    assert (out - expected).abs().max() < 1e-5
    for name, buffer in fast.named_buffers():
        assert (buffer - dict(reference.named_buffers())[name]).abs().max() < 1e-5, name


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("channels,ratio", [(16, 0.25), (8, 1.0)])
def test_inplace_writes_into_the_input_with_the_same_results_and_gradients(channels, ratio, training):
    fast = make_gsf(channels, 4, ratio, seed=5).train(training)
    fast.inplace = True
    reference = make_gsf(channels, 4, ratio, seed=5).train(training)
    x = make_input(2, 4, channels, 5, seed=2).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    conv_output = x * 1.0  # GSF sits on a conv's output: a non-leaf that nothing else reads
    out = fast(conv_output)
    assert out.data_ptr() == conv_output.data_ptr()
    out_ref = reference.forward_reference(x_ref)
    assert (out - out_ref).abs().max() < 1e-5
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * upstream).sum().backward()
    (out_ref * upstream).sum().backward()
    assert (x.grad - x_ref.grad).abs().max() < 1e-5
    for (name, param), param_ref in zip(fast.named_parameters(), reference.parameters()):
        assert (param.grad - param_ref.grad).abs().max() < 1e-4, name
    for name, buffer in fast.named_buffers():
        assert (buffer - dict(reference.named_buffers())[name]).abs().max() < 1e-5, name


def test_inplace_leaves_a_leaf_that_requires_grad_alone():
    module = make_gsf(16, 4, 0.25, seed=5)
    module.inplace = True
    x = make_input(2, 4, 16, 5, seed=2).requires_grad_()
    before = x.detach().clone()
    out = module(x)
    assert out.data_ptr() != x.data_ptr() and torch.equal(x.detach(), before)
    out.sum().backward()
    assert x.grad is not None


def test_inplace_on_a_tensor_saved_for_backward_fails_loudly():
    module = make_gsf(16, 4, 0.25, seed=5)
    module.inplace = True
    x = make_input(2, 4, 16, 5, seed=2).requires_grad_()
    saved = x.exp()  # exp saves its output for backward; GSF then overwrites it
    out = module(saved)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("path", ["forward", "forward_reference"])
def test_gradients_reach_every_parameter_and_the_input(path):
    module = make_gsf(16, 4, 0.5, seed=0)
    x = make_input(2, 4, 16, 6, seed=0).requires_grad_()
    getattr(module, path)(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, param in module.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_unprocessed_channels_pass_through_unchanged_with_identity_gradient():
    module = make_gsf(16, 4, 0.25, seed=0)
    x = make_input(1, 4, 16, 4, seed=0).requires_grad_()
    out = module(x)
    assert torch.equal(out[:, module.processed:], x[:, module.processed:])
    out[:, module.processed:].sum().backward()
    assert torch.equal(x.grad[:, module.processed:], torch.ones_like(x[:, module.processed:]))
    assert torch.equal(x.grad[:, :module.processed], torch.zeros_like(x[:, :module.processed]))


def test_temporal_receptive_field_stays_inside_the_clip():
    """Frame t sees frames t-3..t+3 (gate conv: +-1, shift: +-1, fusion conv over the pooled
    shifted maps: +-1 more) and nothing from other clips."""
    module = make_gsf(8, 8, 1.0, seed=0).eval()
    x = make_input(2, 8, 8, 4, seed=0).requires_grad_()
    out = module(x)
    out[4].sum().backward()  # clip 0, frame 4
    touched = (x.grad.abs().sum(dim=(1, 2, 3)) > 0).tolist()
    assert touched == [False] + [True] * 7 + [False] * 8


@pytest.mark.parametrize(
    "channels,ratio,message",
    [(24, 0.25, "multiple of 4"), (6, 1.0, "multiple of 4"), (2, 0.25, "at least 4"),
     (16, 0.1, "at least 4"),
     (16, 0.0, r"\(0, 1\]"), (16, 1.5, r"\(0, 1\]")],
)
def test_rejects_channel_counts_that_cannot_be_split(channels, ratio, message):
    with pytest.raises(ValueError, match=message):
        GSF(channels, 4, ratio)


@pytest.mark.parametrize("path", ["forward", "forward_reference"])
def test_rejects_frame_counts_that_are_not_whole_clips(path):
    module = GSF(16, 4, 0.25)
    with pytest.raises(ValueError, match="num_segments=4"):
        getattr(module, path)(torch.zeros(6, 16, 3, 3))


@pytest.mark.parametrize("path", ["forward", "forward_reference"])
def test_rejects_wrong_channel_count(path):
    module = GSF(16, 4, 0.25)
    with pytest.raises(ValueError, match=r"\(N\*T, 16, H, W\)"):
        getattr(module, path)(torch.zeros(4, 8, 3, 3))


@pytest.mark.parametrize("path", ["forward", "forward_reference"])
def test_rejects_a_single_value_per_channel_in_training(path):
    module = GSF(8, 1, 1.0)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        getattr(module, path)(torch.zeros(1, 8, 1, 1))


def test_rejects_bad_num_segments():
    with pytest.raises(ValueError, match="num_segments"):
        GSF(16, 0, 0.25)


def test_parameter_names_and_shapes_match_the_original_release():
    module = GSF(64, 8, 0.25)  # P = 16
    shapes = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    assert shapes == {
        "bn.weight": (16,), "bn.bias": (16,), "bn.running_mean": (16,), "bn.running_var": (16,),
        "bn.num_batches_tracked": (),
        "conv3D.weight": (2, 8, 3, 3, 3), "conv3D.bias": (2,),
        "channel_conv1.weight": (1, 2, 3, 3), "channel_conv1.bias": (1,),
        "channel_conv2.weight": (1, 2, 3, 3), "channel_conv2.bias": (1,),
    }


@settings(max_examples=25, deadline=None)
@given(
    channels=st.integers(min_value=1, max_value=512),
    ratio=st.sampled_from([0.125, 0.25, 0.5, 0.75, 1.0]),
)
def test_gsf_channels_property(channels, ratio):
    """P is int(C*r) rounded up to even, a positive multiple of 4, at most C; else ValueError."""
    expected = int(channels * (ratio * 100) / 100)  # the release: r in percent
    expected += expected % 2
    if expected % 4 == 0 and 0 < expected <= channels:
        assert gsf_channels(channels, ratio) == expected
    else:
        with pytest.raises(ValueError):
            gsf_channels(channels, ratio)


@pytest.mark.parametrize("percent", range(1, 101))
def test_gsf_channels_match_the_release_percentages(percent):
    """For every integer percentage, P is the spec's ``int(C * r / 100)`` (r in percent) rounded
    up to even, for every C up to 2048 where it is a valid split: ``int(C * r / 100)``
    (not ``int(C * ratio)``, which float rounding makes smaller for 14 such pairs)."""
    ratio = percent / 100
    for channels in range(4, 2049):
        expected = int(channels * percent / 100)
        expected += expected % 2
        if expected % 4 == 0 and 0 < expected <= channels:
            assert gsf_channels(channels, ratio) == expected, (channels, percent)


def split_with(quarter: int, extra: int) -> tuple[int, float]:
    """``(channels, ratio)`` for a GSF that processes ``4 * quarter`` channels and leaves
    ``extra`` untouched."""
    channels = 4 * quarter + extra
    ratio = 4 * quarter / channels
    if gsf_channels(channels, ratio) != 4 * quarter:  # float rounding of C * r
        ratio = 1.0 if extra == 0 else ratio + 1e-9
    return channels, ratio


@settings(max_examples=15, deadline=None)
@given(
    quarter=st.integers(min_value=1, max_value=4),
    extra=st.integers(min_value=0, max_value=6),
    num_segments=st.integers(min_value=1, max_value=5),
    batch=st.integers(min_value=1, max_value=3),
    size=st.integers(min_value=1, max_value=5),
    training=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_fast_equals_reference_property(quarter, extra, num_segments, batch, size, training, seed):
    assume(not training or batch * num_segments * size * size > 1)  # BN needs 2 values per channel
    channels, ratio = split_with(quarter, extra)
    fast = make_gsf(channels, num_segments, ratio, seed).double().train(training)
    reference = make_gsf(channels, num_segments, ratio, seed).double().train(training)
    x = make_input(batch, num_segments, channels, size, seed).double().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out, out_ref = fast(x), reference.forward_reference(x_ref)
    torch.testing.assert_close(out, out_ref)
    out.sum().backward()
    out_ref.sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(fast.bn.running_var, reference.bn.running_var)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
def test_channels_last_input_gives_the_same_result(training, inplace):
    fast = make_gsf(16, 4, 0.25, seed=0).train(training)
    fast.inplace = inplace
    reference = make_gsf(16, 4, 0.25, seed=0).train(training)
    x = make_input(2, 4, 16, 6, seed=0)
    x_cl = x.to(memory_format=torch.channels_last).requires_grad_()
    x = x.requires_grad_()
    conv_output = x_cl * 1.0  # a non-leaf, so that inplace applies
    out_cl, out = fast(conv_output), reference.forward_reference(x)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    assert (out_cl.data_ptr() == conv_output.data_ptr()) == inplace
    torch.testing.assert_close(out_cl, out, rtol=1e-5, atol=1e-6)
    out_cl.square().sum().backward()
    out.square().sum().backward()
    torch.testing.assert_close(x_cl.grad, x.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_compilable_formulation_keeps_a_channels_last_layout(training):
    """At ratio 1 (the Inceptions') no unprocessed channels are concatenated to give the output
    its layout: a channels-last map still comes out channels-last."""
    module = make_gsf(8, 4, 1.0, seed=0).train(training)
    x = make_input(2, 4, 8, 6, seed=0)
    expected = make_gsf(8, 4, 1.0, seed=0).train(training).forward_reference(x)
    out = module.forward_compilable(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", ["forward", "forward_compilable"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_output_keeps_the_input_dtype_under_autocast(training, path):
    """A bf16 conv output stays bf16 through GSF: a float32 result (the fp32 gate bias
    promoting the products) would run every layer after it in float32."""
    module = make_gsf(16, 4, 0.5, seed=0).train(training)
    x = make_input(2, 4, 16, 6, seed=0).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = getattr(module, path)(x * 1.0)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bf16_autocast_stays_close_to_float32(training):
    fast = make_gsf(16, 4, 0.5, seed=0).train(training)
    reference = make_gsf(16, 4, 0.5, seed=0).train(training)
    x = make_input(2, 4, 16, 6, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x.bfloat16())
    expected = reference.forward_reference(x.bfloat16().float())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)
    torch.testing.assert_close(fast.bn.running_mean, reference.bn.running_mean, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("formulation", ["kernel_ops", "plain_ops"])
@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
def test_compiles_without_graph_breaks(inplace, formulation, monkeypatch):
    """Compiled, GSF runs the C++ kernels as custom ops where they take the input
    (``forward_compiled_ops``), else the plain-op formulation (``forward_compilable``)."""
    if formulation == "plain_ops":
        monkeypatch.setattr(compiled_ops, "usable", lambda x: False)
    module = make_gsf(8, 2, 1.0, seed=0)
    module.inplace = inplace
    x = make_input(1, 2, 8, 3, seed=0).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    reference = make_gsf(8, 2, 1.0, seed=0)
    torch._dynamo.reset()
    graphs = []

    def backend(graph_module, example_inputs):  # records what dynamo traced, then aot_eager
        graphs.append(graph_module.print_readable(print_output=False))
        return torch._dynamo.backends.debugging.aot_eager(graph_module, example_inputs)

    compiled = torch.compile(module, fullgraph=True, backend=backend)
    out = compiled(x * 1.0)
    # Custom ops (in their own autograd function) or plain ones, not the eager path's autograd
    # functions, are what the compiler sees.
    assert len(graphs) == 1 and "KernelGSF" not in graphs[0]
    if formulation == "kernel_ops":
        assert f"{compiled_ops.NAMESPACE}.forward_" in graphs[0] and "conv2d" not in graphs[0]
    else:
        assert "conv2d" in graphs[0] and compiled_ops.NAMESPACE not in graphs[0]
    out_ref = reference.forward_reference(x_ref)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    out_ref.sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(module.bn.running_var, reference.bn.running_var)


@pytest.mark.slow
def test_compiles_with_inductor():
    module = make_gsf(8, 2, 1.0, seed=0)
    reference = make_gsf(8, 2, 1.0, seed=0)
    x = make_input(1, 2, 8, 3, seed=0)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True)
    torch.testing.assert_close(compiled(x), reference.forward_reference(x), rtol=1e-5, atol=1e-5)


def test_sync_batchnorm_makes_the_statistics_span_processes(monkeypatch):
    """After ``convert_sync_batchnorm`` (``trainer.sync_batchnorm``) a training GSF must let
    ``nn.SyncBatchNorm`` compute its statistics, so it takes the reference path; evaluation,
    which uses running statistics, keeps the fast path."""
    module = nn.SyncBatchNorm.convert_sync_batchnorm(GSF(16, num_segments=4, ratio=0.5))
    assert isinstance(module.bn, nn.SyncBatchNorm)
    calls = []
    reference = GSF.forward_reference
    monkeypatch.setattr(GSF, "forward_reference", lambda self, x: calls.append(1) or reference(self, x))
    x = torch.randn(8, 16, 5, 5)
    module.train()(x)
    assert calls == [1]
    module.eval()(x)
    assert calls == [1]


def test_batch_norm_mode_follows_the_bn_not_the_module():
    """A helper that freezes every BatchNorm (bn.eval() in a training network) freezes GSF's
    statistics on both paths alike."""
    torch.manual_seed(0)
    module = GSF(16, num_segments=4, ratio=0.5).train()
    module.bn.running_mean.normal_()
    module.bn.running_var.uniform_(0.5, 2.0)
    module.bn.eval()
    before = module.bn.running_mean.clone()
    x = torch.randn(8, 16, 5, 5)
    torch.testing.assert_close(module(x), module.forward_reference(x), atol=1e-5, rtol=1e-5)
    assert torch.equal(module.bn.running_mean, before)


@pytest.mark.parametrize("path", ["forward", "forward_torch"])
def test_fast_paths_refuse_a_second_order_gradient(path):
    """Their hand-written backward is not itself differentiable: a second-order gradient
    raises instead of coming out wrong (``forward_reference`` and ``forward_compilable`` are
    plain autograd and give one)."""
    module = make_gsf(16, 4, 0.5, seed=0)
    x = make_input(2, 4, 16, 5, seed=0).requires_grad_()
    (grad,) = torch.autograd.grad(getattr(module, path)(x * 1.0).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.square().sum().backward()


@pytest.mark.parametrize("kernels", [True, False], ids=["cpu_kernels", "torch_ops"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_a_float32_input_under_autocast_runs_in_float32(training, kernels, monkeypatch):
    """Called on a float32 tensor inside bf16 autocast (not a conv's bf16 output), GSF keeps
    float32: the same numbers and gradients as without autocast (its backward used to meet
    float32 and bf16 operands and fail), with or without the C++ kernels (the PyTorch ops'
    matmuls would otherwise run in bf16)."""
    if not kernels:
        monkeypatch.setattr(cpu_kernels, "usable", lambda x: False)
    module = make_gsf(16, 4, 0.5, seed=0).train(training)
    reference = make_gsf(16, 4, 0.5, seed=0).train(training)
    x = make_input(2, 4, 16, 5, seed=0).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x * 1.0)
    expected = reference.forward_reference(x_ref * 1.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)


BN_MODES = ["momentum_0.3", "cumulative", "untracked"]


def check_path_keeps_batch_norm_semantics(path: str, bn_mode: str) -> None:
    """GSF ``path`` (a method name) applies and updates the module's batch norm as it is set
    (another momentum, the cumulative average of momentum None, no running statistics), as
    the reference's own BatchNorm3d does."""
    module = make_gsf(16, 4, 0.5, seed=4).train()
    if bn_mode == "momentum_0.3":
        module.bn.momentum = 0.3
    elif bn_mode == "cumulative":
        module.bn.momentum = None
        module.bn.num_batches_tracked.fill_(3)
    else:
        module.bn.track_running_stats = False
        module.bn.running_mean = module.bn.running_var = module.bn.num_batches_tracked = None
    reference = copy.deepcopy(module)
    x = make_input(2, 4, 16, 5, seed=4)
    torch.testing.assert_close(getattr(module, path)(x.clone()), reference.forward_reference(x.clone()),
                               rtol=1e-5, atol=1e-5)
    for name, buffer in module.bn.named_buffers():
        torch.testing.assert_close(buffer, getattr(reference.bn, name), rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("bn_mode", BN_MODES)
@pytest.mark.parametrize("path", ["forward", "forward_torch"], ids=["cpu_kernels", "torch_ops"])
def test_cpu_paths_keep_batch_norm_semantics(path, bn_mode):
    check_path_keeps_batch_norm_semantics(path, bn_mode)


def test_the_cumulative_average_of_a_float64_module_is_batch_norms_to_the_last_bits():
    """momentum None in float64: the update factor 1 / count in float64, as BatchNorm's Python
    float (1 / count as an int64 tensor's true division is float32: 1e-8 off)."""
    module = make_gsf(16, 4, 0.5, seed=4).double().train()
    module.bn.momentum = None
    module.bn.num_batches_tracked.fill_(2)
    reference = copy.deepcopy(module)
    x = make_input(2, 4, 16, 5, seed=4).double()
    module(x.clone()), reference.forward_reference(x.clone())
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(module.bn, name), getattr(reference.bn, name), rtol=1e-14, atol=1e-15,
                                   msg=name)
