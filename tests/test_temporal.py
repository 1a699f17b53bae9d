"""TSM's temporal shift against a frame-by-frame reading of its definition."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gradient_holders import HOLDERS, between_spies, check_holders_kept_their_values, holding_consumer
from lightning_gsf import compiled_ops, cpu_kernels, temporal
from lightning_gsf.temporal import TemporalShift, _shift_compilable, temporal_shift


def naive_shift(x: torch.Tensor, num_segments: int, fold_div: int) -> torch.Tensor:
    """One frame and one channel at a time: the first C/fold_div channels take frame t+1,
    the next C/fold_div frame t-1 (zero beyond the clip), the rest stay."""
    nt, c = x.shape[:2]
    fold = c // fold_div
    frames = []
    for index in range(nt):
        clip_start = index - index % num_segments
        t = index - clip_start
        channels = []
        for ch in range(c):
            if ch < fold:
                source_t = t + 1
            elif ch < 2 * fold:
                source_t = t - 1
            else:
                source_t = t
            if 0 <= source_t < num_segments:
                channels.append(x[clip_start + source_t, ch])
            else:
                channels.append(torch.zeros_like(x[index, ch]))
        frames.append(torch.stack(channels))
    return torch.stack(frames)


def compilable_shift(x: torch.Tensor, num_segments: int, fold_div: int) -> torch.Tensor:
    return _shift_compilable(x, num_segments, x.shape[1] // fold_div)


@pytest.mark.parametrize("shift", [temporal_shift, compilable_shift], ids=["eager", "compilable"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize(
    "batch,num_segments,channels,fold_div",
    [(2, 4, 16, 8), (1, 8, 8, 8), (3, 3, 17, 8), (2, 5, 12, 4), (1, 1, 16, 8), (2, 3, 4, 8)],
)
def test_matches_naive_shift_values_and_gradients(batch, num_segments, channels, fold_div, channels_last, shift):
    generator = torch.Generator().manual_seed(channels)
    x = torch.randn(batch * num_segments, channels, 3, 4, generator=generator)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    x_naive = x.detach().clone().requires_grad_()
    out = shift(x, num_segments, fold_div)
    expected = naive_shift(x_naive, num_segments, fold_div)
    assert torch.equal(out, expected)
    upstream = torch.randn(out.shape, generator=generator)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    assert torch.equal(x.grad, x_naive.grad)
    if channels_last and shift is temporal_shift:  # the compiler picks its own layouts
        assert out.is_contiguous(memory_format=torch.channels_last)


def naive_input_gradient(x: torch.Tensor, num_segments: int, consumer) -> torch.Tensor:
    x_naive = x.detach().clone().requires_grad_()
    consumer(naive_shift(x_naive * 1.0, num_segments, 8)).backward()
    return x_naive.grad


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("batch,num_segments", [(2, 4), (1, 1), (3, 2)])
def test_gradient_moves_within_an_output_gradient_nothing_else_holds(batch, num_segments, channels_last):
    """In a plain chain the backward shifts the output's gradient in place: no new tensor."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch * num_segments, 16, 3, 5).contiguous(memory_format=memory_format).requires_grad_()
    weights = torch.randn(x.shape).contiguous(memory_format=memory_format)
    consumer = lambda y: (y * weights).sum()  # noqa: E731  (its gradient: weights, in their layout)
    after_shift, before_shift = between_spies(lambda v: temporal_shift(v, num_segments), x, consumer)
    assert before_shift == after_shift
    assert torch.equal(x.grad, naive_input_gradient(x, num_segments, consumer))


@pytest.mark.parametrize("holder", HOLDERS)
def test_gradient_leaves_a_held_output_gradient_alone(holder):
    """Where anything else holds the output's gradient, or it is not a dense map, the backward
    writes a new tensor and what the others hold keeps its value."""
    x = torch.randn(2 * 4, 16, 3, 5, requires_grad=True)
    kept, other = [], torch.randn(x.shape, requires_grad=True)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    consumer = holding_consumer(holder, weights, other, kept)
    after_shift, before_shift = between_spies(lambda v: temporal_shift(v, 4), x, consumer)
    if holder in ("hook", "hook_view", "expanded"):  # (see the GSF test of the same name)
        assert before_shift != after_shift
    check_holders_kept_their_values(holder, kept, weights, other)
    assert torch.equal(x.grad, naive_input_gradient(x, 4, consumer))


def test_moves_exactly_one_eighth_of_the_channels_each_way():
    num_segments, channels = 4, 32
    # Frame t of the clip holds the value t + 1 everywhere.
    x = torch.arange(1.0, num_segments + 1).view(num_segments, 1, 1, 1).expand(num_segments, channels, 2, 2)
    out = temporal_shift(x.contiguous(), num_segments)
    per_channel = out[:, :, 0, 0]  # (T, C)
    frame_values = torch.arange(1.0, num_segments + 1)
    backwards = (per_channel == (frame_values + 1).where(frame_values < num_segments, 0)[:, None]).all(dim=0)
    forwards = (per_channel == (frame_values - 1)[:, None]).all(dim=0)
    unchanged = (per_channel == frame_values[:, None]).all(dim=0)
    assert backwards.nonzero().flatten().tolist() == list(range(4))
    assert forwards.nonzero().flatten().tolist() == list(range(4, 8))
    assert unchanged.nonzero().flatten().tolist() == list(range(8, 32))
    # zero padding: the last frame of the backward-shifted and the first of the forward-shifted
    assert (per_channel[-1, :4] == 0).all() and (per_channel[0, 4:8] == 0).all()


def test_never_mixes_clips():
    x = torch.randn(2 * 3, 8, 2, 2).requires_grad_()
    temporal_shift(x, 3)[3:].sum().backward()  # only the second clip's outputs
    assert (x.grad[:3] == 0).all() and (x.grad[3:].abs().sum() > 0)


def test_module_matches_function_and_rejects_partial_clips():
    module = TemporalShift(num_segments=4)
    x = torch.randn(8, 16, 3, 3)
    assert torch.equal(module(x), temporal_shift(x, 4))
    with pytest.raises(ValueError, match="num_segments=4"):
        module(torch.randn(6, 16, 3, 3))
    with pytest.raises(ValueError, match=r"\(N\*T, C, H, W\)"):
        module(torch.randn(4, 16, 3))


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 3), num_segments=st.integers(1, 6), channels=st.integers(1, 24),
    fold_div=st.sampled_from([2, 4, 8]), seed=st.integers(0, 2**16),
)
def test_shift_property(batch, num_segments, channels, fold_div, seed):
    x = torch.randn(batch * num_segments, channels, 2, 1, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(temporal_shift(x, num_segments, fold_div), naive_shift(x, num_segments, fold_div))


def compiled_graphs(module: nn.Module, x: torch.Tensor) -> tuple[object, list[str]]:
    """``module(x)`` compiled (``aot_eager``, ``fullgraph``), and the code of the graphs dynamo
    traced, in a fresh compiler state (reset again after)."""
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module.code)
        return torch._dynamo.backends.debugging.aot_eager(graph_module, example_inputs)

    torch._dynamo.reset()
    try:
        return torch.compile(module, fullgraph=True, backend=backend)(x), graphs
    finally:
        torch._dynamo.reset()


