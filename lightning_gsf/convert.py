"""Import of the original GSF release's checkpoints (ResNet-50, BNInception, InceptionV3), and
export of ours back to that layout.

The release saves ``torch.save({..., "model_state_dict": state})`` (older files:
``"state_dict"``), where ``state`` comes from a ``DataParallel`` model: every name starts with
``module.``; the backbone's tensors follow as ``module.base_model.<layer>`` and the single
classifier as ``module.new_fc.{weight,bias}``. Our backbones keep the release's layer names
(torchvision names for ResNets, the Caffe / TensorFlow-converted names for BNInception and
``inception_v3_tf``), so ``base_model.*`` maps one to one and ``new_fc`` becomes the model's
only head. The import is strict: every tensor of the file must be used, every tensor of the
model covered, every shape equal; otherwise the error lists what is missing, unexpected or
mis-shaped. The release does not record the GSF channel ratio: it is read off the gate
convolutions, whose second dimension is half the number of processed channels.

:func:`export_original` writes the reverse: a checkpoint of ours (one head, GSF or no
temporal module, a backbone with the release's layer names) as the dict the release's
``main.py`` saves, ``model_state_dict`` holding ``{"module.base_model.*", "module.new_fc.*"}``
beside the entries its ``--resume`` reads (``epoch``, ``best_prec1``, ``scaler_state_dict``),
for the release's ``test_models.py`` and ``main.py --resume``, and for
:func:`load_original_checkpoint`.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

import pytorch_lightning as pl
import torch

from lightning_gsf.backbones import DEFAULT_NORMALIZATION
from lightning_gsf.backbones.weights import describe_state_dict_mismatch
from lightning_gsf.gsf import GSF, gsf_channels
from lightning_gsf.metrics import HEADLINE_METRIC
from lightning_gsf.model import VideoClassifier

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
CheckpointSource = Union[str, Path, Mapping[str, Any]]

GATE_SUFFIX = ".conv3D.weight"
# Backbones whose layer names are the release's (torchvision's InceptionV3 is not).
RELEASE_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "bninception", "inception_v3_tf")
# The release's --arch for each (its main.py saves it as the checkpoint's 'arch'); its GSF
# ResNets are the 50- and 101-layer ones (backbones/resnetGSFModels.py), its TSN ResNets
# torchvision's of every depth.
RELEASE_ARCH = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50", "resnet101": "resnet101",
                "resnet152": "resnet152", "bninception": "bninception", "inception_v3_tf": "inceptionv3"}
RELEASE_GSF_RESNETS = ("resnet50", "resnet101")
# A new torch.amp.GradScaler's state (its defaults), for an export of a run without a scaler:
# the release's --resume loads it into its scaler, enabled (--with_amp) or not.
NEW_GRAD_SCALER_STATE = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                         "_growth_tracker": 0}
# Bottleneck / BasicBlock counts of layer3, which tell the ResNets apart.
RESNET_BY_LAYER3 = {(False, 2): "resnet18", (False, 6): "resnet34", (True, 6): "resnet50",
                    (True, 23): "resnet101", (True, 36): "resnet152"}


@dataclass(frozen=True)
class OriginalCheckpointInfo:
    """What an original checkpoint holds, beyond its tensors."""

    source: str  # the file, or "<state dict>"
    backbone: str  # detected from the layer names
    gsf_ratio: float | None  # None: no GSF modules
    num_gsf_modules: int
    num_classes: int
    normalization: str  # the input normalisation its weights expect


def read_original_state_dict(source: CheckpointSource, *, trust_pickle: bool = False) -> tuple[StateDict, str]:
    """The model state of an original checkpoint, without ``module.`` prefixes.

    ``source`` is a file, a loaded checkpoint dict or a bare state dict. Files are read with
    ``weights_only=True``; ``trust_pickle=True`` allows arbitrary pickled objects in the file
    (only for files from a source you trust).
    """
    if isinstance(source, Mapping):
        loaded, name = source, "<state dict>"
    else:
        name = str(source)
        loaded = _load_file(source, trust_pickle)
    for entry in ("model_state_dict", "state_dict"):
        if isinstance(loaded, Mapping) and entry in loaded:
            loaded = loaded[entry]
            break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{name}: expected a 'model_state_dict' or 'state_dict' entry mapping names to tensors")
    state = {key.removeprefix("module."): value for key, value in loaded.items()}
    return state, name


def _load_file(path: str | Path, trust_pickle: bool) -> Any:
    """``torch.load`` on the CPU, with ``weights_only=True`` unless ``trust_pickle``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: holds Python objects besides tensors, or is no checkpoint at all; if you trust the file and "
            f"it is a checkpoint, pass trust_pickle=True ({err})"
        ) from err
    except (RuntimeError, EOFError) as err:  # (torch's zip reader: a truncated or corrupt file)
        raise ValueError(f"{path}: not a readable checkpoint, truncated or corrupt? ({err})") from err


