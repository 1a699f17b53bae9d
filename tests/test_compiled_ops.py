"""GSF under ``torch.compile`` on the CPU: the C++ kernels as custom ops
(:mod:`lightning_gsf.compiled_ops`).

The ops against ``torch.library.opcheck`` (schema, fake implementations against the real
ones, autograd registration, AOT dispatch); compiled GSF against the naive spec in training
and evaluation, NCHW and channels-last; inference in place; bf16 against the eager kernels;
the traced graph holding the ops; and inductor, which hands them channels-last maps.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_gsf import compiled_ops, cpu_kernels
from lightning_gsf.gsf import GSF
from test_gsf import CASES, check_path_matches_naive_spec, make_gsf, make_input


@pytest.fixture(autouse=True)
def fresh_compiler():
    """Each test traces anew (dynamo caches per code object and stops recompiling after a
    few shapes)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module", autouse=True)
def kernels():
    assert compiled_ops.kernels_built(), "the C++ CPU kernels failed to build (see the log)"


class RecordingBackend:
    """``aot_eager``, keeping the code of each graph dynamo traced (with its subgraphs, such
    as an autograd function's forward and backward)."""

    def __init__(self) -> None:
        self.graphs: list[str] = []

    def __call__(self, graph_module, example_inputs):
        self.graphs.append(graph_module.print_readable(print_output=False))
        return torch._dynamo.backends.debugging.aot_eager(graph_module, example_inputs)


def compiled_forward(backend="aot_eager"):
    """A GSF method running the module under ``torch.compile(fullgraph=True)``."""

    def forward(self, x):
        return torch.compile(self, fullgraph=True, backend=backend)(x)

    return forward


def gsf_operands(module: GSF, x: torch.Tensor) -> dict[str, object]:
    fusion_weight = torch.cat([module.channel_conv1.weight, module.channel_conv2.weight]).detach()
    fusion_bias = torch.cat([module.channel_conv1.bias, module.channel_conv2.bias]).detach()
    return dict(bn_weight=module.bn.weight.detach(), bn_bias=module.bn.bias.detach(),
                conv_weight=module.conv3D.weight.detach(), conv_bias=module.conv3D.bias.detach(),
                fusion_weight=fusion_weight, fusion_bias=fusion_bias)


def inference_operands(module: GSF) -> tuple[torch.Tensor, ...]:
    """The inference ops' parameters after ``eps``: the fusion convs' one group at a time."""
    parameters = (module.bn.weight, module.bn.bias, module.conv3D.weight, module.conv3D.bias,
                  module.channel_conv1.weight, module.channel_conv2.weight, module.channel_conv1.bias,
                  module.channel_conv2.bias)
    return tuple(parameter.detach() for parameter in parameters)


LAYOUTS = pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


@LAYOUTS
@DTYPES
@pytest.mark.parametrize("batch_statistics", [True, False], ids=["batch_stats", "running_stats"])
def test_training_ops_pass_opcheck(channels_last, dtype, batch_statistics):
    """``forward_`` and ``backward_`` (their autograd is :class:`GateShiftFuse`'s, tested
    through the compiled module below)."""
    module = make_gsf(16, 3, 0.5, seed=0)
    x = make_input(2, 3, 16, 4, seed=0).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    p = module.processed
    mean = torch.randn(p, generator=torch.Generator().manual_seed(1))
    invstd = torch.rand(p, generator=torch.Generator().manual_seed(2)) + 0.5
    operands = gsf_operands(module, x)
    torch.library.opcheck(compiled_ops.forward_, (x.clone(), mean, invstd, *operands.values(), p, 3))
    saved = compiled_ops.forward_(x.clone(), mean, invstd, *operands.values(), p, 3)
    grad_out = torch.randn_like(x)
    torch.library.opcheck(compiled_ops.backward_,
                          (grad_out, *saved, mean, invstd, operands["bn_weight"], operands["bn_bias"],
                           operands["conv_weight"], operands["fusion_weight"], 3, batch_statistics))


