"""GSF's Triton kernels (``GSF.forward_triton``, the CUDA fast path) against the literal
spec of ``tests/test_gsf.py``.

In the CPU suite (on a GPU machine too, unless the run selects the ``gpu`` tests) the kernels
run under Triton's interpreter on CPU tensors (``conftest.py`` sets ``TRITON_INTERPRET=1``), so
the suite checks their arithmetic: values, input and
parameter gradients, running statistics, in place and not, channels-last, no autograd,
bf16. ``tests/test_gpu.py`` runs the same path compiled on CUDA.
"""

from __future__ import annotations

import copy
import types

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lightning_gsf import gsf_fast
from lightning_gsf.gsf import GSF
from conftest import interprets_triton
from test_gsf import (BN_MODES, CASES, assert_close_to_float64, check_path_keeps_batch_norm_semantics,
                      check_path_matches_naive_spec, check_path_passes_no_gradient_through_the_relu_at_zero,
                      check_path_takes_an_empty_batch, make_gsf, make_input, naive_gsf, split_with)

@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("channels,num_segments,ratio,batch,size", CASES)
def test_triton_path_matches_naive_spec(triton_overflow_checks, channels, num_segments, ratio, batch, size, training,
                                        inplace):
    """Every kernel, forward and backward, under the interpreter's int32 overflow checks."""
    check_path_matches_naive_spec("forward_triton", channels, num_segments, ratio, batch, size + 2, training, inplace)


@pytest.mark.parametrize("capability,shared_kib,expected", [((9, 0), 227, (128, 3)), ((8, 0), 163, (128, 3)),
                                                            ((8, 6), 99, (128, 2)), ((8, 9), 96, (128, 2)),
                                                            ((8, 7), 64, (64, 2)), ((7, 5), 64, (128, 3))])
def test_gate_backward_fits_the_gpus_shared_memory(monkeypatch, capability, shared_kib, expected):
    """The gate backward's tiles and pipeline stages by the shared memory a block may have: all
    of Triton's defaults from 128 KiB (A100, H100, H200), two stages from 96 KiB (the 99 KiB
    of RTX 30 / 40, A10, L4: three would need 100.5 KiB), 64-pixel tiles below; GPUs without
    TF32 (T4: 64 KiB) need only 26 KiB at the defaults."""
    kernels = gsf_fast._triton_kernels()
    properties = types.SimpleNamespace(shared_memory_per_block_optin=shared_kib * 1024)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", None)
    kernels._has_tf32.cache_clear()
    try:
        assert cached_for_a_fake_gpu(kernels._gate_backward_launch) == expected
    finally:
        kernels._has_tf32.cache_clear()
    assert kernels._gate_backward_launch(torch.device("cpu")) == (kernels.MAX_BLOCK_PIXELS, 3)


def cached_for_a_fake_gpu(choice):
    """``choice(cuda:0)`` for a per-device cached choice of the kernels, computed afresh from
    the device queries a test has faked, and forgotten after."""
    choice.cache_clear()
    try:
        return choice(torch.device("cuda", 0))
    finally:
        choice.cache_clear()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_triton_path_with_the_gate_backward_in_64_pixel_tiles(monkeypatch, training):
    """On a GPU with less shared memory the gate backward takes 64-pixel tiles while the other
    kernels keep 128 (24 x 24 maps: 576 pixels): the same numbers and gradients."""
    kernels = gsf_fast._triton_kernels()
    monkeypatch.setattr(kernels, "_gate_backward_launch", lambda device: (64, 2))
    tiles, original_split = [], kernels._channel_split
    monkeypatch.setattr(kernels, "_channel_split", lambda *args: tiles.append(original_split(*args)[0]) or
                        original_split(*args))
    check_path_matches_naive_spec("forward_triton", 16, 2, 0.5, 1, 24, training)
    assert set(tiles) == {64, 128}  # (the gate backward's; the blend backward's and the input gradient's)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_triton_path_with_float32_products(monkeypatch, training):
    """The kernels built with ``DOT_PRECISION="ieee"`` (float32 FMAs, the choice on GPUs
    without TF32 tensor cores) rather than the default three TF32 products. Under the
    interpreter both multiply alike, so this checks the plumbing; the GPU tests compare the
    two precisions' numbers."""
    monkeypatch.setattr(gsf_fast._triton_kernels(), "DOT_PRECISION", "ieee")
    check_path_matches_naive_spec("forward_triton", 80, 2, 0.9, 2, 13, training)