def test_compiles_without_graph_breaks():
    x = torch.randn(4, 16, 2, 2, requires_grad=True)
    out, graphs = compiled_graphs(TemporalShift(num_segments=2), x)
    # the custom op, not the eager path's autograd function, is what the compiler sees
    assert len(graphs) == 1 and "autograd_function_apply" not in graphs[0]
    assert f"{compiled_ops.NAMESPACE}.temporal_shift" in graphs[0]
    assert torch.equal(out, naive_shift(x.detach(), 2, 8))
    out.sum().backward()
    assert x.grad is not None


LAYOUTS = pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])


@pytest.fixture
def compiled_kernels():
    """The compiled graph's shift ops have C++ CPU kernels, registered when the kernels build."""
    assert compiled_ops.kernels_built(), "the C++ CPU kernels failed to build (see the log)"


def test_compiled_shift_takes_the_kernel_where_two_folds_fill_the_channels(compiled_kernels):
    x = torch.randn(4, 8, 2, 3)
    out, graphs = compiled_graphs(TemporalShift(num_segments=2, fold_div=2), x)
    assert f"{compiled_ops.NAMESPACE}.temporal_shift" in graphs[0]
    assert torch.equal(out, naive_shift(x, 2, 2))


def test_shift_ops_pass_opcheck_on_a_map_in_neither_layout(compiled_kernels):
    x = torch.randn(2 * 3, 16, 4, 3).transpose(2, 3).requires_grad_()
    torch.library.opcheck(compiled_ops.temporal_shift, (x, 3, 2))
    torch.library.opcheck(compiled_ops.temporal_shift_backward, (torch.randn(x.shape), x.detach(), 3, 2))


@LAYOUTS
def test_shift_ops_pass_opcheck(channels_last, compiled_kernels):
    """Schema, fake implementations against the real ones, autograd registration."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2 * 3, 16, 3, 4).contiguous(memory_format=memory_format).requires_grad_()
    torch.library.opcheck(compiled_ops.temporal_shift, (x, 3, 2))
    grad = torch.randn(x.shape)  # NCHW, whatever x's layout
    torch.library.opcheck(compiled_ops.temporal_shift_backward, (grad, x.detach(), 3, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.int64, torch.uint8],
                         ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "transposed", "channel_slice"])
@pytest.mark.parametrize("size", [(6, 16, 3, 4), (6, 16, 1, 1), (6, 5, 2, 3), (6, 16, 9, 15)], ids=str)
@pytest.mark.parametrize("folds", ["quarter", "none", "half"])
def test_shift_ops_move_every_value_of_any_dtype_and_layout(dtype, layout, size, folds, compiled_kernels):
    """The C++ shift (values moved by their size in bytes) and its adjoint against the eager
    path's, on dense maps of either layout (a 1 x 1 map with the strides a channels-last
    convolution gives it), a transposed map and a channel slice of a wider map (which the
    kernel copies dense first); folds of a quarter, none and half the channels; 135 pixels:
    channels-last maps move in blocks of 64 pixels, two whole and a part. Outputs dense
    in the input's layout, the gradient's own layout whatever it is."""
    n, c, h, w = size
    values = torch.arange(n * (c + 3) * h * w).view(n, c + 3, h, w) % 97
    channels_last = torch.empty(values.shape, dtype=dtype, memory_format=torch.channels_last).copy_(values)
    x = {"nchw": values[:, :c].to(dtype).contiguous(),
         "channels_last": channels_last[:, :c].contiguous(memory_format=torch.channels_last),
         "transposed": values[:, :c].to(dtype).transpose(2, 3).contiguous().transpose(2, 3),
         "channel_slice": channels_last[:, :c]}[layout]
    fold = {"quarter": c // 4, "none": 0, "half": c // 2}[folds]
    out = compiled_ops.temporal_shift(x, 3, fold)
    assert torch.equal(out, temporal._shift_copy(x, 3, fold, backwards_first=True))
    assert out.stride() == compiled_ops._dense_like(x).stride()
    if folds == "quarter":
        assert torch.equal(out, naive_shift(x, 3, 4))
    grad = (values[:, :c] * 3 + 1).to(dtype)
    grad = grad.contiguous(memory_format=torch.channels_last) if layout == "nchw" else grad
    back = compiled_ops.temporal_shift_backward(grad, x, 3, fold)
    assert torch.equal(back, temporal._shift_copy(grad, 3, fold, backwards_first=False))
    assert back.stride() == compiled_ops._dense_like(x).stride()


@pytest.mark.parametrize("dtype,fold_div", [(torch.float32, 1), (torch.complex128, 8)], ids=["all_channels_one_way",
                                                                                        "16_byte_values"])
def test_compiled_shift_takes_the_plain_ops_where_the_kernel_does_not(dtype, fold_div, compiled_kernels):
    """Two folds beyond the channels (fold_div 1: every channel takes the next frame) and
    values of 16 bytes: the compiled graph shifts by the plain-op formulation, as eager does."""
    x = torch.randn(4, 8, 2, 3, dtype=dtype)
    out, graphs = compiled_graphs(TemporalShift(num_segments=2, fold_div=fold_div), x)
    assert compiled_ops.NAMESPACE not in graphs[0]
    assert torch.equal(out, naive_shift(x, 2, fold_div))


@LAYOUTS
def test_shift_backward_op_writes_the_input_layout(channels_last, compiled_kernels):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2 * 3, 16, 3, 4).contiguous(memory_format=memory_format).requires_grad_()
    upstream = torch.randn(x.shape)
    grad = compiled_ops.temporal_shift_backward(upstream, x.detach(), 3, 2)
    assert grad.is_contiguous(memory_format=memory_format)
    (naive_shift(x, 3, 8) * upstream).sum().backward()
    assert torch.equal(grad, x.grad)


class ShiftBetweenConvolutions(nn.Module):
    """conv -> ReLU -> shift -> conv, plus the ReLU's output as a residual: where inductor
    picks the layouts (channels-last convolutions) and what to save around the shift."""

    def __init__(self, channels: int, num_segments: int) -> None:
        super().__init__()
        self.first = nn.Conv2d(channels, channels, 3, padding=1)
        self.shift = TemporalShift(num_segments)
        self.second = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.first(x))
        return self.second(self.shift(y)) + y


@LAYOUTS
def test_inductor_shift_matches_eager(channels_last):
    torch._dynamo.reset()
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    eager = ShiftBetweenConvolutions(16, 4).to(memory_format=memory_format)
    model = copy.deepcopy(eager)
    x = torch.randn(2 * 4, 16, 6, 5).contiguous(memory_format=memory_format)
    upstream = torch.randn(2 * 4, 16, 6, 5)
    x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = torch.compile(model, fullgraph=True)(x_compiled)
    expected = eager(x_eager)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(x_compiled.grad, x_eager.grad, rtol=1e-5, atol=1e-5)
    for param, expected_param in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(param.grad, expected_param.grad, rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@LAYOUTS
@pytest.mark.parametrize(
    "batch,num_segments,channels,fold_div,size",
    [(2, 4, 16, 8, (3, 5)), (1, 1, 16, 8, (2, 2)), (3, 3, 17, 8, (1, 1)), (2, 5, 12, 4, (4, 3)), (1, 8, 4, 8, (2, 3)),
     (2, 3, 16, 2, (3, 1)), (2, 3, 16, 8, (8, 16)), (1, 4, 24, 8, (9, 15)), (1, 3, 160, 8, (9, 15))],
)
def test_inference_shifts_in_place_and_restores(batch, num_segments, channels, fold_div, size, channels_last, dtype):
    """In inference mode the consumer gets the map shifted in its own memory (the C++ kernels),
    which is put back when it returns, to the bit; 1 x 1 maps are NCHW and channels-last at
    once, 3 x 1 maps have a free stride on W; channels-last maps move in blocks of 64 pixels
    (128 pixels: two whole blocks; 135: two and a part, with runs of 3 and of 20 channels)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch * num_segments, channels, *size).to(dtype).contiguous(memory_format=memory_format)
    expected = naive_shift(x, num_segments, fold_div)
    seen = []

    def consumer(shifted):
        seen.append((shifted.data_ptr(), shifted.clone()))
        return shifted.sum()

    with torch.inference_mode():
        frames = x.clone()
        assert temporal.shifts_in_place(frames, fold_div)
        temporal.call_with_shifted(frames, consumer, num_segments, fold_div)
        assert torch.equal(frames, x)
    (pointer, value), = seen
    assert pointer == frames.data_ptr() and torch.equal(value, expected)