def test_the_ops_take_tensors_in_layouts_the_compiler_may_choose():
    """Inductor decides the layouts of the ops' inputs (flexible layout); a compiled ResNet-50
    handed ``backward_`` its saved fusion weights non-contiguous. Each op on a transposed map,
    non-contiguous small tensors and an output gradient in the other layout gives what it
    gives on dense NCHW operands."""
    module = make_gsf(16, 2, 0.5, seed=12)
    x = make_input(2, 2, 16, 4, seed=12)
    p = module.processed
    operands = list(gsf_operands(module, x).values())
    mean, invstd = torch.randn(p, generator=torch.Generator().manual_seed(1)), torch.rand(p) + 0.5
    odd_x = x.transpose(2, 3).contiguous().transpose(2, 3)  # the same values, neither NCHW nor channels-last
    assert not cpu_kernels.addressable(odd_x)
    expected_out, odd_out = x.clone(), odd_x.clone().transpose(2, 3).contiguous().transpose(2, 3)
    expected_saved = compiled_ops.forward_(expected_out, mean, invstd, *operands, p, 2)
    saved = compiled_ops.forward_(odd_out, mean, invstd, *operands, p, 2)
    torch.testing.assert_close(odd_out, expected_out, rtol=0, atol=0)
    for actual, expected in zip(saved, expected_saved):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    expected_grad = grad.clone()
    expected_grads = compiled_ops.backward_(expected_grad, *expected_saved, mean, invstd, *operands[:3], operands[4],
                                            2, True)
    copy, gate, weights, means = saved
    odd_weights = weights.transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous, the same values
    assert not odd_weights.is_contiguous()
    other_layout = grad.contiguous(memory_format=torch.channels_last)
    grads = compiled_ops.backward_(other_layout, copy, gate, odd_weights, means, mean, invstd, *operands[:3],
                                   operands[4], 2, True)
    torch.testing.assert_close(other_layout, expected_grad, rtol=0, atol=0)
    for actual, expected in zip(grads, expected_grads):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    args = (p, 2, module.bn.running_mean, module.bn.running_var, module.bn.eps, *inference_operands(module))
    expected_infer = x.clone()
    compiled_ops.infer_(expected_infer, *args)
    odd_infer = odd_x.clone().transpose(2, 3).contiguous().transpose(2, 3)
    compiled_ops.infer_(odd_infer, *args)
    torch.testing.assert_close(odd_infer, expected_infer, rtol=0, atol=0)
    torch.testing.assert_close(compiled_ops.infer(odd_x, *args), expected_infer, rtol=0, atol=0)


def test_called_outside_the_compiler_the_backward_leaves_the_output_gradient_alone():
    """Eagerly (``forward_compiled_ops`` called directly), another node may hold the output's
    gradient: the backward writes over a copy, and the results match the reference."""
    module, reference = make_gsf(16, 2, 0.5, seed=4), make_gsf(16, 2, 0.5, seed=4)
    x = make_input(2, 2, 16, 4, seed=4).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out = module.forward_compiled_ops(x * 1.0)
    held = []
    out.register_hook(held.append)
    upstream = torch.randn_like(out)
    out.backward(upstream.clone())
    torch.testing.assert_close(held[0], upstream, rtol=0, atol=0)
    reference.forward_reference(x_ref * 1.0).backward(upstream)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)


@LAYOUTS
@DTYPES
@pytest.mark.parametrize("op_name", ["infer", "infer_"])
def test_inference_ops_pass_opcheck(channels_last, dtype, op_name):
    module = make_gsf(16, 3, 0.5, seed=0)
    x = make_input(2, 3, 16, 4, seed=0).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    args = (x, module.processed, 3, module.bn.running_mean, module.bn.running_var, module.bn.eps,
            *inference_operands(module))
    torch.library.opcheck(getattr(compiled_ops, op_name), args)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_out_of_place_the_compiled_ops_leave_the_input_alone(training):
    """``forward_compiled_ops`` (what ``torch.compile`` runs on the CPU) of a module that is not
    in place returns a new tensor and leaves the caller's map as it was."""
    module = make_gsf(8, 2, 1.0, seed=0).train(training)
    x = make_input(1, 2, 8, 3, seed=0).requires_grad_()
    conv_output = x * 1.0
    before = conv_output.detach().clone()
    out = module.forward_compiled_ops(conv_output)
    assert out.data_ptr() != conv_output.data_ptr()
    assert torch.equal(conv_output.detach(), before)
    torch.testing.assert_close(out, make_gsf(8, 2, 1.0, seed=0).train(training).forward_reference(before),
                               rtol=1e-5, atol=1e-6)