def detect_backbone(state: Mapping[str, torch.Tensor]) -> str | None:
    """The backbone whose layer names ``state`` uses, or ``None`` if it is none of ours."""
    if "base_model.inception_3a_1x1.weight" in state:
        return "bninception"
    if "base_model.mixed_conv_Conv2D.weight" in state:
        return "inception_v3_tf"
    if "base_model.layer1.0.conv1.weight" in state:
        bottleneck = "base_model.layer1.0.conv3.weight" in state
        blocks = {int(k.split(".")[2]) for k in state if k.startswith("base_model.layer3.")}
        return RESNET_BY_LAYER3.get((bottleneck, len(blocks)))
    return None


def _gsf_input_channels(state: Mapping[str, torch.Tensor], module: str) -> int:
    """Channels of the convolution a GSF module follows, from the layer names around it."""
    parent, _, leaf = module.rpartition(".")
    if leaf == "gsf":  # ResNet: <block>.gsf follows conv3 (Bottleneck) or conv2 (BasicBlock)
        conv = f"{parent}.conv3.weight" if f"{parent}.conv3.weight" in state else f"{parent}.conv2.weight"
    else:  # Caffe-style names: gsf_<conv> follows <conv>
        conv = f"{parent}.{leaf.removeprefix('gsf_')}.weight"
    if conv not in state:
        raise ValueError(f"cannot tell the channels of GSF module {module}: no {conv}")
    return state[conv].shape[0]


def infer_gsf_ratio(state: Mapping[str, torch.Tensor]) -> tuple[float | None, int]:
    """``(ratio, number of GSF modules)``; the ratio reproduces every module's gate width."""
    processed = {
        key.removesuffix(GATE_SUFFIX): 2 * value.shape[1] for key, value in state.items() if key.endswith(GATE_SUFFIX)
    }
    if not processed:
        return None, 0
    channels = {module: _gsf_input_channels(state, module) for module in processed}
    for module in sorted(processed, key=lambda m: channels[m]):
        candidate = processed[module] / channels[module]
        try:
            if all(gsf_channels(channels[m], candidate) == processed[m] for m in processed):
                return candidate, len(processed)
        except ValueError:
            continue
    widths = ", ".join(f"{m}: {processed[m]}/{channels[m]}" for m in sorted(processed))
    raise ValueError(f"no single GSF ratio explains the gate widths (processed/channels) {widths}")


def _check_gsf_ratio(model: VideoClassifier, ratio: float | None, count: int, source: str) -> None:
    modules = {name: m for name, m in model.base_model.named_modules() if isinstance(m, GSF)}
    if ratio is None and modules:
        raise ValueError(
            f"{source} has no GSF modules, but the model was built with temporal_module="
            f"{model.base_model.temporal_module!r}; build it with temporal_module='none'"
        )
    if ratio is not None and not modules:
        raise ValueError(
            f"{source} has {count} GSF modules (ratio {ratio:g}), but the model was built with "
            f"temporal_module={model.base_model.temporal_module!r}; build it with temporal_module='gsf'"
        )
    if ratio is not None and any(gsf_channels(m.channels, ratio) != m.processed for m in modules.values()):
        raise ValueError(
            f"{source} was trained with GSF ratio {ratio:g} (read off its gate convolutions), but the "
            f"model was built with gsf_ratio={model.base_model.gsf_ratio:g}; build it with gsf_ratio={ratio:g}"
        )


