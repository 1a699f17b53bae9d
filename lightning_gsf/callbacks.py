"""Reliability on clusters: atomic checkpoints, a checkpoint on preemption, exact resumption.

- :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file in the *same directory*
  and renames it over the target, so a job killed while saving leaves the previous
  ``last.ckpt`` intact. (Lightning's own writer stages the file in the system temporary
  directory and moves it; across file systems, node-local ``/tmp`` to a shared checkpoint
  directory, that move is a copy, and a kill during it truncates the target.)
- :class:`PreemptionCheckpoint` saves a checkpoint when the job is told to stop. SLURM (and
  most schedulers) send SIGTERM some time before SIGKILL. Lightning's signal connector
  already catches SIGTERM, lets the current batch finish and raises ``SIGTERMException``;
  this callback adds the save, at that clean batch boundary (a training batch that ends a
  gradient-accumulation window, or with one process a validation batch of ``fit``: then the
  resumed run validates that epoch again, from its first batch), and under DDP makes the
  processes agree on the signal at the end of every batch, and holds it during validation
  until the validation ends (the ranks would otherwise deadlock).
  It does the same for the first Ctrl-C (SIGINT) of ``fit``'s training, on one process or
  under DDP; a second Ctrl-C stops at once, as Lightning does, without a checkpoint.
- :class:`DataErrorCheckpoint` saves a checkpoint when ``fit`` meets a batch that cannot be
  read (a corrupt video, a broken frame): before a training batch, or at the end of a
  validation (whose epoch the resumed run validates again), on every process at once, then
  stops with the error that names the sample. Once the data is mended, the run resumes there.
- :class:`ExactResume` saves every rank's global random state (dropout draws from
  it) and restores it before the first batch after a resume, so a resumed run takes the
  same random draws as an uninterrupted one, and makes sure the position of the
  :class:`~lightning_gsf.data.samplers.ResumableDataLoader` is restored. A deterministic run
  resumed mid-epoch then ends with the same weights.
- :func:`check_checkpoint_matches` explains, by name, why a checkpoint does not fit a model
  (which hyper-parameters differ, which parameters are missing or have another shape). The
  LightningModule calls it from ``on_load_checkpoint``, before Lightning's strict
  ``load_state_dict`` would fail with a list of tensor names and no reason.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import random
import signal
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.callbacks import ModelCheckpoint, ThroughputMonitor, WeightAveraging
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn

from lightning_gsf.atomic_files import atomic_file
from lightning_gsf.data.errors import SampleReadError, original_message
from lightning_gsf.data.samplers import EvaluationDataLoader, ResumableDataLoader, UnreadableBatch
from lightning_gsf.fit_loop import install_step_limited_resume

log = logging.getLogger(__name__)

__all__ = [
    "EXIT_STOPPED_BY_CTRL_C",
    "AtomicCheckpointIO",
    "CheckpointMismatchError",
    "DataErrorCheckpoint",
    "PreemptionCheckpoint",
    "ExactResume",
    "check_checkpoint_matches",
    "stop_signal",
]


# --- atomic writes ---------------------------------------------------------------------------


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that never leaves a partly written checkpoint at the target path.

    The checkpoint goes to a hidden temporary file next to the target, is flushed to disk,
    and replaces the target with ``os.replace`` (atomic within one file system; see
    :mod:`lightning_gsf.atomic_files`, which also gives it the permissions of a new file). A failure
    at any point removes the temporary file and leaves the old checkpoint as it was. Remote
    paths (``s3://`` and the like) are left to Lightning's writer.

    Use it with ``trainer.plugins``: ``Trainer(plugins=[AtomicCheckpointIO()])``, or in a
    config ``trainer: {plugins: [{class_path: lightning_gsf.callbacks.AtomicCheckpointIO}]}``.

    Reading, a file that is not a checkpoint (empty, truncated, some other file) is an error
    that names it, rather than ``torch.load``'s bare ``EOFError`` or zip-reader error.
    """

    def load_checkpoint(self, path: str | Path, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        # (torch's legacy, pre-zip loader, reached with weights_only=False, fails on a corrupt
        # file with an AssertionError or a ValueError of its own unpacking: neither names it)
        except (RuntimeError, EOFError, pickle.UnpicklingError, KeyError, AssertionError, ValueError) as error:
            raise ValueError(f"{path}: not a readable checkpoint, truncated or corrupt? "
                             f"({type(error).__name__}: {error})") from error

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path)
            return
        # Interrupted or failed (disk full, a kill turned into an exception), the target still
        # holds the previous checkpoint; only the partial temporary file goes.
        with atomic_file(path, "wb", durable=True) as file:
            torch.save(checkpoint, file)


