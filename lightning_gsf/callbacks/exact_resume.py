"""What a mid-epoch resume needs beyond Lightning's own state: every rank's random state and
the training loader's position (:class:`ExactResume`)."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.trainer.states import TrainerFn

from lightning_gsf.data.samplers import ResumableDataLoader
from lightning_gsf.fit_loop import install_step_limited_resume

log = logging.getLogger(__name__)


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