def _map_to_model(state: Mapping[str, torch.Tensor], model: VideoClassifier) -> StateDict:
    """Rename the release's keys to ours: ``base_model.*`` as is, ``new_fc.*`` -> the head."""
    if len(model.heads) != 1:
        raise ValueError(f"the original release has one classifier; the model has heads {list(model.heads)}")
    head = next(iter(model.heads))
    return {
        (f"heads.{head}." + key.removeprefix("new_fc.") if key.startswith("new_fc.") else key): value
        for key, value in state.items()
    }


def load_original_checkpoint(
    model: VideoClassifier, path_or_state: CheckpointSource, *, trust_pickle: bool = False
) -> OriginalCheckpointInfo:
    """Load an original GSF checkpoint into ``model`` (strictly); set its normalisation.

    The model must be built like the checkpoint's: same backbone, ``temporal_module="gsf"``
    with the checkpoint's ratio (or ``"none"`` for a checkpoint without GSF) and one head.
    """
    state, source = read_original_state_dict(path_or_state, trust_pickle=trust_pickle)
    backbone = model.base_model.name
    detected = detect_backbone(state)
    if detected is not None and detected != backbone:
        raise ValueError(f"{source} holds a {detected} model, but the model's backbone is {backbone}")
    ratio, count = infer_gsf_ratio(state)
    _check_gsf_ratio(model, ratio, count, source)

    mapped = _map_to_model(state, model)
    own = model.state_dict()
    # BatchNorm's batch counter is absent from files saved before PyTorch 0.4.1; it does not
    # affect the outputs (momentum is set), so it alone may be missing.
    required = {k for k in own if not k.endswith("num_batches_tracked")}
    problems = describe_state_dict_mismatch(mapped, own, required=required, loaded_name="checkpoint")
    if problems:
        raise ValueError(
            f"{source} does not fit the {backbone} model (names as in the model, 'heads.<head>' for "
            f"'new_fc'): {problems}"
        )
    model.load_state_dict(mapped, strict=False)
    model.normalization = DEFAULT_NORMALIZATION[backbone]
    info = OriginalCheckpointInfo(
        source=source,
        backbone=backbone,
        gsf_ratio=ratio,
        num_gsf_modules=count,
        num_classes=state["new_fc.weight"].shape[0],
        normalization=model.normalization,
    )
    log.info("loaded original checkpoint: %s", info)
    return info