# --- saving on preemption ----------------------------------------------------------------------


def restart_validation_on_resume(checkpoint: dict[str, Any]) -> None:
    """Mark ``fit``'s current validation in ``checkpoint`` as begun with no batch processed: the
    state in which Lightning (2.6, :func:`resumes_mid_validation`) resumes in the middle of a
    validation, which it then runs again from its first batch (it iterates the validation
    loader afresh). The epoch's earlier validations (``val_check_interval`` < 1) keep their
    counts in ``total``."""
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    current, total = progress["current"], progress["total"]
    done_before = total["completed"] - current["completed"]
    total.update(ready=done_before + 1, started=done_before + 1, processed=done_before, completed=done_before)
    current.update(ready=1, started=1, processed=0, completed=0)
    progress["is_last_batch"] = False


def resumes_mid_validation(trainer: pl.Trainer) -> bool:
    """Whether this Lightning resumes a run stopped in the middle of a validation by running it
    (the restart stage its evaluation loop has from 2.6 on; before, the resumed run goes on
    after the validation)."""
    return hasattr(trainer.fit_loop.epoch_loop.val_loop, "restarted_mid_evaluation")


class _StopCheckpoint(pl.Callback):
    """A callback that saves ``<dirpath>/<filename>.ckpt`` when the run has to stop; without
    ``dirpath``, in the ``ModelCheckpoint``'s directory, else ``<default_root_dir>/checkpoints``."""

    def __init__(self, dirpath: str | Path | None = None, filename: str = "last") -> None:
        if not filename:
            raise ValueError(f"{type(self).__name__} needs a non-empty filename")
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.filename = filename

    def checkpoint_path(self, trainer: pl.Trainer) -> Path:
        """Where this callback's checkpoint of ``trainer`` goes."""
        folders = [c.dirpath for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
        if self.dirpath is not None:
            directory = self.dirpath
        elif folders:
            directory = Path(folders[0])
        else:
            directory = Path(trainer.default_root_dir) / "checkpoints"
        return directory / f"{self.filename}.ckpt"

    @staticmethod
    def _save_full_state(trainer: pl.Trainer, path: Path) -> None:
        """``trainer.save_checkpoint``, on every process, of the full state (``weights_only``
        given, so that Lightning logs no note of its default)."""
        trainer.save_checkpoint(path, weights_only=False)


#: The exit status of a run that a Ctrl-C stopped with a checkpoint: 128 + 2, the shell's status
#: of a process that SIGINT ended; it tells a script that resubmits preempted runs (143) that a
#: person stopped this one.
EXIT_STOPPED_BY_CTRL_C = 128 + signal.SIGINT


class PreemptionCheckpoint(_StopCheckpoint):
    """Save a checkpoint when the job receives SIGTERM (preemption, ``scancel``, a time limit).

    Lightning turns SIGTERM into ``SIGTERMException`` after the current training batch, or
    during ``fit``'s validation after the current validation batch of a single process (under
    DDP, see below); this callback then saves
    ``<dirpath>/<filename>.ckpt`` with the full training state (model, optimiser, loops, the
    data loader's position) and lets the process exit. Stopped
    during validation, the checkpoint says so in Lightning's terms (a validation batch
    started, none processed), so the resumed run validates that epoch from its first batch
    before training on: the metrics, which no checkpoint holds, cover the whole validation
    set, and the epoch keeps its chance to be the best checkpoint. (Left as Lightning saves
    it, the resumed run would skip that validation.) The default name, ``last``, makes ``--ckpt_path last`` resume from it: it is
    the newest "last" checkpoint of the ``ModelCheckpoint`` directory.

    From the start of training to its end, this callback's handler replaces Lightning's for
    SIGTERM (with one process it does what Lightning's does, and keeps the signal's name beside
    a Ctrl-C's). Under DDP the signal may reach one process or all, at different moments
    (SLURM signals every process of a job step), and Lightning's handler, which broadcasts
    inside the handler and sets only its own process's flag, checked by each process on its
    own, let processes stop at different batches and wait for each other in mismatched
    collectives (Lightning-AI/pytorch-lightning#20806). Here a process only notes the signal;
    at the end of every training batch the processes agree (an all-reduce) whether any has it,
    and all stop after that batch. During validation the signal waits for its end, where they
    agree again, and the next training batch stops them all together (or training ends, if
    that was the last validation): Lightning would stop each process mid-validation on its
    own, and never on its last validation batch, so one would wait in the checkpoint's
    collectives while another waits in the metrics' (processes have different numbers of
    validation batches), both forever.

    It is a plain ``Callback``, not a Lightning ``Checkpoint``: those count as the run's
    checkpoint callback, and ``trainer.checkpoint_callback`` (``ckpt_path="best"``) must stay
    the ``ModelCheckpoint``.

    With gradient accumulation, a SIGTERM inside an accumulation window (in a training batch,
    or in a validation that ``val_check_interval`` puts between two of its batches) is held to
    the window's last batch: the gradients of its earlier batches live in no checkpoint, and a
    run resumed from its middle would step on part of a window.

    Ctrl-C: from the start of ``fit``'s training to its end, the first Ctrl-C (SIGINT) is
    taken as a SIGTERM: the run stops at the same clean point, with the checkpoint, and
    :func:`stop_signal` tells the two apart (``gsf`` exits with status 130, not 143; so does a
    program that calls ``Trainer.fit`` itself and lets the exception, a ``SystemExit``, end
    it). Under DDP the processes agree on a Ctrl-C as on a SIGTERM. A run that received both,
    in either order, was preempted: SIGTERM outranks the Ctrl-C (status 143). A second Ctrl-C
    raises ``KeyboardInterrupt`` at once, as before: Lightning stops without a checkpoint. The
    data loaders of :mod:`~lightning_gsf.data.samplers` start their worker processes ignoring
    SIGINT and SIGTERM, so that a Ctrl-C from the terminal or SLURM's SIGTERM, which reach them
    too, leaves them reading the batches that the stop still needs (and a signal while they
    start still reaches the training process).

    Other exceptions are *not* saved: an error can strike in the middle of an optimiser step,
    and a checkpoint of that state would resume something no uninterrupted run ever saw.
    (:class:`DataErrorCheckpoint` saves for an unreadable batch, at a clean point before it.)

    Args:
        dirpath: where to save; default: the ``ModelCheckpoint``'s directory, else
            ``<default_root_dir>/checkpoints``.
        filename: file name without ``.ckpt``.
        stop_on_ctrl_c: take the first Ctrl-C of ``fit``'s training as a SIGTERM.
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str = "last",
                 stop_on_ctrl_c: bool = True) -> None:
        super().__init__(dirpath, filename)
        self.stop_on_ctrl_c = stop_on_ctrl_c
        self._saving_mid_validation = False
        self._held_sigterm = False
        self._held_for_accumulation = False
        self._handlers_replaced: dict[int, Any] = {}  # (the handlers that ours replaced, while ours are on)
        self._ctrl_c_received = False
        self._pending_signal = 0  # (under DDP: the stop signal this process received, not yet agreed on)
        self._stop_signal: int | None = None  # (the signal the run stops for)

    # The signals, from the start of training (after the sanity check) to its end.

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ctrl_c_received = False
        self._pending_signal = 0
        self._stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            return  # (Python runs signal handlers in the main thread only)
        self._take_over_sigterm(trainer)
        if not self.stop_on_ctrl_c or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return  # (a program that handles SIGINT itself keeps its handler)

        def stop_after_this_batch(signum: int, frame: FrameType | None) -> None:
            if self._ctrl_c_received:  # the second: stop at once
                self._restore_signal_handlers()
                signal.default_int_handler(signum, frame)
            self._ctrl_c_received = True
            self._note_stop_signal(trainer, signal.SIGINT)
            log.warning("Ctrl-C: stopping after this batch, with a checkpoint; press Ctrl-C again to stop at once, "
                        "without one")

        self._handlers_replaced[signal.SIGINT] = signal.signal(signal.SIGINT, stop_after_this_batch)

    def _take_over_sigterm(self, trainer: pl.Trainer) -> None:
        """Replace Lightning's SIGTERM handler for the training. With one process ours sets
        Lightning's flag as its handler does, and notes the signal, which a Ctrl-C received
        before it would otherwise name. Under DDP Lightning's runs a broadcast
        inside the handler and sets the flag of its own process only, which Lightning checks on
        each process at the end of every batch, so processes that received the signal at
        different moments stopped at different batches and waited for each other in mismatched
        collectives (Lightning-AI/pytorch-lightning#20806; here a SIGTERM to every process, as
        SLURM sends it, or to rank 1 alone, hung 8 CPU runs in 8). Ours only notes the signal; :meth:`_agree_on_a_stop`
        shares it. The handlers Lightning composed with its own (a program's, SLURM's requeue
        message) still run. A handler that is not Lightning's is left alone."""
        replaced = signal.getsignal(signal.SIGTERM)
        notifier = trainer._signal_connector._sigterm_notifier_fn
        composed = getattr(replaced, "signal_handlers", None)
        if not isinstance(composed, list) or notifier not in composed:
            return
        others = [handler for handler in composed if handler != notifier]

        def stop_after_this_batch(signum: int, frame: FrameType | None) -> None:
            self._note_stop_signal(trainer, signal.SIGTERM)
            if trainer.world_size > 1:
                log.info("rank %d received SIGTERM: the processes stop together after a batch, with a checkpoint",
                         trainer.global_rank)
            else:
                log.info("received SIGTERM: stopping after this batch, with a checkpoint")
            for handler in others:
                handler = signal.getsignal(handler) if isinstance(handler, int) else handler
                if callable(handler):
                    handler(signum, frame)

        self._handlers_replaced[signal.SIGTERM] = signal.signal(signal.SIGTERM, stop_after_this_batch)

    def _note_stop_signal(self, trainer: pl.Trainer, signum: int) -> None:
        """(In a signal handler.) With one process, set Lightning's flag, as its SIGTERM handler
        does; under DDP only note the signal (no collective may run in a handler):
        :meth:`_agree_on_a_stop` shares it. Either way SIGTERM outranks a Ctrl-C, whichever
        came first (a run both stopped is preempted: 143, for its resubmission)."""
        if trainer.world_size > 1:
            self._pending_signal = max(self._pending_signal, signum)
        else:
            self._stop_signal = max(self._stop_signal or 0, signum)
            trainer._signal_connector.received_sigterm = True

    def _agree_on_a_stop(self, trainer: pl.Trainer, received_otherwise: bool = False) -> bool:
        """(DDP; every process calls it at the same point.) Whether any process received a stop
        signal, the strongest of them now this run's: an all-reduce (max) of each process's
        :meth:`_note_stop_signal` and, where ``received_otherwise``, of the stop agreed on before
        and held (a Ctrl-C held to the end of an accumulation window stays one), else SIGTERM
        (Lightning's flag, set by its own handler before this one's took over). It
        sets Lightning's flag on every process alike, so that they stop at the same batch. (One
        small all-reduce a training batch, beside Lightning's own broadcast of its flag.)"""
        pending = max(self._pending_signal, (self._stop_signal or signal.SIGTERM) if received_otherwise else 0)
        local = torch.tensor([int(pending)], dtype=torch.int32, device=trainer.strategy.root_device)
        agreed = int(trainer.strategy.reduce(local, reduce_op="max").item())
        trainer._signal_connector.received_sigterm = bool(agreed)
        if agreed:
            self._stop_signal = agreed
        return bool(agreed)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_signal_handlers()

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._handlers_replaced.items():
            signal.signal(signum, handler)
        self._handlers_replaced = {}

    def _stopped_by(self) -> int:
        return self._stop_signal or signal.SIGTERM

    def _stop_name(self) -> str:
        return "Ctrl-C" if self._stopped_by() == signal.SIGINT else "SIGTERM"

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        first_agreement = False
        if trainer.world_size > 1:
            first_agreement = self._stop_signal is None
            self._agree_on_a_stop(trainer, trainer.received_sigterm or self._held_for_accumulation)
        # Inside an accumulation window (no optimiser step after this batch) the gradients of
        # its batches so far are in no checkpoint: hold the signal to the window's last batch.
        # (Every rank's windows end at the same batch; Lightning checks the flag after this hook.)
        accumulating = _inside_accumulation_window(trainer)
        if accumulating and trainer.received_sigterm:
            trainer._signal_connector.received_sigterm = False
            self._held_for_accumulation = True
        elif not accumulating and self._held_for_accumulation:
            trainer._signal_connector.received_sigterm = True
            self._held_for_accumulation = False
            if trainer.is_global_zero:
                log.warning("%s inside a gradient-accumulation window: stopping at its end, step %d",
                            self._stop_name(), trainer.global_step)
        elif first_agreement and trainer.received_sigterm and trainer.is_global_zero:
            log.warning("%s: every process stops after this batch, with a checkpoint", self._stop_name())

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if (_holds_sigterm_in_validation(trainer) or _inside_accumulation_window(trainer)) and trainer.received_sigterm:
            # (Lightning's flag, which its evaluation loop checks right after this hook)
            trainer._signal_connector.received_sigterm = False
            self._held_sigterm = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if _holds_sigterm_in_validation(trainer):
            held = self._held_sigterm or trainer.received_sigterm
            received = self._agree_on_a_stop(trainer, held) if trainer.world_size > 1 else held
        elif _inside_accumulation_window(trainer):
            received = self._held_sigterm or trainer.received_sigterm
        else:
            return
        self._held_sigterm = False
        if not received:
            return
        if _inside_accumulation_window(trainer):  # (a validation between two batches of a window)
            trainer._signal_connector.received_sigterm = False
            self._held_for_accumulation = True
            message = "stopping at the end of the gradient-accumulation window it is in"
        else:
            trainer._signal_connector.received_sigterm = True
            message = "stopping at the next training batch"
        if trainer.is_global_zero:
            log.warning("%s during validation: validation finished; %s", self._stop_name(), message)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self._saving_mid_validation:
            restart_validation_on_resume(checkpoint)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_signal_handlers()
        if not isinstance(exception, SIGTERMException):
            return
        if self._stopped_by() == signal.SIGINT:
            exception.gsf_stop_signal = signal.SIGINT  # (read by stop_signal)
            # A program that calls Trainer.fit itself then exits as gsf does, not with 0 (the
            # bare SystemExit of Lightning's SIGTERM stop): a person interrupted an unfinished run.
            # (Under DDP only rank 0 reports it, as for a SIGTERM: see gsf's main.)
            if trainer.is_global_zero:
                exception.code = EXIT_STOPPED_BY_CTRL_C
        path = self.checkpoint_path(trainer)
        # Every rank gets here together (under DDP the ranks agree on the signal at the end of
        # every training batch and of a validation), as save_checkpoint's collectives need; only rank 0
        # writes.
        self._saving_mid_validation = trainer.state.fn == TrainerFn.FITTING and trainer.validating
        if self._saving_mid_validation and not resumes_mid_validation(trainer):
            log.warning("%s during validation: this Lightning resumes after it, so epoch %d goes unvalidated "
                        "(Lightning 2.6 runs it again)", self._stop_name(), trainer.current_epoch)
        try:
            self._save_full_state(trainer, path)
        finally:
            self._saving_mid_validation = False
        if trainer.is_global_zero:
            log.warning(
                "%s: saved a checkpoint at epoch %d, step %d to %s; resume with --ckpt_path %s",
                self._stop_name(),
                trainer.current_epoch,
                trainer.global_step,
                path,
                path,
            )


class DataErrorCheckpoint(_StopCheckpoint):
    """Save a checkpoint when ``fit`` meets data it cannot read, then stop with the error.

    An unreadable sample (a corrupt video, a broken frame: ``SampleReadError``, naming the
    sample, its file and row) would otherwise end the run where the loader raises, losing
    everything trained since the last checkpoint. With this callback ``fit``'s loaders
    (:class:`~lightning_gsf.data.samplers.ResumableDataLoader` for training,
    :class:`~lightning_gsf.data.samplers.EvaluationDataLoader` for validation) hand the error
    over as an :class:`~lightning_gsf.data.samplers.UnreadableBatch`, and the processes stop
    together at a clean point, all saving ``<dirpath>/<filename>.ckpt`` (the file of
    :class:`PreemptionCheckpoint`: ``--ckpt_path last`` resumes from it), each raising the
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
        if not _starts_an_accumulation_window(trainer):
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
        if _inside_accumulation_window(trainer):  # (val_check_interval inside a window)
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


def stop_signal(stop: SIGTERMException) -> signal.Signals:
    """The signal that stopped a run with ``stop``: SIGINT where :class:`PreemptionCheckpoint`
    took a Ctrl-C as a SIGTERM, else SIGTERM."""
    return getattr(stop, "gsf_stop_signal", signal.SIGTERM)


def _starts_an_accumulation_window(trainer: pl.Trainer) -> bool:
    """Whether the training batch about to run (counted as ready at ``on_train_batch_start``)
    is the first of its gradient-accumulation window: no gradients are pending."""
    ready = trainer.fit_loop.epoch_loop.batch_progress.current.ready
    return (ready - 1) % trainer.accumulate_grad_batches == 0


def _inside_accumulation_window(trainer: pl.Trainer) -> bool:
    """Whether ``fit``'s last training batch left its gradient-accumulation window open (no
    optimiser step after it), so that stopping now would lose the window's gradients."""
    return trainer.state.fn == TrainerFn.FITTING and trainer.fit_loop.epoch_loop._should_accumulate()