def test_the_inference_op_counts_its_write_and_has_no_backward():
    """Autograd sees ``infer_``'s write over its input (a tensor it saved, so overwritten,
    makes backward fail loudly), and either inference op refuses inputs that require grad
    with grad enabled."""
    module = make_gsf(16, 2, 0.5, seed=3)
    args = (module.processed, 2, module.bn.running_mean, module.bn.running_var, module.bn.eps,
            *inference_operands(module))
    leaf = make_input(2, 2, 16, 4, seed=3).requires_grad_()
    saved = leaf * 1.0
    loss = (saved * saved).sum()  # saves `saved` for backward
    version = saved._version
    with torch.no_grad():
        compiled_ops.infer_(saved, *args)
    assert saved._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    for op, tensor in ((compiled_ops.infer, leaf), (compiled_ops.infer_, leaf * 1.0)):
        with pytest.raises(RuntimeError, match="has no backward"):
            op(tensor, *args)


def test_the_ops_run_once_the_kernels_are_built():
    """In a fresh process the ops have no CPU kernel until the C++ kernels are built, by
    whatever builds them first (here GSF's own kernel set), not only by ``kernels_built``."""
    code = ("import torch\n"
            "from lightning_gsf import compiled_ops, cpu_kernels\n"
            "x = torch.arange(8.0).view(4, 2, 1, 1)\n"
            "try:\n"
            "    compiled_ops.temporal_shift(x, 2, 1)\n"
            "except RuntimeError as error:  # (the dispatcher's: no kernel for the CPU)\n"
            "    print('no kernel yet' if 'Could not run' in str(error) else error)\n"
            "assert cpu_kernels.cpu_kernels() is not None\n"
            "print(compiled_ops.temporal_shift(x, 2, 1).flatten().tolist())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-2:] == ["no kernel yet", "[2.0, 0.0, 0.0, 1.0, 6.0, 0.0, 0.0, 5.0]"]


def test_the_fake_outputs_follow_a_sliced_channels_last_map():
    """Inductor hands the ops channels-last maps (the layout it picks for CPU convolutions):
    outputs keep the layout, for one pixel too (where NCHW and channels-last strides
    differ although both are dense)."""
    for size in (1, 3):
        # (as a channels-last convolution writes it: .contiguous() would keep a 1 x 1 map's NCHW strides)
        x = torch.empty((2, 8, size, size), memory_format=torch.channels_last).copy_(make_input(1, 2, 8, size, 0))
        assert compiled_ops._channels_last(x) and compiled_ops._channels_last(x[:, :4])
        assert compiled_ops._dense_like(x[:, :4]).stride() == (size * size * 4, 1, size * 4, 4)
    assert not compiled_ops._channels_last(make_input(1, 2, 8, 1, seed=0))


# and groups of 20 channels on a 9 x 9 map: the channels-last kernels' 8 x 8 tiles, with channels
# left over and tiles running over into the next rows
@pytest.mark.parametrize("channels, num_segments, ratio, batch, size", [*CASES, (40, 2, 1.0, 1, 9)])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@LAYOUTS
def test_compiled_gsf_matches_naive_spec(channels, num_segments, ratio, batch, size, training, channels_last,
                                         monkeypatch):
    """Output, running statistics, input and parameter gradients (autograd on, so the
    training ops, with batch or running statistics)."""
    backend = RecordingBackend()
    monkeypatch.setattr(GSF, "forward_compiled", compiled_forward(backend), raising=False)
    check_path_matches_naive_spec("forward_compiled", channels, num_segments, ratio, batch, size, training,
                                  channels_last=channels_last)
    # one graph, GSF's ops in it, not the plain-op formulation's gate conv
    assert len(backend.graphs) == 1
    graph = backend.graphs[0]
    assert f"{compiled_ops.NAMESPACE}.forward_" in graph and f"{compiled_ops.NAMESPACE}.backward_" in graph
    assert "conv2d" not in graph


@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@LAYOUTS
def test_compiled_inference_matches_the_reference(inplace, training, channels_last):
    """Without autograd: one C++ call, over the input itself when the module is in place;
    in training mode with the batch's statistics, updating the running ones."""
    module = make_gsf(16, 4, 0.5, seed=3).train(training)
    module.inplace = inplace
    reference = make_gsf(16, 4, 0.5, seed=3).train(training)
    x = make_input(2, 4, 16, 5, seed=3)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    backend = RecordingBackend()
    expected = reference.forward_reference(x.clone())
    conv_output = x.clone()
    with torch.no_grad():
        out = torch.compile(module, fullgraph=True, backend=backend)(conv_output)
    op = "infer_" if inplace else "infer"
    assert f"{compiled_ops.NAMESPACE}.{op}.default(" in backend.graphs[0]
    assert (out.data_ptr() == conv_output.data_ptr()) == inplace
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(module.bn.running_mean, reference.bn.running_mean)
    torch.testing.assert_close(module.bn.running_var, reference.bn.running_var)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@LAYOUTS
def test_compiled_bf16_equals_the_eager_kernels(training, channels_last):
    """Under bf16 autocast the compiled ops run the eager path's kernels on the same bf16
    map: the same output and gradients, up to the order of the batch statistics' sums."""
    results = []
    for compiled in (False, True):
        module = make_gsf(16, 4, 0.5, seed=5).train(training)
        x = make_input(2, 4, 16, 5, seed=5).bfloat16()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        forward = torch.compile(module, fullgraph=True, backend="aot_eager") if compiled else module
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = forward(x * 1.0)
        assert out.dtype == torch.bfloat16
        (out.float() * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        results.append([out.float(), x.grad.float(), *(p.grad for p in module.parameters())])
    for compiled, eager in zip(*reversed(results)):
        torch.testing.assert_close(compiled, eager, rtol=2e-2, atol=2e-2)


def test_other_inputs_take_the_plain_op_formulation():
    """float64 (which the kernels do not take) compiles ``forward_compilable``."""
    backend = RecordingBackend()
    module = make_gsf(8, 2, 1.0, seed=0).double()
    x = make_input(1, 2, 8, 3, seed=0).double()
    out = torch.compile(module, fullgraph=True, backend=backend)(x)
    assert "conv2d" in backend.graphs[0] and compiled_ops.NAMESPACE not in backend.graphs[0]
    torch.testing.assert_close(out, make_gsf(8, 2, 1.0, seed=0).double().forward_reference(x))


def test_the_namespace_changes_with_the_ops_source(tmp_path):
    """Compiled graphs cached on disk name the ops; a changed definition file must not load
    graphs traced against the old one: a copy of the package with one comment added to
    ``compiled_ops.py`` defines its ops under another namespace."""
    package = Path(compiled_ops.__file__).parent
    copy = tmp_path / "lightning_gsf"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "compiled_ops.py").open("a") as source:
        source.write("# edited\n")
    code = "from lightning_gsf import compiled_ops; print(compiled_ops.NAMESPACE)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(tmp_path), "LIGHTNING_GSF_CPU_KERNELS": "0"})
    edited = result.stdout.strip().splitlines()[-1]
    assert edited.startswith("lightning_gsf_") and edited != compiled_ops.NAMESPACE
    assert hasattr(torch.ops, compiled_ops.NAMESPACE)


LOSSES = {
    "sum": lambda out: out.sum(),  # an expanded gradient
    "sum_over_frames": lambda out: (out.sum(0) * torch.linspace(-1, 1, out[0].numel()).view(out[0].shape)).sum(),
    "flatten_matmul": lambda out: (out.flatten(1) @ torch.linspace(-1, 1, out[0].numel())).square().sum(),
    "channels_innermost": lambda out: (out.permute(0, 2, 3, 1).reshape(out.shape[0], -1)
                                       @ torch.linspace(-1, 1, out[0].numel())).square().sum(),
}


@pytest.mark.parametrize("loss", sorted(LOSSES))
@LAYOUTS
def test_compiled_gradients_for_output_gradients_of_any_layout(loss, channels_last):
    """The output's gradient made inside the compiled graph may be expanded, broadcast over
    frames (stride 0: every frame's input gradient would land in the same memory) or in the
    other layout; the backward writes the input's over a dense copy in the input's layout."""
    module, reference = make_gsf(16, 2, 0.5, seed=9), make_gsf(16, 2, 0.5, seed=9)
    x = make_input(2, 2, 16, 4, seed=9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    value = torch.compile(lambda clips: LOSSES[loss](module(clips * 1.0)), fullgraph=True, backend="aot_eager")(x)
    expected = LOSSES[loss](reference.forward_reference(x_ref * 1.0))
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-4)
    value.backward()
    expected.backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)
    for param, param_ref in zip(module.parameters(), reference.parameters()):
        torch.testing.assert_close(param.grad, param_ref.grad, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("strides", ["cropped_width", "transposed"])
def test_inputs_the_kernels_do_not_take_compile_the_plain_ops(strides, grad):
    """A map whose pixels have no single stride (a crop of the width) or neither contiguous
    pixels nor channels (transposed): the plain-op formulation, as eager GSF sends them to
    its PyTorch ops."""
    backend = RecordingBackend()
    module, reference = make_gsf(16, 2, 0.5, seed=11), make_gsf(16, 2, 0.5, seed=11)
    big = make_input(2, 2, 16, 7, seed=11)
    x = big[..., :5] if strides == "cropped_width" else big.transpose(2, 3)
    assert not compiled_ops.usable(x)
    with torch.set_grad_enabled(grad):
        out = torch.compile(module, fullgraph=True, backend=backend)(x)
    assert "conv2d" in backend.graphs[0] and compiled_ops.NAMESPACE not in backend.graphs[0]
    torch.testing.assert_close(out, reference.forward_reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_inductor_runs_the_ops_on_the_layout_it_picks(channels_last, monkeypatch):
    """Inductor (the default backend) chooses the layouts itself: training step and inference
    against the reference, through the ops (forward and backward through ``_ops``, inference
    through its C++ op)."""
    calls = []
    ops = compiled_ops._ops
    monkeypatch.setattr(compiled_ops, "_ops", lambda: calls.append(1) or ops())
    module = make_gsf(16, 2, 0.5, seed=2)
    reference = make_gsf(16, 2, 0.5, seed=2)
    conv = torch.nn.Conv2d(8, 16, 3, padding=1, bias=False)
    x = make_input(2, 2, 8, 6, seed=2)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def network(gsf):
        return lambda clips: gsf(conv(clips)).relu()

    compiled = torch.compile(network(module), fullgraph=True)
    out = compiled(x)
    expected = network(reference.forward_reference)(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), [*module.parameters(), conv.weight])
    expected_grads = torch.autograd.grad(expected.square().sum(), [*reference.parameters(), conv.weight])
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4)
    assert len(calls) == 2
    module.eval()
    reference.eval()
    with torch.no_grad(), torch.profiler.profile() as profile:
        torch.testing.assert_close(compiled(x), network(reference.forward_reference)(x), rtol=1e-4, atol=1e-5)
    assert {event.name for event in profile.events()} & {f"{compiled_ops.NAMESPACE}::{op}" for op in ("infer", "infer_")}


