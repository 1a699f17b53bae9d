"""Backbones, temporal-module insertion and VideoClassifier, across every backbone x module."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.inception import BasicConv2d

from lightning_gsf import temporal
from lightning_gsf.backbones import BACKBONES, build_backbone
from lightning_gsf.backbones import weights as weights_module
from lightning_gsf.backbones.insertion import (
    TEMPORAL_MODULES,
    TemporalBasicBlock,
    TemporalBasicConv2d,
    TemporalBottleneck,
    _percent_ratios_that_fit,
    insert_temporal_modules,
)
from lightning_gsf.benchmark import BenchmarkConfig, autocast_context, saved_activation_bytes
from lightning_gsf.data.errors import ConfigurationError
from lightning_gsf.gsf import GSF
from lightning_gsf.model import VideoClassifier
from lightning_gsf.normalization import normalize
from lightning_gsf.temporal import TemporalShift

# Parameters of a VideoClassifier with one 1000-way head; TSM adds none.
# ResNet-50: torchvision's 25,557,032; GSF at ratio 0.25 adds 16 modules, 110,144 parameters.
PARAMETERS = {
    ("resnet18", "none"): 11_689_512, ("resnet18", "gsf"): 11_703_752,
    ("resnet34", "none"): 21_797_672, ("resnet34", "gsf"): 21_825_688,
    ("resnet50", "none"): 25_557_032, ("resnet50", "gsf"): 25_667_176,
    ("resnet101", "none"): 44_549_160, ("resnet101", "gsf"): 44_786_192,
    ("resnet152", "none"): 60_192_808, ("resnet152", "gsf"): 60_541_880,
    ("bninception", "none"): 11_295_240, ("bninception", "gsf"): 11_346_680,
    ("inception_v3", "none"): 23_834_568, ("inception_v3", "gsf"): 23_898_112,
    ("inception_v3_tf", "none"): 23_851_784, ("inception_v3_tf", "gsf"): 23_915_328,
}
for _backbone in BACKBONES:
    PARAMETERS[(_backbone, "tsm")] = PARAMETERS[(_backbone, "none")]

# Where GSF sits (module name -> channels of the conv it follows), as in shared/spec/gsf.md.
RESNET_WIDTHS = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
GSF_SITES = {
    "resnet18": {f"layer{i}.{j}.gsf": 64 * 2 ** (i - 1) for i in range(1, 5) for j in range(2)},
    "resnet50": {
        f"{layer}.{j}.gsf": width
        for (layer, width), blocks in zip(RESNET_WIDTHS.items(), (3, 4, 6, 3))
        for j in range(blocks)
    },
    "bninception": {
        f"gsf_inception_{name}": channels
        for name, channels in [
            ("3a_1x1", 64), ("3b_1x1", 64), ("3c_3x3_reduce", 128), ("4a_1x1", 224), ("4b_1x1", 192),
            ("4c_1x1", 160), ("4d_1x1", 96), ("4e_3x3_reduce", 128), ("5a_1x1", 352), ("5b_1x1", 352),
        ]
    },
    "inception_v3": {
        **{f"Mixed_5{b}.branch1x1.gsf": 64 for b in "bcd"},
        "Mixed_6a.branch3x3.gsf": 384,
        **{f"Mixed_6{b}.branch1x1.gsf": 192 for b in "bcde"},
        "Mixed_7a.branch3x3_1.gsf": 192,
        **{f"Mixed_7{b}.branch1x1.gsf": 320 for b in "bc"},
    },
    "inception_v3_tf": {
        **{f"gsf_mixed{s}_conv_Conv2D": 64 for s in ("", "_1", "_2")},
        "gsf_mixed_3_conv_Conv2D": 384,
        **{f"gsf_mixed_{i}_conv_Conv2D": 192 for i in range(4, 8)},
        "gsf_mixed_8_tower_conv_Conv2D": 192,
        **{f"gsf_mixed_{i}_conv_Conv2D": 320 for i in (9, 10)},
    },
}

# Smallest convenient frame size per backbone (InceptionV3 needs 75 pixels).
FRAME_SIZE = {name: 75 if name.startswith("inception_v3") else 32 for name in BACKBONES}
# Forward + backward on CPU takes seconds per model: by default run every temporal module on
# resnet18 and GSF on one network of each family; the rest are marked slow.
FAST_FORWARD_BACKWARD = {
    ("resnet18", "none"), ("resnet18", "tsm"), ("resnet18", "gsf"),
    ("resnet50", "gsf"), ("bninception", "gsf"), ("inception_v3_tf", "gsf"),
}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _clip(backbone: str, batch: int = 2, frames: int = 2, seed: int = 0) -> torch.Tensor:
    size = FRAME_SIZE[backbone]
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, frames, 3, size, size), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("temporal_module", TEMPORAL_MODULES)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_parameter_count(backbone: str, temporal_module: str) -> None:
    with torch.device("meta"):  # shapes only: building is instant and allocates nothing
        model = VideoClassifier(backbone, temporal_module, num_segments=8, num_classes=1000)
    assert _count(model) == PARAMETERS[(backbone, temporal_module)]


@pytest.mark.parametrize("backbone", sorted(GSF_SITES))
def test_gsf_sites_and_channels(backbone: str) -> None:
    with torch.device("meta"):
        net = build_backbone(backbone, temporal_module="gsf", num_segments=4)
    sites = {name: m.channels for name, m in net.named_modules() if isinstance(m, GSF)}
    assert sites == GSF_SITES[backbone]
    ratio = 0.25 if backbone.startswith("resnet") else 1.0
    assert all(m.ratio == ratio and m.num_segments == 4 for m in net.modules() if isinstance(m, GSF))


@pytest.mark.parametrize(
    ("backbone", "expected"),
    [
        ("resnet50", {f"{layer}.{j}.shift" for layer, n in zip(RESNET_WIDTHS, (3, 4, 6, 3)) for j in range(n)}),
        ("bninception", {name.replace("gsf_", "shift_") for name in GSF_SITES["bninception"]}),
        ("inception_v3", {name.replace(".gsf", ".shift") for name in GSF_SITES["inception_v3"]}),
    ],
)
def test_tsm_sites(backbone: str, expected: set[str]) -> None:
    with torch.device("meta"):
        net = build_backbone(backbone, temporal_module="tsm", num_segments=4)
    assert {name for name, m in net.named_modules() if isinstance(m, TemporalShift)} == expected


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "bninception", "inception_v3", "inception_v3_tf"])
def test_insertion_keeps_the_backbones_own_parameter_names(backbone: str) -> None:
    with torch.device("meta"):
        plain = build_backbone(backbone, temporal_module="none").state_dict()
        tsm = build_backbone(backbone, temporal_module="tsm").state_dict()
        gsf = build_backbone(backbone, temporal_module="gsf").state_dict()
    assert list(tsm) == list(plain)
    gsf_keys = {k for k in gsf if k not in plain}
    assert set(gsf) - gsf_keys == set(plain)
    assert gsf_keys and all(".gsf." in k or k.startswith("gsf_") for k in gsf_keys)
    if backbone == "resnet50":
        assert "layer1.0.gsf.conv3D.weight" in gsf_keys


def _io_of(net: nn.Module, module_name: str, x: torch.Tensor, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Input of ``net.<module_name>`` and output of ``net.<target>`` during one forward."""
    seen: dict[str, torch.Tensor] = {}

    def record_input(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen["in"] = inputs[0]

    def record_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen["target"] = output

    hooks = [
        net.get_submodule(module_name).register_forward_hook(record_input),
        net.get_submodule(target).register_forward_hook(record_output),
    ]
    with torch.no_grad():
        net(x)
    for hook in hooks:
        hook.remove()
    return seen["in"], seen["target"]


@pytest.mark.parametrize(
    ("backbone", "gsf", "conv", "size"),
    [
        ("resnet50", "layer2.1.gsf", "layer2.1.conv3", 32),
        ("resnet18", "layer3.0.gsf", "layer3.0.conv2", 32),
        ("bninception", "gsf_inception_3c_3x3_reduce", "inception_3c_3x3_reduce", 64),
        pytest.param(
            "inception_v3", "Mixed_7a.branch3x3_1.gsf", "Mixed_7a.branch3x3_1.conv", 75, marks=pytest.mark.slow
        ),
    ],
)
def test_gsf_takes_the_output_of_its_conv(backbone: str, gsf: str, conv: str, size: int) -> None:
    net = build_backbone(backbone, temporal_module="gsf", num_segments=2).eval()
    gsf_input, conv_output = _io_of(net, gsf, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)), conv)
    torch.testing.assert_close(gsf_input, conv_output, rtol=0, atol=0)