def _holds_sigterm_in_validation(trainer: pl.Trainer) -> bool:
    """Whether a SIGTERM (or Ctrl-C) during validation waits for its end: in ``fit`` with several
    processes (which meet only there), or with an average of the weights (an EMA), which the
    module holds during validation while the callback holds the training weights: saved then,
    the checkpoint would hold the two swapped."""
    averaging = any(isinstance(callback, WeightAveraging) for callback in trainer.callbacks)
    return trainer.state.fn == TrainerFn.FITTING and (trainer.world_size > 1 or averaging)


# --- throughput --------------------------------------------------------------------------------


def clips_in(batch: Mapping[str, Any]) -> int:
    """The clips in a loader's batch (its clips' first dimension)."""
    return batch["clip"].shape[0]


class ClipThroughputMonitor(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` counting clips (``<stage>/samples``,
    ``<stage>/device/samples_per_sec``), with a validation batch that could not be read (an
    :class:`~lightning_gsf.data.samplers.UnreadableBatch`, which ``fit``'s validation goes on
    past, see :class:`DataErrorCheckpoint`) left out of the count."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(batch_size_fn=clips_in, **kwargs)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                *args: Any, **kwargs: Any) -> None:
        if not isinstance(batch, UnreadableBatch):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, *args, **kwargs)


# --- random state ------------------------------------------------------------------------------


def _random_state() -> dict[str, Any]:
    """This process's global random state, as tensors and plain values (``weights_only``-loadable)."""
    numpy_kind, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    python_version, python_state, python_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_kind, torch.from_numpy(numpy_keys.astype(np.int64)), numpy_pos, numpy_has_gauss, numpy_gauss],
        "python": [python_version, list(python_state), python_gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_random_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, python_state, python_gauss = state["python"]
    random.setstate((version, tuple(python_state), python_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class ExactResume(pl.Callback):
    """Save what a mid-epoch resume needs beyond Lightning's own state, and restore it.

    - **Every rank's global random state.** Lightning saves none, so dropout (and anything
      else drawing from the global generators) would take other draws after a resume than
      in an uninterrupted run. The states of all ranks are gathered into the checkpoint and
      rank ``r`` gets its own back. They are restored at the first training batch after the
      resume: loading the checkpoint and building the loaders happen in between and must
      not consume the restored stream. A run resumed on another number of processes keeps
      fresh states and says so.
    - **The training loader's position** (:class:`~lightning_gsf.data.samplers.ResumableDataLoader`).
      Lightning saves it too, but drops it on resume when ``configure_optimizers`` reads
      ``trainer.estimated_stepping_batches`` (it builds the loader before the checkpoint is
      restored and never loads the saved state; Lightning-AI/pytorch-lightning#20550), which a
      per-step schedule does. This callback applies it at ``on_train_start``, before the first
      batch is drawn; where Lightning did restore it, loading the same state again changes nothing.
    - **A run limited by ``max_steps``** is resumed as one limited by epochs
      (:mod:`lightning_gsf.fit_loop`): Lightning 2.6 trains one batch or none of the epoch after
      an end-of-epoch checkpoint, and counts an epoch cut short by ``max_steps`` twice.
    """

    def __init__(self) -> None:
        self._pending_random_states: list[dict[str, Any]] | None = None
        self._pending_loader_state: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        # Called on every rank while a checkpoint is assembled, so gathering is safe here.
        local = _random_state()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            random_states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(random_states, local)
        else:
            random_states = [local]
        return {"random_state_per_rank": random_states, "train_loader": self._loader_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_random_states = state_dict.get("random_state_per_rank")
        self._pending_loader_state = state_dict.get("train_loader")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # state_dict() gets no trainer, but must read the loader's position.
        self._trainer = trainer
        if stage == TrainerFn.FITTING:
            install_step_limited_resume(trainer)  # before the checkpoint's loop state is loaded

    @property
    def _loader_state(self) -> dict[str, Any] | None:
        trainer = getattr(self, "_trainer", None)
        loader = None if trainer is None else trainer.train_dataloader
        return loader.state_dict() if isinstance(loader, ResumableDataLoader) else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state, self._pending_loader_state = self._pending_loader_state, None
        loader = trainer.train_dataloader
        if state is not None and isinstance(loader, ResumableDataLoader):
            loader.load_state_dict(state)
            _count_batches_in_this_layout(trainer, loader)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        states, self._pending_random_states = self._pending_random_states, None
        if states is None:
            return
        if len(states) != trainer.world_size:
            log.warning(
                "the checkpoint holds the random state of %d processes, this run has %d: "
                "keeping fresh random states, so dropout draws will differ from an uninterrupted run",
                len(states),
                trainer.world_size,
            )
            return
        _set_random_state(states[trainer.global_rank])


def _count_batches_in_this_layout(trainer: pl.Trainer, loader: ResumableDataLoader) -> None:
    """Lightning ends an epoch when its count of this process's batches reaches the epoch's
    length, and restores that count from the checkpoint. Resumed mid-epoch on more processes
    (or a smaller batch), the saved count is of bigger shares and would end the epoch before the
    rest of the data; on fewer, the data runs out first (which is right). The count becomes the
    batches of this run's layout that the restored position stands for: the epoch's length less
    the batches still to come."""
    if trainer.num_training_batches != len(loader):  # (limit_train_batches: the epoch is the limit's)
        return
    if not 0 < loader.sampler.position < len(loader.sampler.dataset):  # (an epoch's start or end: Lightning's)
        return
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    done = len(loader) - loader.batches_to_come()
    if done < 0 or done == progress.ready:
        return
    log.info("resumed mid-epoch in another layout of processes or batches: %d batches of this process's epoch of "
             "%d count as done (the checkpoint counted %d)", done, len(loader), progress.ready)
    progress.ready = progress.started = progress.processed = progress.completed = done


# --- configuration mismatches ----------------------------------------------------------------


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