@pytest.mark.parametrize("temporal_module", ["gsf", "tsm"])
def test_a_compiled_resnet_trains_and_infers_as_the_eager_one(temporal_module):
    """Inductor on a whole GSF (or TSM) ResNet-18 (T=2, 32 px): the layouts it picks across a real
    network (channels-last convolutions, saved tensors in layouts of its choosing) are what
    the small cases above do not reach (it once handed the backward non-contiguous fusion
    weights here). With the batch norms in eval mode (well conditioned: batch statistics of
    a random network on tiny maps are not, and compiled TSN differs from eager TSN there too)
    the loss, every gradient and inference match eager; then a training-mode step runs."""
    from lightning_gsf.benchmark import BenchmarkConfig, build_model, loss_of, make_batch

    config = BenchmarkConfig(backbones=("resnet18",), num_segments=2, input_size=32, batch_size=2)
    clips, labels = make_batch(config)
    torch.manual_seed(0)
    eager = build_model("resnet18", temporal_module, config).eval()
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, fullgraph=True)
    loss = loss_of(compiled, clips, labels)
    expected = loss_of(eager, clips, labels)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    expected.backward()
    for (name, param), expected_param in zip(model.named_parameters(), eager.parameters()):
        scale = expected_param.grad.abs().max().item()
        torch.testing.assert_close(param.grad, expected_param.grad, rtol=1e-3, atol=1e-3 * scale, msg=name)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(clips)["class"], eager(clips)["class"], rtol=1e-4, atol=1e-5)
        with torch.profiler.profile() as inference:  # (compiled by now: what the graph runs)
            compiled(clips)
    model.train().zero_grad()
    loss_of(compiled, clips, labels).backward()
    model.zero_grad()
    with torch.profiler.profile() as training:
        loss = loss_of(compiled, clips, labels)
        loss.backward()
    if temporal_module == "tsm":  # each of the 8 blocks' conv1 and its shift as one op, both ways
        for profile, ops in ((inference, ["shifted_convolution"]),
                             (training, ["shifted_convolution", "shifted_convolution_backward"])):
            names = [event.name for event in profile.events()]
            assert [names.count(f"{compiled_ops.NAMESPACE}::{op}") for op in ops] == [8] * len(ops)
    assert torch.isfinite(loss) and all(torch.isfinite(param.grad).all() for param in model.parameters())