def import_original(
    in_path: str | Path,
    out_path: str | Path,
    *,
    num_segments: int,
    backbone: str | None = None,
    num_classes: int | None = None,
    head: str = "class",
    dropout: float = 0.5,
    trust_pickle: bool = False,
) -> OriginalCheckpointInfo:
    """Convert an original checkpoint into a Lightning checkpoint of ``VideoClassifier``.

    The output holds ``state_dict`` (the classifier's tensors under ``model.``, as in
    ``VideoClassificationModule``), ``hyper_parameters`` (the ``VideoClassifier`` arguments,
    normalisation included) and ``pytorch-lightning_version``, so ``gsf validate --ckpt_path``
    can use it. ``num_segments`` is not recorded by the release (the released models use 16);
    ``backbone`` and ``num_classes``, if given, are checked against the file.
    """
    state, source = read_original_state_dict(in_path, trust_pickle=trust_pickle)
    detected = detect_backbone(state)
    if detected is None:
        raise ValueError(
            f"{source}: its layer names match none of the released backbones (ResNet, BNInception, InceptionV3)"
        )
    if backbone is not None and backbone != detected:
        raise ValueError(f"{source} holds a {detected} model, not {backbone}")
    if "new_fc.weight" not in state:
        raise ValueError(f"{source}: no classifier 'module.new_fc.weight'")
    classes = state["new_fc.weight"].shape[0]
    if num_classes is not None and num_classes != classes:
        raise ValueError(f"{source} classifies {classes} classes, not num_classes={num_classes}")
    ratio, _ = infer_gsf_ratio(state)
    hyper_parameters: dict[str, Any] = {
        "backbone": detected,
        "temporal_module": "gsf" if ratio is not None else "none",
        "num_segments": num_segments,
        "num_classes": {head: classes},
        "gsf_ratio": ratio,
        "dropout": dropout,
        "pretrained": None,
        "normalization": None,
    }
    model = VideoClassifier(**hyper_parameters)
    info = load_original_checkpoint(model, state)
    hyper_parameters["normalization"] = model.normalization
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {f"model.{key}": value for key, value in model.state_dict().items()},
            "hyper_parameters": hyper_parameters,
            "pytorch-lightning_version": pl.__version__,
        },
        out_path,
    )
    info = replace(info, source=source)
    log.info("wrote %s from %s", out_path, source)
    return info