def test_inference_shift_is_undone_when_the_consumer_raises():
    x = torch.randn(2 * 3, 16, 2, 2)

    def failing(shifted):
        assert not torch.equal(shifted, x)
        raise RuntimeError("the convolution failed")

    with torch.inference_mode():
        frames = x.clone()
        with pytest.raises(RuntimeError, match="the convolution failed"):
            TemporalShift(3).call_with_shifted(frames, failing)
        assert torch.equal(frames, x)


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference_mode_on_a_normal_tensor", "float64", "strided",
                                  "width_one_odd_strides", "fold_div_1", "hook", "subclass"])
def test_other_calls_get_a_shifted_copy(mode):
    """With autograd, outside inference mode, on a tensor made outside it (it has a version
    counter), in a dtype or layout the kernels do not take (a W = 1 map whose W stride is not
    H*W's step), folds that do not fit twice, or a module with hooks or another ``forward``:
    the module is called and the consumer gets a copy; ``x`` is untouched."""
    calls = []
    shift = TemporalShift(3, fold_div=1 if mode == "fold_div_1" else 8)
    if mode == "hook":
        shift.register_forward_hook(lambda module, args, output: calls.append("hook"))
    if mode == "subclass":
        class CountingShift(TemporalShift):
            def forward(self, x):
                calls.append("forward")
                return super().forward(x)

        shift = CountingShift(3)

    def make():
        if mode == "strided":
            return torch.randn(2 * 3, 16, 3, 4).transpose(2, 3)
        if mode == "width_one_odd_strides":  # contiguous by PyTorch's rule (W = 1), pixels not one stride
            return torch.randn(2 * 3, 16, 1, 4).permute(0, 1, 3, 2)
        return torch.randn(2 * 3, 16, 3, 4, dtype=torch.float64 if mode == "float64" else torch.float32)

    context = {"grad": torch.enable_grad(), "no_grad": torch.no_grad(),
               "inference_mode_on_a_normal_tensor": torch.inference_mode()}.get(mode, torch.inference_mode())
    x = make() if mode in ("grad", "no_grad", "inference_mode_on_a_normal_tensor") else None
    with context:
        if x is None:
            x = make()  # (an inference tensor: only the named reason stands in the way)
        original = x.clone()
        seen = shift.call_with_shifted(x, lambda shifted: (shifted.data_ptr(), shifted.clone()))
        assert seen[0] != x.data_ptr()
        assert torch.equal(seen[1], naive_shift(original, 3, shift.fold_div))
    assert torch.equal(x, original)
    assert calls == {"hook": ["hook"], "subclass": ["forward"]}.get(mode, [])


@pytest.mark.parametrize("why", ["no kernels", "create_graph"])
def test_the_copy_backward_is_the_shifts_adjoint(monkeypatch, why):
    """Where the backward can neither reuse the incoming gradient (held by its caller) nor run a
    kernel (none built, or a graph of the backward wanted), it copies: the shift's adjoint,
    <shift(x), g> = <x, shift^T(g)>, and gradcheck's Jacobian."""
    if why == "no kernels":
        monkeypatch.setattr(temporal, "_shift_kernels", lambda x, fold: None)
    x = torch.randn(2 * 3, 16, 2, 2, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2 * 3, 16, 2, 2, dtype=torch.float64)
    (grad,) = torch.autograd.grad(temporal_shift(x, 3), x, g, create_graph=why == "create_graph")
    torch.testing.assert_close((x * grad).sum(), (temporal_shift(x.detach(), 3) * g).sum(), rtol=1e-12, atol=0)
    if why == "no kernels":
        torch.autograd.gradcheck(lambda v: temporal_shift(v, 3), (x,))


