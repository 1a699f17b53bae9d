"""ImageNet weights for a backbone: a torchvision weights name or a local state-dict file.

``pretrained="IMAGENET1K_V1"`` (or ``"DEFAULT"``, or ``"ResNet50_Weights.IMAGENET1K_V2"``)
names torchvision weights of the backbone's architecture; anything that is a file is read
as a state dict (e.g. the Caffe-converted ``bn_inception-9f5701afb96c8044.pth``). The
ImageNet classifier in those weights is dropped, every other tensor must match a layer of
the backbone, and every layer of the backbone must be covered, so a wrong file fails loudly.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from collections.abc import Set
from pathlib import Path

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model_weights, get_weight

from lightning_gsf.data.errors import ConfigurationError
from lightning_gsf.gsf import GSF
from lightning_gsf.temporal import TemporalShift

log = logging.getLogger(__name__)

# ImageNet classifiers (and InceptionV3's auxiliary one) that the backbones do not have.
CLASSIFIER_PREFIXES = ("fc.", "last_linear.", "top_cls_fc.", "AuxLogits.")

# torchvision builder whose weights fit each backbone; the others take files only.
TORCHVISION_BUILDERS = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "resnet152": "resnet152",
    "inception_v3": "inception_v3",
}


def resolve_torchvision_weights(backbone: str, name: str) -> WeightsEnum:
    """The torchvision weights enum member called ``name`` for ``backbone``."""
    builder = TORCHVISION_BUILDERS.get(backbone)
    if builder is None:
        raise ConfigurationError(
            f"backbone {backbone!r} has no torchvision weights; pass pretrained= a local state-dict file"
        )
    if "." in name:  # fully qualified, e.g. "ResNet50_Weights.IMAGENET1K_V2"
        weights = get_weight(name)
        if weights not in get_model_weights(builder):
            raise ConfigurationError(f"weights {name!r} are not {builder} weights")
        return weights
    enum = get_model_weights(builder)
    try:
        return enum[name]
    except KeyError:
        choices = list(dict.fromkeys(["DEFAULT", *enum.__members__]))
        raise ConfigurationError(f"unknown {builder} weights {name!r}; expected a file or one of {choices}") from None


def fetch_torchvision_weights(weights: WeightsEnum) -> dict[str, torch.Tensor]:
    """Download (or read from torch's hub cache) and hash-check torchvision weights."""
    log.info("loading torchvision weights %s", weights)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:  # no network, a corrupt cache file
        raise ConfigurationError(
            f"torchvision weights {weights} could not be loaded ({type(error).__name__}: {error}); offline, put "
            f"{weights.url.rsplit('/', 1)[-1]} in {Path(torch.hub.get_dir()) / 'checkpoints'} (a corrupt one there: "
            f"delete it), or pass pretrained= a local file"
        ) from error


def read_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save``, bare or under a ``state_dict`` entry."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:  # truncated, not a torch file, or objects
        raise ConfigurationError(f"{path}: not a readable weights file, truncated or corrupt? "
                                 f"({type(error).__name__}: {error})") from None
    if isinstance(loaded, Mapping) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ConfigurationError(f"{path}: expected a state dict (names -> tensors)")
    return dict(loaded)


def pretrained_state_dict(backbone: str, pretrained: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict that ``pretrained`` names, and a description of where it came from."""
    path = Path(pretrained).expanduser()
    if path.is_file():
        return read_state_dict_file(path), str(path)
    if path.is_dir():
        raise IsADirectoryError(f"pretrained weights {path} is a folder; expected a weights file in it")
    if path.suffix in {".pth", ".pt", ".ckpt", ".bin"} or len(path.parts) > 1:
        raise FileNotFoundError(f"pretrained weights file {path} does not exist")
    weights = resolve_torchvision_weights(backbone, str(pretrained))
    return fetch_torchvision_weights(weights), f"torchvision {weights}"


def temporal_module_keys(backbone: nn.Module) -> set[str]:
    """State-dict keys of the inserted GSF / TSM modules (absent from ImageNet weights)."""
    return {
        f"{name}.{key}"
        for name, module in backbone.named_modules()
        if isinstance(module, (GSF, TemporalShift))
        for key in module.state_dict()
    }


def load_imagenet_weights(backbone: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ImageNet weights into ``backbone``'s own layers; temporal modules keep their init."""
    own = backbone.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(CLASSIFIER_PREFIXES):
            continue
        if key in own and value.dim() == own[key].dim() + 1 and value.shape[0] == 1:
            value = value.squeeze(0)  # the Caffe conversion stores BN vectors as (1, C)
        loaded[key] = value
    # (files saved before PyTorch 0.4.1, such as the Caffe- and TensorFlow-converted Inception
    # weights, have no num_batches_tracked: the batch norms keep their own count, as PyTorch's load)
    required = {key for key in set(own) - temporal_module_keys(backbone) if not key.endswith(".num_batches_tracked")}
    problems = describe_state_dict_mismatch(loaded, own, required=required)
    if problems:
        raise ConfigurationError(f"{source} does not fit the backbone: {problems}")
    backbone.load_state_dict(loaded, strict=False)


def describe_state_dict_mismatch(
    loaded: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    *,
    required: Set[str] | None = None,
    loaded_name: str = "file",
    limit: int = 10,
) -> str:
    """How ``loaded`` fails to fit a model whose state dict is ``own``, by key name; "" if it fits.

    ``required`` are the model keys ``loaded`` must hold (default: all of ``own``); at most
    ``limit`` names are listed per kind of problem (missing, unexpected, mis-shaped).
    """
    required = set(own) if required is None else required
    missing = sorted(required - set(loaded))
    unexpected = sorted(set(loaded) - set(own))
    mis_shaped = sorted(
        f"{k}: {loaded_name} {tuple(loaded[k].shape)}, model {tuple(own[k].shape)}"
        for k in set(loaded) & set(own)
        if loaded[k].shape != own[k].shape
    )
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
        if keys:
            shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
            parts.append(f"{len(keys)} {label} key(s): {shown}")
    return "; ".join(parts)
