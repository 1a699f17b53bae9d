"""A checkpoint saved when the job is told to stop: SIGTERM (preemption, ``scancel``, a time
limit) or the first Ctrl-C of ``fit``'s training, with the processes of a DDP run agreeing on
the batch they stop after (:class:`PreemptionCheckpoint`)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lightning_gsf.callbacks.stopping import (
    inside_accumulation_window,
    StopCheckpoint,
    restart_validation_on_resume,
    resumes_mid_validation,
)

log = logging.getLogger(__name__)


#: The exit status of a run that a Ctrl-C stopped with a checkpoint: 128 + 2, the shell's status
#: of a process that SIGINT ended; it tells a script that resubmits preempted runs (143) that a
#: person stopped this one.
EXIT_STOPPED_BY_CTRL_C = 128 + signal.SIGINT


class PreemptionCheckpoint(StopCheckpoint):
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
    it, the resumed run would skip that validation.) The default name, ``last``, makes
    ``--ckpt_path last`` resume from it: it is the newest "last" checkpoint of the
    ``ModelCheckpoint`` directory.

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
    (:class:`~lightning_gsf.callbacks.DataErrorCheckpoint` saves for an unreadable batch, at a clean point before it.)

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
        accumulating = inside_accumulation_window(trainer)
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
        if (_holds_sigterm_in_validation(trainer) or inside_accumulation_window(trainer)) and trainer.received_sigterm:
            # (Lightning's flag, which its evaluation loop checks right after this hook)
            trainer._signal_connector.received_sigterm = False
            self._held_sigterm = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if _holds_sigterm_in_validation(trainer):
            held = self._held_sigterm or trainer.received_sigterm
            received = self._agree_on_a_stop(trainer, held) if trainer.world_size > 1 else held
        elif inside_accumulation_window(trainer):
            received = self._held_sigterm or trainer.received_sigterm
        else:
            return
        self._held_sigterm = False
        if not received:
            return
        if inside_accumulation_window(trainer):  # (a validation between two batches of a window)
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


def stop_signal(stop: SIGTERMException) -> signal.Signals:
    """The signal that stopped a run with ``stop``: SIGINT where :class:`PreemptionCheckpoint`
    took a Ctrl-C as a SIGTERM, else SIGTERM."""
    return getattr(stop, "gsf_stop_signal", signal.SIGTERM)


def _holds_sigterm_in_validation(trainer: pl.Trainer) -> bool:
    """Whether a SIGTERM (or Ctrl-C) during validation waits for its end: in ``fit`` with several
    processes (which meet only there), or with an average of the weights (an EMA), which the
    module holds during validation while the callback holds the training weights: saved then,
    the checkpoint would hold the two swapped."""
    averaging = any(isinstance(callback, WeightAveraging) for callback in trainer.callbacks)
    return trainer.state.fn == TrainerFn.FITTING and (trainer.world_size > 1 or averaging)