def test_tsm_shifts_the_block_input_but_not_the_identity() -> None:
    net = build_backbone("resnet18", temporal_module="tsm", num_segments=2).eval()
    block = net.layer1[1]
    x = torch.randn(4, 64, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        shifted = block.shift(x)
        expected = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(shifted))))) + x)
        torch.testing.assert_close(block(x), expected)
    assert not torch.equal(shifted, x)


@pytest.mark.parametrize(("backbone", "size", "final"), [("bninception", 224, 7), ("inception_v3_tf", 229, 6)])
def test_caffe_pooling_gives_the_released_feature_map_sizes(backbone: str, size: int, final: int) -> None:
    # The release's graphs end in 7x7 (BNInception, 224 px) and 6x6 (InceptionV3, 229 px)
    # maps; floor-mode pooling would give 6x6 and 5x5.
    with torch.device("meta"):
        net = build_backbone(backbone, temporal_module="gsf", num_segments=1)
        seen = {}

        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            seen["map"] = inputs[0].shape

        net.global_pool.register_forward_hook(record)
        net(torch.empty(1, 3, size, size))
    assert seen["map"] == (1, net.feature_dim, final, final)


def _forward_backward_cases() -> list:
    cases = []
    for backbone in BACKBONES:
        for temporal_module in TEMPORAL_MODULES:
            marks = [] if (backbone, temporal_module) in FAST_FORWARD_BACKWARD else [pytest.mark.slow]
            cases.append(pytest.param(backbone, temporal_module, marks=marks, id=f"{backbone}-{temporal_module}"))
    return cases


@pytest.mark.parametrize("backbone", ["bninception", "inception_v3_tf"])
def test_caffe_style_inceptions_name_the_input_sides_they_take(backbone: str, monkeypatch) -> None:
    """Their pools round up and their strided convolutions down, so a reduction block's branches
    meet only at some input sides (224 px breaks InceptionV3-TF deep inside, with a
    ``torch.cat`` size error naming no input): the sides that a shape-only run shows the
    network takes are exactly those it admits, and any other is refused up front, naming the
    nearest it takes."""
    from lightning_gsf.backbones import inception_net

    net = build_backbone(backbone, temporal_module="none").to("meta").eval()
    sides = [*range(8, 80), *range(216, 241), *range(280, 305)]  # (the smallest run, two others, their edges)
    admitted = {side for side in sides if net.input_sides.admits(side)}
    monkeypatch.setattr(inception_net.InputSides, "check", lambda self, height, width: None)
    runs = set()
    for side in sides:
        try:
            net(torch.empty(1, 3, side, side, device="meta"))
            runs.add(side)
        except RuntimeError:  # (branches of other sizes, or maps shrunk to nothing)
            pass
    assert runs == admitted and len(admitted) == 16 + (16 if backbone == "bninception" else 8)
    monkeypatch.undo()
    usual = 224 if backbone == "bninception" else 229
    net(torch.empty(1, 3, usual, usual + 1, device="meta"))
    refused = {"bninception": [(240, 240, "of 31-38, 63-70, 95-102, ... pixels"),
                               (240, 240, "use 230 or 255 instead of 240"), (16, 224, "got 16x224: use 31 instead of 16")],
               "inception_v3_tf": [(224, 229, "of 69-76, 101-108, 133-140, ... pixels"),
                                   (224, 229, "got 224x229: use 204 or 229 instead of 224"),
                                   (229, 44, "got 229x44: use 69 instead of 44")]}[backbone]
    for height, width, message in refused:
        with pytest.raises(ValueError, match=message):
            net(torch.empty(1, 3, height, width, device="meta"))