def test_double_backward_through_the_shift():
    """The backward's copy path is differentiable again (gradient penalties, gradgradcheck)."""
    x = torch.randn(2 * 3, 16, 2, 2, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradgradcheck(lambda v: temporal_shift(v, 3) ** 2, (x,))


CONVOLUTIONS = {
    "1x1": dict(kernel_size=1, bias=False),
    "3x3_stride_2_bias": dict(kernel_size=3, stride=2, padding=1, bias=True),
    "grouped_dilated": dict(kernel_size=3, padding=(2, 1), dilation=(2, 1), groups=4, bias=False),
}


def layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.fixture
def convolution_inputs(monkeypatch) -> list[int]:
    """The data pointers of the maps that ``F.conv2d`` is called on, from now on."""
    pointers = []
    conv2d = torch.nn.functional.conv2d

    def recording(input, *args, **kwargs):
        pointers.append(input.data_ptr())
        return conv2d(input, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", recording)
    return pointers


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@LAYOUTS
@pytest.mark.parametrize("convolution", CONVOLUTIONS)
@pytest.mark.parametrize("trained", ["all", "input", "weights"])
def test_convolution_reads_the_shift_in_place(convolution, trained, channels_last, dtype, convolution_inputs):
    """Outside inference mode, a plain convolution reads ``x`` shifted in its own memory, and
    its backward shifts ``x`` again for the weight gradient: the values and every gradient of
    the convolution of the shifted copy, to the bit; ``x`` is restored, its version unchanged."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, **CONVOLUTIONS[convolution]).to(dtype)
    conv.weight.data = layout(conv.weight.data, channels_last)
    conv.requires_grad_(trained != "input")
    reference = copy.deepcopy(conv)
    x = layout(torch.randn(2 * 3, 16, 5, 6).to(dtype), channels_last).requires_grad_(trained != "weights")
    copied = x.detach().clone().requires_grad_(x.requires_grad)
    original, version = x.detach().clone(), x._version

    assert temporal.convolves_in_place(x, conv)
    out = TemporalShift(3).call_with_shifted(x, conv)
    assert convolution_inputs == [x.data_ptr()] and type(out.grad_fn).__name__ == "_ShiftedConvolutionBackward"
    assert torch.equal(x, original) and x._version == version
    expected = reference(layout(naive_shift(copied, 3, 8), channels_last))
    assert torch.equal(out, expected)

    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    expected.backward(grad_out)
    assert torch.equal(x, original) and x._version == version
    pairs = [(x, copied), *zip(conv.parameters(), reference.parameters())]
    for actual, wanted in pairs:
        assert (actual.grad is None) == (wanted.grad is None)
        if wanted.grad is not None:
            assert torch.equal(actual.grad, wanted.grad)


@LAYOUTS
@pytest.mark.parametrize("convolution", CONVOLUTIONS)
def test_convolution_under_autocast_reads_the_shift_in_place(convolution, channels_last, convolution_inputs):
    """Under bf16 autocast, a bf16 map into a float32 convolution: shifted in place too, with
    the output and the float32 gradients of the copy's convolution under autocast, to the bit."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, **CONVOLUTIONS[convolution])
    conv.weight.data = layout(conv.weight.data, channels_last)
    reference = copy.deepcopy(conv)
    x = layout(torch.randn(2 * 3, 16, 5, 6).bfloat16(), channels_last).requires_grad_()
    copied = x.detach().clone().requires_grad_()
    original = x.detach().clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert temporal.convolves_in_place(x, conv)
        out = temporal.call_with_shifted(x, conv, 3)
        expected = reference(layout(naive_shift(copied, 3, 8), channels_last))
    assert convolution_inputs[0] == x.data_ptr() and torch.equal(x, original)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    expected.backward(grad_out)
    assert torch.equal(x, original) and torch.equal(x.grad, copied.grad)
    for actual, wanted in zip(conv.parameters(), reference.parameters()):
        assert actual.grad.dtype == torch.float32 and torch.equal(actual.grad, wanted.grad)


@pytest.mark.parametrize("context", ["no_grad", "nothing_requires_grad"])
def test_convolution_without_autograd_reads_the_shift_in_place(context, convolution_inputs):
    """Under ``no_grad`` (and with nothing to differentiate) too: no copy, ``x`` restored."""
    conv = nn.Conv2d(16, 8, 1).requires_grad_(False)
    x = torch.randn(2 * 3, 16, 4, 4)
    original = x.clone()
    with torch.no_grad() if context == "no_grad" else torch.enable_grad():
        out = temporal.call_with_shifted(x, conv, 3)
    assert convolution_inputs == [x.data_ptr()] and torch.equal(x, original)
    assert torch.equal(out, conv(naive_shift(original, 3, 8)))


def test_convolution_double_backward_matches_the_copy():
    """With ``create_graph`` the backward is differentiable again: a gradient penalty gives the
    copy's second-order gradients."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3, padding=1)
    reference = copy.deepcopy(conv)
    x = torch.randn(2 * 3, 16, 4, 5, requires_grad=True)
    copied = x.detach().clone().requires_grad_()
    for module, inputs, shifted in ((conv, x, lambda v: temporal.call_with_shifted(v, conv, 3)),
                                    (reference, copied, lambda v: reference(naive_shift(v, 3, 8)))):
        out = shifted(inputs)
        grad_x, = torch.autograd.grad(out.square().sum(), inputs, create_graph=True)
        grad_x.square().sum().backward()
    torch.testing.assert_close(x.grad, copied.grad)
    for actual, wanted in zip(conv.parameters(), reference.parameters()):
        torch.testing.assert_close(actual.grad, wanted.grad)


def test_convolution_backward_takes_a_saved_input_that_came_back_changed():
    """A saved-tensor hook may hand backward a copy of ``x`` in another layout (one the
    in-place shift does not take): the backward shifts a copy instead, with the same gradients."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 1)
    reference = copy.deepcopy(conv)
    x = torch.randn(2 * 3, 16, 4, 5, requires_grad=True)
    copied = x.detach().clone().requires_grad_()
    transposed = lambda tensor: tensor.transpose(2, 3).contiguous().transpose(2, 3)  # noqa: E731
    with torch.autograd.graph.saved_tensors_hooks(transposed, lambda tensor: tensor):
        out = temporal.call_with_shifted(x, conv, 3)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    reference(naive_shift(copied, 3, 8)).backward(grad_out)
    torch.testing.assert_close(x.grad, copied.grad)
    for actual, wanted in zip(conv.parameters(), reference.parameters()):
        torch.testing.assert_close(actual.grad, wanted.grad)


def test_convolution_failure_restores_the_input():
    conv = nn.Conv2d(8, 4, 1)  # (16 channels come: the convolution raises)
    x = torch.randn(2 * 3, 16, 2, 2, requires_grad=True)
    original = x.detach().clone()
    assert temporal.convolves_in_place(x, conv)
    with pytest.raises(RuntimeError, match="channels"):
        temporal.call_with_shifted(x, conv, 3)
    assert torch.equal(x, original)


class CountingConv2d(nn.Conv2d):
    pass


@pytest.mark.parametrize("reason", ["inference_mode", "hook", "backward_hook", "global_backward_hook", "subclass",
                                    "same_padding", "reflect_padding",
                                    "autocast_of_a_float32_map", "dtype_mismatch", "float64", "strided",
                                    "not_a_convolution"])
def test_convolution_of_a_shifted_copy_otherwise(reason, convolution_inputs, request):
    """Only a plain ``nn.Conv2d`` computing in ``x``'s dtype (not a float32 map that autocast
    would cast), with numeric zero padding and no hooks (forward or backward, its own or
    global: calling the module runs them), outside inference mode, on a map the
    C++ shifts take, reads ``x`` shifted in place (inference mode has its own in-place shift,
    around any consumer)."""
    conv = (CountingConv2d if reason == "subclass" else nn.Conv2d)(
        16, 8, 3, padding="same" if reason == "same_padding" else 1,
        padding_mode="reflect" if reason == "reflect_padding" else "zeros")
    if reason == "hook":
        conv.register_forward_pre_hook(lambda module, args: None)
    if reason == "backward_hook":
        conv.register_full_backward_hook(lambda module, grad_input, grad_output: None)
    if reason == "global_backward_hook":
        handle = nn.modules.module.register_module_full_backward_hook(lambda module, grad_input, grad_output: None)
        request.addfinalizer(handle.remove)
    if reason == "float64":
        conv.double()
    consumer = (lambda v: conv(v)) if reason == "not_a_convolution" else conv
    context = (torch.inference_mode() if reason == "inference_mode"
               else torch.autocast("cpu", dtype=torch.bfloat16, enabled=reason == "autocast_of_a_float32_map"))
    with context:
        x = torch.randn(2 * 3, 16, 4, 5, dtype=torch.float64 if reason == "float64" else torch.float32)
        if reason == "dtype_mismatch":
            x = x.bfloat16()
        if reason == "strided":
            x = x.transpose(2, 3)
        original = x.clone()
        assert not temporal.convolves_in_place(x, consumer)
        if reason == "dtype_mismatch":
            with pytest.raises(RuntimeError):
                temporal.call_with_shifted(x, consumer, 3)
        else:
            temporal.call_with_shifted(x, consumer, 3)
    if reason not in ("inference_mode", "dtype_mismatch"):
        assert convolution_inputs and convolution_inputs[0] != x.data_ptr()
    assert torch.equal(x, original)


def geometry(conv: nn.Conv2d, num_segments: int = 3, fold: int = 2) -> tuple:
    """The arguments of :func:`compiled_ops.shifted_convolution` after ``x, weight, bias``."""
    return list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups, num_segments, fold


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@LAYOUTS
@pytest.mark.parametrize("convolution", CONVOLUTIONS)
def test_shifted_convolution_ops_pass_opcheck(convolution, channels_last, dtype, compiled_kernels):
    """Schema (``x`` comes back unchanged), fakes against the kernels, autograd registration."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, **CONVOLUTIONS[convolution]).to(dtype)
    x = layout(torch.randn(2 * 3, 16, 5, 6).to(dtype), channels_last).requires_grad_()
    torch.library.opcheck(compiled_ops.shifted_convolution, (x, conv.weight, conv.bias, *geometry(conv)))
    grad_out = torch.randn(conv(x).shape).to(dtype)  # NCHW, whatever x's layout
    mask = [True, True, conv.bias is not None]
    torch.library.opcheck(compiled_ops.shifted_convolution_backward,
                          (grad_out, x.detach(), conv.weight.detach(), *geometry(conv), mask))


SHIFTED_CONVOLUTION_INPUTS = {  # (16 channels of 5 x 6 pixels, 2 * 3 frames)
    "nchw": lambda values: values[:, :16].contiguous(),
    "channels_last": lambda values: values[:, :16].contiguous(memory_format=torch.channels_last),
    "transposed": lambda values: values[:, :16].transpose(2, 3).contiguous().transpose(2, 3),
    "channel_slice": lambda values: values.contiguous(memory_format=torch.channels_last)[:, :16],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["fp32", "bf16", "fp64"])
@pytest.mark.parametrize("inputs", SHIFTED_CONVOLUTION_INPUTS)
@pytest.mark.parametrize("convolution", CONVOLUTIONS)
@pytest.mark.parametrize("trained", ["all", "input", "weights"])
def test_shifted_convolution_op_equals_the_convolution_of_the_shifted_copy(convolution, trained, inputs, dtype,
                                                                         compiled_kernels):
    """The compiled graph's op (called with autograd, as the compiled graph's backward calls
    its backward op): the values and every gradient of the convolution of the shifted copy, to
    the bit, ``x`` unchanged after the forward and after the backward. Dense float32 / bf16
    maps are shifted in place; the others (a transposed map, a channel slice, float64) through a
    shifted copy."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, **CONVOLUTIONS[convolution]).to(dtype).requires_grad_(trained != "input")
    reference = copy.deepcopy(conv)
    x = SHIFTED_CONVOLUTION_INPUTS[inputs](torch.randn(2 * 3, 19, 5, 6).to(dtype)).requires_grad_(trained != "weights")
    copied = x.detach().clone().requires_grad_(x.requires_grad)
    original = x.detach().clone()

    out = compiled_ops.shifted_convolution(x, conv.weight, conv.bias, *geometry(conv))
    assert torch.equal(x, original)
    expected = reference(compiled_ops.temporal_shift(copied, 3, 2))
    assert torch.equal(out, expected) and out.stride() == expected.stride()
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    expected.backward(grad_out)
    assert torch.equal(x, original)
    for actual, wanted in [(x, copied), *zip(conv.parameters(), reference.parameters())]:
        assert (actual.grad is None) == (wanted.grad is None)
        if wanted.grad is not None:
            assert torch.equal(actual.grad, wanted.grad)


@pytest.mark.parametrize("step", ["forward", "backward"])
def test_shifted_convolution_op_restores_x_when_the_convolution_fails(step, compiled_kernels):
    x = torch.randn(2 * 3, 16, 2, 2)
    original = x.clone()
    weight = torch.randn(4, 8 if step == "forward" else 16, 1, 1)  # (16 channels come: the forward raises)
    arguments = ([1, 1], [0, 0], [1, 1], 1, 3, 2)
    with pytest.raises(RuntimeError):
        if step == "forward":
            compiled_ops.shifted_convolution(x, weight, None, *arguments)
        else:  # an output gradient of the wrong shape
            compiled_ops.shifted_convolution_backward(torch.randn(6, 4, 3, 3), x, weight, *arguments,
                                                      [True, True, False])
    assert torch.equal(x, original)


class ShiftedConvolutionBlock(nn.Module):
    """TSM's use in a residual block: ``conv(shift(x)) + x``."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.shift = TemporalShift(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shift.call_with_shifted(x, self.conv) + x


@pytest.mark.parametrize("reason", ["hook", "subclass", "autocast_of_a_float32_map", "float64", "kernels_off"])
def test_compiled_convolution_of_a_shifted_copy_otherwise(reason, compiled_kernels, monkeypatch):
    """Under the compiler, only a plain ``nn.Conv2d`` computing in ``x``'s dtype, on a float32
    or bfloat16 map, with the kernels built, takes :func:`compiled_ops.shifted_convolution`; the
    others convolve the shift op's copy (or the plain-op shift's), with the same values."""
    conv = (CountingConv2d if reason == "subclass" else nn.Conv2d)(16, 16, 3, padding=1)
    if reason == "hook":
        conv.register_forward_pre_hook(lambda module, args: None)
    if reason == "float64":
        conv.double()
    if reason == "kernels_off":
        monkeypatch.setattr(compiled_ops, "kernels_built", lambda: False)
    x = torch.randn(2 * 3, 16, 4, 5, dtype=torch.float64 if reason == "float64" else torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=reason == "autocast_of_a_float32_map"):
        out, graphs = compiled_graphs(ShiftedConvolutionBlock(conv), x)
        expected = conv(naive_shift(x, 3, 8)) + x
    assert "shifted_convolution" not in graphs[0]
    assert ("temporal_shift" in graphs[0]) == (reason != "kernels_off")
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", ["float32", "bf16"])
@LAYOUTS
def test_compiled_tsm_resnet_convolves_the_shift_in_place(dtype, channels_last, compiled_kernels, monkeypatch):
    """A compiled TSM ResNet-18 calls :func:`compiled_ops.shifted_convolution` in every block
    (no shift op, no shifted copy) in training, float32 or under bf16 autocast, NCHW or
    channels-last: its outputs and every gradient equal those of the graph that convolves the
    shift op's copy, to the bit."""
    from lightning_gsf.benchmark import BenchmarkConfig, autocast_context, build_model

    config = BenchmarkConfig(num_segments=3, input_size=32, channels_last=channels_last, dtype=dtype)
    clips = torch.randn(1, 3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    results = []
    for in_place in (True, False):
        if not in_place:
            monkeypatch.setattr(temporal, "_convolves_shifted_when_compiled", lambda *args: False)
        torch.manual_seed(0)
        model = build_model("resnet18", "tsm", config)
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0  # (dropout draws differ between the two graphs)
        with autocast_context(config):
            out, graphs = compiled_graphs(model, clips)
        out["class"].float().sum().backward()
        results.append((out["class"], [param.grad for param in model.parameters()]))
        assert graphs[0].count(f"{compiled_ops.NAMESPACE}.shifted_convolution.default(") == (8 if in_place else 0)
        assert ("temporal_shift" in graphs[0]) != in_place
    (out, grads), (expected, expected_grads) = results
    assert torch.equal(out, expected)
    assert all(torch.equal(grad, expected_grad) for grad, expected_grad in zip(grads, expected_grads))


def test_in_place_shift_op_checks_its_arguments():
    ops = cpu_kernels.cpu_kernels()
    x = torch.randn(2 * 3, 16, 3, 4)
    with pytest.raises(RuntimeError, match=r"saved must be a contiguous \(N \* 2, fold, H, W\)"):
        ops.temporal_shift_(x, torch.empty(2, 2, 3, 4), 3, 2)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        ops.temporal_shift_(x.transpose(2, 3), torch.empty(4, 2, 4, 3), 3, 2)
    with pytest.raises(RuntimeError, match="x must be \\(N\\*T, C, H, W\\) with T = 4"):
        ops.temporal_shift_(x, torch.empty(4, 2, 3, 4), 4, 2)
    odd = torch.randn(2 * 3, 16, 1, 4).permute(0, 1, 3, 2)  # W = 1: contiguous, but W's stride is 4
    with pytest.raises(RuntimeError, match="pixels must have one stride over H\\*W"):
        ops.temporal_shift_(odd, torch.empty(4, 2, 4, 1), 3, 2)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        ops.temporal_shift_adjoint_(x.transpose(2, 3), 3, 2)
    with pytest.raises(RuntimeError, match="exceeds the channels"):
        ops.temporal_shift_adjoint_(x, 3, 9)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ops.temporal_shift_adjoint_(x.double(), 3, 2)


def shift_kernel_set(name: str):
    """TSM's kernels for one device: ``triton`` (CUDA's; here under Triton's interpreter) or
    ``cpp`` (the CPU's C++ kernels)."""
    if name == "triton":
        from lightning_gsf import shift_kernels
        return shift_kernels
    # (built here: with _shift_kernels replaced, nothing else builds them, and the compiled
    # shift ops that _CppShift calls have no CPU kernel until they are)
    assert compiled_ops.kernels_built(), "the C++ CPU kernels failed to build (see the log)"
    return temporal._CppShift


@pytest.fixture(params=["triton", "cpp"])
def kernel_shift(request, monkeypatch) -> list[str]:
    """TSM's eager shift through the kernels it takes on CUDA (Triton, one launch each way;
    here on CPU tensors under Triton's interpreter) or on the CPU (C++), whatever the
    tensors' device; returns the kernels' calls, recorded."""
    kernels = shift_kernel_set(request.param)
    calls: list[str] = []

    def recorded(name):
        def call(*args, **kwargs):
            calls.append(name)
            return getattr(kernels, name)(*args, **kwargs)
        return call

    recording = types.SimpleNamespace(shift=recorded("shift"), unshift_=recorded("unshift_"),
                                      unshifts_in_place=kernels.unshifts_in_place)
    monkeypatch.setattr(temporal, "_shift_kernels", lambda x, fold: recording)
    return calls


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "crop"])
@pytest.mark.parametrize(
    "batch,num_segments,channels,fold_div",
    [(2, 4, 16, 8), (3, 3, 17, 8), (2, 5, 12, 4), (1, 1, 16, 8), (2, 3, 4, 8), (1, 2, 72, 2)],
)
def test_kernel_shift_matches_naive_shift_values_and_gradients(kernel_shift, batch, num_segments, channels, fold_div,
                                                               layout):
    """One kernel forward, one in place backward: the naive shift's values and gradients bit
    for bit, NCHW, channels-last (kept) and on a crop (rows not adjacent); folds that are
    not multiples of the channel tile, and folds of 0 and of half the channels."""
    generator = torch.Generator().manual_seed(channels)
    leaf = torch.randn(batch * num_segments, channels, 5, 6, generator=generator)
    if layout == "channels_last":
        leaf = leaf.contiguous(memory_format=torch.channels_last)
    leaf.requires_grad_()
    leaf_naive = leaf.detach().clone().requires_grad_()
    view = (lambda v: v[..., 1:, :-2]) if layout == "crop" else (lambda v: v)
    out = temporal_shift(view(leaf * 1.0), num_segments, fold_div)
    expected = naive_shift(view(leaf_naive * 1.0), num_segments, fold_div)
    assert torch.equal(out, expected)
    upstream = torch.randn(out.shape, generator=generator)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    assert torch.equal(leaf.grad, leaf_naive.grad)
    assert kernel_shift == ["shift", "unshift_"]
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("holder", HOLDERS)
def test_kernel_shift_leaves_a_held_output_gradient_alone(kernel_shift, holder):
    """The kernels' backward also writes a new tensor where anything else holds the output's
    gradient (the opposite shift, one launch or one C++ pass)."""
    x = torch.randn(2 * 4, 16, 3, 5, requires_grad=True)
    kept, other = [], torch.randn(x.shape, requires_grad=True)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    consumer = holding_consumer(holder, weights, other, kept)
    between_spies(lambda v: temporal_shift(v, 4), x, consumer)
    check_holders_kept_their_values(holder, kept, weights, other)
    assert torch.equal(x.grad, naive_input_gradient(x, 4, consumer))
    assert kernel_shift[0] == "shift" and len(kernel_shift) == 2


