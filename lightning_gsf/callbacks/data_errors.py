"""A checkpoint saved when ``fit`` meets a batch it cannot read, on every process at once, then
the error that names the sample (:class:`DataErrorCheckpoint`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.trainer.states import TrainerFn

from lightning_gsf.callbacks.stopping import (
    inside_accumulation_window,
    starts_an_accumulation_window,
    StopCheckpoint,
    restart_validation_on_resume,
)
from lightning_gsf.data.errors import SampleReadError, original_message
from lightning_gsf.data.samplers import EvaluationDataLoader, ResumableDataLoader, UnreadableBatch

log = logging.getLogger(__name__)


class DataErrorCheckpoint(StopCheckpoint):
    """Save a checkpoint when ``fit`` meets data it cannot read, then stop with the error.

    An unreadable sample (a corrupt video, a broken frame: ``SampleReadError``, naming the
    sample, its file and row) would otherwise end the run where the loader raises, losing
    everything trained since the last checkpoint. With this callback ``fit``'s loaders
    (:class:`~lightning_gsf.data.samplers.ResumableDataLoader` for training,
    :class:`~lightning_gsf.data.samplers.EvaluationDataLoader` for validation) hand the error
    over as an :class:`~lightning_gsf.data.samplers.UnreadableBatch`, and the processes stop
    together at a clean point, all saving ``<dirpath>/<filename>.ckpt`` (the file of
    :class:`~lightning_gsf.callbacks.PreemptionCheckpoint`: ``--ckpt_path last`` resumes from it), each raising the
    error, or one quoting the failed processes' errors:

    - **A training batch**: at its start, before any forward pass, every process learns
      whether any got one (one small all-reduce a step under DDP, where all processes are at
      the same batch) and the state after the previous batch is saved. Resumed once the data
      is mended, the run reads that batch again and goes on as an uninterrupted run would.
    - **A validation batch**: the validation goes on (processes hold different numbers of
      validation batches, so they can only meet at its end), and at its end, before the
      epoch's metrics are computed or any checkpoint is selected on them, the processes agree
      and save the state as a SIGTERM during validation does: the resumed run validates that
      epoch again from its first batch. (A LightningModule that logs with ``sync_dist=True``
      from ``validation_step`` needs a readable batch on every process: Lightning syncs such a
      value only on the processes that logged it. gsf's module logs its metrics at the epoch's
      end.)

    Nothing is saved when no training batch has completed in this run (the state is the one it
    started from, e.g. in the sanity check), nor inside a gradient-accumulation window (its
    earlier batches' gradients are in no checkpoint, and a run resumed in its middle would step
    on part of a window); the error then says so. With ``skip_unreadable=True`` the datasets
    substitute unreadable samples themselves, and only a run of unreadable sources ends up here.

    Args:
        dirpath: where to save; default: the ``ModelCheckpoint``'s directory, else
            ``<default_root_dir>/checkpoints``.
        filename: file name without ``.ckpt``.
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str = "last") -> None:
        super().__init__(dirpath, filename)
        self._trained = False
        self._unreadable_in_validation: list[SampleReadError] = []
        self._saving_mid_validation = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trained = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _hand_over_read_errors(trainer.train_dataloader, True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _hand_over_read_errors(trainer.train_dataloader, False)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unreadable_in_validation = []
        if trainer.state.fn == TrainerFn.FITTING:  # (gsf validate has nothing to save)
            _hand_over_read_errors(trainer.val_dataloaders, True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _hand_over_read_errors(trainer.val_dataloaders, False)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        _hand_over_read_errors(trainer.train_dataloader, False)
        _hand_over_read_errors(trainer.val_dataloaders, False)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._trained = True

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        unreadable = isinstance(batch, UnreadableBatch)
        failures = _failures_of_every_rank(trainer, [batch.error] if unreadable else [])
        if not failures:
            return
        if not starts_an_accumulation_window(trainer):
            outcome = _NOT_SAVED_IN_A_WINDOW
        else:
            loader = trainer.train_dataloader
            if isinstance(loader, ResumableDataLoader):  # (the batch in hand, read or not, is the resumed run's first)
                loader.give_back_last_batch()
            outcome = self._save(trainer)
        if unreadable:
            log.error("rank %d: a training batch cannot be read; %s", trainer.global_rank, outcome)
            raise batch.error
        raise SampleReadError(f"another process could not read its training batch, so every process stops; "
                              f"{outcome}. {_listing_failures(failures)}")

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if isinstance(batch, UnreadableBatch):
            log.error("rank %d: validation batch %d cannot be read; the validation goes on, then the run stops: %s",
                      trainer.global_rank, batch_idx, original_message(batch.error))
            self._unreadable_in_validation.append(batch.error)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # (before the LightningModule's own hook computes the metrics, and before any
        # ModelCheckpoint could select a checkpoint on them)
        errors, self._unreadable_in_validation = self._unreadable_in_validation, []
        if trainer.state.fn != TrainerFn.FITTING:
            return
        failures = _failures_of_every_rank(trainer, errors)
        if not failures:
            return
        if inside_accumulation_window(trainer):  # (val_check_interval inside a window)
            outcome = _NOT_SAVED_IN_A_WINDOW
        else:
            self._saving_mid_validation = True
            try:
                with _training_weights_in_the_module(trainer, pl_module, after=self):
                    outcome = self._save(trainer)
            finally:
                self._saving_mid_validation = False
            if outcome.startswith("saved"):
                outcome += " (the resumed run validates this epoch again)"
        when = "in the sanity check" if trainer.sanity_checking else f"before scoring epoch {trainer.current_epoch}"
        error = SampleReadError(f"{len(failures)} validation batch(es) cannot be read, so the run stops {when}; "
                                f"{outcome}. {_listing_failures(failures)}")
        raise error from (errors[0] if errors else None)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self._saving_mid_validation:
            restart_validation_on_resume(checkpoint)

    def _save(self, trainer: pl.Trainer) -> str:
        """Save the state, on every process (as ``save_checkpoint`` needs), where something has
        been trained since the run started; what happened, for the error."""
        if not self._trained:
            return "no batch has been trained in this run, so no checkpoint was written"
        path = self.checkpoint_path(trainer)
        self._save_full_state(trainer, path)
        return (f"saved a checkpoint at epoch {trainer.current_epoch}, step {trainer.global_step} to {path}: mend the "
                f"data and resume with --ckpt_path {path}")


@contextlib.contextmanager
def _training_weights_in_the_module(trainer: pl.Trainer, pl_module: pl.LightningModule,
                                    after: pl.Callback) -> Iterator[None]:
    """During a validation's ``on_validation_epoch_end``: the training weights in the module
    for the block. A weight-averaging callback (an EMA) swaps the averaged weights into the
    module for the validation and back in its own ``on_validation_epoch_end``; those hooks run
    in the callbacks' order, so one listed after ``after`` still has the averaged weights in the
    module, and a checkpoint saved now would hold the two sets swapped. Such callbacks swap
    back for the block (their own end-of-validation hook) and in again after it."""
    callbacks = trainer.callbacks
    pending = [callback for callback in callbacks[callbacks.index(after) + 1:] if isinstance(callback, WeightAveraging)]
    for callback in reversed(pending):
        callback.on_validation_epoch_end(trainer, pl_module)
    try:
        yield
    finally:
        for callback in pending:
            callback.on_validation_epoch_start(trainer, pl_module)


_NOT_SAVED_IN_A_WINDOW = ("no checkpoint was written: the batch is inside a gradient-accumulation window, whose "
                          "earlier batches' gradients no checkpoint holds")


def _hand_over_read_errors(loaders: Any, hand_over: bool) -> None:
    """Set ``hand_over_read_errors`` on ``loaders`` (one, a list of them, or ``None``)."""
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        if isinstance(loader, (ResumableDataLoader, EvaluationDataLoader)):
            loader.hand_over_read_errors = hand_over


def _failures_of_every_rank(trainer: pl.Trainer, errors: list[SampleReadError]) -> list[tuple[int, str]]:
    """``(rank, message)`` of every process's ``errors``; a collective under DDP (one small
    all-reduce when no process has any, as in nearly every call)."""
    messages = [original_message(error) for error in errors]
    if trainer.world_size == 1:
        return [(0, message) for message in messages]
    count = torch.tensor(len(messages), device=trainer.strategy.root_device)
    if int(trainer.strategy.reduce(count, reduce_op="sum")) == 0:
        return []
    gathered: list[Any] = [None] * trainer.world_size
    dist.all_gather_object(gathered, messages)
    return [(rank, message) for rank, ranks_messages in enumerate(gathered) for message in ranks_messages]


def _listing_failures(failures: list[tuple[int, str]]) -> str:
    return "; ".join(f"rank {rank}: {message}" for rank, message in failures)