@pytest.mark.parametrize("temporal_module", ["gsf", "tsm", "none"])
def test_torchvision_inception_v3_names_the_smallest_side_it_takes(temporal_module: str) -> None:
    """From 75 pixels up every side runs; below, a ValueError says so (not a convolution's
    complaint from deep inside the network)."""
    net = build_backbone("inception_v3", temporal_module=temporal_module, num_segments=1).eval()
    for height, width in [(75, 75), (75, 76), (101, 80)]:
        assert net(torch.rand(1, 3, height, width)).shape == (1, 2048)
    for height, width in [(74, 75), (75, 64), (32, 32)]:
        with pytest.raises(ValueError, match=rf"at least 75 pixels; got {height}x{width}"):
            net(torch.rand(1, 3, height, width))


@pytest.mark.parametrize(("backbone", "temporal_module"), _forward_backward_cases())
def test_forward_backward(backbone: str, temporal_module: str) -> None:
    torch.manual_seed(0)
    model = VideoClassifier(backbone, temporal_module, num_segments=2, num_classes={"verb": 3, "noun": 5})
    logits = model(_clip(backbone))
    assert {k: tuple(v.shape) for k, v in logits.items()} == {"verb": (2, 3), "noun": (2, 5)}
    (logits["verb"].sum() + logits["noun"].sum()).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    if temporal_module == "gsf":
        gates = [g for name, g in grads.items() if name.endswith("conv3D.weight")]
        assert gates and all(g.abs().sum() > 0 for g in gates)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "bninception", "inception_v3"])
def test_tsm_inference_in_place_gives_the_copy_s_logits(backbone: str, monkeypatch) -> None:
    """In inference mode TSM shifts each block's input in place and restores it (the identity
    path, and an Inception block's other branches, read it after): the same logits, to the
    bit, as the shifted copies under ``no_grad``, and the clip is left as it was."""
    in_place = []
    shifts_in_place = temporal.shifts_in_place
    def recording(*args):
        in_place.append(shifts_in_place(*args))
        return in_place[-1]

    monkeypatch.setattr(temporal, "shifts_in_place", recording)
    torch.manual_seed(0)
    model = VideoClassifier(backbone, "tsm", num_segments=2, num_classes=4).eval()
    clip = _clip(backbone).float()
    with torch.no_grad(), monkeypatch.context() as patch:
        patch.setattr(temporal, "convolves_in_place", lambda *args: False)  # (the copies)
        expected = model(clip)["class"]
    assert in_place and not any(in_place)
    in_place.clear()
    with torch.inference_mode():
        frames = clip.clone()
        actual = model(frames)["class"]
    assert in_place and all(in_place)
    assert torch.equal(actual, expected) and torch.equal(frames, clip)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "bninception", "inception_v3"])
def test_inference_fuses_over_each_gsf_s_conv_output(backbone: str) -> None:
    """Insertion builds every GSF with ``inplace``: in inference each writes its output over its
    conv's output (which only GSF reads), with the same logits, to the bit, as fresh outputs."""
    torch.manual_seed(0)
    model = VideoClassifier(backbone, "gsf", num_segments=2, num_classes=4).eval()
    modules = [module for module in model.modules() if isinstance(module, GSF)]
    overwritten = []
    hooks = [module.register_forward_hook(
        lambda module, args, out: overwritten.append(out.data_ptr() == args[0].data_ptr())) for module in modules]
    clip = _clip(backbone)
    with torch.inference_mode():
        actual = model(clip)["class"]
        assert len(overwritten) == len(modules) and all(overwritten)
        for module in modules:
            module.inplace = False
        overwritten.clear()
        expected = model(clip)["class"]
        assert len(overwritten) == len(modules) and not any(overwritten)
    for hook in hooks:
        hook.remove()
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("dtype", ["float32", "bf16"])
@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "bninception", "inception_v3"])
def test_tsm_training_convolves_the_shift_in_place(backbone: str, dtype: str, monkeypatch) -> None:
    """In training (float32, or under bf16 autocast), each TSM site's convolution reads its
    input shifted in place (restored for the identity path, or an Inception block's other
    branches): the loss and every gradient of the shifted copies, to the bit, the clip left as
    it was, and nothing saved for backward beyond what TSN saves."""
    torch.manual_seed(0)
    model = VideoClassifier(backbone, "tsm", num_segments=2, num_classes=4, dropout=0.0)
    reference = copy.deepcopy(model)
    clip = normalize(_clip(backbone), "imagenet")
    config = BenchmarkConfig(num_segments=2, batch_size=2, input_size=clip.shape[-1], dtype=dtype)
    frames = clip.clone()
    in_place = []
    convolves_in_place = temporal.convolves_in_place

    def recording(*args):
        in_place.append(convolves_in_place(*args))
        return in_place[-1]

    with monkeypatch.context() as patch, autocast_context(config):
        patch.setattr(temporal, "convolves_in_place", lambda *args: False)
        expected = reference(clip)["class"]
    expected.float().square().sum().backward()
    monkeypatch.setattr(temporal, "convolves_in_place", recording)
    with autocast_context(config):
        actual = model(frames)["class"]
    actual.float().square().sum().backward()
    sites = sum(isinstance(module, TemporalShift) for module in model.modules())
    assert len(in_place) == sites > 0 and all(in_place)
    assert torch.equal(actual, expected) and torch.equal(frames, clip)
    for (name, param), wanted in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(param.grad, wanted.grad), name

    torch.manual_seed(0)
    tsn = VideoClassifier(backbone, "none", num_segments=2, num_classes=4, dropout=0.0)
    labels = torch.tensor([0, 1])
    assert saved_activation_bytes(model, clip, labels, config) == saved_activation_bytes(tsn, clip, labels, config)


def test_logits_are_the_average_of_per_frame_logits() -> None:
    model = VideoClassifier("resnet18", "none", num_segments=3, num_classes=4).eval()
    clip = _clip("resnet18", frames=3)
    with torch.no_grad():
        logits = model(clip)["class"]
        frames = normalize(clip, "imagenet").flatten(0, 1)
        per_frame = model.heads["class"](model.base_model(frames)).view(2, 3, 4)
    torch.testing.assert_close(logits, per_frame.mean(dim=1))