@pytest.mark.parametrize("hip,capability,expected", [(None, (9, 0), "tf32x3"), (None, (8, 0), "tf32x3"),
                                                      (None, (7, 5), "ieee"), ("6.2", (9, 4), "ieee")])
def test_gate_products_in_tf32x3_only_where_the_gpu_has_it(monkeypatch, hip, capability, expected):
    """NVIDIA GPUs of compute capability 8.0 and later multiply in three TF32 products, older
    ones and ROCm (whose Triton backend has no "tf32x3") in float32 FMAs."""
    kernels = gsf_fast._triton_kernels()
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert ("tf32x3" if cached_for_a_fake_gpu(kernels._has_tf32) else "ieee") == expected
    assert kernels._dot_precision(torch.device("cpu")) == kernels.DOT_PRECISION == "tf32x3"


@pytest.mark.parametrize("memory", ["bf16_module", "channels_last_module"])
def test_triton_path_takes_parameters_in_any_dtype_and_layout(memory):
    """A module converted to bf16, or with channels-last conv weights (the benchmark's
    ``--channels-last``): the kernels get dense float32 copies of its parameters, and the
    numbers are the reference path's (bf16 within its rounding)."""
    module = make_gsf(16, 4, 0.5, seed=5).train()
    x = make_input(2, 4, 16, 5, seed=5)
    if memory == "bf16_module":
        module, x = module.to(torch.bfloat16), x.to(torch.bfloat16)
    else:
        from lightning_gsf.benchmark import to_channels_last
        to_channels_last(module)
        assert not gsf_fast.fusion_parameters(module)[0].is_contiguous()
    reference = copy.deepcopy(module)
    inp, inp_reference = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = module.forward_triton(inp * 1), reference.forward_reference(inp_reference * 1)
    tolerance = 1e-5 if memory == "channels_last_module" else 5e-2
    torch.testing.assert_close(out, expected, rtol=tolerance, atol=tolerance)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(out.dtype)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(inp.grad, inp_reference.grad, rtol=tolerance, atol=tolerance)
    for (name, param), param_reference in zip(module.named_parameters(), reference.parameters()):
        assert param.grad.dtype == param.dtype, name
        scale = max(1.0, param_reference.grad.abs().max().item())
        torch.testing.assert_close(param.grad, param_reference.grad, rtol=tolerance, atol=tolerance * scale, msg=name)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_triton_path_on_several_tiles(training, inplace, channels_last):
    """Groups of 36 channels (three channel tiles, the last partial) on 13x13 maps (two pixel
    tiles): the same numbers and gradients; channels-last in, channels-last out (over the
    input itself when in place)."""
    module = check_path_matches_naive_spec("forward_triton", 80, 2, 0.9, 2, 13, training, inplace,
                                           channels_last=channels_last)
    assert module.processed // 2 > 2 * gsf_fast._triton_kernels().BLOCK_CHANNELS


