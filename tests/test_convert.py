"""Import of the original release's checkpoints (layout, strictness, ratio inference, CLI route)
and export back to that layout."""

from __future__ import annotations

import argparse
import math
import zlib
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from lightning_gsf.convert import (
    OriginalCheckpointInfo,
    detect_backbone,
    export_original,
    import_original,
    infer_gsf_ratio,
    load_original_checkpoint,
)
from lightning_gsf.gsf import GSF
from lightning_gsf.model import VideoClassifier
from lightning_gsf.normalization import normalize

T = 2
CLASSES = 7
FRAME_SIZE = {"resnet18": 32, "resnet50": 32, "bninception": 64, "inception_v3_tf": 75}


def _randomise_statistics(module: nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and GSF gates, so that a mis-mapped tensor changes outputs
    (BN gains stay below 1, so that float rounding is not amplified through the layers)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 1.0)
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=generator) - 0.5)
            if isinstance(m, GSF):
                m.conv3D.weight.copy_(torch.randn(m.conv3D.weight.shape, generator=generator) * 0.3)
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * 0.05)


def _original_layout(backbone_state: dict, new_fc: nn.Linear) -> dict:
    """What the release's ``torch.save`` wrote: DataParallel names, ``new_fc`` classifier."""
    state = {f"module.base_model.{k}": v for k, v in backbone_state.items()}
    state.update({f"module.new_fc.{k}": v for k, v in new_fc.state_dict().items()})
    return {"epoch": 60, "best_prec1": torch.tensor(51.5), "model_state_dict": state}


class SpecResNet50(nn.Module):
    """ResNet-50 GSF as the spec describes it, independent of ``lightning_gsf.backbones``:
    torchvision's ResNet-50 and a GSF on every Bottleneck's ``conv3`` output, before ``bn3``."""

    def __init__(self, ratio: float = 0.25) -> None:
        super().__init__()
        self.net = torchvision.models.resnet50(weights=None)
        self.net.fc = nn.Identity()
        self.gsf = nn.ModuleDict()
        for layer in ("layer1", "layer2", "layer3", "layer4"):
            for index, block in enumerate(getattr(self.net, layer)):
                self.gsf[f"{layer}_{index}"] = GSF(block.conv3.out_channels, T, ratio)
        self.new_fc = nn.Linear(2048, CLASSES)

    def original_state(self) -> dict:
        backbone = {k: v for k, v in self.net.state_dict().items()}
        for key, module in self.gsf.items():
            layer, index = key.split("_")
            backbone.update({f"{layer}.{index}.gsf.{k}": v for k, v in module.state_dict().items()})
        return _original_layout(backbone, self.new_fc)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = normalize(clip, "imagenet").flatten(0, 1)
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for layer in ("layer1", "layer2", "layer3", "layer4"):
            for index, block in enumerate(getattr(net, layer)):
                out = block.relu(block.bn1(block.conv1(x)))
                out = block.relu(block.bn2(block.conv2(out)))
                out = block.bn3(self.gsf[f"{layer}_{index}"](block.conv3(out)))
                identity = x if block.downsample is None else block.downsample(x)
                x = block.relu(out + identity)
        logits = self.new_fc(net.avgpool(x).flatten(1))
        return logits.view(clip.shape[0], T, -1).mean(dim=1)


def _clip(backbone: str, seed: int = 0) -> torch.Tensor:
    size = FRAME_SIZE[backbone]
    generator = torch.Generator().manual_seed(seed)
    batch = 2 if backbone.startswith("resnet") else 1  # the Inceptions are slow on CPU
    return torch.randint(0, 256, (batch, T, 3, size, size), dtype=torch.uint8, generator=generator)


def _source_video_model(backbone: str, ratio: float | None = None, seed: int = 1) -> VideoClassifier:
    torch.manual_seed(seed)
    model = VideoClassifier(backbone, "gsf", num_segments=T, num_classes=CLASSES, gsf_ratio=ratio).eval()
    _randomise_statistics(model, seed)
    return model


def _original_checkpoint_of(model: VideoClassifier) -> dict:
    return _original_layout(model.base_model.state_dict(), model.heads["class"])


@pytest.fixture(scope="module")
def resnet18_checkpoint() -> tuple[VideoClassifier, dict]:
    model = _source_video_model("resnet18")
    return model, _original_checkpoint_of(model)


