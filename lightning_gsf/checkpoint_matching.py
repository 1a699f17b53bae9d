"""Why a checkpoint does not fit a model, by name (:func:`check_checkpoint_matches`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from torch import nn

log = logging.getLogger(__name__)

__all__ = ["CheckpointMismatchError", "check_checkpoint_matches"]


class CheckpointMismatchError(ValueError):
    """A checkpoint's weights do not fit the model built from this run's configuration."""


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested hyper-parameters as ``{"a.b": value}``; private entries (LightningCLI's ``_instantiator``) left out."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if str(key).startswith("_"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_checkpoint_matches(model: nn.Module, checkpoint: Mapping[str, Any], source: str | Path | None = None,
                             must_match: Collection[str] = (),
                             effective: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
    """Raise :class:`CheckpointMismatchError` if ``checkpoint``'s weights do not fit ``model``.

    The message names the hyper-parameters that differ between the checkpoint and the model
    (``checkpoint["hyper_parameters"]`` against ``model.hparams``), the parameters missing on
    either side and those whose shape differs. Hyper-parameters that differ while every
    tensor still fits (a new learning rate, more segments at test time) are only logged,
    except those in ``must_match``: settings that change what the same tensors compute (a TSN
    checkpoint's weights fit a TSM network, which has no parameters of its own).

    Hyper-parameters the checkpoint does not record (a file an importer wrote, or older code)
    are not compared. ``effective`` maps a flattened hyper-parameter dict (dotted keys) to the
    values that decide the model, e.g. a None that stands for a default to that default; it
    is applied to both sides before they are compared.

    Call it from ``LightningModule.on_load_checkpoint(checkpoint)``; ``source`` (e.g.
    ``self.trainer.ckpt_path``) names the file in the message.
    """
    where = f"checkpoint {source}" if source else "the checkpoint"
    saved_hparams = _flatten(checkpoint.get("hyper_parameters") or {})
    current_hparams = _flatten(getattr(model, "hparams", {}) or {})
    if effective is not None:
        saved_hparams, current_hparams = effective(saved_hparams), effective(current_hparams)
    differing = [
        key for key in sorted(saved_hparams.keys() - {"pretrained"})
        if saved_hparams[key] != current_hparams.get(key, "<absent>")
    ]  # ("pretrained" names the starting point of training, which a restore replaces)
    hparam_differences = [
        f"{key}: checkpoint {saved_hparams[key]!r}, this run {current_hparams.get(key, '<absent>')!r}"
        for key in differing
    ]

    saved = checkpoint.get("state_dict")
    if saved is None:
        raise CheckpointMismatchError(
            f"{where} has no 'state_dict' (keys: {sorted(checkpoint)}); expected a Lightning checkpoint"
        )
    expected = model.state_dict()
    missing = sorted(expected.keys() - saved.keys())
    unexpected = sorted(saved.keys() - expected.keys())
    reshaped = [
        f"{name} {tuple(saved[name].shape)} vs {tuple(expected[name].shape)}"
        for name in sorted(expected.keys() & saved.keys())
        if hasattr(saved[name], "shape") and tuple(saved[name].shape) != tuple(expected[name].shape)
    ]

    computing_differently = [key for key in differing if key in must_match]
    if not (missing or unexpected or reshaped or computing_differently):
        if hparam_differences:
            log.warning(
                "%s was saved with other hyper-parameters (%s); its weights fit, loading it",
                where,
                "; ".join(hparam_differences),
            )
        return
    problems = []
    if hparam_differences:
        problems.append("hyper-parameters differ: " + "; ".join(hparam_differences))
    if missing:
        problems.append(f"{len(missing)} tensors of the model are not in the checkpoint: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors of the checkpoint are not in the model: {_listing(unexpected)}")
    if reshaped:
        problems.append(f"{len(reshaped)} tensors have another shape (checkpoint vs model): {_listing(reshaped)}")
    raise CheckpointMismatchError(
        f"{where} was saved from a different model configuration; " + ". ".join(problems)
        + ". Use the configuration the checkpoint was trained with (its hyper_parameters)."
    )