def test_uint8_clips_are_normalised_and_float_clips_are_not() -> None:
    model = VideoClassifier("resnet18", "gsf", num_segments=2, num_classes=4).eval()
    clip = _clip("resnet18")
    with torch.no_grad():
        torch.testing.assert_close(model(clip)["class"], model(normalize(clip, "imagenet"))["class"])
        assert not torch.allclose(model(clip)["class"], model(clip.float())["class"])


def test_temporal_modules_see_time_and_tsn_does_not() -> None:
    torch.manual_seed(0)
    clip = _clip("resnet18", frames=4)
    reversed_clip = clip.flip(1)
    for temporal_module, order_matters in [("none", False), ("tsm", True), ("gsf", True)]:
        model = VideoClassifier("resnet18", temporal_module, num_segments=4, num_classes=4, dropout=0.0).eval()
        with torch.no_grad():
            same = torch.allclose(model(clip)["class"], model(reversed_clip)["class"], atol=1e-6)
        assert same != order_matters, temporal_module


def test_heads_run_in_float32_under_autocast() -> None:
    """Under bf16 autocast the backbone runs in bf16 and the heads in float32 on its features
    (bf16 logits would tie at the top about once in a hundred samples); without autocast
    nothing changes."""
    torch.manual_seed(0)
    model = VideoClassifier("resnet18", "gsf", num_segments=2, num_classes={"verb": 97, "noun": 300}).eval()
    clip = torch.randint(0, 256, (3, 2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(clip)
        features = model.base_model(normalize(clip, model.normalization).flatten(0, 1))
    assert features.dtype == torch.bfloat16
    for name, head in model.heads.items():
        assert logits[name].dtype == torch.float32
        with torch.no_grad():
            expected = head(features.float()).view(3, 2, -1).mean(dim=1)
        torch.testing.assert_close(logits[name], expected, rtol=0, atol=0)
    with torch.no_grad():
        assert all(value.dtype == torch.float32 for value in model(clip).values())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("temporal_module", TEMPORAL_MODULES)
def test_a_half_precision_model_trains(temporal_module: str, dtype: torch.dtype) -> None:
    """``precision="16-true"`` / ``"bf16-true"``: the network in fp16 / bf16 takes a training
    step, with finite gradients in its dtype (GSF's PyTorch-ops backward, which fp16 runs on the
    CPU, raised)."""
    torch.manual_seed(0)
    model = VideoClassifier("resnet18", temporal_module, num_segments=2, num_classes=5).train().to(dtype)
    # (32 px: at 16 layer4's stride-2 conv1 sees 1 x 1 maps, where PyTorch 2.14's own bf16
    # weight gradient is garbage, NaN at times, in the taps that see only padding)
    logits = model(torch.randint(0, 256, (2, 2, 3, 32, 32), dtype=torch.uint8))["class"]
    assert logits.dtype == dtype
    torch.nn.functional.cross_entropy(logits.float(), torch.tensor([1, 3])).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.dtype == dtype, name
        assert torch.isfinite(parameter.grad).all(), name


def test_heads_are_initialised_small() -> None:
    model = VideoClassifier("resnet18", "none", num_segments=2, num_classes={"verb": 97, "noun": 300})
    assert isinstance(model.heads, nn.ModuleDict) and list(model.heads) == ["verb", "noun"]
    assert model.num_classes == {"verb": 97, "noun": 300}
    for head in model.heads.values():
        assert isinstance(head, nn.Linear) and head.in_features == 512
        assert 0.0008 < head.weight.std().item() < 0.0012
        assert torch.count_nonzero(head.bias) == 0


@pytest.mark.parametrize(("backbone", "fusion_init"), [("resnet18", "kaiming"), ("bninception", "default"),
                                                    ("inception_v3", "default"), ("inception_v3_tf", "default")])
def test_fusion_convs_start_as_in_the_authors_networks(backbone: str, fusion_init: str) -> None:
    """Kaiming normal (fan_out, ReLU: std sqrt(2 / 9)) in their ResNet, which initialises every
    Conv2d so; PyTorch's default (uniform within 1 / sqrt(fan_in = 18)) in their BNInception and
    InceptionV3, which leave the fusion convs alone."""
    torch.manual_seed(0)
    model = VideoClassifier(backbone, "gsf", num_segments=2, num_classes=3)
    weights = torch.cat([conv.weight.flatten() for module in model.modules() if isinstance(module, GSF)
                         for conv in (module.channel_conv1, module.channel_conv2)])
    if fusion_init == "kaiming":
        assert weights.std().item() == pytest.approx((2 / 9) ** 0.5, rel=0.2)
    else:
        assert weights.abs().max().item() <= 18 ** -0.5
        assert weights.std().item() == pytest.approx(18 ** -0.5 / 3 ** 0.5, rel=0.2)


def test_gsf_fusion_init_is_checked() -> None:
    with pytest.raises(ValueError, match="fusion_init must be 'kaiming' or 'default', got 'xavier'"):
        GSF(16, 2, 0.5, fusion_init="xavier")


@pytest.mark.parametrize(
    ("backbone", "ratio", "normalization"),
    [("resnet50", 0.25, "imagenet"), ("bninception", 1.0, "bgr255"),
     ("inception_v3", 1.0, "imagenet"), ("inception_v3_tf", 1.0, "bgr255")],
)
def test_defaults_per_backbone(backbone: str, ratio: float, normalization: str) -> None:
    with torch.device("meta"):
        model = VideoClassifier(backbone, "gsf", num_segments=2, num_classes=2)
    assert model.base_model.gsf_ratio == ratio
    assert model.normalization == normalization == model.base_model.normalization


@pytest.mark.parametrize(
    ("kwargs", "shape", "dtype", "message"),
    [
        ({}, (2, 3, 3, 32, 32), torch.uint8, "num_segments=2 frames, got 3"),
        # (two 1-frame clips would otherwise pass as one 2-frame clip: GSF and TSM mixing samples)
        ({}, (2, 1, 3, 32, 32), torch.uint8, "num_segments=2 frames, got 1"),
        ({}, (2, 3, 32, 32), torch.uint8, r"expected clips \(B, T, 3, H, W\)"),
        ({}, (2, 2, 4, 32, 32), torch.uint8, r"expected clips \(B, T, 3, H, W\)"),
        ({}, (2, 2, 3, 32, 32), torch.int64, "uint8 .* or float"),
    ],
)
def test_bad_clips_are_rejected(kwargs: dict, shape: tuple, dtype: torch.dtype, message: str) -> None:
    model = VideoClassifier("resnet18", "gsf", num_segments=2, num_classes=2, **kwargs)
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape, dtype=dtype))