def test_resnet50_import_matches_the_spec_network(tmp_path: Path) -> None:
    source = SpecResNet50().eval()
    _randomise_statistics(source, seed=3)
    path = tmp_path / "gsf_resnet50_something_v1.pth.tar"
    torch.save(source.original_state(), path)

    model = VideoClassifier("resnet50", "gsf", num_segments=T, num_classes=CLASSES).eval()
    info = load_original_checkpoint(model, path, trust_pickle=False)

    assert info == OriginalCheckpointInfo(
        source=str(path), backbone="resnet50", gsf_ratio=0.25, num_gsf_modules=16,
        num_classes=CLASSES, normalization="imagenet",
    )
    clip = _clip("resnet50")
    with torch.no_grad():
        torch.testing.assert_close(model(clip)["class"], source(clip), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("backbone", "keys"),
    [
        (
            "bninception",
            {
                "module.base_model.conv1_7x7_s2.bias": (64,),
                "module.base_model.inception_5b_pool_proj_bn.running_var": (128,),
                "module.base_model.gsf_inception_4d_1x1.conv3D.weight": (2, 48, 3, 3, 3),
                "module.base_model.gsf_inception_3c_3x3_reduce.channel_conv2.weight": (1, 2, 3, 3),
                "module.new_fc.weight": (CLASSES, 1024),
            },
        ),
        (
            "inception_v3_tf",
            {
                "module.base_model.conv_Conv2D.weight": (32, 3, 3, 3),
                "module.base_model.mixed_4_tower_conv_1_Conv2D.weight": (128, 128, 7, 1),
                "module.base_model.mixed_10_tower_1_mixed_conv_1_batchnorm.running_mean": (384,),
                "module.base_model.gsf_mixed_8_tower_conv_Conv2D.conv3D.weight": (2, 96, 3, 3, 3),
                "module.new_fc.weight": (CLASSES, 2048),
            },
        ),
    ],
)
def test_inception_checkpoints_round_trip(tmp_path: Path, backbone: str, keys: dict) -> None:
    source = _source_video_model(backbone)
    checkpoint = _original_checkpoint_of(source)
    state = checkpoint["model_state_dict"]
    # the release's names (checked against its layer tables) and shapes
    assert {k: tuple(state[k].shape) for k in keys} == keys
    path = tmp_path / f"{backbone}.pth.tar"
    torch.save(checkpoint, path)

    model = VideoClassifier(backbone, "gsf", num_segments=T, num_classes=CLASSES, normalization="imagenet").eval()
    info = load_original_checkpoint(model, path)

    assert (info.backbone, info.gsf_ratio, info.num_classes, info.normalization) == (backbone, 1.0, CLASSES, "bgr255")
    assert model.normalization == "bgr255"
    clip = _clip(backbone)
    with torch.no_grad():
        torch.testing.assert_close(model(clip)["class"], source(clip)["class"], rtol=1e-4, atol=1e-5)