def test_the_backward_op_takes_a_saved_copy_the_kernels_do_not_address():
    # the compiler may hand back the saved copy of v in a layout the kernels cannot address
    module = make_gsf(16, 2, 0.5, seed=12)
    x = make_input(2, 2, 16, 4, seed=12)
    p = module.processed
    operands = list(gsf_operands(module, x).values())
    mean, invstd = torch.randn(p, generator=torch.Generator().manual_seed(1)), torch.rand(p) + 0.5
    copy, gate, weights, means = compiled_ops.forward_(x.clone(), mean, invstd, *operands, p, 2)
    odd_copy = copy.transpose(2, 3).contiguous().transpose(2, 3)
    assert not cpu_kernels.addressable(odd_copy)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    expected_grad, odd_grad = grad.clone(), grad.clone()
    expected = compiled_ops.backward_(expected_grad, copy, gate, weights, means, mean, invstd, *operands[:3],
                                      operands[4], 2, True)
    actual = compiled_ops.backward_(odd_grad, odd_copy, gate, weights, means, mean, invstd, *operands[:3],
                                    operands[4], 2, True)
    torch.testing.assert_close(odd_grad, expected_grad, rtol=0, atol=0)
    for grad_actual, grad_expected in zip(actual, expected):
        torch.testing.assert_close(grad_actual, grad_expected, rtol=0, atol=0)


