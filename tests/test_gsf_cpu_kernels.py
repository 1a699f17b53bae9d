"""GSF's C++ CPU kernels (``GSF.forward_cpu``, the CPU default in float32, and in bf16 on AVX2 / AVX-512).

Each kernel against its PyTorch-ops twin in ``lightning_gsf.gsf_fast`` (the blend and its backward,
``relu(bn(v))``, the gate, the fusion weights) over layouts, slices and dtypes; then the whole
path against the literal spec of ``tests/test_gsf.py``; then dispatch and fallbacks. The
kernels are built here (the suite fails, not skips, where they cannot be).
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lightning_gsf import cpu_kernels
from lightning_gsf import gsf_fast
from lightning_gsf.gsf import GSF
from gradient_holders import HOLDERS, between_spies, check_holders_kept_their_values, holding_consumer
from test_gsf import (CASES, assert_close_to_float64, check_path_matches_naive_spec,
                      check_path_passes_no_gradient_through_the_relu_at_zero, check_path_takes_an_empty_batch,
                      make_gsf, make_input, naive_gsf, split_with)


@pytest.fixture(scope="module")
def kernels():
    built = cpu_kernels.cpu_kernels()
    assert built is not None, "the C++ CPU kernels failed to build (see the log)"
    return built


@pytest.fixture(params=["cpp", "triton"])
def fusion_kernels(request, kernels):
    """The fusion weights' kernels (``fusion_weights``, ``fusion_weights_backward``,
    ``gate_gradient``; one interface) of the C++ set, or of the Triton set (under Triton's
    interpreter on the CPU)."""
    if request.param == "cpp":
        return kernels
    triton_kernels = gsf_fast._triton_kernels()
    assert triton_kernels is not None, "the Triton kernels need Triton (pip install triton)"
    return triton_kernels


class BlendContext:
    """The ``ctx`` that ``_GateShiftFuse.backward`` reads, for calling it directly."""

    def __init__(self, v, gate, blend, num_segments):
        self.saved_tensors = (v, gate, blend)
        self.num_segments, self.inplace = num_segments, False


def blend_operands(batch, num_segments, processed, channels, size, channels_last, dtype, seed=0):
    """A GSF input ``x`` (its first ``processed`` channels are ``v``), a gate in (-1, 1) and
    fusion weights in (0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch * num_segments, channels, *size, generator=generator).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    gate = (torch.rand(batch, num_segments, 2, *size, generator=generator) * 2 - 1).to(dtype)
    weights = torch.rand(batch, num_segments, 2, processed // 2, generator=generator).to(dtype)
    return x, gate, weights


BLEND_SHAPES = [
    # (batch, num_segments, processed, channels, (H, W))
    (2, 4, 8, 12, (5, 6)),
    (1, 3, 16, 16, (3, 4)),
    (2, 1, 8, 20, (2, 2)),
    (1, 5, 4, 8, (1, 1)),
    (1, 2, 12, 12, (1, 7)),
    (1, 3, 88, 92, (1, 3)),  # 22 channel pairs a group: channels-last runs of 16 and 6 (3 pixels: the
    # bf16 reference rounds every step, and its weights gradient, summed over 15 pixels, left the bf16 tolerance)
    (1, 2, 120, 120, (1, 2)),  # 30 pairs: runs of 16 and 14 (the second store of a run under a mask)
]
DTYPE_TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.bfloat16: {"rtol": 0.02, "atol": 0.05}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("batch,num_segments,processed,channels,size", BLEND_SHAPES)
def test_blend_equals_torch_ops(kernels, batch, num_segments, processed, channels, size, channels_last, dtype):
    """Forward into a slice of a wider output, and backward, as ``_write_fused`` and
    ``_GateShiftFuse.backward`` compute them (bf16: the kernel rounds once, the ops at every step)."""
    x, gate, weights = blend_operands(batch, num_segments, processed, channels, size, channels_last, dtype)
    v = x[:, :processed]
    expected, actual = torch.zeros_like(x), torch.zeros_like(x)
    gsf_fast._write_fused(expected[:, :processed], v, gate, weights, num_segments, channels_last)
    kernels.blend(v, gate.float().contiguous(), weights.float().contiguous(), actual[:, :processed], num_segments)
    torch.testing.assert_close(actual, expected, **DTYPE_TOLERANCE[dtype])

    saved_v = v.clone(memory_format=torch.preserve_format)  # what _SplitChannels saves
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    if channels_last:
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    expected = gsf_fast._GateShiftFuse.backward(BlendContext(saved_v, gate, weights, num_segments), grad_out)
    actual = gsf_fast._CppKernels(kernels).blend_backward(
        grad_out[:, :processed], saved_v, gate.float().view(-1, 2, size[0] * size[1]), weights, num_segments)
    for name, a, e in zip(("v", "gate", "weights"), actual, expected[:3]):
        torch.testing.assert_close(a.to(e.dtype).view(e.shape), e, **DTYPE_TOLERANCE[dtype], msg=name)
    assert actual[0].dtype == dtype
    assert actual[0].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


# NCHW: one (clip, group) walk per task, or each frame's channels in parallel; channels-last:
# (clip, pixel block) tasks, 16-pixel blocks that 5 x 7 does not divide
@pytest.mark.parametrize("threads", [1, 8])
@pytest.mark.parametrize("size", [(5, 7), (1, 1)])  # (1 x 1 channels-last maps have pixel stride C)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("batch,num_segments", [(2, 4), (1, 3), (3, 1)])
@pytest.mark.parametrize("processed", [8, 88, 120])  # (channels-last: 2 pairs a group; 22: runs of 16, 6; 30: 16, 14)
def test_blend_in_place_reads_before_it_writes(kernels, batch, num_segments, dtype, channels_last, size, threads,
                                                processed):
    """Output over ``v``'s own memory (inference in place): the same as into a fresh tensor."""
    channels = processed + 4
    x, gate, weights = blend_operands(batch, num_segments, processed, channels, size, channels_last, dtype)
    if channels_last and size == (1, 1):  # as a channels-last convolution writes it (not NCHW strides)
        x = torch.empty_strided(x.shape, (channels, 1, channels, channels), dtype=dtype).copy_(x)
    gate, weights = gate.float().contiguous(), weights.float().contiguous()
    expected = torch.zeros_like(x)
    kernels.blend(x[:, :processed], gate, weights, expected[:, :processed], num_segments)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        kernels.blend_in_place(x[:, :processed], gate, weights, num_segments)
    finally:
        torch.set_num_threads(previous_threads)
    torch.testing.assert_close(x[:, :processed], expected[:, :processed], rtol=0, atol=0)


@pytest.mark.parametrize("threads", [1, 2])
def test_kernels_run_on_torch_threads(kernels, threads):
    """The build compiles at::parallel_for with OpenMP: without it every loop ran on one thread."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert kernels.parallel_threads(64) == threads
    finally:
        torch.set_num_threads(previous_threads)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cpu_path_is_the_same_on_any_number_of_threads(kernels, training, channels_last):
    """Every kernel splits its loops over torch's threads: the output, the input gradient and
    the parameter gradients come out the same (each item is computed by one thread)."""
    results = []
    for threads in (1, 3, 8):
        module = make_gsf(24, 3, 0.5, seed=7).train(training)
        x = make_input(3, 3, 24, 9, seed=7)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out = module.forward_cpu(x * 1.0)
            out.backward(torch.cos(torch.arange(out.numel(), dtype=torch.float32)).view_as(out))
            with torch.inference_mode():
                inferred = module.forward_cpu(x.detach().clone())
        finally:
            torch.set_num_threads(previous_threads)
        results.append([out.detach(), x.grad, inferred, *(p.grad for p in module.parameters())])
    for other in results[1:]:
        for expected, actual in zip(results[0], other):
            torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_the_kernels_address_only_uniform_pixel_strides():
    x = torch.randn(4, 8, 5, 6)
    assert cpu_kernels.addressable(x[:, :4])
    assert cpu_kernels.addressable(x.contiguous(memory_format=torch.channels_last)[:, :4])
    assert not cpu_kernels.addressable(x.transpose(2, 3)[:, :4])  # W before H in memory
    assert not cpu_kernels.addressable(x[:, :4, :, ::2])


def test_the_kernels_address_single_rows_and_maps_only_together():
    """A map of one row has one pixel stride whatever its H stride; maps are addressed together
    only when every one of them is."""
    one_row = torch.randn(4, 8, 6, 1).permute(0, 1, 3, 2)  # (4, 8, 1, 6), H's stride 1
    assert cpu_kernels.addressable(one_row)
    x, cropped = torch.randn(4, 8, 5, 6), torch.randn(4, 8, 5, 8)[..., :6]  # (rows not adjacent)
    assert cpu_kernels.addressable(x) and not cpu_kernels.addressable(cropped)
    assert not cpu_kernels.addressable(x, cropped) and not cpu_kernels.addressable(cropped, x)


def test_capabilities_without_build_flags_build_the_baseline(monkeypatch):
    """torch's capabilities other than AVX2 / AVX-512 (ARM's SVE, POWER's VSX, ...) are built as
    the baseline, DEFAULT (the build's name and flags follow from it); AVX2 keeps its own."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "SVE256")
    assert cpu_kernels.cpu_capability() == "DEFAULT"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert cpu_kernels.cpu_capability() == "AVX2"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("processed", [8, 12])
@pytest.mark.parametrize("size", [(1, 1), (3, 5), (9, 8), (9, 9)])
def test_norm_relu_equals_scale_shift_relu(kernels, size, processed, channels_last, dtype):
    """From a channel slice of the input (NCHW or channels-last) into contiguous NCHW;
    channels-last goes through 64-pixel blocks of 8 x 8 tiles: 9x8 and 9x9 have blocks that do
    not divide the map, 12 channels one tile and 4 left over."""
    x, _, _ = blend_operands(2, 3, processed, processed + 4, size, channels_last, dtype)
    v = x[:, :processed]
    generator = torch.Generator().manual_seed(2)
    scale, shift = torch.randn(processed, generator=generator), torch.randn(processed, generator=generator)
    expected = torch.relu(v.float() * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).to(dtype)
    actual = torch.empty(v.shape, dtype=dtype)
    kernels.norm_relu(v, scale, shift, actual)
    torch.testing.assert_close(actual, expected, **DTYPE_TOLERANCE[dtype])


def gate_by_torch_ops(v, scale, shift, module, num_segments, magnitudes=False):
    """The gate as the PyTorch-ops path computes it (relu(bn(v)), the products matmul, the
    fold, the temporal taps, tanh), in float64; with ``magnitudes``, instead of the gate each
    pixel's sum of the products' magnitudes (no bias, no tanh), which bounds rounding errors."""
    nt, p, h, w = v.shape
    activated = torch.relu(v.double() * scale.double().view(1, p, 1, 1) + shift.double().view(1, p, 1, 1))
    taps_weight = gsf_fast._taps_weight(module.conv3D.weight).double()
    bias = module.conv3D.bias.double()
    if magnitudes:
        taps_weight, bias = taps_weight.abs(), torch.zeros_like(bias)
    products = torch.matmul(taps_weight, activated.reshape(nt, 2, p // 2, h * w))
    taps = gsf_fast._fold_taps(products.view(nt, 54, h * w), h, w).view(nt // num_segments, num_segments, 2, 3, h, w)
    pre_activation = gsf_fast._sum_temporal_taps(taps, bias).view(nt, 2, h, w)
    return pre_activation if magnitudes else torch.tanh(pre_activation)


def bf16_dot_products(kernels) -> bool:
    """Whether the bfloat16 gate runs in AVX512-BF16 dot products here (relu(bn(v)) and the
    weights rounded to bfloat16, as autocast rounds a convolution's inputs)."""
    return kernels.bf16_dot_products()


# one task per walk (2 clips x 2 groups), or walks split into 2 or 4 runs (halo frames on one or both sides)
@pytest.mark.parametrize("threads", [1, 3, 8, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("num_segments", [1, 2, 5])
# widths below, at and past a vector (16 floats with AVX-512), maps of one to several 4-vector blocks
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (6, 5), (5, 14), (3, 16), (10, 10), (21, 20), (9, 33)])
def test_gate_equals_torch_ops(kernels, size, num_segments, channels_last, dtype, threads):
    """The direct convolution from a channel slice of the input, against relu(bn(v)), the
    products matmul, fold, temporal taps and tanh of the PyTorch-ops path."""
    check_gate(kernels, size, num_segments, channels_last, dtype, threads, processed=16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("processed", [4, 20, 36])
@pytest.mark.parametrize("size", [(1, 7), (2, 4), (3, 8), (7, 9), (4, 17)])
def test_channels_last_gate_tiles(kernels, size, processed, dtype):
    """Channels-last maps fill the gate's planes in 8 x 8 tiles (AVX2): groups of 2, 10 and
    18 channels (no whole tile, channels left over), rows shorter than a tile (tiles running
    into the next rows), a tile's worth, and pixels after the last whole tile."""
    check_gate(kernels, size, 2, True, dtype, 1, processed=processed)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("size,pixel", [((5, 5), (4, 3)), ((10, 10), (9, 9)), ((20, 20), (10, 19))])
def test_gate_carries_a_nan_where_the_torch_ops_do(kernels, size, pixel, dtype, channels_last):
    """A NaN in v (in a row's last, partial vector, a small plane's, or a channels-last tile)
    reaches the same gate pixels as through relu(bn(v)) in PyTorch ops, and the same means."""
    x, _, _ = blend_operands(1, 3, 16, 20, size, channels_last, dtype, seed=3)
    x[1, 2, pixel[0], pixel[1]] = float("nan")
    v = x[:, :16]
    module = make_gsf(16, 3, 1.0, seed=4)
    scale, shift = torch.rand(16) + 0.5, torch.randn(16)
    weight, bias = module.conv3D.weight.detach().contiguous(), module.conv3D.bias.detach().contiguous()
    means = torch.empty(3, 2, 16)
    actual = kernels.gate(v, scale, shift, weight, bias, 3, means)
    expected = gate_by_torch_ops(v, scale, shift, module, 3)
    assert torch.isnan(expected).any()
    assert torch.equal(torch.isnan(actual), torch.isnan(expected))
    spatial, _ = gsf_fast._spatial_means(v.double(), expected, channels_last)  # as check_gate reads them
    expected_means = torch.stack([spatial[:, 0], torch.cat([spatial[:, 1, :8], spatial[:, 2, 8:]], dim=1)], dim=1)
    assert torch.isnan(means[1, 0, 2])
    assert torch.equal(torch.isnan(means), torch.isnan(expected_means))


def check_gate(kernels, size, num_segments, channels_last, dtype, threads, processed):
    channels = processed + 4
    module = make_gsf(processed, num_segments, 1.0, seed=4)
    with torch.no_grad():
        module.conv3D.weight.normal_(0, 0.2)  # larger than the default init: gates away from 0
    x, _, _ = blend_operands(2, num_segments, processed, channels, size, channels_last, dtype, seed=3)
    v = x[:, :processed]
    generator = torch.Generator().manual_seed(5)
    scale, shift = torch.rand(processed, generator=generator) + 0.5, torch.randn(processed, generator=generator)
    expected = gate_by_torch_ops(v, scale, shift, module, num_segments)
    means = torch.empty(v.shape[0], 2, processed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        weight, bias = module.conv3D.weight.detach().contiguous(), module.conv3D.bias.detach().contiguous()
        actual = kernels.gate(v, scale, shift, weight, bias, num_segments, means)
        without_means = kernels.gate(v, scale, shift, weight, bias, num_segments)
    finally:
        torch.set_num_threads(previous_threads)
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    if dtype == torch.bfloat16 and bf16_dot_products(kernels):
        # both factors of each product rounded to bfloat16 (relative error at most 2^-8 each, so
        # 2^-7 + 2^-16 a product); tanh does not enlarge an error: a bound of 2^-6 of the
        # products' magnitudes leaves a factor 2 for the float32 sums
        bound = gate_by_torch_ops(v, scale, shift, module, num_segments, magnitudes=True) * 2.0**-6 + 1e-5
        assert ((actual.double() - expected).abs() <= bound).all()
    else:
        torch.testing.assert_close(actual.double(), expected, rtol=0, atol=1e-5)  # float32 sums of 216 products
    torch.testing.assert_close(without_means, actual, rtol=0, atol=0)
    # the spatial means of v and of each group's gated v, as _spatial_means gives them
    expected_means, _ = gsf_fast._spatial_means(v.double(), actual.double(), channels_last)
    own_gate = torch.cat([expected_means[:, 1, :processed // 2], expected_means[:, 2, processed // 2:]], dim=1)
    torch.testing.assert_close(means.double(), torch.stack([expected_means[:, 0], own_gate], dim=1),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("processed", [4, 16, 36])
@pytest.mark.parametrize("size", [(1, 1), (5, 5), (10, 10), (9, 33)])
def test_bf16_gate_dot_products_sum_exact_products(kernels, size, processed, channels_last):
    """The AVX512-BF16 gate on inputs that bfloat16 holds exactly (relu(bn(v)) = v >= 0 in
    bfloat16, weights rounded to bfloat16 beforehand): every product is exact, so the gate
    matches the float64 one up to float32 sums; a wrong tap, pixel or channel pair would not.
    Groups of one channel pair, 4 and 9 pairs. (Where the dot products are off, on Intel's CPUs
    by default or where the CPU lacks AVX512-BF16, the float32 path computes the same products
    from the same inputs, and must match the same way.)"""
    generator = torch.Generator().manual_seed(7)
    weight = (torch.randn(2, processed // 2, 3, 3, 3, generator=generator) * 0.2).bfloat16().float()
    bias = torch.randn(2, generator=generator)
    x, _, _ = blend_operands(2, 2, processed, processed + 4, size, channels_last, torch.bfloat16, seed=3)
    v = x[:, :processed].abs()  # (exact in bfloat16)
    ones, zeros = torch.ones(processed), torch.zeros(processed)
    actual = kernels.gate(v, ones, zeros, weight, bias, 2)
    taps_weight = gsf_fast._taps_weight(weight).double()
    nt, p, h, w = v.shape
    products = torch.matmul(taps_weight, v.double().reshape(nt, 2, p // 2, h * w))
    taps = gsf_fast._fold_taps(products.view(nt, 54, h * w), h, w).view(nt // 2, 2, 2, 3, h, w)
    expected = torch.tanh(gsf_fast._sum_temporal_taps(taps, bias.double())).view(nt, 2, h, w)
    torch.testing.assert_close(actual.double(), expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
# groups of 2, 18, 32, 40, 50, 64, 70 and 82 channels: the channels-last means in blocks of up
# to 64 channels, each in 1, 2, 3 or 4 vectors (2; 18; 32; 40; 50; 64; 64 + 6; 64 + 18)
@pytest.mark.parametrize("processed", [4, 36, 64, 80, 100, 128, 140, 164])
@pytest.mark.parametrize("size", [(1, 1), (5, 5), (10, 10), (9, 33), (20, 20)])
def test_gate_is_the_same_in_both_layouts(kernels, size, processed, dtype):
    """NCHW and channels-last maps fill the gate's planes by different loops (bfloat16 NCHW
    maps straight into the dot products' channel pairs, in one pass): the same bits either
    way, with a batch norm that sends some values below zero (the ReLU) and rounds others.
    The spatial means too, up to the order of the sums (channels-last: blocks of up to 64
    channels, each summed in as few vectors as it needs)."""
    generator = torch.Generator().manual_seed(12)
    weight = torch.randn(2, processed // 2, 3, 3, 3, generator=generator) * 0.2
    bias = torch.randn(2, generator=generator)
    scale, shift = torch.rand(processed, generator=generator) + 0.5, torch.randn(processed, generator=generator)
    x, _, _ = blend_operands(2, 3, processed, processed + 4, size, False, dtype, seed=8)
    v = x[:, :processed]
    v_last = x.contiguous(memory_format=torch.channels_last)[:, :processed]
    means, means_last = torch.empty(v.shape[0], 2, processed), torch.empty(v.shape[0], 2, processed)
    gate = kernels.gate(v, scale, shift, weight, bias, 3, means)
    gate_last = kernels.gate(v_last, scale, shift, weight, bias, 3, means_last)
    torch.testing.assert_close(gate_last, gate, rtol=0, atol=0)
    torch.testing.assert_close(means_last, means, rtol=1e-6, atol=1e-7)  # (sums in another order)


def cpu_identity(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """The CPU's vendor (``GenuineIntel``, ``AuthenticAMD``, ...) and feature flags, as Linux
    reports them."""
    fields = {}
    for line in (cpuinfo.read_text() if cpuinfo.is_file() else "").splitlines():  # (no /proc: not Linux)
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # (the first processor's)
    return fields.get("vendor_id", ""), set(fields.get("flags", "").split())


def dot_products_possible() -> bool:
    """Whether this CPU and the kernels' build can run the bfloat16 gate in vdpbf16ps."""
    return cpu_kernels.built_capability() == "AVX512" and "avx512_bf16" in cpu_identity()[1]


def test_bf16_gate_takes_dot_products_by_default_except_on_intel(kernels):
    """vdpbf16ps did half the multiply-adds of the two AVX-512 FMA units on an Intel Xeon and
    sped the gate up on an AMD EPYC: by default the bfloat16 gate takes it wherever the CPU has
    it, except on Intel's. (Where LIGHTNING_GSF_CPU_BF16_DOT is set, the choice follows it.)"""
    setting = os.environ.get("LIGHTNING_GSF_CPU_BF16_DOT")
    wanted = cpu_identity()[0] != "GenuineIntel" if setting is None else setting != "0"
    assert kernels.bf16_dot_products() == (dot_products_possible() and wanted)


@pytest.mark.parametrize("setting", ["0", "1"])
def test_bf16_gate_dot_products_setting_overrides_the_default(kernels, setting):
    """LIGHTNING_GSF_CPU_BF16_DOT=0 keeps relu(bn(v)) and the weights float32 (as on CPUs without
    AVX512-BF16); 1 rounds them to bfloat16 for vdpbf16ps wherever the CPU has it (elsewhere the
    float32 path runs). Either way the gate passes its checks: against the PyTorch ops (an error
    bound for the rounded inputs), exact products, the same bits in both layouts. In a process of
    its own: the choice is made once."""
    expected = setting == "1" and dot_products_possible()
    script = (
        "import torch\n"
        "from lightning_gsf import cpu_kernels\n"
        "import test_gsf_cpu_kernels as t\n"
        "ops = cpu_kernels.cpu_kernels()\n"
        f"assert ops.bf16_dot_products() is {expected}\n"
        "for size, segments, channels_last, threads, processed in [((9, 33), 2, False, 1, 16), ((10, 10), 2, True, 1, 20),"
        " ((6, 5), 5, False, 3, 16), ((21, 20), 1, True, 8, 36)]:\n"
        "    t.check_gate(ops, size, segments, channels_last, torch.bfloat16, threads, processed)\n"
        "for channels_last in (False, True):\n"
        "    t.test_bf16_gate_dot_products_sum_exact_products(ops, (9, 33), 36, channels_last)\n"
        "t.test_gate_is_the_same_in_both_layouts(ops, (9, 33), 100, torch.bfloat16)\n"
        "print('checked')\n"
    )
    assert "checked" in run_with_the_tests(script, LIGHTNING_GSF_CPU_BF16_DOT=setting)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_cpu_path_takes_an_empty_batch(kernels, grad):
    """No frames in, none out (as the PyTorch-ops path): the gate's frame walk has no clips."""
    check_path_takes_an_empty_batch("forward_cpu", grad)


def test_gate_refuses_other_layouts_and_means_shapes(kernels):
    module = make_gsf(8, 2, 1.0, seed=1)
    weight, bias = module.conv3D.weight.detach().contiguous(), module.conv3D.bias.detach().contiguous()
    scale, shift = torch.ones(8), torch.zeros(8)
    x = torch.randn(4, 8, 5, 12)
    with pytest.raises(RuntimeError, match="pixels or channels must be contiguous"):
        kernels.gate(x[..., ::2], scale, shift, weight, bias, 2)
    with pytest.raises(RuntimeError, match="means must be"):
        kernels.gate(x, scale, shift, weight, bias, 2, torch.empty(4, 8, 2))


def test_gate_tanh_is_within_2e7_of_tanh(kernels):
    """The kernel's own tanh over a dense sweep of pre-activations: one centre-tap weight of 1
    passes v + bias through, so the gate is tanh(v + bias), as float32 sums leave it."""
    pixels = 200_000
    z = torch.cat([torch.linspace(-30, 30, pixels // 2), torch.linspace(-0.3, 0.3, pixels // 2),
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, 0.125, -0.125, 0.12499, 9.0, 20.0, 50.0, -50.0, 1e30])])
    bias = -60.0
    v = (z - bias).view(1, 1, 1, -1).repeat(1, 4, 1, 1)  # >= 0 where it matters: relu passes it
    weight = torch.zeros(2, 2, 3, 3, 3)
    weight[:, 0, 1, 1, 1] = 1.0  # channel 0 of each group, centre of the 3x3x3 kernel
    gate = kernels.gate(v, torch.ones(4), torch.zeros(4), weight, torch.full((2,), bias), 1)
    expected = torch.tanh((v[0, 0, 0].double() + bias))  # the float32 sum the kernel made
    torch.testing.assert_close(gate[0, 0, 0].double(), expected, rtol=0, atol=2e-7)
    torch.testing.assert_close(gate[0, 1, 0], gate[0, 0, 0], rtol=0, atol=0)
    assert gate.abs().max() <= 1.0
    nan = kernels.gate(torch.full((1, 4, 1, 1), float("nan")), torch.ones(4), torch.zeros(4), weight,
                       torch.zeros(2), 1)
    assert torch.isnan(nan).all()


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("num_segments,processed", [(1, 8), (3, 4), (4, 16), (3, 72)])  # (72: vectors of 16 and a tail)
def test_fusion_weights_equal_torch_ops(fusion_kernels, num_segments, processed, channels_last):
    module = make_gsf(processed, num_segments, 1.0, seed=6)
    x, gate, _ = blend_operands(2, num_segments, processed, processed, (4, 3), channels_last, torch.float32)
    weight, bias = gsf_fast.fusion_parameters(module)
    with torch.no_grad():
        expected, _, _ = gsf_fast._fusion_weights(x, gate, weight, bias, num_segments, channels_last)
        means, _ = gsf_fast._spatial_means(x, gate, channels_last)  # (NT, [v, g_1 v, g_2 v], P)
        half = processed // 2
        own_gate = torch.cat([means[:, 1, :half], means[:, 2, half:]], dim=1)  # the gate op's (NT, 2, P)
        actual = fusion_kernels.fusion_weights(torch.stack([means[:, 0], own_gate], dim=1), weight.contiguous(),
                                               bias.contiguous(), num_segments)
    torch.testing.assert_close(actual, expected.permute(0, 3, 1, 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("offset", [0.0, 300.0], ids=["centred", "mean_300_std_0.01"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (21, 20)])
def test_channel_moments_equal_float64(kernels, size, channels_last, dtype, offset):
    """The batch statistics of a channel slice, against float64 (two passes: the variance of
    values far from zero does not cancel), the same on 1 and 3 threads."""
    generator = torch.Generator().manual_seed(10)
    x = torch.randn(6, 20, *size, generator=generator) * (0.01 if offset else 1.0) + offset
    x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    v = x[:, :12]
    previous_threads = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 3):
            torch.set_num_threads(threads)
            results.append(kernels.channel_moments(v))
    finally:
        torch.set_num_threads(previous_threads)
    (mean, var), (mean_3, var_3) = results
    torch.testing.assert_close(mean_3, mean, rtol=0, atol=0)
    torch.testing.assert_close(var_3, var, rtol=0, atol=0)
    expected_var = v.double().var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean.double(), v.double().mean(dim=(0, 2, 3)), rtol=3e-7, atol=1e-6)  # float32 rounding
    torch.testing.assert_close(var.double(), expected_var, rtol=1e-5, atol=1e-8)


def fusion_weights_from_means(means, weight, bias, num_segments):
    """The fusion weights ``(N, T, 2, P/2)`` from the gate op's means ``(NT, [v, g_k v], P)``
    in plain differentiable ops: each group's descriptors (the shifted map's mean from the
    next / previous frame, the residual's), a zero-padded 3x3 conv over (channel, time), sigmoid."""
    nt, _, p = means.shape
    n, half = nt // num_segments, p // 2
    m = means.view(n, num_segments, 2, 2, half)  # (N, T, [v, g v], group, channel)
    mean_v, mean_y = m[:, :, 0], m[:, :, 1]
    shifted = torch.stack([F.pad(mean_y[:, 1:, 0], (0, 0, 0, 1)), F.pad(mean_y[:, :-1, 1], (0, 0, 1, 0))], dim=2)
    descriptors = torch.stack([shifted, mean_v - mean_y], dim=2).permute(0, 3, 2, 4, 1)  # (N, group, i, C, T)
    logits = torch.cat([F.conv2d(descriptors[:, k], weight[k:k + 1], bias[k:k + 1], padding=1) for k in range(2)],
                       dim=1)  # (N, group, C, T)
    return torch.sigmoid(logits).permute(0, 3, 1, 2)


def test_fusion_weights_sigmoid_over_a_dense_sweep(kernels):
    """The fusion weights' sigmoid (plain arithmetic that vectorises) against torch.sigmoid,
    through logits that are one descriptor each (the centre tap of the residual's mean):
    dense around 0, out to +-120 and +-1e30 where it saturates, and a NaN (last: the zero
    weights of its neighbours' other taps carry it to the channel before, as in a conv)."""
    sweep = torch.cat([torch.linspace(-120, 120, 4801), torch.linspace(-1, 1, 2001), torch.linspace(-20, 20, 4001),
                       torch.tensor([1e30, -1e30, 0.0, -0.0, 1e-30, -1e-30, float("nan")])])
    half = sweep.numel()
    means = torch.zeros(1, 2, 2 * half)
    means[0, 0] = sweep.repeat(2)  # mean(v); mean(g v) = 0: the residual's mean is the sweep
    weight = torch.zeros(2, 2, 3, 3)
    weight[:, 1, 1, 1] = 1.0  # each group's residual descriptor, centre tap
    out = kernels.fusion_weights(means, weight, torch.zeros(2), 1)
    expected = torch.sigmoid(sweep.double()).float()
    relative = sweep[:-2] >= -80  # (below, 1 / (exp(80) + 1): within 2e-35 of the true value)
    for k in range(2):
        actual = out[0, 0, k, :-2]
        torch.testing.assert_close(actual[relative], expected[:-2][relative], rtol=4e-7, atol=0)
        assert ((actual[~relative] - expected[:-2][~relative]).abs() <= 2e-35).all()
        assert out[0, 0, k, -2:].isnan().all()


# (33, 144): Triton's tiles of 64 frames x 64 channels, two per group
@pytest.mark.parametrize("num_segments,processed", [(1, 8), (2, 4), (5, 12), (33, 144)])
def test_fusion_weights_backward_equals_autograd(fusion_kernels, num_segments, processed):
    """The means' and the fusion convs' gradients, against autograd through the plain-op
    twin in float64 (whose forward matches the kernel's too)."""
    generator = torch.Generator().manual_seed(num_segments + processed)
    nt = 2 * num_segments
    means = torch.randn(nt, 2, processed, generator=generator, dtype=torch.float64).requires_grad_()
    weight = torch.randn(2, 2, 3, 3, generator=generator, dtype=torch.float64).requires_grad_()
    bias = torch.randn(2, generator=generator, dtype=torch.float64).requires_grad_()
    expected = fusion_weights_from_means(means, weight, bias, num_segments)
    weights = fusion_kernels.fusion_weights(means.detach().float(), weight.detach().float(), bias.detach().float(),
                                            num_segments)
    torch.testing.assert_close(weights.double(), expected, rtol=1e-5, atol=1e-6)
    grad_weights = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    expected.backward(grad_weights)
    grad_means, grad_weight, grad_bias = fusion_kernels.fusion_weights_backward(
        grad_weights.float().view(nt, 2, processed // 2), weights, means.detach().float(), weight.detach().float(),
        num_segments)
    torch.testing.assert_close(grad_means.double(), means.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_weight.double(), weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_bias.double(), bias.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("size", [(1, 1), (5, 4), (3, 9)])
def test_gate_gradient_adds_the_means_gradient_through_tanh(fusion_kernels, size, channels_last, dtype):
    """grad_z = (the blend's gate gradient + sum over group k's channels of the gradient of
    mean(g_k v) times v / (H*W)) * (1 - g^2), from a channel slice of the input."""
    (h, w), nt, p = size, 6, 12
    x, _, _ = blend_operands(2, 3, p, p + 4, size, channels_last, dtype, seed=8)
    v = x[:, :p]
    generator = torch.Generator().manual_seed(9)
    gate = torch.rand(nt, 2, h * w, generator=generator) * 2 - 1
    grad_gate = torch.randn(nt, 2, h * w, generator=generator)
    grad_means = torch.randn(nt, 2, p, generator=generator)
    groups = v.double().reshape(nt, 2, p // 2, h * w)
    from_means = (grad_means[:, 1].double().view(nt, 2, p // 2, 1) * groups).sum(dim=2) / (h * w)
    expected = (grad_gate.double() + from_means) * (1 - gate.double() ** 2)
    fusion_kernels.gate_gradient(grad_gate, v, gate, grad_means, 3)
    torch.testing.assert_close(grad_gate.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grad_layout", ["dense", "other_layout", "expanded"])
@pytest.mark.parametrize("batch_statistics", [True, False], ids=["batch_stats", "running_stats"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_backward_in_one_call_equals_the_steps(kernels, channels_last, dtype, batch_statistics, grad_layout):
    """The C++ ``backward`` (what training runs) against ``_kernel_backward`` calling the same
    kernels one by one: every gradient bit for bit, for an output gradient in the input's
    layout, in the other one, and expanded (as ``out.sum()`` gives it)."""
    module = make_gsf(24, 3, 0.5, seed=7)
    x = make_input(2, 3, 24, 5, seed=7).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    p = module.processed
    mean, var = gsf_fast._batch_statistics(x[:, :p])
    invstd = torch.rsqrt(var + module.bn.eps)
    weight, bias = gsf_fast.fusion_parameters(module)
    parameters = [t.detach() for t in (module.bn.weight, module.bn.bias, module.conv3D.weight, module.conv3D.bias,
                                       weight, bias)]
    cpp = gsf_fast._CppKernels(kernels)
    _, v, gate, weights, saved = gsf_fast._kernel_forward(cpp, x, mean, invstd, p, 3, False, True, *parameters)
    if grad_layout == "expanded":
        grad_out = torch.ones((), dtype=dtype).expand(x.shape)
    else:
        grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(8)).to(dtype)
        if channels_last == (grad_layout == "dense"):
            grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    results = []
    for backward in (cpp.backward, functools.partial(gsf_fast._kernel_backward, cpp)):
        grad_x = torch.zeros_like(x)
        grads = backward(grad_out, grad_x, v, gate, weights, mean, invstd, *parameters[:3], parameters[4], saved, 3,
                         batch_statistics, channels_last)
        results.append((grad_x, *grads))
    for one_call, steps in zip(*results):
        assert one_call.dtype == steps.dtype and one_call.shape == steps.shape
        torch.testing.assert_close(one_call, steps, rtol=0, atol=0)


@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("channels,num_segments,ratio,batch,size", CASES)
def test_cpu_path_matches_naive_spec(kernels, channels, num_segments, ratio, batch, size, training, inplace):
    check_path_matches_naive_spec("forward_cpu", channels, num_segments, ratio, batch, size + 2, training, inplace)


@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cpu_path_in_channels_last(kernels, training, inplace):
    """Channels-last in, channels-last out (over the input itself when in place), large enough
    for the slice fold."""
    check_path_matches_naive_spec("forward_cpu", 24, 2, 0.5, 2, 21, training, inplace, channels_last=True)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
@pytest.mark.parametrize("no_grad", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cpu_path_without_autograd(kernels, training, no_grad, inplace, channels_last):
    """Inference: every step in the kernels (relu(bn(v)), gate, fusion weights, blend)."""
    module = make_gsf(24, 3, 0.5, seed=5).train(training)
    module.inplace = inplace
    naive_module = copy.deepcopy(module).double()
    x = make_input(2, 3, 24, 21, seed=5)
    expected = naive_gsf(x.double(), naive_module, training)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with no_grad():
        output = module.forward_cpu(x)
    assert (output.data_ptr() == x.data_ptr()) == inplace
    assert_close_to_float64(output, expected.output)
    assert_close_to_float64(module.bn.running_mean, expected.running_mean)
    assert_close_to_float64(module.bn.running_var, expected.running_var)


@pytest.mark.parametrize("grad", [True, False], ids=["train_step", "inference"])
def test_cpu_path_keeps_bf16(kernels, grad):
    """Under bf16 autocast (as in a network), a bf16 input stays bf16 (output and input
    gradient), close to the float32 spec."""
    module = make_gsf(16, 4, 0.5, seed=0)
    reference = copy.deepcopy(module)
    x = make_input(2, 4, 16, 6, seed=0)
    x_bf16 = x.bfloat16().requires_grad_(grad)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        out = module.forward_cpu(x_bf16 * 1.0)
    expected = reference.forward_reference(x.bfloat16().float())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)
    if grad:
        out.float().sum().backward()
        assert x_bf16.grad.dtype == torch.bfloat16
        assert all(param.grad.dtype == torch.float32 for param in module.parameters())


@settings(max_examples=15, deadline=None)
@given(
    quarter=st.integers(min_value=1, max_value=5),
    extra=st.integers(min_value=0, max_value=6),
    num_segments=st.integers(min_value=1, max_value=4),
    batch=st.integers(min_value=1, max_value=2),
    height=st.integers(min_value=1, max_value=22),
    width=st.integers(min_value=1, max_value=22),
    training=st.booleans(),
    grad=st.booleans(),
    channels_last=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_cpu_path_equals_reference_property(quarter, extra, num_segments, batch, height, width, training, grad,
                                            channels_last, seed):
    """Any split, map size (single pixels and rows, both sides of the slice-fold threshold),
    clip length and layout, with and without autograd."""
    assume(not training or batch * num_segments * height * width > 1)  # BN needs 2 values per channel
    channels, ratio = split_with(quarter, extra)
    module = make_gsf(channels, num_segments, ratio, seed).train(training)
    reference = copy.deepcopy(module).double()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch * num_segments, channels, height, width, generator=generator)
    x_ref = x.double().requires_grad_()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out = module.forward_cpu(x)
    out_ref = reference.forward_reference(x_ref)
    assert_close_to_float64(out, out_ref)
    assert_close_to_float64(module.bn.running_var, reference.bn.running_var)
    if grad:
        out.square().sum().backward()
        out_ref.square().sum().backward()
        assert_close_to_float64(x.grad, x_ref.grad)


@pytest.mark.parametrize("num_segments", [1, 3])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (6, 5)])
def test_gate_backward_equals_unfold_of_temporal_taps(kernels, size, num_segments):
    """The adjoint of the gate's sums: each frame's tap kt gets the gate gradient of frame
    t - kt + 1, spread by the slice / F.unfold twin."""
    h, w = size
    generator = torch.Generator().manual_seed(5)
    grad_z = torch.randn(2 * num_segments, 2, h, w, generator=generator)
    actual = kernels.gate_backward(grad_z, num_segments, h, w, torch.float32).view(2, num_segments, 2, 3, 9, h * w)
    grad_taps = torch.zeros(2, num_segments, 2, 3, h, w)  # (N, T, group, kt): frame t's tap kt feeds t + 1 - kt
    z = grad_z.view(2, num_segments, 2, h, w)
    grad_taps[:, :, :, 1] = z
    grad_taps[:, :-1, :, 0] = z[:, 1:]
    grad_taps[:, 1:, :, 2] = z[:, :-1]
    expected = gsf_fast._unfold_taps(grad_taps.reshape(2 * num_segments, 6, h, w), h, w)
    torch.testing.assert_close(actual.reshape(2 * num_segments, 54, h * w), expected, rtol=0, atol=0)


@pytest.mark.parametrize("offset", [0.0, 300.0], ids=["centred", "mean_300_std_0.01"])
# channels-last: one partial 64-pixel block, or one and a part; 8 x 8 tiles, and for 12 channels 4 left over
@pytest.mark.parametrize("processed", [8, 12])
@pytest.mark.parametrize("size", [(5, 4), (9, 9)])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_norm_relu_backward_and_input_gradient_equal_torch_ops(kernels, channels_last, size, processed, offset):
    """The ReLU mask and the batch norm's two sums, then the input gradient's three parts,
    against ``threshold_backward`` / ``native_batch_norm_backward`` and plain arithmetic; with
    a large mean and small spread too (``xhat`` must come from ``v - mean``, not from two
    large terms that cancel)."""
    (h, w), nt, p = size, 6, processed
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(nt, p + 4, h, w, generator=generator)
    if offset:
        x = x * 0.01 + offset
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    v = x[:, :p]
    weight, bias = torch.randn(p, generator=generator), torch.randn(p, generator=generator)
    mean, var = gsf_fast._batch_statistics(v)
    invstd = torch.rsqrt(var + 1e-5)
    scale, shift = weight * invstd, bias - mean * weight * invstd
    grad_activated = torch.randn(nt, p, h, w, generator=generator)
    activated = torch.relu(v * scale.view(1, p, 1, 1) + shift.view(1, p, 1, 1))
    expected_normed = torch.ops.aten.threshold_backward(grad_activated, activated, 0)
    grad_normed = grad_activated.clone()
    sum_grad, sum_grad_xhat = kernels.norm_relu_backward(grad_normed, v, scale, shift, mean, invstd)
    if offset:  # v * scale + shift cancels: a pre-activation within rounding of 0 may land on either side
        assert (grad_normed != expected_normed).float().mean() < 0.01
        expected_normed = grad_normed  # the sums and the input gradient from the kernel's own mask
    torch.testing.assert_close(grad_normed, expected_normed, rtol=0, atol=0)
    xhat = (v - mean.view(1, p, 1, 1)) * invstd.view(1, p, 1, 1)
    torch.testing.assert_close(sum_grad, expected_normed.sum(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sum_grad_xhat, (expected_normed * xhat).sum(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)

    grad_v = torch.randn(v.shape, generator=generator)  # the blend's, in v's layout
    grad_v = grad_v.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    grad_means = torch.randn(nt, 2, p, generator=generator)  # of mean(v) and of mean(g_k v), group k's channels
    gate = torch.rand(nt, 2, h * w, generator=generator) * 2 - 1
    centre, slope = sum_grad / (nt * h * w), sum_grad_xhat / (nt * h * w)
    out = torch.empty_like(x)
    kernels.input_gradient(v, grad_normed, grad_v, grad_means, gate, weight * invstd, centre, slope, mean, invstd,
                           out[:, :p])
    g = gate.view(nt, 2, 1, h, w).expand(nt, 2, p // 2, h, w).reshape(nt, p, h, w)
    expected = (grad_v + (weight * invstd).view(1, p, 1, 1) * (expected_normed - centre.view(1, p, 1, 1)
                                                               - xhat * slope.view(1, p, 1, 1))
                + (grad_means[:, 0].view(nt, p, 1, 1) + grad_means[:, 1].view(nt, p, 1, 1) * g) / (h * w))
    torch.testing.assert_close(out[:, :p], expected, rtol=1e-5, atol=1e-5)


def test_cpu_path_trains_in_bf16_close_to_float64(kernels):
    """bf16 autocast training: the input and parameter gradients at bf16 precision of the spec's."""
    module = make_gsf(16, 4, 0.5, seed=3)
    reference = copy.deepcopy(module).double()
    x = make_input(2, 4, 16, 6, seed=3)
    x_bf16 = x.bfloat16().requires_grad_()
    x_ref = x.bfloat16().double().requires_grad_()
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module.forward_cpu(x_bf16 * 1.0)
    (out.float() * upstream).sum().backward()
    (reference.forward_reference(x_ref) * upstream.double()).sum().backward()
    torch.testing.assert_close(x_bf16.grad.double(), x_ref.grad, rtol=0.05, atol=0.05)
    for (name, param), param_ref in zip(module.named_parameters(), reference.parameters()):
        scale = max(1.0, param_ref.grad.abs().max().item())
        torch.testing.assert_close(param.grad.double(), param_ref.grad, rtol=0.05, atol=0.05 * scale, msg=name)


def test_cpu_path_hands_other_inputs_to_torch_ops_or_refuses_them(kernels):
    """An input in neither NCHW nor channels-last memory (channels innermost, frames not
    outermost): PyTorch ops, in training too; one that overlaps itself, in place: written out of
    place, the spec's values; not 4D: GSF's error; a second-order gradient: a clear refusal."""
    module = make_gsf(16, 4, 0.5, seed=1)
    x = make_input(1, 4, 16, 5, seed=1)
    permuted = x.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1).requires_grad_()  # (H, W, NT, C) memory
    out = module.forward_cpu(permuted * 1.0)
    out.square().sum().backward()
    x_ref = x.clone().requires_grad_()
    expected = copy.deepcopy(module).forward_reference(x_ref)
    expected.square().sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(permuted.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    module.inplace = True
    expanded = x[:1].expand(4, -1, -1, -1)
    out = module.forward_cpu(expanded)
    torch.testing.assert_close(out, copy.deepcopy(module).forward_reference(expanded.clone()), rtol=1e-5, atol=1e-5)
    assert torch.equal(expanded, x[:1].expand(4, -1, -1, -1))
    with pytest.raises(ValueError, match=r"expects \(N\*T, 16, H, W\)"):
        module.forward_cpu(x[0])
    y = make_input(1, 4, 16, 5, seed=2).requires_grad_()
    (grad,) = torch.autograd.grad(module.forward_cpu(y * 1.0).square().sum(), y, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


def test_fake_tensors_go_to_torch_ops(kernels):
    """Shape propagation (FakeTensorMode, as torch.export and the compiler use) never reaches
    the C++ loops, which need real memory."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    module = make_gsf(16, 4, 0.5, seed=1).eval()
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        x = mode.from_tensor(make_input(1, 4, 16, 5, seed=1))
        with torch.no_grad():
            out = module(x)
    assert out.shape == (4, 16, 5, 5)


def test_the_build_falls_back_to_the_baseline_instruction_set(kernels, monkeypatch, caplog):
    """A compiler that cannot build for the CPU's level (too old for -march=x86-64-v4, say)
    still gets the kernels, built for the baseline."""
    from torch.utils import cpp_extension

    names = []

    def load(name, **_kwargs):
        names.append(name)
        if not name.endswith("_default"):
            raise RuntimeError("g++: error: unrecognized command-line option '-march=x86-64-v4'")

    monkeypatch.setattr(cpp_extension, "load", load)
    monkeypatch.setattr(cpu_kernels, "cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(cpu_kernels, "_build", cpu_kernels._build.__wrapped__)
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.cpu_kernels"):
        assert cpu_kernels.built_capability() == "DEFAULT"
    assert [name.rsplit("_", 1)[1] for name in names] == ["avx512", "default"]
    assert "x86-64-v4" in caplog.text
    assert not cpu_kernels.usable(torch.zeros(4, dtype=torch.bfloat16))  # bf16 stays on PyTorch ops there


def test_the_baseline_build_computes_the_same(tmp_path):
    """The kernels built without vector extensions (torch's capability DEFAULT: the SSE2 baseline
    on x86-64), in a process of their own: the same numbers as the spec."""
    script = (
        "import torch\n"
        "from lightning_gsf import cpu_kernels\n"
        "from test_gsf import make_gsf, make_input\n"
        "assert cpu_kernels.built_capability() == 'DEFAULT', cpu_kernels.built_capability()\n"
        "module = make_gsf(16, 4, 0.5, seed=0)\n"
        "x = make_input(2, 4, 16, 6, seed=0).requires_grad_()\n"
        "x_ref = x.detach().clone().requires_grad_()\n"
        "out = module.forward_cpu(x * 1.0)\n"
        "expected = module.forward_reference(x_ref)\n"
        "out.square().sum().backward(); expected.square().sum().backward()\n"
        "assert (out - expected).abs().max() < 1e-5 and (x.grad - x_ref.grad).abs().max() < 1e-4\n"
        "print('same')\n"
    )
    assert "same" in run_with_the_tests(script, ATEN_CPU_CAPABILITY="default")


def run_with_the_tests(script: str, **environment: str) -> str:
    """``script`` in a Python process of its own (the kernels' build and run-time choices are
    made once per process) that can import the test modules, with ``environment`` added; its
    standard output."""
    env = {**os.environ, **environment, "PYTHONPATH": str(Path(__file__).parent)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def reference_input_gradient(module, x, consumer):
    x_ref = x.detach().clone().requires_grad_()
    consumer(copy.deepcopy(module).forward_reference(x_ref * 1.0)).backward()
    return x_ref.grad


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_input_gradient_overwrites_an_output_gradient_nothing_else_holds(kernels, channels_last):
    """In a plain chain the output's gradient (fresh from the next layer) becomes the input's:
    no new tensor, no copy of the channels GSF passes through."""
    module = make_gsf(16, 4, 0.5, seed=2)
    x = make_input(2, 4, 16, 5, seed=2)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    weights = weights.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    consumer = lambda y: (y * weights).sum()  # noqa: E731  (its gradient: weights, in their layout)
    after_gsf, before_gsf = between_spies(module.forward_cpu, x, consumer)
    assert before_gsf == after_gsf
    torch.testing.assert_close(x.grad, reference_input_gradient(module, x, consumer), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("holder", HOLDERS)
def test_input_gradient_leaves_a_held_output_gradient_alone(kernels, holder):
    """Where anything else holds the output's gradient (a hook keeping it or a view of it, a
    second consumer of the output sharing it), or it is not a dense map, GSF writes the input's
    gradient into a new tensor: what the others hold keeps its value, and so does a retained
    gradient."""
    module = make_gsf(16, 4, 0.5, seed=2)
    x = make_input(2, 4, 16, 5, seed=2).requires_grad_()
    kept, other = [], torch.randn(x.shape, requires_grad=True)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    consumer = holding_consumer(holder, weights, other, kept)
    after_gsf, before_gsf = between_spies(module.forward_cpu, x, consumer)
    if holder in ("hook", "hook_view", "expanded"):
        # (retain_grad keeps a copy, and a second consumer may have let go before GSF's
        # backward runs: either way the gradient is GSF's to write over, and their values
        # are checked here instead)
        assert before_gsf != after_gsf
    check_holders_kept_their_values(holder, kept, weights, other)
    torch.testing.assert_close(x.grad, reference_input_gradient(module, x, consumer), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("capability", ["AVX512", "AVX2", "DEFAULT"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_forward_takes_the_kernels_for_float32_and_vectorised_bf16(kernels, monkeypatch, dtype, capability):
    """bf16 only where the build vectorises its conversions (AVX2 / AVX-512)."""
    monkeypatch.setattr(cpu_kernels, "built_capability", lambda: capability)
    takes_kernels = dtype == torch.float32 or (dtype == torch.bfloat16 and capability != "DEFAULT")
    path = "forward_cpu" if takes_kernels else "forward_torch"
    calls = []
    for name in ("forward_cpu", "forward_torch"):
        monkeypatch.setattr(GSF, name, lambda self, x, name=name: calls.append(name) or x)
    make_gsf(16, 4, 0.25, seed=0).to(dtype)(make_input(1, 4, 16, 3, seed=0).to(dtype))
    assert calls == [path]


def record_paths(monkeypatch) -> list[str]:
    """The names of GSF's paths as they are called, in order (each still runs): its methods
    ``forward_cpu`` and ``forward_torch``, and ``infer_in_cpu_kernels``, the one-call inference."""
    calls = []

    def record(owner, name):
        function = getattr(owner, name)

        def recorded(module, *args):
            calls.append(name)
            return function(module, *args)

        monkeypatch.setattr(owner, name, recorded)

    for name in ("forward_cpu", "forward_torch"):
        record(GSF, name)
    record(gsf_fast, "infer_in_cpu_kernels")
    return calls


@pytest.mark.parametrize("capability", ["AVX512", "DEFAULT"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bn_mode", ["running_stats", "batch_stats", "untracked"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "two_pixel_strides"])
@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
def test_inference_is_one_kernel_call_where_the_kernels_take_it(kernels, monkeypatch, dtype, capability, bn_mode,
                                                                layout, inplace):
    """Inference with the running statistics, on a map the kernels take (NCHW or channels-last,
    float32, or bf16 on a build with vector conversions), goes straight to ``infer``; batch
    statistics (a training batch norm, or one that tracks none), other layouts and the
    baseline build's bf16 take the longer way. Either way the numbers are the spec's."""
    monkeypatch.setattr(cpu_kernels, "built_capability", lambda: capability)
    module = make_gsf(16, 4, 0.25, seed=0).to(dtype).eval()
    module.inplace = inplace
    if bn_mode == "batch_stats":
        module.bn.train()
    elif bn_mode == "untracked":
        module.bn.track_running_stats = False
        module.bn.running_mean = module.bn.running_var = module.bn.num_batches_tracked = None
    x = make_input(1, 4, 16, 5, seed=0).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "two_pixel_strides":
        x = x.transpose(2, 3)
    expected = module.forward_reference(x)
    kernels_take = dtype == torch.float32 or capability != "DEFAULT"
    one_call = kernels_take and bn_mode == "running_stats" and layout != "two_pixel_strides"
    calls = record_paths(monkeypatch)
    with torch.inference_mode():
        out = module(x.clone())
    assert calls[0] == ("infer_in_cpu_kernels" if one_call else "forward_cpu" if kernels_take else "forward_torch")
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out, expected, rtol=tolerance, atol=tolerance)


def test_the_kernels_take_plain_float32_and_bf16_cpu_tensors():
    class Subclass(torch.Tensor):
        pass

    assert cpu_kernels.takes(torch.zeros(1)) and cpu_kernels.takes(torch.zeros(1, dtype=torch.bfloat16))
    assert not cpu_kernels.takes(torch.zeros(1, device="meta"))
    assert not cpu_kernels.takes(torch.zeros(1, dtype=torch.float64))
    assert not cpu_kernels.takes(torch.zeros(1).as_subclass(Subclass))


def test_inference_reads_a_parametrised_weight(kernels, monkeypatch):
    """The one-call inference reads parameters from the modules' own dicts, where a
    parametrised weight is not: it reads that one as the module computes it."""
    from torch.nn.utils import parametrize

    class Doubled(nn.Module):
        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            return 2 * weight

    module = make_gsf(16, 4, 0.25, seed=3).eval()
    plain = copy.deepcopy(module)
    parametrize.register_parametrization(module.conv3D, "weight", Doubled())
    parametrize.register_parametrization(module.bn, "bias", Doubled())
    with torch.no_grad():
        plain.conv3D.weight.mul_(2), plain.bn.bias.mul_(2)
    x = make_input(1, 4, 16, 5, seed=3)
    calls = record_paths(monkeypatch)
    with torch.inference_mode():
        out, expected = module(x.clone()), plain(x.clone())
    assert calls == ["infer_in_cpu_kernels"] * 2
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("weight_layout", ["channels_last", "transposed"])
def test_inference_reads_fusion_weights_in_any_layout_without_copies(kernels, monkeypatch, weight_layout):
    """A network's conv weights made channels-last include the fusion convs' (1, 2, 3, 3)
    ones: ``infer`` reads them through their strides (the same bits as contiguous weights),
    without a copy op on every call."""
    module = make_gsf(16, 4, 0.25, seed=5).eval()
    module.inplace = True  # (out of place, the other channels are copied)
    plain = copy.deepcopy(module)
    with torch.no_grad():
        for conv in (module.channel_conv1, module.channel_conv2):
            if weight_layout == "channels_last":
                conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
            else:  # the same values, stored with the last two dimensions swapped
                conv.weight.data = conv.weight.data.transpose(2, 3).contiguous().transpose(2, 3)
            assert not conv.weight.is_contiguous()
    x = make_input(1, 4, 16, 5, seed=5).contiguous(memory_format=torch.channels_last)
    calls = record_paths(monkeypatch)
    out = x.clone()
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        out = module(out)
    copies = [event.name for event in profile.events() if event.name in ("aten::clone", "aten::copy_", "aten::to")]
    with torch.inference_mode():
        expected = plain(x.clone())
    assert calls[0] == "infer_in_cpu_kernels"
    assert copies == []
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_infer_takes_fusion_weights_of_any_shape_with_their_values(kernels):
    """``infer`` reads a fusion weight as its 18 values in order: viewed with more dimensions
    than it walks by strides (nine), or as bfloat16 (both read through a float32 copy), the
    same as the (1, 2, 3, 3) float32 weight."""
    module = make_gsf(16, 4, 0.25, seed=6).eval()
    x = make_input(1, 4, 16, 5, seed=6)
    parameters = list(gsf_fast.inference_parameters(module))
    head = (module.processed, module.num_segments, module.bn.running_mean, module.bn.running_var, module.bn.eps)
    weight = parameters[4]
    for given, as_float32 in ((weight.reshape(1, 1, 1, 1, 1, 1, 1, 2, 9), weight),
                              (weight.bfloat16(), weight.bfloat16().float())):
        out, expected = x.clone(), x.clone()
        kernels.infer(expected, expected, *head, *parameters[:4], as_float32, *parameters[5:])
        kernels.infer(out, out, *head, *parameters[:4], given, *parameters[5:])
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="fusion weight .* must be a CPU tensor of 18 values"):
        kernels.infer(x.clone(), x.clone(), *head, *parameters[:4], parameters[4][:, :1], *parameters[5:])


def test_cpu_path_refuses_other_dtypes_and_hands_odd_layouts_to_torch_ops(kernels, monkeypatch):
    module = make_gsf(16, 4, 0.5, seed=1)
    with pytest.raises(ValueError, match="float32 or bfloat16 CPU tensors, got torch.float64"):
        module.double().forward_cpu(make_input(1, 4, 16, 3, seed=1).double())
    module.float()
    x = make_input(1, 4, 16, 5, seed=1).transpose(2, 3)  # pixels with two strides
    calls = []
    forward_torch = GSF.forward_torch
    monkeypatch.setattr(GSF, "forward_torch", lambda self, x: calls.append(1) or forward_torch(self, x))
    out = module.forward_cpu(x)
    assert calls == [1]
    torch.testing.assert_close(out, module.forward_reference(x), rtol=1e-5, atol=1e-5)


def test_turned_off_kernels_leave_forward_on_torch_ops(monkeypatch, caplog):
    monkeypatch.setenv("LIGHTNING_GSF_CPU_KERNELS", "0")
    monkeypatch.setattr(cpu_kernels, "_build", cpu_kernels._build.__wrapped__)
    with caplog.at_level(logging.INFO, logger="lightning_gsf.cpu_kernels"):
        assert cpu_kernels.cpu_kernels() is None
    assert "turned off" in caplog.text
    assert not cpu_kernels.usable(torch.zeros(1)) and cpu_kernels.takes(torch.zeros(1))
    module = make_gsf(16, 4, 0.25, seed=0)
    x = make_input(1, 4, 16, 3, seed=0)
    torch.testing.assert_close(module(x), module.forward_reference(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="failed to build"):
        module.forward_cpu(x)


def test_a_failed_build_is_logged_and_falls_back(monkeypatch, caplog):
    from torch.utils import cpp_extension

    def fail(**_kwargs):
        raise RuntimeError("Error building extension 'lightning_gsf_cpu': g++ not found")

    monkeypatch.setattr(cpp_extension, "load", fail)
    monkeypatch.setattr(cpu_kernels, "_build", cpu_kernels._build.__wrapped__)
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.cpu_kernels"):
        assert cpu_kernels.cpu_kernels() is None
    assert "g++ not found" in caplog.text and "PyTorch operations instead" in caplog.text


def test_kernels_reject_bad_operands_clearly(kernels):
    x, gate, weights = blend_operands(1, 4, 8, 8, (3, 3), False, torch.float32)
    with pytest.raises(RuntimeError, match="float32 or bfloat16 CPU tensors only"):
        kernels.blend(x.double(), gate, weights, x.double(), 4)
    with pytest.raises(RuntimeError, match="not a whole number of clips"):
        kernels.blend(x, gate, weights, torch.empty_like(x), 3)
    with pytest.raises(RuntimeError, match=r"gate \(N\*T, 2, H, W\) must be a contiguous float32"):
        kernels.blend(x, gate[:, :2], weights, torch.empty_like(x), 4)


def test_cpu_path_passes_no_gradient_through_the_relu_at_zero(kernels):
    check_path_passes_no_gradient_through_the_relu_at_zero("forward_cpu")