def _pattern(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor for the release's state-dict key ``name``, from a formula of the name and shape
    alone (no random generator), sized like a trained network's: BN statistics and gains near
    1, small biases, He-scaled weights."""
    phase = zlib.crc32(name.encode()) % 997 / 97.0
    s = torch.sin(torch.arange(math.prod(shape), dtype=torch.float64) * 0.618034 + phase).reshape(shape)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return 1 + 0.5 * s ** 2
    if leaf == "running_mean":
        return 0.1 * s
    if len(shape) == 1:
        return 1 + 0.1 * s if leaf == "weight" else 0.01 * s
    return s * (6.0 / math.prod(shape[1:])) ** 0.5


# Logits of the authors' own networks (their backbones/pytorch_load.py BNInception_gsf and
# InceptionV3_gsf from bn_inception_gsf.yaml / inceptionv3_gsf.yaml, ratio 100, and
# resnetGSFModels.py's ResNet-50, ratio 25; 3 segments, a 5-way new_fc, eval mode, float64) with every tensor of their state dict set by _pattern and
# the input below: run out of tree on 2026-11-27 (their code is not part of this project).
RELEASE_LOGITS = {
    "resnet50": (64, [[0.8653038528189082, -1.465976233924967, 1.9398431600801598, -2.193400545593725,
                       2.204647445363462],
                      [0.86700016610187, -1.4682041814482298, 1.9423648937581175, -2.195946853732004,
                       2.2069464927820452]]),
    "bninception": (96, [[0.7270104229169893, -0.002630143409469756, -0.7096577225487302, 0.24184240501668808,
                          0.6261123684606763],
                         [0.7269157473361858, -0.0025551466247878316, -0.7095875511378745, 0.24174448068671997,
                          0.6260741924804747]]),
    "inception_v3_tf": (139, [[1.0327940693020068, -1.1084779352315588, 1.0955216463629298, -0.9523927045391808,
                               0.6994390452114599],
                              [1.032784713980947, -1.1084727244827437, 1.095521136468147, -0.9523969499330601,
                               0.6994475926702169]]),
}


@pytest.mark.parametrize("backbone", sorted(RELEASE_LOGITS))
def test_networks_give_the_release_networks_logits(backbone: str) -> None:
    """The ResNet-50, BNInception and InceptionV3 GSF networks, loaded with a checkpoint in the
    release's layout, give the logits that the authors' own networks gave for that checkpoint:
    every layer, pool, concatenation and GSF site in place (the two clips' logits differ by
    1e-5 to 3e-3, and as much with their frames reversed: far above float64 rounding)."""
    size, expected = RELEASE_LOGITS[backbone]
    num_segments = 3
    model = VideoClassifier(backbone, "gsf", num_segments=num_segments, num_classes=5).double().eval()
    release_names = {key: "new_fc." + key.removeprefix("heads.class.") if key.startswith("heads.") else key
                     for key in model.state_dict()}
    state = {release: _pattern(release, tuple(model.state_dict()[key].shape))
             for key, release in release_names.items() if model.state_dict()[key].is_floating_point()}
    load_original_checkpoint(model, {"model_state_dict": {"module." + key: value for key, value in state.items()}})
    clip = torch.sin(torch.arange(2 * num_segments * 3 * size * size, dtype=torch.float64) * 0.37)
    with torch.no_grad():
        logits = model(clip.reshape(2, num_segments, 3, size, size))["class"]
    torch.testing.assert_close(logits, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-9)


def test_import_original_writes_a_lightning_checkpoint(tmp_path: Path, resnet18_checkpoint) -> None:
    source, checkpoint = resnet18_checkpoint
    in_path, out_path = tmp_path / "original.pth.tar", tmp_path / "out" / "imported.ckpt"
    torch.save(checkpoint, in_path)

    info = import_original(in_path, out_path, num_segments=T)

    assert info.source == str(in_path) and info.gsf_ratio == 0.25
    saved = torch.load(out_path, map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"] == {
        "backbone": "resnet18", "temporal_module": "gsf", "num_segments": T, "num_classes": {"class": CLASSES},
        "gsf_ratio": 0.25, "dropout": 0.5, "pretrained": None, "normalization": "imagenet",
    }
    import pytorch_lightning as pl

    assert saved["pytorch-lightning_version"] == pl.__version__
    assert all(key.startswith("model.") for key in saved["state_dict"])
    rebuilt = VideoClassifier(**saved["hyper_parameters"]).eval()
    rebuilt.load_state_dict({k.removeprefix("model."): v for k, v in saved["state_dict"].items()}, strict=True)
    clip = _clip("resnet18")
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(clip)["class"], source(clip)["class"])


def test_imported_checkpoint_loads_into_the_lightning_module(tmp_path: Path, resnet18_checkpoint) -> None:
    from lightning_gsf.module import VideoClassificationModule

    source, checkpoint = resnet18_checkpoint
    in_path, out_path = tmp_path / "original.pth.tar", tmp_path / "imported.ckpt"
    torch.save(checkpoint, in_path)
    import_original(in_path, out_path, num_segments=T)
    module = VideoClassificationModule.load_from_checkpoint(out_path, map_location="cpu").eval()
    clip = _clip("resnet18")
    with torch.no_grad():
        torch.testing.assert_close(module(clip)["class"], source(clip)["class"])


def test_an_imported_checkpoint_matches_a_run_that_leaves_the_defaults_unset(tmp_path: Path, resnet18_checkpoint,
                                                                            caplog) -> None:
    """``gsf validate --ckpt_path imported.ckpt`` with a config that leaves ``gsf_ratio`` and
    ``normalization`` to the backbone warns of nothing (it listed twelve differences: the
    training settings the release does not record, and the resolved ratio and normalisation
    against None); a setting that really differs is still named, alone."""
    import logging

    from lightning_gsf.module import VideoClassificationModule

    in_path, out_path = tmp_path / "original.pth.tar", tmp_path / "imported.ckpt"
    torch.save(resnet18_checkpoint[1], in_path)
    import_original(in_path, out_path, num_segments=T)
    checkpoint = torch.load(out_path, map_location="cpu", weights_only=False)
    for dropout in (0.5, 0.3):
        module = VideoClassificationModule({"class": CLASSES}, num_segments=T, backbone="resnet18",
                                           temporal_module="gsf", dropout=dropout)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lightning_gsf.checkpoint_matching"):
            module.on_load_checkpoint(checkpoint)
        if dropout == 0.5:
            assert "hyper-parameters" not in caplog.text
        else:  # (the parenthesis: the only difference listed)
            assert "other hyper-parameters (dropout: checkpoint 0.5, this run 0.3)" in caplog.text


def test_import_original_checks_what_it_is_told(tmp_path: Path, resnet18_checkpoint) -> None:
    _, checkpoint = resnet18_checkpoint
    in_path = tmp_path / "original.pth.tar"
    torch.save(checkpoint, in_path)
    with pytest.raises(ValueError, match="holds a resnet18 model, not resnet50"):
        import_original(in_path, tmp_path / "x.ckpt", num_segments=T, backbone="resnet50")
    with pytest.raises(ValueError, match=f"classifies {CLASSES} classes, not num_classes=174"):
        import_original(in_path, tmp_path / "x.ckpt", num_segments=T, num_classes=174)


def test_a_checkpoint_without_gsf_imports_as_tsn(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = VideoClassifier("resnet18", "none", num_segments=T, num_classes=CLASSES).eval()
    _randomise_statistics(source, seed=5)
    in_path = tmp_path / "tsn.pth.tar"
    torch.save(_original_checkpoint_of(source), in_path)
    info = import_original(in_path, tmp_path / "tsn.ckpt", num_segments=T)
    saved = torch.load(tmp_path / "tsn.ckpt", map_location="cpu", weights_only=True)
    assert (info.gsf_ratio, info.num_gsf_modules) == (None, 0)
    assert saved["hyper_parameters"]["temporal_module"] == "none"


def test_unknown_layouts_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "vgg.pth"
    torch.save({"state_dict": {"module.base_model.features.0.weight": torch.zeros(64, 3, 3, 3)}}, path)
    with pytest.raises(ValueError, match="match none of the released backbones"):
        import_original(path, tmp_path / "x.ckpt", num_segments=T)
    torch.save({"optimizer": {}}, path)
    with pytest.raises(ValueError, match="expected a 'model_state_dict' or 'state_dict' entry"):
        import_original(path, tmp_path / "x.ckpt", num_segments=T)


def test_wrong_ratio_names_both_ratios(resnet18_checkpoint) -> None:
    _, checkpoint = resnet18_checkpoint
    model = VideoClassifier("resnet18", "gsf", num_segments=T, num_classes=CLASSES, gsf_ratio=0.5)
    with pytest.raises(ValueError, match=r"trained with GSF ratio 0.25 .* built with gsf_ratio=0.5"):
        load_original_checkpoint(model, checkpoint)


def test_gsf_checkpoint_into_a_model_without_gsf(resnet18_checkpoint) -> None:
    _, checkpoint = resnet18_checkpoint
    model = VideoClassifier("resnet18", "tsm", num_segments=T, num_classes=CLASSES)
    with pytest.raises(ValueError, match="has 8 GSF modules .* build it with temporal_module='gsf'"):
        load_original_checkpoint(model, checkpoint)


def test_checkpoint_of_another_backbone(resnet18_checkpoint) -> None:
    _, checkpoint = resnet18_checkpoint
    with torch.device("meta"):
        model = VideoClassifier("resnet34", "gsf", num_segments=T, num_classes=CLASSES)
    with pytest.raises(ValueError, match="holds a resnet18 model, but the model's backbone is resnet34"):
        load_original_checkpoint(model, checkpoint)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("module.base_model.layer2.1.bn1.running_var"),
         r"1 missing key\(s\): base_model.layer2.1.bn1.running_var"),
        (lambda s: s.__setitem__("module.base_model.layer5.0.conv1.weight", torch.zeros(1)),
         r"1 unexpected key\(s\): base_model.layer5.0.conv1.weight"),
        (lambda s: s.__setitem__("module.new_fc.bias", torch.zeros(CLASSES + 1)),
         r"1 mis-shaped key\(s\): heads.class.bias: checkpoint \(8,\), model \(7,\)"),
    ],
    ids=["missing", "unexpected", "mis-shaped"],
)
def test_key_problems_are_listed(resnet18_checkpoint, edit, message: str) -> None:
    _, checkpoint = resnet18_checkpoint
    state = dict(checkpoint["model_state_dict"])
    edit(state)
    model = VideoClassifier("resnet18", "gsf", num_segments=T, num_classes=CLASSES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        load_original_checkpoint(model, {"state_dict": state})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # left untouched


def test_batch_counters_may_be_missing(resnet18_checkpoint) -> None:
    # Files written before PyTorch 0.4.1 have no BatchNorm num_batches_tracked.
    source, checkpoint = resnet18_checkpoint
    state = {k: v for k, v in checkpoint["model_state_dict"].items() if not k.endswith("num_batches_tracked")}
    model = VideoClassifier("resnet18", "gsf", num_segments=T, num_classes=CLASSES).eval()
    load_original_checkpoint(model, state)
    clip = _clip("resnet18")
    with torch.no_grad():
        torch.testing.assert_close(model(clip)["class"], source(clip)["class"])


def test_pickled_objects_need_trust(tmp_path: Path, resnet18_checkpoint) -> None:
    _, checkpoint = resnet18_checkpoint
    path = tmp_path / "with_args.pth.tar"
    torch.save({**checkpoint, "args": argparse.Namespace(arch="resnet18")}, path)
    model = VideoClassifier("resnet18", "gsf", num_segments=T, num_classes=CLASSES)
    with pytest.raises(ValueError, match="trust_pickle=True"):
        load_original_checkpoint(model, path)
    assert load_original_checkpoint(model, path, trust_pickle=True).num_gsf_modules == 8


@pytest.mark.parametrize(("backbone", "ratio"), [("resnet18", 0.5), ("resnet34", 0.25), ("resnet50", 0.125),
                                               ("resnet101", 0.25), ("resnet152", 0.25), ("bninception", 1.0),
                                               ("inception_v3_tf", 1.0)])
def test_ratio_and_backbone_are_read_off_the_tensors(backbone: str, ratio: float) -> None:
    with torch.device("meta"):
        model = VideoClassifier(backbone, "gsf", num_segments=T, num_classes=CLASSES, gsf_ratio=ratio)
    state = {k: v for k, v in _original_checkpoint_of(model)["model_state_dict"].items()}
    state = {k.removeprefix("module."): v for k, v in state.items()}
    assert detect_backbone(state) == backbone
    assert infer_gsf_ratio(state)[0] == ratio


def test_export_original_round_trips_an_imported_checkpoint(tmp_path: Path, resnet18_checkpoint) -> None:
    """original -> gsf import-original -> gsf export-original gives back every tensor of the
    original's model_state_dict, under the same names."""
    from lightning_gsf.cli import run

    _, checkpoint = resnet18_checkpoint
    original, imported, exported = tmp_path / "original.pth.tar", tmp_path / "imported.ckpt", tmp_path / "exported.pth.tar"
    torch.save(checkpoint, original)
    import_original(original, imported, num_segments=T)
    info = run(["export-original", str(imported), str(exported)])
    assert (info.backbone, info.gsf_ratio, info.num_gsf_modules, info.num_classes) == ("resnet18", 0.25, 8, CLASSES)
    written = torch.load(exported, map_location="cpu", weights_only=True)
    # The entries of the release's main.py, in its order; an import was never trained here.
    assert list(written) == ["epoch", "arch", "model_state_dict", "scaler_state_dict", "best_prec1", "current_prec1",
                             "lr"]
    assert {key: written[key] for key in ("epoch", "arch", "best_prec1", "current_prec1", "lr")} == {
        "epoch": 0, "arch": "resnet18", "best_prec1": 0.0, "current_prec1": 0.0, "lr": None}
    expected = checkpoint["model_state_dict"]
    assert sorted(written["model_state_dict"]) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(written["model_state_dict"][key], value), key


@pytest.mark.parametrize("backbone", ["resnet18", "bninception"])
def test_a_trained_module_exports_to_a_file_the_importer_reads(tmp_path: Path, backbone: str) -> None:
    """A ``VideoClassificationModule`` checkpoint (state under ``model.``, its hyper-parameters)
    exports to the release's layout, and a model loaded from the export gives the same logits."""
    from lightning_gsf.module import VideoClassificationModule

    torch.manual_seed(0)
    module = VideoClassificationModule({"class": CLASSES}, num_segments=T, backbone=backbone, pretrained=None).eval()
    _randomise_statistics(module.model, seed=6)
    path = tmp_path / "trained.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    export_original(path, tmp_path / "exported.pth.tar")

    model = VideoClassifier(backbone, "gsf", num_segments=T, num_classes=CLASSES, pretrained=None).eval()
    load_original_checkpoint(model, tmp_path / "exported.pth.tar")
    clip = _clip(backbone)
    with torch.no_grad():
        torch.testing.assert_close(model(clip)["class"], module(clip)["class"], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"num_classes": {"verb": 3, "noun": 4}}, r"one classifier; choose one of the heads \['noun', 'verb'\]"),
        ({"temporal_module": "tsm"}, "temporal module 'tsm'"),
        ({"backbone": "inception_v3"}, "backbone 'inception_v3' has no layout"),
    ],
)
def test_export_refuses_what_the_release_cannot_hold(tmp_path: Path, arguments: dict, message: str) -> None:
    from lightning_gsf.module import VideoClassificationModule

    settings = {"num_classes": {"class": CLASSES}, "num_segments": T, "backbone": "resnet18", "pretrained": None,
                **arguments}
    module = VideoClassificationModule(**settings)
    path = tmp_path / "trained.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    with pytest.raises(ValueError, match=message):
        export_original(path, tmp_path / "exported.pth.tar")
    assert not (tmp_path / "exported.pth.tar").exists()