def test_dropout_acts_on_the_pooled_features_of_each_frame_in_training() -> None:
    """As in the release (and TSN): dropout between the backbone's pooled features and the
    heads, in training only; the clip's pixels reach the backbone untouched."""
    model = VideoClassifier("resnet18", "gsf", num_segments=2, num_classes={"verb": 3, "noun": 5}, dropout=0.5).train()
    seen = {}
    model.dropout.register_forward_hook(lambda module, inputs, output: seen.update(dropout=(inputs[0], output)))
    model.base_model.register_forward_hook(lambda module, inputs, output: seen.update(backbone=(inputs[0], output)))
    clip = _clip("resnet18")
    logits = model(clip)
    features, dropped = seen["dropout"]
    assert features is seen["backbone"][1] and features.shape == (2 * 2, model.base_model.feature_dim)
    zeroed = dropped == 0
    assert 0.3 < zeroed.float().mean() < 0.7 and torch.equal(dropped[~zeroed], 2 * features[~zeroed])
    expected = model.heads["verb"](dropped).view(2, 2, -1).mean(dim=1)
    torch.testing.assert_close(logits["verb"], expected)
    model.eval()
    model(clip)
    assert torch.equal(seen["dropout"][0], seen["dropout"][1])  # (eval: no dropout)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "vgg16"}, "unknown backbone 'vgg16'"),
        ({"temporal_module": "nonlocal"}, "unknown temporal module 'nonlocal'"),
        ({"gsf_ratio": 0.1}, r"cannot insert GSF after layer1.0.conv2: GSF cannot split 64 channels"),
        ({"gsf_ratio": 1.5}, r"GSF ratio must be in \(0, 1\]"),
        ({"num_classes": {"verb": 0}}, "positive class counts"),
        ({"num_classes": {}}, "positive class counts"),  # (no head: the first forward would fail)
        ({"normalization": "caffe"}, "unknown normalization 'caffe'"),
        ({"num_segments": 0}, "num_segments must be >= 1"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),  # (every feature zeroed: the heads' biases alone)
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_configurations_are_rejected(kwargs: dict, message: str) -> None:
    config = {"backbone": "resnet18", "temporal_module": "gsf", "num_segments": 2, "num_classes": 2, **kwargs}
    with torch.device("meta"), pytest.raises(ValueError, match=message):
        VideoClassifier(**config)


@pytest.mark.parametrize(
    ("backbone", "bad_ratio", "fitting"),
    [
        ("resnet18", 0.1, [0.25, 0.5, 0.75, 1.0]),
        ("resnet50", 0.3, [0.25, 0.5, 0.75, 1.0]),
        ("bninception", 0.3, [0.25, 0.5, 0.75, 1.0]),
        ("inception_v3", 0.9, [0.06, 0.19, 0.25, 0.31, 0.44, 0.5, 0.56, 0.69, 0.75, 0.81, 0.94, 1.0]),
    ],
)
def test_a_ratio_gsf_cannot_split_names_the_ratios_that_fit(backbone: str, bad_ratio: float, fitting: list) -> None:
    """The error lists the whole-percent ratios that fit every site, and exactly those build."""
    with torch.device("meta"):
        with pytest.raises(ValueError, match="cannot insert GSF after") as error:
            VideoClassifier(backbone, "gsf", num_segments=2, num_classes=2, gsf_ratio=bad_ratio)
        listed = str(error.value).rsplit(": ", 1)[1]
        assert [float(ratio) for ratio in listed.split(", ")] == fitting
        for percent in (1, 12, 24, 26, 40, 49, 51, 99):  # (a sample of those left out)
            assert percent / 100 not in fitting
            with pytest.raises(ValueError, match="cannot insert GSF after"):
                VideoClassifier(backbone, "gsf", num_segments=2, num_classes=2, gsf_ratio=percent / 100)
        for ratio in fitting:
            VideoClassifier(backbone, "gsf", num_segments=2, num_classes=2, gsf_ratio=ratio)


def test_the_listed_ratios_start_at_one_percent() -> None:
    """Every whole percent is tried, from 1 % to 100 %: at p %, 400 and 800 channels give 4p and
    8p processed channels, multiples of 4, so all fit; 200 channels fit at even percents only."""
    assert _percent_ratios_that_fit([400, 800]) == list(range(1, 101))
    assert _percent_ratios_that_fit([400, 200]) == list(range(2, 101, 2))


# -- ImageNet weights ------------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "under_state_dict"])
def test_pretrained_file_loads_into_the_backbone_layers(tmp_path, wrapped: bool) -> None:
    """A state dict saved bare, or under a ``state_dict`` entry (as many training scripts save it)."""
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": source.state_dict(), "epoch": 90} if wrapped else source.state_dict(), path)
    model = VideoClassifier("resnet18", "gsf", num_segments=2, num_classes=2, pretrained=path)
    own = model.base_model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(own[key], value, rtol=0, atol=0)


def test_torchvision_inception_v3_file_loads_without_its_classifiers(tmp_path) -> None:
    # torchvision's InceptionV3 weights carry the auxiliary classifier and the 1000-way fc.
    source = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "inception_v3.pth"
    torch.save(source.state_dict(), path)
    net = build_backbone("inception_v3", temporal_module="gsf", num_segments=2, weights=path)
    torch.testing.assert_close(net.Mixed_7c.branch1x1.conv.weight, source.Mixed_7c.branch1x1.conv.weight)
    assert net.transform_input  # the weights expect [-1, 1] inputs, as in torchvision