def export_original(
    in_path: str | Path, out_path: str | Path, *, head: str | None = None, trust_pickle: bool = False
) -> OriginalCheckpointInfo:
    """Write a Lightning checkpoint of ``VideoClassificationModule`` (``gsf fit`` or
    :func:`import_original`) in the original release's layout.

    The file holds what the release's ``main.py`` saves (:func:`release_entries`), its
    ``model_state_dict`` named as by the release's ``DataParallel`` model:
    ``module.base_model.<layer>`` for every backbone tensor (GSF's included) and
    ``module.new_fc.{weight,bias}`` for the classifier ``head`` (default: the only one). TSM,
    torchvision's InceptionV3 and several heads have no place in that layout and are refused;
    GSF ResNets other than the release's 50- and 101-layer ones are written with a warning
    (its code builds no model for them). Lightning checkpoints are read with
    ``weights_only=True`` unless ``trust_pickle``.
    """
    in_path = Path(in_path)
    checkpoint = _load_file(in_path, trust_pickle)
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ValueError(f"{in_path}: not a Lightning checkpoint (no 'state_dict' entry)")
    hyper_parameters = checkpoint.get("hyper_parameters") or {}
    backbone, temporal_module = hyper_parameters.get("backbone"), hyper_parameters.get("temporal_module")
    if backbone not in RELEASE_BACKBONES:
        raise ValueError(
            f"{in_path}: backbone {backbone!r} has no layout in the original release (one of {RELEASE_BACKBONES})"
        )
    if temporal_module not in ("gsf", "none"):
        raise ValueError(f"{in_path}: temporal module {temporal_module!r}; the original release has GSF (or none)")
    state = {key.removeprefix("model."): value for key, value in checkpoint["state_dict"].items()
             if key.startswith("model.")}
    heads = sorted({key.split(".")[1] for key in state if key.startswith("heads.")})
    if head is None and len(heads) != 1:
        raise ValueError(f"{in_path}: the original release has one classifier; choose one of the heads {heads}")
    head = head if head is not None else heads[0]
    if head not in heads:
        raise ValueError(f"{in_path}: no head {head!r}; the heads are {heads}")
    exported = {f"module.{key}": value for key, value in state.items() if key.startswith("base_model.")}
    exported.update({f"module.new_fc.{key.rpartition('.')[2]}": value for key, value in state.items()
                     if key.startswith(f"heads.{head}.")})
    unused = sorted(key for key in state if not key.startswith(("base_model.", "heads.")))
    if unused:
        raise ValueError(f"{in_path}: tensors outside the backbone and the heads, which the layout has no place for: "
                         f"{unused[:5]}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if temporal_module == "gsf" and backbone.startswith("resnet") and backbone not in RELEASE_GSF_RESNETS:
        log.warning("%s: the release builds GSF ResNets of 50 and 101 layers only; its code has no model for this "
                    "%s checkpoint", in_path, backbone)
    torch.save(release_entries(checkpoint, exported, backbone, single_head=len(heads) == 1), out_path)
    plain = {key.removeprefix("module."): value for key, value in exported.items()}
    ratio, count = infer_gsf_ratio(plain)
    info = OriginalCheckpointInfo(
        source=str(in_path), backbone=backbone, gsf_ratio=ratio, num_gsf_modules=count,
        num_classes=plain["new_fc.weight"].shape[0],
        normalization=hyper_parameters.get("normalization") or DEFAULT_NORMALIZATION[backbone],
    )
    if info.normalization != DEFAULT_NORMALIZATION[backbone]:
        log.warning("%s was trained with %s normalisation; the release's code feeds %s inputs to a %s",
                    in_path, info.normalization, DEFAULT_NORMALIZATION[backbone], backbone)
    log.info("wrote %s (original layout) from %s", out_path, in_path)
    return info


def release_entries(checkpoint: Mapping[str, Any], state: StateDict, backbone: str, *,
                    single_head: bool) -> dict[str, Any]:
    """The dict the release's ``main.py`` saves (``save_checkpoint``), in its order, for the
    Lightning ``checkpoint`` whose exported tensors are ``state``:

    - ``epoch``: the epochs trained, as the release counts them after each epoch: the
      checkpoint's epoch index, plus one where that epoch's last training batch has run (an
      end-of-epoch or end-of-validation checkpoint; Lightning's own epoch counters are
      incremented at different points of the epoch's end); 0 for a checkpoint never trained
      here, such as an import;
    - ``arch``: the release's ``--arch`` for ``backbone``;
    - ``scaler_state_dict``: the run's gradient scaler (16-bit mixed precision), else a new
      scaler's;
    - ``best_prec1`` and ``current_prec1``: the best and the latest validation top-1
      (percent) of the checkpoints monitoring it (the best of them all; the latest of the first,
      gsf's own), where the model has one head, whose top-1 it is; else 0, the release's value
      before any validation;
    - ``lr``: the last parameter group's learning rate in the optimizer's state, else None.
    """
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    trained = "state_dict" in fit_loop  # (an import has no loops)
    last_batch_ran = bool((fit_loop.get("epoch_loop.batch_progress") or {}).get("is_last_batch"))
    epochs = int(checkpoint.get("epoch", 0)) + last_batch_ran if trained else 0
    scaler = checkpoint.get("MixedPrecision")  # (Lightning's key for its precision plugin's scaler)
    best, current = 0.0, 0.0
    if single_head:
        monitors = [state for state in (checkpoint.get("callbacks") or {}).values()
                    if isinstance(state, Mapping) and state.get("monitor") == f"val/{HEADLINE_METRIC}"]
        bests = [_as_float(state.get("best_model_score"), None) for state in monitors]
        best = max((value for value in bests if value is not None), default=0.0)
        current = _as_float(monitors[0].get("current_score"), 0.0) if monitors else 0.0
    optimizers = checkpoint.get("optimizer_states") or [{}]
    groups = optimizers[0].get("param_groups") or [{}]
    return {
        "epoch": epochs,
        "arch": RELEASE_ARCH[backbone],
        "model_state_dict": state,
        "scaler_state_dict": dict(scaler) if isinstance(scaler, Mapping) and "scale" in scaler
        else dict(NEW_GRAD_SCALER_STATE),
        "best_prec1": best,
        "current_prec1": current,
        "lr": groups[-1].get("lr"),
    }


def _as_float(value: Any, default: float | None) -> float | None:
    """A checkpoint callback's score (a tensor, or None before any) as a float."""
    if value is None:
        return default
    return float(value.item() if isinstance(value, torch.Tensor) else value)