def test_export_picks_a_named_head(tmp_path: Path) -> None:
    from lightning_gsf.module import VideoClassificationModule

    module = VideoClassificationModule({"verb": 3, "noun": 4}, num_segments=T, backbone="resnet18", pretrained=None)
    path = tmp_path / "trained.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    for head, classes in (("verb", 3), ("noun", 4)):  # (the first head too, not only the last)
        info = export_original(path, tmp_path / f"{head}.pth.tar", head=head)
        assert info.num_classes == classes
        written = torch.load(tmp_path / f"{head}.pth.tar", map_location="cpu", weights_only=True)["model_state_dict"]
        for name in ("weight", "bias"):
            assert torch.equal(written[f"module.new_fc.{name}"], module.state_dict()[f"model.heads.{head}.{name}"])
    with pytest.raises(ValueError, match=r"no head 'action'"):
        export_original(path, tmp_path / "x.pth.tar", head="action")


def _resume_as_the_release_does(path: Path) -> tuple[int, float]:
    """What the release's main.py --resume reads of a checkpoint: its epoch, its best top-1, the
    model's tensors, and the gradient scaler's state, loaded into a scaler enabled (--with_amp)
    and into a disabled one."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for enabled in (True, False):
        torch.amp.GradScaler("cpu", enabled=enabled).load_state_dict(checkpoint["scaler_state_dict"])
    assert all(key.startswith("module.") for key in checkpoint["model_state_dict"])
    return checkpoint["epoch"], checkpoint["best_prec1"]


def test_export_of_a_gsf_fit_holds_what_the_release_resumes_from(tmp_path: Path, monkeypatch) -> None:
    """A checkpoint of `gsf fit` exports with the entries the release's main.py saves and its
    --resume reads: the epochs completed, the arch, the optimizer's learning rate, a scaler's
    state; the best top-1 is the monitored checkpoint's where the model has one head."""
    import sys

    from lightning_gsf.convert import release_entries
    from media_writers import fit_tiny_synthetic_epic

    monkeypatch.setattr(sys, "argv", ["gsf"])
    # (validation every second epoch: the best checkpoint is written at the validation's end,
    # where Lightning's epoch counters stand otherwise than at the epoch's end)
    checkpoints = fit_tiny_synthetic_epic(tmp_path, "--trainer.check_val_every_n_epoch=2") / "checkpoints"
    last = checkpoints / "last.ckpt"
    (best,) = checkpoints.glob("best-*.ckpt")
    export_original(best, tmp_path / "best.pth.tar", head="verb")
    assert _resume_as_the_release_does(tmp_path / "best.pth.tar") == (2, 0.0)  # both written after epoch 2
    exported = tmp_path / "verb.pth.tar"
    export_original(last, exported, head="verb")
    written = torch.load(exported, map_location="cpu", weights_only=True)
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert written["arch"] == "resnet18"
    assert written["lr"] == checkpoint["optimizer_states"][0]["param_groups"][-1]["lr"]
    # Two heads: the monitored top-1 is the action's, not the verb head's: none recorded.
    assert _resume_as_the_release_does(exported) == (2, 0.0)
    assert written["current_prec1"] == 0.0

    # With one head the monitored top-1 is that head's, the release's prec1.
    (monitored,) = [state for key, state in checkpoint["callbacks"].items() if "val/accuracy_at_1" in key]
    entries = release_entries(checkpoint, written["model_state_dict"], "resnet18", single_head=True)
    assert entries["best_prec1"] == monitored["best_model_score"].item()
    assert entries["current_prec1"] == monitored["current_score"].item()
    # A second monitor added by the user (saving less often, with older scores) changes neither.
    callbacks = {**checkpoint["callbacks"],
                 "ModelCheckpoint{'every_n_epochs': 10}": {"monitor": "val/accuracy_at_1",
                                                            "best_model_score": torch.tensor(-1.0),
                                                            "current_score": torch.tensor(-1.0)}}
    entries = release_entries({**checkpoint, "callbacks": callbacks}, {}, "resnet18", single_head=True)
    assert entries["best_prec1"] == monitored["best_model_score"].item()
    assert entries["current_prec1"] == monitored["current_score"].item()
    # A 16-bit mixed-precision run's scaler goes with it.
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0).state_dict()
    entries = release_entries({**checkpoint, "MixedPrecision": scaler}, {}, "bninception", single_head=False)
    assert (entries["scaler_state_dict"], entries["arch"]) == (scaler, "bninception")


