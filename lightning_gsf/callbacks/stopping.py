"""What the callbacks that save a checkpoint and stop a run share: where the checkpoint goes, a
validation marked to run again on resume, and where a gradient-accumulation window stands.

:class:`~lightning_gsf.callbacks.preemption.PreemptionCheckpoint` (a SIGTERM or a Ctrl-C) and
:class:`~lightning_gsf.callbacks.data_errors.DataErrorCheckpoint` (an unreadable batch) build on
:class:`StopCheckpoint`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn


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


class StopCheckpoint(pl.Callback):
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


def starts_an_accumulation_window(trainer: pl.Trainer) -> bool:
    """Whether the training batch about to run (counted as ready at ``on_train_batch_start``)
    is the first of its gradient-accumulation window: no gradients are pending."""
    ready = trainer.fit_loop.epoch_loop.batch_progress.current.ready
    return (ready - 1) % trainer.accumulate_grad_batches == 0


def inside_accumulation_window(trainer: pl.Trainer) -> bool:
    """Whether ``fit``'s last training batch left its gradient-accumulation window open (no
    optimiser step after it), so that stopping now would lose the window's gradients."""
    return trainer.state.fn == TrainerFn.FITTING and trainer.fit_loop.epoch_loop._should_accumulate()
