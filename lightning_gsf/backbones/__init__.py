"""2D backbones with temporal modules: ``build_backbone(name, ...)``.

A backbone maps frames ``(N*T, 3, H, W)`` to pooled features ``(N*T, feature_dim)`` and
carries the attributes ``name``, ``feature_dim``, ``normalization`` (the input normalisation its
weights expect, see ``lightning_gsf.normalization``), ``temporal_module``, ``num_segments``
and ``gsf_ratio``.

================  ==================================================  =========  =============
name              network                                             GSF ratio  normalisation
================  ==================================================  =========  =============
resnet18 ... 152  torchvision ResNet                                  0.25       imagenet
bninception       BN-Inception, Caffe-converted layer names           1.0        bgr255
inception_v3      torchvision InceptionV3                             1.0        imagenet
inception_v3_tf   the original release's TF-converted InceptionV3     1.0        bgr255
================  ==================================================  =========  =============
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from lightning_gsf.backbones.bninception import bninception
from lightning_gsf.backbones.inception_v3 import tf_inception_v3, torchvision_inception_v3
from lightning_gsf.backbones.insertion import TEMPORAL_MODULES, insert_temporal_modules
from lightning_gsf.backbones.resnet import RESNETS, torchvision_resnet
from lightning_gsf.backbones.weights import load_imagenet_weights, pretrained_state_dict
from lightning_gsf.data.errors import ConfigurationError

ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    **{name: (lambda name=name: torchvision_resnet(name)) for name in RESNETS},
    "bninception": bninception,
    "inception_v3": torchvision_inception_v3,
    "inception_v3_tf": tf_inception_v3,
}
BACKBONES = tuple(ARCHITECTURES)

# The paper's GSF channel ratios: a quarter of the channels in ResNets, all in Inceptions.
DEFAULT_GSF_RATIO = {name: 0.25 if name.startswith("resnet") else 1.0 for name in BACKBONES}

# The input normalisation each backbone's ImageNet weights were trained with.
DEFAULT_NORMALIZATION = {
    name: "bgr255" if name in ("bninception", "inception_v3_tf") else "imagenet" for name in BACKBONES
}


def check_backbone_name(name: str) -> None:
    if name not in ARCHITECTURES:
        raise ConfigurationError(f"unknown backbone {name!r}; expected one of {BACKBONES}")


def build_backbone(
    name: str,
    *,
    temporal_module: str = "gsf",
    num_segments: int = 8,
    gsf_ratio: float | None = None,
    weights: str | Path | None = None,
) -> nn.Module:
    """Build backbone ``name``, load ``weights`` into its own layers, insert the temporal module.

    Args:
        name: one of :data:`BACKBONES`.
        temporal_module: ``"gsf"``, ``"tsm"`` or ``"none"`` (TSN).
        num_segments: frames per clip, fixed per model.
        gsf_ratio: fraction of channels GSF processes; ``None`` takes the paper's value.
        weights: ``None`` (random init), a torchvision weights name such as
            ``"IMAGENET1K_V1"`` / ``"DEFAULT"``, or the path of a state-dict file.
    """
    check_backbone_name(name)
    if temporal_module not in TEMPORAL_MODULES:
        raise ConfigurationError(f"unknown temporal module {temporal_module!r}; expected one of {TEMPORAL_MODULES}")
    if num_segments < 1:
        raise ConfigurationError(f"num_segments must be >= 1, got {num_segments}")
    ratio = DEFAULT_GSF_RATIO[name] if gsf_ratio is None else gsf_ratio
    backbone = ARCHITECTURES[name]()
    if weights is not None:
        state_dict, source = pretrained_state_dict(name, weights)
        load_imagenet_weights(backbone, state_dict, source)
    insert_temporal_modules(backbone, temporal_module, num_segments=num_segments, gsf_ratio=ratio)
    backbone.name = name
    backbone.normalization = DEFAULT_NORMALIZATION[name]
    backbone.temporal_module = temporal_module
    backbone.num_segments = num_segments
    backbone.gsf_ratio = ratio if temporal_module == "gsf" else None
    return backbone


__all__ = [
    "BACKBONES",
    "DEFAULT_GSF_RATIO",
    "DEFAULT_NORMALIZATION",
    "TEMPORAL_MODULES",
    "build_backbone",
    "check_backbone_name",
]