def test_export_of_a_gsf_resnet_the_release_cannot_build_warns(tmp_path: Path, caplog) -> None:
    from lightning_gsf.module import VideoClassificationModule

    module = VideoClassificationModule({"class": CLASSES}, num_segments=T, backbone="resnet18", pretrained=None)
    path = tmp_path / "trained.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    with caplog.at_level("WARNING", logger="lightning_gsf.convert"):
        export_original(path, tmp_path / "exported.pth.tar")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{path}: the release builds GSF ResNets of 50 and 101 layers only; its code has no model for this resnet18 "
        "checkpoint"]
    assert _resume_as_the_release_does(tmp_path / "exported.pth.tar") == (0, 0.0)



def test_files_that_do_not_fit_are_refused_with_the_reason(tmp_path: Path, resnet18_checkpoint) -> None:
    _, checkpoint = resnet18_checkpoint
    state = {k.removeprefix("module."): v for k, v in checkpoint["model_state_dict"].items()}
    model = VideoClassifier("resnet18", "gsf", num_segments=T, num_classes=CLASSES)
    tsn = VideoClassifier("resnet18", "none", num_segments=T, num_classes=CLASSES)
    epic = VideoClassifier("resnet18", "gsf", num_segments=T, num_classes={"verb": CLASSES, "noun": 4})
    mixed = {**state, "base_model.layer4.1.gsf.conv3D.weight": torch.zeros(2, 128, 3, 3, 3)}  # one at ratio 0.5
    no_conv = {k: v for k, v in state.items() if k != "base_model.layer3.1.conv2.weight"}
    for model_, source, message in [
        (model, mixed, r"no single GSF ratio .* base_model.layer4.1.gsf: 256/512"),
        (model, no_conv, "channels of GSF module base_model.layer3.1.gsf: no base_model.layer3.1.conv2.weight"),
        (model, _original_checkpoint_of(tsn), "has no GSF modules, .* build it with temporal_module='none'"),
        (epic, checkpoint, r"one classifier; the model has heads \['verb', 'noun'\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_original_checkpoint(model_, source)
    # 4 of 8 and 16 of 20 channels: each ratio splits the other's channels invalidly (gsf_channels raises)
    tiny = {"base_model.layer1.0.conv2.weight": torch.zeros(8, 8, 3, 3),
            "base_model.layer1.0.gsf.conv3D.weight": torch.zeros(2, 2, 3, 3, 3),
            "base_model.layer2.0.conv2.weight": torch.zeros(20, 20, 3, 3),
            "base_model.layer2.0.gsf.conv3D.weight": torch.zeros(2, 8, 3, 3, 3)}
    with pytest.raises(ValueError, match=r"no single GSF ratio .*layer1.0.gsf: 4/8, base_model.layer2.0.gsf: 16/20"):
        infer_gsf_ratio(tiny)
    path = tmp_path / "original.pth.tar"
    torch.save({"model_state_dict": {k: v for k, v in state.items() if not k.startswith("new_fc.")}}, path)
    with pytest.raises(ValueError, match="no classifier 'module.new_fc.weight'"):
        import_original(path, tmp_path / "x.ckpt", num_segments=T)
    torch.save(checkpoint, path)  # the release's own file, given to export by mistake
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        export_original(path, tmp_path / "x.pth.tar")


def _saved_module(tmp_path: Path, extra: dict | None = None, **settings):
    from lightning_gsf.module import VideoClassificationModule

    torch.manual_seed(0)
    module = VideoClassificationModule(**{"num_classes": {"class": CLASSES}, "num_segments": T,
                                          "backbone": "resnet18", "pretrained": None, **settings}).eval()
    _randomise_statistics(module.model, seed=7)
    path = tmp_path / "trained.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), **(extra or {})}, path)
    return module, path


def test_export_of_inception_v3_tf_tsn_and_other_normalisations(tmp_path: Path, caplog) -> None:
    module, path = _saved_module(tmp_path, backbone="inception_v3_tf")
    export_original(path, tmp_path / "out.pth.tar")
    written = torch.load(tmp_path / "out.pth.tar", map_location="cpu", weights_only=True)
    assert written["arch"] == "inceptionv3"  # the release's --arch
    assert sorted(written["model_state_dict"]) == sorted(
        "module." + key.replace("heads.class.", "new_fc.") for key in module.model.state_dict())
    module, path = _saved_module(tmp_path, temporal_module="none")  # TSN
    assert export_original(path, tmp_path / "tsn.pth.tar").gsf_ratio is None
    model = VideoClassifier("resnet18", "none", num_segments=T, num_classes=CLASSES).eval()
    load_original_checkpoint(model, tmp_path / "tsn.pth.tar")
    with torch.no_grad():
        torch.testing.assert_close(model(_clip("resnet18"))["class"], module(_clip("resnet18"))["class"])
    _, path = _saved_module(tmp_path, backbone="bninception", normalization="imagenet")
    with caplog.at_level("WARNING", logger="lightning_gsf.convert"):
        assert export_original(path, tmp_path / "bni.pth.tar").normalization == "imagenet"
    assert "trained with imagenet normalisation; the release's code feeds bgr255" in caplog.text


def test_export_writes_the_named_head_alone_and_refuses_unplaced_tensors(tmp_path: Path) -> None:
    # head "verb" must not also take "verb_action"'s tensors; one head's export of a model
    # monitored on another score writes no top-1
    monitor = {"monitor": "val/accuracy_at_1", "best_model_score": torch.tensor(61.5),
               "current_score": torch.tensor(60.0)}
    module, path = _saved_module(tmp_path, {"callbacks": {"ModelCheckpoint": monitor}},
                                 num_classes={"verb": 3, "verb_action": 5})
    assert export_original(path, tmp_path / "verb.pth.tar", head="verb").num_classes == 3
    written = torch.load(tmp_path / "verb.pth.tar", map_location="cpu", weights_only=True)
    assert torch.equal(written["model_state_dict"]["module.new_fc.weight"], module.model.heads["verb"].weight)
    assert (written["best_prec1"], written["current_prec1"]) == (0.0, 0.0)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    saved["state_dict"]["model.projection.weight"] = torch.zeros(4, 4)
    torch.save(saved, path)
    with pytest.raises(ValueError, match=r"no place for: \['projection.weight'\]"):
        export_original(path, tmp_path / "x.pth.tar", head="verb")


def test_release_entries_of_a_lightning_checkpoint() -> None:
    from lightning_gsf.convert import release_entries

    def entries(is_last_batch: bool = True, **extra) -> dict:
        checkpoint = {"epoch": 3, "optimizer_states": [{"param_groups": [{"lr": 0.01}, {"lr": 0.001}]}],
                      "loops": {"fit_loop": {"state_dict": {},
                                             "epoch_loop.batch_progress": {"is_last_batch": is_last_batch}}}}
        return release_entries({**checkpoint, **extra}, {}, "resnet50", single_head=True)

    assert (entries()["epoch"], entries(False)["epoch"]) == (4, 3)  # a mid-epoch save: epoch 3 unfinished
    assert entries()["lr"] == 0.001  # the last parameter group's
    for extra in ({}, {"MixedPrecision": {}}):  # 32-bit, bf16-mixed (no scaler): a new scaler's state
        scaler = entries(**extra)["scaler_state_dict"]
        assert scaler == torch.amp.GradScaler("cpu").state_dict()
        torch.amp.GradScaler("cpu").load_state_dict(scaler)  # (the release's --resume; {} is refused)