def test_kernel_shift_double_backward_takes_the_slice_copies(kernel_shift):
    """With ``create_graph`` the backward is the differentiable slice copies, not a kernel
    (whose output autograd could not differentiate); the first-order backwards are kernels.
    (A small map: each of gradgradcheck's many evaluations runs the kernels under the
    interpreter.)"""
    x = torch.randn(2 * 2, 8, 1, 2, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradgradcheck(lambda v: temporal_shift(v, 2) ** 2, (x,))
    assert "shift" in kernel_shift


def test_shift_kernels_by_device(monkeypatch):
    """The C++ kernels for CPU tensors (of any element size: the copy only moves values) where
    they are built, Triton's for CUDA ones; the slice copies without the C++ kernels."""
    assert temporal._shift_kernels(torch.randn(2, 8, 2, 2), 1) is temporal._CppShift
    assert temporal._shift_kernels(torch.zeros(2, 8, 2, 2, dtype=torch.int16), 4) is temporal._CppShift
    assert temporal._shift_kernels(torch.randn(2, 8, 2, 2), 5) is None  # (2 * fold past the channels)
    # its in-place adjoint: dense float32 / bfloat16 maps, NCHW or channels-last
    maps = torch.randn(4, 6, 3, 3)
    assert temporal._CppShift.unshifts_in_place(maps) and temporal._CppShift.unshifts_in_place(
        maps.contiguous(memory_format=torch.channels_last).bfloat16())
    assert not any(map(temporal._CppShift.unshifts_in_place, (maps[:, :4], maps.double(), maps.transpose(2, 3))))
    monkeypatch.setattr(cpu_kernels, "cpu_kernels", lambda: None)
    assert temporal._shift_kernels(torch.randn(2, 8, 2, 2), 1) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_training_shift_takes_the_cpp_kernels(channels_last, dtype, monkeypatch):
    """On the CPU a training shift calls the C++ kernels (the copy forward, the in-place adjoint
    backward over the unheld gradient), with the naive shift's values and gradient."""
    calls = []
    for name in ("temporal_shift", "temporal_shift_backward"):
        original = getattr(compiled_ops, name)
        monkeypatch.setattr(compiled_ops, name, lambda *args, _o=original, _n=name: calls.append(_n) or _o(*args))
    original_adjoint = temporal._CppShift.unshift_
    monkeypatch.setattr(temporal._CppShift, "unshift_",
                        staticmethod(lambda *args: calls.append("adjoint") or original_adjoint(*args)))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    leaf = torch.randn(2 * 4, 16, 3, 5).to(dtype).contiguous(memory_format=memory_format).requires_grad_()
    leaf_naive = leaf.detach().clone().requires_grad_()
    out = temporal_shift(leaf * 1.0, 4)
    expected = naive_shift(leaf_naive * 1.0, 4, 8)
    upstream = torch.randn(out.shape).to(dtype)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    assert torch.equal(out, expected) and torch.equal(leaf.grad, leaf_naive.grad)
    assert out.is_contiguous(memory_format=memory_format)
    assert calls == ["temporal_shift", "adjoint"]


@pytest.mark.parametrize("kernel_set", ["triton", "cpp"])
def test_shift_kernels_cover_maps_of_several_pixel_tiles(kernel_set):
    """Maps of more pixels than one of Triton's tiles (9 x 11 = 99, four tiles of 32; the property
    test below draws at most 36): ``shift`` writes and ``unshift_`` moves every pixel."""
    shift_kernels = shift_kernel_set(kernel_set)
    x = torch.randn(2 * 3, 20, 9, 11, generator=torch.Generator().manual_seed(0))
    for backwards_first in (True, False):
        assert torch.equal(shift_kernels.shift(x, 3, 5, backwards_first), temporal._shift_copy(x, 3, 5, backwards_first))
    expected = temporal._unshift_in_place(x.clone(), 3, 5)
    assert torch.equal(shift_kernels.unshift_(x.clone(), 3, 5), expected)


@pytest.mark.parametrize("kernel_set", ["triton", "cpp"])
@settings(max_examples=25, deadline=None)
@given(
    clips=st.integers(0, 2), num_segments=st.integers(1, 5), channels=st.integers(1, 40), folds=st.data(),
    height=st.integers(1, 6), width=st.integers(1, 6), channels_last=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 2**16),
)
def test_shift_kernels_equal_the_slice_copies(kernel_set, clips, num_segments, channels, folds, height, width,
                                              channels_last, dtype, seed):
    """Each kernel set's ``shift`` (both directions) and ``unshift_`` against the PyTorch slice
    copies, bit for bit and layout kept, for any fold the set takes (Triton's up to all the
    channels, the second cut short; C++ up to half), empty batches included; ``unshift_`` of a channel slice (Triton's; the C++
    one takes dense maps only) leaves the channels after it alone."""
    shift_kernels = shift_kernel_set(kernel_set)

    # (past C/2 the second fold is cut short, as fold_div=1 has it: Triton's kernels take it, the
    # C++ ones are not given it, shift_usable)
    fold = folds.draw(st.integers(0, channels if kernel_set == "triton" else channels // 2))
    x = torch.randn(clips * num_segments, channels, height, width, generator=torch.Generator().manual_seed(seed))
    x = x.to(dtype).contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for backwards_first in (True, False):
        expected = temporal._shift_copy(x, num_segments, fold, backwards_first)
        out = shift_kernels.shift(x, num_segments, fold, backwards_first)
        assert torch.equal(out, expected) and out.stride() == expected.stride()
    expected = temporal._unshift_in_place(x.clone(), num_segments, fold)
    dense = x.clone()
    assert shift_kernels.unshifts_in_place(dense)
    assert shift_kernels.unshift_(dense, num_segments, fold) is dense and torch.equal(dense, expected)
    if kernel_set == "triton":  # (any strides; the C++ adjoint takes dense maps, test_shift_kernels_by_device)
        wider = torch.cat([x, x[:, :3]], dim=1)  # (three channels after the slice)
        in_place, after = wider[:, :channels], wider[:, channels:].clone()
        assert shift_kernels.unshift_(in_place, num_segments, fold) is in_place
        assert torch.equal(in_place, expected) and torch.equal(wider[:, channels:], after)


def test_an_inference_tensor_read_by_a_training_convolution_gets_a_shifted_copy():
    """A map made in inference mode (a cached batch, say) read by a convolution that trains,
    outside inference mode: autograd cannot save an inference tensor, so the convolution
    reads a shifted copy, as PyTorch's own ops would, rather than ``x`` shifted in place."""
    conv = nn.Conv2d(16, 8, 3, padding=1)
    with torch.inference_mode():
        x = torch.randn(2 * 3, 16, 4, 5)
    original = x.clone()
    out = temporal.call_with_shifted(x, conv, 3)
    out.sum().backward()
    assert torch.allclose(out, conv(naive_shift(original, 3, 8)), atol=1e-6)
    assert conv.weight.grad is not None
    assert torch.equal(x, original)


def test_call_with_shifted_rejects_partial_clips_as_temporal_shift_does():
    """7 frames are not clips of 3: the in-place paths (training convolution, inference) say
    so with temporal_shift's ValueError, not the C++ kernel's RuntimeError."""
    conv = nn.Conv2d(16, 8, 3, padding=1)
    x = torch.randn(7, 16, 4, 5)
    assert temporal.convolves_in_place(x, conv)
    with pytest.raises(ValueError, match="not a multiple of num_segments=3"):
        temporal.call_with_shifted(x, conv, 3)
    with torch.inference_mode():
        y = torch.randn(7, 16, 4, 5)
        assert temporal.shifts_in_place(y)
        with pytest.raises(ValueError, match="not a multiple of num_segments=3"):
            temporal.call_with_shifted(y, conv, 3)


def test_compiled_convolution_with_a_bias_under_autocast_of_a_bf16_map(compiled_kernels):
    """A bf16 map read by a float32 convolution with a bias, under bf16 autocast: the compiled
    graph's shifted convolution gets the weight and the bias in bf16, as autocast's convolution
    does, and gives eager's values (ResNet's TSM convolutions have no bias)."""
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=True)
    with torch.no_grad():
        conv.bias.uniform_(-1, 1)
    x = torch.randn(2 * 3, 16, 4, 5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, graphs = compiled_graphs(ShiftedConvolutionBlock(conv), x)
        expected = conv(naive_shift(x, 3, 8)) + x
    assert "shifted_convolution" in graphs[0]
    assert out.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(out, expected)


def test_a_five_dimensional_map_is_refused_by_name():
    with pytest.raises(ValueError, match=r"expects \(N\*T, C, H, W\), got shape \(4, 16, 3, 3, 1\)"):
        temporal_shift(torch.randn(4, 16, 3, 3, 1), 4)


def test_the_shift_around_a_convolution_refuses_a_three_dimensional_map_by_name_in_inference():
    with torch.inference_mode():
        x = torch.randn(2 * 3, 16, 4)
        assert not temporal.shifts_in_place(x)
        with pytest.raises(ValueError, match=r"\(N\*T, C, H, W\)"):
            TemporalShift(3).call_with_shifted(x, lambda shifted: shifted.sum())


def test_a_convolution_with_a_backward_pre_hook_is_called_as_a_module():
    """(Not through the in-place shift around it, which would skip the hook.)"""
    conv = nn.Conv2d(16, 8, 3, padding=1)
    calls = []
    conv.register_full_backward_pre_hook(lambda module, grad_output: calls.append(grad_output[0].shape))
    x = torch.randn(2 * 3, 16, 4, 5, requires_grad=True)
    assert not temporal.convolves_in_place(x, conv)
    TemporalShift(3).call_with_shifted(x, conv).sum().backward()
    assert calls == [torch.Size([6, 8, 4, 5])]


def test_a_global_forward_hook_sees_the_shift_and_the_convolution_called():
    seen = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda module, args, output: seen.append(type(module).__name__))
    try:
        TemporalShift(3).call_with_shifted(torch.randn(2 * 3, 16, 4, 5, requires_grad=True), nn.Conv2d(16, 8, 1))
    finally:
        handle.remove()
    assert seen == ["TemporalShift", "Conv2d"]


def test_the_printed_shift_names_its_segments_and_fold_div():
    assert repr(TemporalShift(8, fold_div=4)) == "TemporalShift(num_segments=8, fold_div=4)"


def test_a_compiled_shift_around_a_convolution_refuses_partial_clips_as_temporal_shift_does():
    conv, shift = nn.Conv2d(16, 8, 3, padding=1), TemporalShift(3)
    compiled = torch.compile(lambda v: shift.call_with_shifted(v, conv), backend="eager", fullgraph=True)
    torch._dynamo.reset()
    try:
        refused = (ValueError, torch._dynamo.exc.TorchDynamoException)  # (how dynamo passes it on varies)
        with pytest.raises(refused, match="not a multiple of num_segments=3"):
            compiled(torch.randn(7, 16, 4, 5))
    finally:
        torch._dynamo.reset()
