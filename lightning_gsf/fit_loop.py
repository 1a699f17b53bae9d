"""Lightning's fit loop, resuming a run limited by ``max_steps`` as one limited by epochs, and
any run from a checkpoint of an epoch's last batch with the next epoch counted.

Lightning 2.6 treats every resume of a run with ``max_steps`` as a restart inside the saved
epoch (``_FitLoop.restarting``), which is right only when the run stopped inside one. Two
cases go wrong, each losing training (reproduced with a plain ``LightningModule``, 4 batches
an epoch, no gsf code involved):

- **The checkpoint's epoch ran to its last batch** (a ``last.ckpt`` written at an epoch's end,
  or at the end of a ``fit`` that reached ``max_epochs``). The resumed run starts the next
  epoch with the saved one's batch count, trains one batch or none in it and moves on: a run
  stopped after 2 epochs and resumed to 4 trained 13 or 12 batches instead of 16.
- **``max_steps`` cut the checkpoint's epoch short** (a run extended by resuming it with a
  larger ``max_steps``). Lightning counts the cut epoch as processed when it stops, then
  finishes it on resume and counts it again, so ``max_epochs`` ends the run an epoch early
  (12 batches of 16 in the same test).

:class:`StepLimitedResumeFitLoop` resumes the first case as Lightning resumes an epoch-limited
run (the saved epoch is over; the next starts afresh) and the second as a restart in the
middle of the cut epoch (it is finished, then counted once).

A third case goes wrong with or without ``max_steps``: **a checkpoint of an epoch's last batch
saved before the epoch ended** (``ModelCheckpoint(every_n_train_steps=...)`` falling on that
batch). Lightning counts that epoch as over when it resumes, then runs the next as the
rest of it: without counting it ready and started, nor calling its start hooks. The resumed
run trains the right batches, but its counts are one epoch apart, and a resume of its own
``last.ckpt`` trained one batch of the next epoch instead of all. The loop starts the next
epoch as a new one. Everything else is Lightning's.

:class:`~lightning_gsf.callbacks.ExactResume` installs it.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.loops.fit_loop import _FitLoop
from pytorch_lightning.loops.loop import _Loop

try:  # (Lightning 2.6 has restart stages; an older one this package accepts may not)
    from pytorch_lightning.loops.fit_loop import RestartStage
except ImportError:  # pragma: no cover
    RestartStage = None

__all__ = ["StepLimitedResumeFitLoop", "install_step_limited_resume"]


class StepLimitedResumeFitLoop(_FitLoop):
    """``_FitLoop`` with the three resumes above mended (see the module's docstring)."""

    @property
    def restarting(self) -> bool:
        return self._restarting

    @restarting.setter
    def restarting(self, restarting: bool) -> None:
        # Set by ``load_state_dict`` once every progress counter of the checkpoint is loaded.
        if restarting and self._iteration_based_training():
            epochs, batches = self.epoch_progress, self.epoch_loop.batch_progress
            epoch_ended = epochs.current.ready == epochs.current.started == epochs.current.processed > 0
            if epoch_ended and batches.is_last_batch:
                # (Without this, the branch below would take the epoch for one cut short and
                # ``reset`` would then start the next anew: the same batches and counts by a
                # longer way. This says what the state is: the epoch is over.)
                _Loop.restarting.fset(self, False)  # as _FitLoop decides for an epoch-limited run
                return
            if epoch_ended and batches.current.completed > 0:
                # Cut short by max_steps: make it the saved state of a restart inside that epoch.
                for counts in (epochs.current, epochs.total):
                    counts.processed -= 1
                    counts.completed = min(counts.completed, counts.processed)
        _FitLoop.restarting.fset(self, restarting)

    def reset(self) -> None:
        super().reset()
        if (RestartStage is not None and self.restarted_mid_epoch and self.epoch_loop.restarted_on_train_batch_end
                and self.epoch_loop.batch_progress.is_last_batch):
            # A checkpoint of an epoch's last batch, saved before the epoch ended: Lightning's
            # reset has just counted that epoch processed and completed, and the next epoch is a
            # new one (counted ready and started, its start hooks called), not the rest of it.
            self._restart_stage = RestartStage.NONE


def install_step_limited_resume(trainer: pl.Trainer) -> None:
    """Make ``trainer``'s fit loop a :class:`StepLimitedResumeFitLoop`, keeping all its state.

    Only Lightning's own loop class is replaced (a loop someone has customised is left alone);
    it must happen before the checkpoint's loop state is loaded, e.g. in a callback's ``setup``.
    """
    if type(trainer.fit_loop) is _FitLoop:
        trainer.fit_loop.__class__ = StepLimitedResumeFitLoop