@pytest.mark.parametrize("min_programs", [0, 40, 10**6], ids=["uncut", "cut_in_uneven_runs", "cut_per_block"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_triton_path_with_loops_cut_across_programs(monkeypatch, training, min_programs):
    """The loops over pixels (batch statistics, spatial means) and over channels (the gate
    conv's products, the blend's and the gate's backward) run whole in one program, cut into
    runs of unequal length (the last shorter), or one program per tile; partial sums added
    after: the same numbers and gradients. (14x14 maps: seven 32-pixel tiles; groups of 36
    channels: three channel tiles.)"""
    kernels = gsf_fast._triton_kernels()
    monkeypatch.setattr(kernels, "MIN_PROGRAMS", min_programs)
    cuts = []
    original_split = kernels._split
    monkeypatch.setattr(kernels, "_split", lambda *args: cuts.append((args, original_split(*args))) or cuts[-1][1])
    check_path_matches_naive_spec("forward_triton", 80, 2, 0.9, 2, 14, training)
    splits = {result[0] for _, result in cuts}
    if min_programs == 0:
        assert splits == {1}
    else:
        assert max(splits) > 1
    if min_programs == 40:  # some loop cut into runs that do not divide it evenly
        assert any(blocks % triton.cdiv(blocks, result[0]) for (_, blocks, _), result in cuts)


@settings(max_examples=200, deadline=None)
@given(programs=st.integers(1, 5000), blocks=st.integers(1, 300), block=st.sampled_from([16, 32, 128]),
       min_programs=st.sampled_from([0, 1, 1024, 4096]))
def test_split_covers_the_loop_in_whole_blocks(programs, blocks, block, min_programs):
    """``_split``: runs of whole blocks that cover the loop exactly once, none empty, and
    enough programs where the loop has enough blocks (no cut at all for 0)."""
    kernels = gsf_fast._triton_kernels()
    original, kernels.MIN_PROGRAMS = kernels.MIN_PROGRAMS, min_programs
    try:
        splits, items = kernels._split(programs, blocks, block)
    finally:
        kernels.MIN_PROGRAMS = original
    per_split = items // block
    assert items % block == 0 and 1 <= splits <= blocks
    assert (splits - 1) * per_split < blocks <= splits * per_split  # every run non-empty, all blocks covered
    assert programs * splits >= min(min_programs, programs * blocks) or splits == blocks
    if min_programs <= programs:
        assert splits == 1


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_triton_path_takes_an_empty_batch(grad):
    """No frames in, none out, as on the other paths (launches of no programs)."""
    check_path_takes_an_empty_batch("forward_triton", grad)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
def test_triton_path_on_maps_whose_rows_are_not_adjacent(channels_last, inplace):
    """A crop of a larger map (rows ``W + 3`` apart, for ``W`` pixels each): the kernels
    address its pixels by row and column rather than as one run; the same numbers and
    gradients, and in place the crop's pixels alone are written."""
    module = make_gsf(16, 4, 0.5, seed=7).train()
    module.inplace = inplace
    reference = copy.deepcopy(module)
    generator = torch.Generator().manual_seed(7)
    big = torch.randn(8, 16, 9, 10, generator=generator)
    if channels_last:
        big = big.contiguous(memory_format=torch.channels_last)
    leaf, leaf_reference = big.clone().requires_grad_(), big.clone().requires_grad_()
    inp = (leaf * 1.0)[..., 1:-1, 2:-1]
    assert not gsf_fast._triton_kernels()._flat_pixels(inp)
    out, expected = module.forward_triton(inp), reference.forward_reference((leaf_reference * 1.0)[..., 1:-1, 2:-1])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(out.shape, generator=generator)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(leaf.grad, leaf_reference.grad, rtol=1e-5, atol=1e-5)
    for (name, param), param_reference in zip(module.named_parameters(), reference.parameters()):
        torch.testing.assert_close(param.grad, param_reference.grad, rtol=1e-5, atol=1e-5, msg=name)


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


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (13, 12)])  # (13x12: five tiles of 32 pixels)
def test_gated_means_are_the_fusion_descriptors_means(size, dtype, channels_last):
    """``gated_means``: per frame, ``mean(v)`` and ``mean(g_k v)`` over the pixels for the
    channels of group ``k`` (36 per group: three channel tiles), from a channel slice."""
    (h, w), nt, p = size, 4, 72
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(nt, p + 8, h, w, generator=generator).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    v = x[:, :p]
    gate = torch.rand(nt, 2, h * w, generator=generator) * 2 - 1
    means = gsf_fast._triton_kernels().gated_means(v, gate)
    values = v.double().reshape(nt, 2, p // 2, h * w)
    expected_gated = (values * gate.double().view(nt, 2, 1, h * w)).mean(dim=-1).reshape(nt, p)
    torch.testing.assert_close(means[:, 0].double(), values.mean(dim=-1).reshape(nt, p), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(means[:, 1].double(), expected_gated, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bn_mode", BN_MODES)
def test_triton_path_keeps_batch_norm_semantics(bn_mode):
    """The batch statistics and their running averages as the module's batch norm has them
    set: another momentum, the cumulative average (momentum None: the statistics' update in
    PyTorch), none tracked; the numbers are the reference path's."""
    check_path_keeps_batch_norm_semantics("forward_triton", bn_mode)


@pytest.mark.parametrize("offset,first_value", [(0.0, 0.0), (300.0, 0.0), (0.0, -1000.0)],
                         ids=["centred", "mean_300_std_0.01", "first_value_1000_std_out"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("frames", [3, 70])  # (70: two tiles of 64 rows of partial sums)
def test_batch_norm_statistics_equal_float64_and_batch_norm(frames, channels_last, offset, first_value):
    """The mean and inverse std of a channel slice against float64 (values far from zero do
    not cancel: deviations are taken from each tile's own mean, relative to the channel's
    first value, which may itself lie far out), and the running statistics' update against
    ``BatchNorm2d``'s."""
    generator = torch.Generator().manual_seed(frames)
    x = torch.randn(frames, 80, 3, 4, generator=generator) * (0.01 if offset else 1.0) + offset
    x[0, :, 0, 0] += first_value
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    v = x[:, :72]  # 72 channels: five tiles of the statistics kernel, the last partial
    batch_norm = torch.nn.BatchNorm2d(72, momentum=0.2).train()
    torch.nn.init.uniform_(batch_norm.running_mean, generator=generator)  # (not the global generator: the same
    # values whatever ran before in the process)
    running_mean, running_var = batch_norm.running_mean.clone(), batch_norm.running_var.clone()
    mean, invstd = gsf_fast._triton_kernels().batch_norm_statistics(v, batch_norm.eps, running_mean, running_var,
                                                                     0.2)
    batch_norm(v)
    expected_var = v.double().var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean.double(), v.double().mean(dim=(0, 2, 3)), rtol=3e-7, atol=1e-6)
    # (float32's rounding of the mean, squared, is ~1e-5 of a variance of 1e-4 around 300)
    torch.testing.assert_close(invstd.double(), (expected_var + batch_norm.eps).rsqrt(), rtol=3e-5, atol=0)
    # 0.8 x old + 0.2 x mean can cancel to near 0 (the mean is ~-14 with a value 1000 out): a float32
    # rounding of the terms, not of the result, so the absolute tolerance is of the terms' size.
    torch.testing.assert_close(running_mean, batch_norm.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(running_var, batch_norm.running_var, rtol=1e-5, atol=1e-8)


class RecordedLaunches:
    """Stand-ins for the Triton kernels: each launch is recorded by name, nothing runs."""

    def __init__(self, monkeypatch):
        self.names = []
        kernels = gsf_fast._triton_kernels()
        for name in dir(kernels):
            if name.startswith("_") and name.endswith("_kernel") and hasattr(getattr(kernels, name), "__getitem__"):
                monkeypatch.setattr(kernels, name, _Launcher(self.names, name[1:-len("_kernel")]))


class _Launcher:
    def __init__(self, names, name):
        self.names, self.name = names, name

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.names.append(self.name)


def top_level_aten_operations(step) -> int:
    """The ATen operations that ``step`` dispatches from Python (not those inside others)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        step()
    return sum(1 for event in profiler.events() if event.name.startswith("aten::")
               and (event.cpu_parent is None or not event.cpu_parent.name.startswith("aten::")))


def test_triton_path_is_its_kernels_and_little_else(monkeypatch):
    """On a GPU the host pays for every PyTorch operation around the kernels, per GSF and
    step (~8 us each on an H200 machine's host, ~20 us per Triton launch): a training step
    is the 12 kernels below and at most 67 ATen operations (181 with the fusion weights in
    PyTorch operations, as before; 70 with the statistics in two passes), inference 5 kernels
    and at most 18 operations (one of them the sum of the spatial means' partial sums; the
    step's own input copy, autograd's gradient sums and the test's ``* 1.0`` included)."""
    module = make_gsf(64, 4, 0.25, seed=0).train()
    x = make_input(2, 4, 64, 6, seed=0)
    grad = torch.randn_like(x)
    launches = RecordedLaunches(monkeypatch)

    def training_step():
        inp = x.clone().requires_grad_(True)
        module.forward_triton(inp * 1.0).backward(grad)

    def inference():
        with torch.no_grad():
            module.forward_triton(x)

    training_step()  # (first calls: one-off work)
    launches.names.clear()
    assert top_level_aten_operations(training_step) <= 67
    assert launches.names == ["channel_moments", "batch_norm_statistics", "gate_products", "gate", "gated_means", "fusion_weights", "blend", "blend_backward",
                              "fusion_weights_backward", "gate_gradient", "gate_backward", "input_gradient"]
    module.eval()
    launches.names.clear()
    assert top_level_aten_operations(inference) <= 18
    assert launches.names == ["gate_products", "gate", "gated_means", "fusion_weights", "blend"]


def test_launch_sizes_are_computed_without_triton_s_constexpr_functions(monkeypatch):
    """``triton.cdiv`` and ``triton.next_power_of_2`` are constexpr functions whose every call
    unwraps its arguments in Python (~2 us; 44 calls per GSF training step): the host code uses
    plain twins, equal to them, and calls neither of Triton's (nor imports them by name)."""
    import ast
    import inspect

    import triton

    from lightning_gsf import gsf_kernels, shift_kernels

    for a in range(0, 600):
        assert gsf_kernels.next_power_of_2(a) == triton.next_power_of_2(a)
        for b in (1, 2, 3, 7, 16, 128, 1024):
            assert gsf_kernels.cdiv(a, b) == triton.cdiv(a, b)

    for module in (gsf_kernels, shift_kernels):
        tree = ast.parse(inspect.getsource(module))
        assert not [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "triton"
                    and {alias.name for alias in node.names} & {"cdiv", "next_power_of_2"}]

    def refused(*args, **kwargs):
        raise AssertionError("triton's constexpr function called on the host")

    monkeypatch.setattr(triton, "cdiv", refused)
    monkeypatch.setattr(triton, "next_power_of_2", refused)
    x = make_input(2, 4, 64, 6, seed=0)
    shifted = shift_kernels.shift(x, 4, 8)  # (TSM's kernels, run under the interpreter)
    shift_kernels.unshift_(shifted, 4, 8)
    RecordedLaunches(monkeypatch)
    module = make_gsf(64, 4, 0.25, seed=0).train()
    module.forward_triton(x.requires_grad_() * 1.0).sum().backward()
    module.eval()
    with torch.no_grad():
        module.forward_triton(x)


def test_forward_uses_triton_only_for_cuda_tensors(monkeypatch):
    calls = []
    monkeypatch.setattr(GSF, "forward_triton", lambda self, x: calls.append(x) or x)
    module = make_gsf(16, 4, 0.25, seed=0)
    module(make_input(1, 4, 16, 3, seed=0))
    assert calls == []


def test_without_triton_the_triton_path_says_so(monkeypatch):
    monkeypatch.setattr(gsf_fast, "_triton_kernels", lambda: None)
    module = make_gsf(16, 4, 0.25, seed=0)
    with pytest.raises(RuntimeError, match="needs Triton"):
        module.forward_triton(make_input(1, 4, 16, 3, seed=0))


def test_the_overflow_checks_fixture_turns_the_interpreters_checks_on(request):
    """``triton_overflow_checks``: an int32 product past 2^31 fails under it, and passes
    quietly in the rest of the suite (the interpreter's checks off, see ``conftest.py``)."""
    @triton.jit
    def scaled(x_ptr, out_ptr, factor):
        tl.store(out_ptr, tl.load(x_ptr) * factor)

    from triton.runtime import interpreter

    assert interpreter.interpreter_builder.options.sanitize_overflow is False  # (the suite's default, conftest.py)
    x, out = torch.tensor([1 << 20], dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    scaled[(1,)](x, out, 1 << 12)  # (wraps around, unchecked)
    request.getfixturevalue("triton_overflow_checks")
    with pytest.raises(Exception, match="overflow"):
        scaled[(1,)](x, out, 1 << 12)


@pytest.mark.parametrize("markexpr,cuda_available,compiles", [
    ("not slow and not gpu", False, False), ("gpu", False, False),  # no GPU: always interpreted
    ("not slow and not gpu", True, False), ("not gpu", True, False), ("slow", True, False),  # the CPU suite
    ("gpu", True, True), ("gpu and not slow", True, True), ("", True, True),  # the CUDA checks selected
    ("not (", True, False)])  # (a malformed -m: pytest reports it, after this choice)
def test_the_suite_compiles_triton_only_where_it_runs_the_gpu_tests(markexpr, cuda_available, compiles):
    """``conftest.py``'s choice, for each ``-m`` of the Makefile and a few others: the CPU
    suite interprets the kernels even on a GPU machine; a run that selects the ``gpu`` tests
    there compiles them."""
    assert interprets_triton(markexpr, cuda_available) is not compiles


def test_triton_path_passes_no_gradient_through_the_relu_at_zero():
    check_path_passes_no_gradient_through_the_relu_at_zero("forward_triton")
