"""Lightning's throughput monitor, counting clips."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ThroughputMonitor

from lightning_gsf.data.samplers import UnreadableBatch


def clips_in(batch: Mapping[str, Any]) -> int:
    """The clips in a loader's batch (its clips' first dimension)."""
    return batch["clip"].shape[0]


class ClipThroughputMonitor(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` counting clips (``<stage>/samples``,
    ``<stage>/device/samples_per_sec``), with a validation batch that could not be read (an
    :class:`~lightning_gsf.data.samplers.UnreadableBatch`, which ``fit``'s validation goes on
    past, see :class:`~lightning_gsf.callbacks.DataErrorCheckpoint`) left out of the count."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(batch_size_fn=clips_in, **kwargs)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                *args: Any, **kwargs: Any) -> None:
        if not isinstance(batch, UnreadableBatch):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, *args, **kwargs)
