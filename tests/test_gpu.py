"""CUDA checks, run with ``pytest -m gpu`` on a machine with a GPU (deselected by default).

Selected on a machine without CUDA they fail rather than pass vacuously.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import yaml

from gradient_holders import HOLDERS, between_spies, check_holders_kept_their_values, holding_consumer
from lightning_gsf import gsf_fast
from lightning_gsf.cli import main
from lightning_gsf.gsf import GSF
from lightning_gsf.model import VideoClassifier

pytestmark = pytest.mark.gpu


@pytest.fixture
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device (torch.cuda.is_available() is False)")
    return torch.device("cuda")


@pytest.fixture
def float32_arithmetic(monkeypatch) -> None:
    """True float32 convolutions and matmuls: cuDNN's default TF32 (10-bit mantissa) put the
    reference's Conv3d weight gradient 6e-2 away from the fast path's on an H200."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.parametrize("path", ["forward", "forward_torch"])
@pytest.mark.parametrize("training", [True, False])
def test_fast_gsf_equals_reference_on_cuda(cuda, float32_arithmetic, training, path):
    torch.manual_seed(0)
    module = GSF(64, num_segments=4, ratio=0.25).to(cuda).train(training)
    x = torch.randn(8, 64, 14, 14, device=cuda)
    torch.testing.assert_close(getattr(module, path)(x), module.forward_reference(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("path", "reuse"), [("forward", True), ("forward", False), ("forward_torch", True)],
                         ids=["forward-reuse", "forward-no_reuse", "forward_torch"])
def test_fast_gsf_gradients_equal_reference_on_cuda(cuda, float32_arithmetic, monkeypatch, path, reuse):
    """The Triton path with gradient reuse (the default: the input's gradient written over the
    output's) and without (``LIGHTNING_GSF_CUDA_GRADIENT_REUSE=0``: a new tensor); the
    PyTorch-ops path, which reuse does not concern."""
    from lightning_gsf import gradient_reuse

    monkeypatch.setattr(gradient_reuse, "ON_CUDA", reuse)
    torch.manual_seed(0)
    module = GSF(64, num_segments=4, ratio=0.5).to(cuda)
    x = torch.randn(8, 64, 14, 14, device=cuda)
    weight = torch.randn_like(x)
    grads = []
    for forward in (getattr(module, path), module.forward_reference):
        inp = x.clone().requires_grad_(True)
        module.zero_grad()
        (forward(inp) * weight).sum().backward()
        grads.append([inp.grad] + [p.grad.clone() for p in module.parameters()])
    for fast, reference in zip(*grads):
        torch.testing.assert_close(fast, reference, atol=1e-4, rtol=1e-4)


def test_forward_on_cuda_takes_the_triton_path(cuda, monkeypatch):
    calls = []
    triton_path = GSF.forward_triton
    monkeypatch.setattr(GSF, "forward_triton", lambda self, x: calls.append(x.device) or triton_path(self, x))
    GSF(64, num_segments=4).to(cuda)(torch.randn(8, 64, 14, 14, device=cuda))
    assert calls == [torch.device("cuda", torch.cuda.current_device())]


@pytest.mark.parametrize("dot_precision", ["tf32x3", "ieee"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_triton_gsf_equals_reference_on_cuda(cuda, float32_arithmetic, monkeypatch, training, inplace, channels_last,
                                             dot_precision):
    """The compiled Triton kernels: values, input and parameter gradients and running
    statistics, on a ResNet stage-2-like map (64 processed channels: several channel tiles;
    28x28: several pixel tiles), with the gate conv's products in three TF32 products (the
    default) and in float32 FMAs."""
    monkeypatch.setattr(gsf_fast._triton_kernels(), "DOT_PRECISION", dot_precision)
    torch.manual_seed(0)
    module = GSF(256, num_segments=8, ratio=0.25, inplace=inplace).to(cuda).train(training)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn_like(param) * 0.5)
        module.bn.running_mean.normal_(0, 0.1)
        module.bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(16, 256, 28, 28, device=cuda) + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert_triton_path_equals_reference(module, x)


def assert_triton_path_equals_reference(module, x, view=lambda inp: inp):
    """``forward_triton`` against ``forward_reference`` on a copy of ``module``, given
    ``view(x)``: output, input and parameter gradients, running statistics (scaled tolerance
    for the batch sums)."""
    reference = copy.deepcopy(module)
    results, upstream = [], None
    for gsf, forward in ((module, module.forward_triton), (reference, reference.forward_reference)):
        inp = x.clone().requires_grad_(True)
        out = forward(view(inp * 1.0))
        upstream = torch.randn(out.shape, device=x.device) if upstream is None else upstream
        (out * upstream).sum().backward()
        results.append([out.detach(), inp.grad, *(p.grad for p in gsf.parameters()),
                        gsf.bn.running_mean, gsf.bn.running_var])
    for index, (fast, expected) in enumerate(zip(*results)):
        scale = max(1.0, expected.abs().max().item())
        torch.testing.assert_close(fast, expected, atol=1e-5 * scale, rtol=1e-4, msg=f"result {index}")


@pytest.mark.parametrize("channels,num_segments,clips,size", [(64, 1, 4, 9), (576, 33, 2, 7)],
                         ids=["one_segment", "33_segments_eighteen_fusion_tiles"])
def test_triton_gsf_equals_reference_on_cuda_at_the_fusion_tiles_edges(cuda, float32_arithmetic, channels,
                                                                       num_segments, clips, size):
    """One segment (tiles of one frame), and 33 segments with 72 channels per group (the
    fusion kernels' tiles of 64 frames x 4 channels, eighteen per group):
    values and gradients."""
    torch.manual_seed(1)
    module = GSF(channels, num_segments=num_segments, ratio=0.25).to(cuda).train()
    assert_triton_path_equals_reference(module, torch.randn(clips * num_segments, channels, size, size, device=cuda))


@pytest.mark.parametrize("min_programs", [0, 1024, 10**6], ids=["uncut", "default", "cut_per_tile"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "crop"])
def test_triton_gsf_equals_reference_on_cuda_whatever_the_cuts_and_layout(cuda, float32_arithmetic, monkeypatch,
                                                                         layout, min_programs):
    """Loops over pixels and channels run whole, cut to reach 1024 programs, or cut into one
    program per tile (64 channels per group: four channel tiles; 14x14 maps: seven pixel
    tiles), on NCHW and channels-last maps (pixels addressed as one run) and on a crop
    (rows not adjacent): values and gradients."""
    monkeypatch.setattr(gsf_fast._triton_kernels(), "MIN_PROGRAMS", min_programs)
    torch.manual_seed(2)
    module = GSF(512, num_segments=8, ratio=0.25).to(cuda).train()
    x = torch.randn(16, 512, 16, 17, device=cuda)
    if layout == "crop":
        assert_triton_path_equals_reference(module, x, lambda inp: inp[..., 1:-1, 1:-2])  # 14x14, rows 17 apart
    else:
        memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        assert_triton_path_equals_reference(module, x[..., :14, :14].contiguous(memory_format=memory_format))


@pytest.mark.parametrize("reuse", [True, False], ids=["reuse", "no_reuse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_tsm_shift_kernels_on_cuda_equal_the_slice_copies(cuda, monkeypatch, channels_last, dtype, reuse):
    """TSM on CUDA takes one Triton kernel each way: the PyTorch slice copies' values and
    input gradient bit for bit (the backward's opposite shift in place, over the unheld output
    gradient, with gradient reuse, the default; into a new tensor without)."""
    from lightning_gsf import gradient_reuse, temporal

    monkeypatch.setattr(gradient_reuse, "ON_CUDA", reuse)

    original, calls = temporal._shift_kernels, []

    def recording(tensor, fold):
        calls.append(tensor.device.type)
        return original(tensor, fold)

    monkeypatch.setattr(temporal, "_shift_kernels", recording)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(16, 200, 28, 28, device=cuda).to(dtype).contiguous(memory_format=memory_format)
    upstream = torch.randn(x.shape, device=cuda).to(dtype)
    gradients = []
    for on_cuda in (True, False):
        inp = (x if on_cuda else x.cpu()).clone().requires_grad_()
        out = temporal.temporal_shift(inp, num_segments=8)
        (out * (upstream if on_cuda else upstream.cpu())).sum().backward()
        gradients.append((out.cpu(), inp.grad.cpu()))
    assert calls[:2] == ["cuda", "cuda"] and original(x, 25) is not None  # (forward, backward)
    for fast, expected in zip(*gradients):
        assert torch.equal(fast, expected)


@pytest.mark.parametrize("holder", ["none", *HOLDERS])
@pytest.mark.parametrize("layer", ["gsf", "tsm"])
def test_cuda_gradient_reuse_writes_over_unheld_gradients_only(cuda, float32_arithmetic, monkeypatch, layer, holder):
    """With ``LIGHTNING_GSF_CUDA_GRADIENT_REUSE`` on (``gradient_reuse.ON_CUDA``, the default),
    GSF's and TSM's backwards write the input's gradient over the output's where nothing else
    holds it (the same memory before and after the layer), and leave held gradients alone; the
    input gradient is the reference's either way."""
    from lightning_gsf import gradient_reuse, temporal

    monkeypatch.setattr(gradient_reuse, "ON_CUDA", True)
    torch.manual_seed(3)
    x = torch.randn(16, 64, 14, 14, device=cuda, requires_grad=True)
    if layer == "gsf":
        module = GSF(64, num_segments=8, ratio=0.25).to(cuda).train()
        reference = copy.deepcopy(module)
        fast, slow = module.forward_triton, reference.forward_reference
    else:  # (the reference shifts on the CPU: not the in-place CUDA kernel under test)
        fast, slow = (lambda v: temporal.temporal_shift(v, 8)), (lambda v: temporal.temporal_shift(v.cpu(), 8).to(cuda))
    kept, other = [], torch.randn(x.shape, device=cuda, requires_grad=True)
    weights = torch.randn(x.shape, device=cuda)
    consumer = (lambda y: (y * weights).sum()) if holder == "none" else holding_consumer(holder, weights, other, kept)
    after_layer, before_layer = between_spies(fast, x, consumer)
    if holder == "none":
        assert after_layer == before_layer  # (written over)
    check_holders_kept_their_values(holder, kept, weights, other)
    x_reference = x.detach().clone().requires_grad_()
    other.grad = None
    reference_consumer = (lambda y: (y * weights).sum()) if holder == "none" else holding_consumer(holder, weights,
                                                                                               other, [])
    reference_consumer(slow(x_reference * 1.0)).backward()
    torch.testing.assert_close(x.grad, x_reference.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "inplace"])
def test_triton_gsf_without_autograd_on_cuda(cuda, float32_arithmetic, inplace):
    torch.manual_seed(0)
    module = GSF(256, num_segments=8, ratio=0.25, inplace=inplace).to(cuda).eval()
    x = torch.randn(16, 256, 28, 28, device=cuda)
    expected = module.forward_reference(x)
    with torch.inference_mode():
        out = module(x)
    assert (out.data_ptr() == x.data_ptr()) == inplace
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_compiled_gsf_equals_eager_on_cuda(cuda, float32_arithmetic):
    """Under torch.compile (inductor, Triton kernels) GSF runs its compile formulation."""
    torch.manual_seed(0)
    module = GSF(64, num_segments=4, ratio=0.25).to(cuda)
    x = torch.randn(8, 64, 14, 14, device=cuda)
    results = []
    for forward in (module.forward_reference, torch.compile(module, fullgraph=True)):
        inp = x.clone().requires_grad_(True)
        module.zero_grad()
        out = forward(inp * 1.0)
        out.square().sum().backward()
        results.append([out.detach(), inp.grad] + [p.grad.clone() for p in module.parameters()])
    for compiled, reference in zip(results[1], results[0]):
        torch.testing.assert_close(compiled, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", ["forward", "forward_torch", "forward_compilable"])
def test_gsf_keeps_bf16_under_cuda_autocast(cuda, path):
    module = GSF(64, num_segments=4, ratio=0.25).to(cuda)
    x = torch.randn(8, 64, 14, 14, device=cuda, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = getattr(module, path)(x * 1.0)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("temporal_module", ["gsf", "tsm", "none"])
def test_video_classifier_trains_under_fp16_autocast(cuda, temporal_module):
    model = VideoClassifier(backbone="resnet18", temporal_module=temporal_module, num_segments=4,
                            num_classes={"verb": 5, "noun": 7}).to(cuda)
    clip = torch.randint(0, 256, (2, 4, 3, 64, 64), dtype=torch.uint8, device=cuda)
    with torch.autocast("cuda", dtype=torch.float16):
        logits = model(clip)
        loss = sum(torch.nn.functional.cross_entropy(out, torch.zeros(2, dtype=torch.long, device=cuda))
                   for out in logits.values())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_gsf_fit_runs_on_one_gpu_in_16_mixed(cuda, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["gsf"])
    data = tmp_path / "synthetic"
    main(["synth", "--out", str(data), "--num-train", "8", "--num-val", "4", "--num-test", "4",
          "--size", "32", "--min-frames", "4", "--max-frames", "8", "--no-videos", "--overwrite"])
    config = {
        "seed_everything": 0,
        "model": {"backbone": "resnet18", "temporal_module": "gsf", "pretrained": None, "warmup_epochs": 1},
        "data": {"class_path": "lightning_gsf.data.epic.EpicKitchensDataModule",
                 "init_args": {"root": str(data), "num_segments": 2, "batch_size": 4, "num_workers": 0,
                               "input_size": 32, "resize_size": 32, "scales": [1.0], "flip": False}},
        "trainer": {"default_root_dir": str(tmp_path / "run"), "max_epochs": 1, "accelerator": "gpu",
                    "devices": 1, "precision": "16-mixed", "log_every_n_steps": 1},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    assert (Path(tmp_path) / "run" / "checkpoints" / "last.ckpt").is_file()