def test_imagenet_weights_load_after_insertion_too() -> None:
    # Insertion does not rename the backbone's layers, so a torchvision state dict fits a
    # backbone that already carries GSF, with only the GSF tensors left over.
    net = build_backbone("resnet18", temporal_module="gsf", num_segments=2)
    result = net.load_state_dict(torchvision.models.resnet18(weights=None).state_dict(), strict=False)
    assert set(result.unexpected_keys) == {"fc.weight", "fc.bias"}
    assert result.missing_keys and all(".gsf." in key for key in result.missing_keys)
    # The weights' loader asks for every backbone tensor but GSF's, which keep their init.
    from lightning_gsf.backbones.weights import load_imagenet_weights

    gsf_before = {key: value.clone() for key, value in net.state_dict().items() if ".gsf." in key}
    source = torchvision.models.resnet18(weights=None).state_dict()
    load_imagenet_weights(net, source, "resnet18.pth")
    assert torch.equal(net.state_dict()["layer4.1.conv2.weight"], source["layer4.1.conv2.weight"])
    assert all(torch.equal(net.state_dict()[key], value) for key, value in gsf_before.items())


@pytest.mark.parametrize("backbone", ["bninception", "inception_v3_tf"])
def test_caffe_and_tensorflow_converted_inception_weights_load(tmp_path, backbone) -> None:
    # The widely shared BNInception and InceptionV3 files (2017, before PyTorch 0.4.1) store BN
    # vectors as (1, C), keep their classifier and have no num_batches_tracked.
    source = build_backbone(backbone, temporal_module="none")
    for module in source.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
    state = {k: (v.unsqueeze(0) if "_bn" in k and v.dim() == 1 else v) for k, v in source.state_dict().items()
             if not k.endswith(".num_batches_tracked")}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 1024), torch.zeros(1000)
    path = tmp_path / f"{backbone}.pth"
    torch.save(state, path)
    net = build_backbone(backbone, temporal_module="gsf", num_segments=2, weights=path)
    own = net.state_dict()
    for key, value in source.state_dict().items():
        if not key.endswith(".num_batches_tracked"):
            torch.testing.assert_close(own[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("content", [b"", b"not a torch file", b"PK\x03\x04 truncated zip"])
def test_an_unreadable_pretrained_file_is_named(tmp_path, content) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^{path}: not a readable weights file"):
        build_backbone("resnet18", temporal_module="none", weights=path)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        build_backbone("resnet18", temporal_module="none", weights=tmp_path)


def test_torchvision_weights_that_cannot_be_fetched_say_where_the_file_goes(monkeypatch) -> None:
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(type(weights), "get_state_dict", offline)
    with pytest.raises(ConfigurationError, match=r"ResNet18_Weights.IMAGENET1K_V1 could not be loaded .*offline, put "
                                           r"resnet18-f37072fd.pth in .*checkpoints"):
        weights_module.fetch_torchvision_weights(weights)


def test_a_wrong_pretrained_file_is_rejected_with_the_keys(tmp_path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match=rf"{path} does not fit the backbone: .*unexpected key\(s\): layer1.2"):
        build_backbone("resnet18", temporal_module="none", weights=path)
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        build_backbone("resnet18", temporal_module="none", weights=tmp_path / "missing.pth")


@pytest.mark.parametrize(
    ("backbone", "name", "expected"),
    [
        ("resnet50", "IMAGENET1K_V1", torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
        ("resnet50", "DEFAULT", torchvision.models.ResNet50_Weights.IMAGENET1K_V2),
        ("resnet18", "ResNet18_Weights.IMAGENET1K_V1", torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
        ("inception_v3", "DEFAULT", torchvision.models.Inception_V3_Weights.IMAGENET1K_V1),
    ],
)
def test_torchvision_weight_names_resolve(backbone: str, name: str, expected) -> None:
    assert weights_module.resolve_torchvision_weights(backbone, name) is expected


@pytest.mark.parametrize(
    ("backbone", "name", "message"),
    [
        ("resnet50", "IMAGENET22K", "unknown resnet50 weights 'IMAGENET22K'"),
        ("resnet50", "ResNet18_Weights.IMAGENET1K_V1", "are not resnet50 weights"),
        ("bninception", "DEFAULT", "has no torchvision weights"),
    ],
)
def test_bad_torchvision_weight_names_are_rejected(backbone: str, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        weights_module.resolve_torchvision_weights(backbone, name)


def test_torchvision_weights_by_name_without_download(monkeypatch) -> None:
    source = torchvision.models.resnet18(weights=None)
    fetched = []

    def fake_fetch(weights):
        fetched.append(weights)
        return source.state_dict()

    monkeypatch.setattr(weights_module, "fetch_torchvision_weights", fake_fetch)
    model = VideoClassifier("resnet18", "tsm", num_segments=2, num_classes=2, pretrained="DEFAULT")
    assert fetched == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1]
    torch.testing.assert_close(model.base_model.conv1.weight, source.conv1.weight, rtol=0, atol=0)


@pytest.mark.parametrize("temporal_module", ["gsf", "tsm", "none"])
def test_the_whole_network_compiles_without_graph_breaks(temporal_module) -> None:
    """``fullgraph=True`` fails on any graph break: training (forward and backward) and
    evaluation of the whole classifier each trace as one graph (``aot_eager``: the tracing
    inductor sees, without its C++ build)."""
    torch.manual_seed(0)
    model = VideoClassifier(backbone="resnet18", temporal_module=temporal_module, num_segments=2,
                            num_classes={"verb": 3, "noun": 4}, pretrained=None)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    clips = torch.randint(0, 256, (2, 2, 3, 32, 32), dtype=torch.uint8)
    logits = compiled(clips)
    sum(head.sum() for head in logits.values()).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.inference_mode():
        assert compiled(clips)["noun"].shape == (2, 4)


def test_pretrained_files_beyond_torchvision_layouts(tmp_path, monkeypatch) -> None:
    import argparse

    source = build_backbone("bninception", temporal_module="none")  # Cadene's file: classifier last_linear
    path = tmp_path / "bn_inception.pth"
    torch.save({**source.state_dict(), "last_linear.weight": torch.zeros(1000, 1024),
                "last_linear.bias": torch.zeros(1000)}, path)
    net = build_backbone("bninception", temporal_module="gsf", num_segments=2, weights=path)
    assert torch.equal(net.inception_5b_1x1.weight, source.inception_5b_1x1.weight)
    resnet = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({"state_dict": resnet, "args": argparse.Namespace(arch="resnet18")}, path)
    with pytest.raises(ValueError, match=rf"^{path}: not a readable weights file"):  # never unpickled
        build_backbone("resnet18", temporal_module="none", weights=path)
    torch.save({"model": resnet, "epoch": 90}, path)
    with pytest.raises(ValueError, match=r"expected a state dict \(names -> tensors\)"):
        build_backbone("resnet18", temporal_module="none", weights=path)
    monkeypatch.chdir(tmp_path)  # a missing file without a folder is no torchvision weights name
    with pytest.raises(FileNotFoundError, match="pretrained weights file resnet18.pth does not exist"):
        build_backbone("resnet18", temporal_module="none", weights="resnet18.pth")
    own = {f"layer{i:02d}.weight": torch.zeros(1) for i in range(11)}
    listed = ", ".join(f"layer{i:02d}.weight" for i in range(10))
    assert weights_module.describe_state_dict_mismatch({}, own) == f"11 missing key(s): {listed}, ... (1 more)"


# -- the insertion's wrappers and rules, on their own ------------------------------------------


def _small_units() -> dict[str, nn.Module]:
    """A Bottleneck with a strided downsample, a BasicBlock and an Inception BasicConv2d, small."""
    downsample = nn.Sequential(nn.Conv2d(32, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
    return {
        "bottleneck": torchvision.models.resnet.Bottleneck(32, 8, stride=2, downsample=downsample),
        "basic_block": torchvision.models.resnet.BasicBlock(32, 32),
        "basic_conv": BasicConv2d(32, 16, kernel_size=3, padding=1),
    }


@pytest.mark.parametrize(("unit", "wrapper"), [("bottleneck", TemporalBottleneck), ("basic_block", TemporalBasicBlock),
                                               ("basic_conv", TemporalBasicConv2d)])
def test_a_wrapped_unit_without_temporal_modules_computes_what_torchvision_s_computes(unit, wrapper) -> None:
    """Every ReLU, BN and the identity path stay where torchvision puts them: to the bit."""
    torch.manual_seed(0)
    block = _small_units()[unit].eval()
    x = torch.randn(4, 32, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = block(x.clone())
        actual = wrapper(block)(x.clone())
    assert (expected < 0).sum() == 0 and (actual == 0).any()  # (a ReLU's output: zeros, nothing negative)
    assert torch.equal(actual, expected)


def test_a_wrapped_inception_unit_shifts_its_conv_s_input_and_fuses_its_output_before_the_bn() -> None:
    torch.manual_seed(0)
    unit = _small_units()["basic_conv"].eval()
    shift, gsf = TemporalShift(2), GSF(16, 2, 1.0).eval()
    x = torch.randn(4, 32, 8, 8, generator=torch.Generator().manual_seed(1))
    original = x.clone()
    with torch.no_grad():
        expected = torch.relu(unit.bn(gsf(unit.conv(shift(x.clone())))))
        actual = TemporalBasicConv2d(unit, shift, gsf)(x)
    assert torch.equal(actual, expected) and torch.equal(x, original)


def test_insertion_names_a_block_or_backbone_it_has_no_rule_for() -> None:
    with torch.device("meta"):
        net = torchvision.models.resnet18(weights=None)
    net.layer2[1] = nn.Identity()
    with pytest.raises(TypeError, match="layer2.1: no temporal insertion rule for Identity"):
        insert_temporal_modules(net, "gsf", num_segments=2, gsf_ratio=0.25)
    assert type(net.layer1[0]) is torchvision.models.resnet.BasicBlock  # (nothing inserted before the error)
    with pytest.raises(TypeError, match="no temporal insertion rule for a Sequential backbone"):
        insert_temporal_modules(nn.Sequential(nn.Conv2d(3, 8, 3)), "tsm", num_segments=2, gsf_ratio=0.25)


def test_a_ratio_gsf_cannot_split_or_an_unknown_module_is_a_configuration_error() -> None:
    """(A ConfigurationError, which ``gsf`` prints as one line, not a traceback.)"""
    with torch.device("meta"):
        with pytest.raises(ConfigurationError, match="cannot insert GSF after layer1.0.conv2"):
            build_backbone("resnet18", temporal_module="gsf", num_segments=2, gsf_ratio=0.1)
        net = torchvision.models.resnet18(weights=None)
    with pytest.raises(ConfigurationError, match="unknown temporal module 'nonlocal'"):
        insert_temporal_modules(net, "nonlocal", num_segments=2, gsf_ratio=0.25)
    assert not any(isinstance(m, (GSF, TemporalShift)) for m in net.modules())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "vgg16"}, "unknown backbone 'vgg16'"),
        ({"num_segments": 0}, "num_segments must be >= 1, got 0"),
        ({"gsf_ratio": 0.0}, "cannot insert GSF"),  # (refused, not taken for the default ratio)
    ],
)
def test_build_backbone_refuses_bad_arguments_itself(kwargs: dict, message: str) -> None:
    """``build_backbone``'s own checks (``VideoClassifier`` checks some of these before it)."""
    arguments = {"name": "bninception", "temporal_module": "gsf", "num_segments": 2, **kwargs}
    with torch.device("meta"), pytest.raises(ConfigurationError, match=message):
        build_backbone(**arguments)


@pytest.mark.parametrize("temporal_module", ["tsm", "none"])
def test_a_backbone_without_gsf_has_no_gsf_ratio(temporal_module: str) -> None:
    with torch.device("meta"):
        net = build_backbone("bninception", temporal_module=temporal_module, num_segments=2, gsf_ratio=0.5)
    assert (net.temporal_module, net.gsf_ratio) == (temporal_module, None)


@pytest.mark.parametrize(("backbone", "size"), [("bninception", 224), ("inception_v3_tf", 229)])
def test_caffe_style_inceptions_run_each_layer_once_per_forward(backbone: str, size: int) -> None:
    """Branches that share their first layers (Mixed_7b/7c's tower forks into a 3x1 and a 1x3
    conv) compute them once, as the release does: each BatchNorm counts one batch a step."""
    with torch.device("meta"):
        net = build_backbone(backbone, temporal_module="none")
    layers = {name: module for name, module in net.named_modules() if isinstance(module, (nn.Conv2d, nn.BatchNorm2d))}
    calls = dict.fromkeys(layers, 0)
    for name, module in layers.items():
        module.register_forward_hook(lambda module, args, out, name=name: calls.update({name: calls[name] + 1}))
    net(torch.empty(1, 3, size, size, device="meta"))
    assert set(calls.values()) == {1}


def test_untrained_backbones_start_from_their_initialisations() -> None:
    """Without pretrained weights: the Caffe-style Inceptions' convs He-initialised for their
    fan-out with zero biases; torchvision's InceptionV3 its own N(0, 0.1) (cut at +-2)."""
    torch.manual_seed(0)
    net = build_backbone("bninception", temporal_module="none")
    weight = net.inception_5b_3x3.weight  # (320, 192, 3, 3): fan-out 2880, fan-in 1728
    assert abs(weight.std().item() / (2 / (320 * 9)) ** 0.5 - 1) < 0.05
    assert not any(module.bias.any() for module in net.modules() if isinstance(module, nn.Conv2d))
    weight = build_backbone("inception_v3", temporal_module="none").Mixed_7c.branch1x1.conv.weight
    assert 0.095 < weight.std().item() < 0.105


def test_bninception_pools_as_the_released_network(monkeypatch) -> None:
    """Max or average at each pooling site: another kind keeps every shape and parameter, and
    the released weights would compute other features."""
    kinds = []
    max_pool, avg_pool = nn.functional.max_pool2d, nn.functional.avg_pool2d
    monkeypatch.setattr(nn.functional, "max_pool2d", lambda *a, **k: kinds.append("max") or max_pool(*a, **k))
    monkeypatch.setattr(nn.functional, "avg_pool2d", lambda *a, **k: kinds.append("avg") or avg_pool(*a, **k))
    with torch.device("meta"):
        net = build_backbone("bninception", temporal_module="none")
    net(torch.empty(1, 3, 224, 224, device="meta"))
    #                 stem pools    3a     3b     3c     4a     4b     4c     4d     4e     5a     5b
    assert kinds == ["max", "max", "avg", "avg", "max", "avg", "avg", "avg", "avg", "max", "avg", "max"]


def test_inception_blocks_concatenate_their_branches_in_order_and_average_the_last_map() -> None:
    torch.manual_seed(0)
    net = build_backbone("bninception", temporal_module="none").eval()
    seen = {}
    units = ["inception_3a_1x1", "inception_3a_3x3", "inception_3a_double_3x3_2", "inception_3a_pool_proj"]
    for unit in units:  # (the ReLU runs in place on the BatchNorm's output)
        getattr(net, unit + "_bn").register_forward_hook(lambda module, args, out, unit=unit: seen.update({unit: out}))
    net.inception_3b_1x1.register_forward_pre_hook(lambda module, args: seen.update(block_3a=args[0]))
    net.global_pool.register_forward_hook(lambda module, args, out: seen.update(last_map=args[0]))
    with torch.no_grad():
        features = net(torch.randn(1, 3, 95, 95))
    assert seen["last_map"].shape[-2:] == (3, 3)
    torch.testing.assert_close(seen["block_3a"], torch.cat([seen[unit] for unit in units], dim=1), rtol=0, atol=0)
    torch.testing.assert_close(features, seen["last_map"].mean(dim=(2, 3)))


def test_float_clips_of_a_half_precision_model_are_taken() -> None:
    """An already normalised bf16 clip for a ``bf16-true`` model (not only uint8 or float32)."""
    model = VideoClassifier("resnet18", "none", num_segments=2, num_classes=3).eval().to(torch.bfloat16)
    clip = normalize(_clip("resnet18"), "imagenet", dtype=torch.bfloat16)
    with torch.no_grad():
        assert model(clip)["class"].dtype == torch.bfloat16


def test_an_unknown_temporal_module_is_refused_before_the_weights_are_read(tmp_path) -> None:
    with torch.device("meta"), pytest.raises(ConfigurationError, match="unknown temporal module 'nonlocal'"):
        build_backbone("resnet18", temporal_module="nonlocal", weights=tmp_path / "missing.pth")


def test_the_tensorflow_converted_classifier_is_dropped_from_a_weights_file(tmp_path) -> None:
    source = build_backbone("inception_v3_tf", temporal_module="none")
    state = {k: v for k, v in source.state_dict().items() if not k.endswith(".num_batches_tracked")}
    state["top_cls_fc.weight"], state["top_cls_fc.bias"] = torch.zeros(1001, 2048), torch.zeros(1001)
    path = tmp_path / "inception_v3_tf.pth"
    torch.save(state, path)
    build_backbone("inception_v3_tf", temporal_module="none", weights=path)


def test_unknown_torchvision_weight_names_list_default_among_the_choices() -> None:
    with pytest.raises(ConfigurationError, match=r"one of \['DEFAULT', 'IMAGENET1K_V1'"):
        weights_module.resolve_torchvision_weights("resnet18", "IMAGENET22K")


def test_torchvision_weights_are_fetched_hash_checked(monkeypatch) -> None:
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    calls = []
    monkeypatch.setattr(type(weights), "get_state_dict", lambda self, **kwargs: calls.append(kwargs) or {})
    weights_module.fetch_torchvision_weights(weights)
    assert calls == [{"progress": True, "check_hash": True}]


def test_torchvision_weights_with_a_bad_hash_in_the_cache_are_a_configuration_error(monkeypatch) -> None:
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1

    def corrupt(*args, **kwargs):
        raise RuntimeError('invalid hash value (expected "f37072fd", got "00000000")')

    monkeypatch.setattr(type(weights), "get_state_dict", corrupt)
    with pytest.raises(ConfigurationError, match="could not be loaded .*corrupt one there: delete it"):
        weights_module.fetch_torchvision_weights(weights)


def test_a_missing_weights_path_in_a_folder_is_a_missing_file_whatever_its_suffix(tmp_path) -> None:
    with torch.device("meta"), pytest.raises(FileNotFoundError, match="does not exist"):
        build_backbone("resnet18", temporal_module="none", weights=tmp_path / "resnet18.weights")


def test_a_mismatch_of_exactly_the_limit_lists_every_key_without_a_remainder() -> None:
    own = {f"layer{i:02d}.weight": torch.zeros(1) for i in range(10)}
    listed = ", ".join(f"layer{i:02d}.weight" for i in range(10))
    assert weights_module.describe_state_dict_mismatch({}, own) == f"10 missing key(s): {listed}"