def test_the_backward_op_passes_opcheck_with_non_contiguous_parameters():
    module = make_gsf(16, 3, 0.5, seed=0)
    x = make_input(2, 3, 16, 4, seed=0)
    p = module.processed
    mean = torch.randn(p, generator=torch.Generator().manual_seed(1))
    invstd = torch.rand(p, generator=torch.Generator().manual_seed(2)) + 0.5
    operands = gsf_operands(module, x)
    saved = compiled_ops.forward_(x.clone(), mean, invstd, *operands.values(), p, 3)
    conv_weight, fusion_weight = (operands[name].transpose(0, 1).contiguous().transpose(0, 1)
                                  for name in ("conv_weight", "fusion_weight"))
    assert not conv_weight.is_contiguous() and not fusion_weight.is_contiguous()
    torch.library.opcheck(compiled_ops.backward_,
                          (torch.randn_like(x), *saved, mean, invstd, operands["bn_weight"], operands["bn_bias"],
                           conv_weight, fusion_weight, 3, True))


def test_called_outside_the_compiler_in_place_the_input_carries_the_output():
    # without marking the input dirty, a loss on it got a silently wrong gradient
    module, reference = make_gsf(16, 2, 0.5, seed=4), make_gsf(16, 2, 0.5, seed=4)
    module.inplace = True
    x = make_input(2, 2, 16, 4, seed=4).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y = x * 1.0
    assert module.forward_compiled_ops(y) is y
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    reference.forward_reference(x_ref * 1.0).backward(upstream)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
