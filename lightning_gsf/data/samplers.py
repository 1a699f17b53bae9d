"""Samplers and a data loader that make training resumable mid-epoch and exact under DDP.

Lightning (2.x) saves a training data loader's position in a checkpoint only if the
*loader itself* has ``state_dict``/``load_state_dict`` (``CombinedLoader._state_dicts``);
the sampler is never asked. Only the loader knows how many batches it has handed to the
training loop: the sampler's own iterator runs ahead of that by the worker prefetch. Hence
these pieces:

- :class:`ResumableDistributedSampler`: the training order. The same permutation and padding
  as :class:`torch.utils.data.DistributedSampler` (seeded by ``seed + epoch``), but it can
  start part-way through an epoch. Its position is a *global* position in the epoch's
  order, so a run may resume on a different number of processes.
- :class:`ResumableDataLoader`: a ``DataLoader`` that counts the batches it has handed out
  and saves ``(epoch, position)`` through its sampler. It is restored before the first
  batch of the resumed epoch (by Lightning, or by ``callbacks.ExactResume`` where Lightning
  drops the state: Lightning-AI/pytorch-lightning#20550).
- :class:`EvaluationDataLoader`: a ``DataLoader`` that, like :class:`ResumableDataLoader`,
  can hand a batch that cannot be read over as an :class:`UnreadableBatch` (for
  ``callbacks.DataErrorCheckpoint``).
- :class:`UnpaddedDistributedSampler`: evaluation. Each process takes every
  ``num_replicas``-th sample, with no padding, so no sample is scored twice and the
  metrics of N processes equal those of one.

Both loaders start their worker processes ignoring SIGINT and SIGTERM: a Ctrl-C in the
terminal reaches the whole process group, SLURM signals every process of a job step, and a
worker that the signal ended would fail the batches that ``callbacks.PreemptionCheckpoint``'s
clean stop still reads. (The main process stops its workers, and they stop with it.)

Both samplers subclass ``DistributedSampler`` on purpose: Lightning then keeps them instead
of injecting its own (``use_distributed_sampler`` leaves a ``DistributedSampler`` alone) and
calls ``set_epoch`` on them at the start of every epoch.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import signal
import weakref
from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data import _utils
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from lightning_gsf.data.errors import ConfigurationError, ResumeMismatchError, SampleReadError

logger = logging.getLogger(__name__)

__all__ = [
    "EvaluationDataLoader",
    "ResumableDataLoader",
    "ResumableDistributedSampler",
    "UnpaddedDistributedSampler",
    "UnreadableBatch",
    "process_group_layout",
]


def process_group_layout(num_replicas: int | None = None, rank: int | None = None) -> tuple[int, int]:
    """``(num_replicas, rank)``: the given values, else those of the default process group, else ``(1, 0)``.

    Lightning creates the process group before it asks the DataModule for loaders, so a
    sampler built in ``train_dataloader()`` sees the right world size without being told.
    """
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"invalid process layout: rank {rank} of {num_replicas} replicas")
    return num_replicas, rank


class ResumableDistributedSampler(DistributedSampler):
    """Seeded, epoch-aware, DDP-aware training sampler that can resume mid-epoch.

    The order of epoch ``e`` is ``torch.randperm(len(dataset))`` drawn from a generator
    seeded with ``seed + e`` (or ``range(len(dataset))`` without shuffling), padded by
    repeating its head until every process gets the same number of samples (or truncated
    with ``drop_last``); process ``rank`` takes positions ``rank, rank + num_replicas, ...``.
    From a fresh epoch this is exactly ``DistributedSampler``'s order.

    ``position`` counts samples of the epoch's order already used by *all* processes
    together. :meth:`load_state_dict` sets it; the next iteration yields only this process's
    share of the remaining order and then starts the following epoch from zero. ``len()``
    stays the full-epoch count, because Lightning sizes the epoch from it and counts the
    batches it already ran. ``set_epoch`` is passed on to the dataset if it has one, so a
    dataset that seeds augmentations with ``(seed, epoch, index)`` follows the sampler.

    Args:
        dataset: anything with a length (only ``len(dataset)`` is used).
        shuffle: draw a new permutation every epoch.
        seed: base seed; the same on every process.
        drop_last: drop the tail instead of padding it.
        num_replicas: number of processes; default: from ``torch.distributed``, else 1.
        rank: this process's rank; default: from ``torch.distributed``, else 0.
    """

    def __init__(
        self,
        dataset: Sized,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        num_replicas, rank = process_group_layout(num_replicas, rank)
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.position = 0
        # Where the current iteration started; ``None`` until one starts in this epoch.
        self._iteration_start: int | None = None
        # Why the restored position cannot be continued (settings changed since the checkpoint),
        # raised only if this run would continue it: a new epoch starts afresh.
        self._unresumable: str | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order; a *new* epoch starts from its beginning.

        Lightning calls this again with the restored epoch after :meth:`load_state_dict`;
        that call keeps the restored position.
        """
        if epoch != self.epoch:
            self.position = 0
            self._iteration_start = None
            self._unresumable = None
        self.epoch = epoch
        self._tell_dataset(epoch)

    def _tell_dataset(self, epoch: int) -> None:
        """Pass the epoch on to a dataset that seeds its augmentations with it (``ClipDataset``)."""
        set_dataset_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_dataset_epoch):
            set_dataset_epoch(epoch)

    def epoch_order(self) -> list[int]:
        """The dataset indices of the whole epoch, in the order all processes share."""
        size = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            return torch.randperm(size, generator=generator).tolist()
        return list(range(size))

    def _remaining_global(self, start: int) -> list[int]:
        """The epoch's order from global position ``start``, padded or truncated for the replicas."""
        order = self.epoch_order()
        remaining = order[start:]
        surplus = len(remaining) % self.num_replicas
        if self.drop_last:
            return remaining[: len(remaining) - surplus]
        if surplus:
            # Pad with the head of the epoch's order, as DistributedSampler does; from a
            # position that is a multiple of num_replicas this is the very same padding.
            padding = self.num_replicas - surplus
            repeats = math.ceil(padding / len(order))
            remaining += (order * repeats)[:padding]
        return remaining

    def __iter__(self) -> Iterator[int]:
        start = self.position
        if start and self._unresumable:
            raise ResumeMismatchError(self._unresumable)
        self._unresumable = None
        self._iteration_start = start
        # The restored position applies once: the next iteration is a whole epoch.
        self.position = 0
        return iter(self._remaining_global(start)[self.rank :: self.num_replicas])

    def state_dict(self, consumed: int = 0) -> dict[str, Any]:
        """The position to resume from, given that ``consumed`` of this process's samples were used.

        Only the consumer knows ``consumed`` (DataLoader workers fetch indices ahead of the
        batches the training loop has received); :class:`ResumableDataLoader` passes it.
        """
        if self._iteration_start is None:
            position = self.position
        else:
            position = self._iteration_start + consumed * self.num_replicas
        return {
            "epoch": self.epoch,
            "position": min(position, len(self.dataset)),
            "seed": self.seed,
            "shuffle": self.shuffle,
            "dataset_size": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`. If the seed, shuffling or dataset size differ
        from the checkpoint's, the next iteration raises :class:`ResumeMismatchError` naming
        them, unless it starts a new epoch (an end-of-epoch checkpoint: Lightning moves on to the
        next epoch, whose order owes nothing to the saved one) or the saved position is an
        epoch's start."""
        expected = {"seed": self.seed, "shuffle": self.shuffle, "dataset_size": len(self.dataset)}
        differences = [
            f"{key}: checkpoint {state.get(key)!r}, this run {value!r}"
            for key, value in expected.items()
            if state.get(key) != value
        ]
        self._unresumable = (
            "cannot resume the training order mid-epoch, the sampler differs from the checkpoint's ("
            + "; ".join(differences)
            + "); resume from an end-of-epoch checkpoint or restore the original data settings"
        ) if differences else None
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._iteration_start = None
        self._tell_dataset(self.epoch)
        logger.info("training order resumes at epoch %d, sample %d of %d", self.epoch, self.position, len(self.dataset))


#: The signals that stop a run cleanly (``callbacks.PreemptionCheckpoint``): a terminal's Ctrl-C
#: and SLURM's SIGTERM reach every process of the job, the loader workers too, which must go on
#: reading the batches the stop still needs.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


@contextlib.contextmanager
def _new_workers_ignore_stop_signals(loader: DataLoader) -> Iterator[None]:
    """Worker processes that ``loader`` starts in this block ignore :data:`STOP_SIGNALS`, and
    one that arrives meanwhile still reaches the main process's handler.

    Every worker sets ``SIG_IGN`` in its ``worker_init_fn`` (before the loader's own, which is
    back on the loader after the block). Until then it holds the signals blocked: the block
    runs with them blocked in this thread, and a worker inherits that mask, forked or spawned
    (a fork server started in the block holds it too, and hands it on); a forked worker never
    runs the main process's Python handlers. A signal sent to the process meanwhile goes to
    another of its threads or waits until the block ends: Python's handler runs in the main
    thread either way. (Where there is no signal mask, on Windows, the ``worker_init_fn``
    alone. A fork server that the block starts keeps the signals blocked, and so do the other
    processes it forks later: the program's own, if it uses that start method too.) The
    workers end as PyTorch ends them (a sentinel on their queue), and a worker that does not
    is killed (:class:`_WorkersKilledAtShutdown`), since SIGTERM no longer ends it."""
    if loader.num_workers == 0:
        yield
        return
    worker_init_fn = loader.worker_init_fn  # (read now: Lightning may have set its own by now)
    loader.worker_init_fn = _IgnoringStopSignals(worker_init_fn)
    masks = hasattr(signal, "pthread_sigmask")
    if masks:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        loader.worker_init_fn = worker_init_fn  # (first: a pending signal's handler may raise)
        if masks:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS - blocked)


class _IgnoringStopSignals:
    """A loader worker's ``worker_init_fn``: ignore :data:`STOP_SIGNALS` (and unblock them: one
    that came while the worker started is dropped), then call ``then`` (if any)."""

    def __init__(self, then: Callable[[int], None] | None) -> None:
        self.then = then

    def __call__(self, worker_id: int) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if self.then is not None:
            self.then(worker_id)


class _WorkersKilledAtShutdown(_MultiProcessingDataLoaderIter):
    """PyTorch's iterator over worker processes, whose shutdown kills (SIGKILL) a worker that
    is still alive after PyTorch's own (a sentinel, a wait, then SIGTERM, which these workers
    ignore): a worker stuck in a read does not outlive its loader. Iterators still open when
    the interpreter exits (one that an exception left behind) are shut down first, by
    :func:`_shut_down_workers_at_exit`: ``multiprocessing``'s own exit would SIGTERM the
    workers and wait for them without end."""

    def __init__(self, loader: DataLoader) -> None:
        super().__init__(loader)
        _OPEN_WORKER_ITERATORS.add(self)

    def _shutdown_workers(self) -> None:
        super()._shutdown_workers()
        for worker in getattr(self, "_workers", ()):
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=_utils.MP_STATUS_CHECK_INTERVAL)


_OPEN_WORKER_ITERATORS: weakref.WeakSet[_WorkersKilledAtShutdown] = weakref.WeakSet()


@atexit.register  # (registered after multiprocessing's exit function: atexit runs this one first)
def _shut_down_workers_at_exit() -> None:
    for iterator in list(_OPEN_WORKER_ITERATORS):
        iterator._shutdown_workers()


class _StopSignalsShieldedLoader(DataLoader):
    """A ``DataLoader`` whose workers ignore :data:`STOP_SIGNALS` (set up by
    :func:`_new_workers_ignore_stop_signals` around the start of its workers) and are killed at
    shutdown if they outlive PyTorch's own (:class:`_WorkersKilledAtShutdown`)."""

    def __iter__(self) -> Iterator[Any]:
        with _new_workers_ignore_stop_signals(self):
            return super().__iter__()

    def _get_iterator(self) -> Any:
        if self.num_workers == 0:
            return super()._get_iterator()
        self.check_worker_number_rationality()
        return _WorkersKilledAtShutdown(self)


class EvaluationDataLoader(_StopSignalsShieldedLoader):
    """A plain ``DataLoader`` for evaluation that can hand over read errors: with
    ``hand_over_read_errors`` (set by ``callbacks.DataErrorCheckpoint`` during ``fit``'s
    validation) a batch that cannot be read comes as an :class:`UnreadableBatch` and the
    iteration goes on, so that every process finishes the validation before they stop."""

    def __init__(self, dataset: Any, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.hand_over_read_errors = False

    def __iter__(self) -> Iterator[Any]:
        return _read_errors_handed_over(super().__iter__(), self)


class UnpaddedDistributedSampler(DistributedSampler):
    """Evaluation sampler: process ``rank`` takes indices ``rank, rank + num_replicas, ...``, in order.

    Unlike ``DistributedSampler`` it never pads, so processes may get one sample more or
    less than each other and every sample is scored exactly once. That is safe in
    evaluation (no gradient synchronisation per batch); metrics that synchronise at epoch
    end (torchmetrics) then equal the single-process numbers.
    """

    def __init__(self, dataset: Sized, *, num_replicas: int | None = None, rank: int | None = None) -> None:
        num_replicas, rank = process_group_layout(num_replicas, rank)
        if num_replicas > 1 and len(dataset) < num_replicas:
            # A process without a single batch would skip the epoch-end metric sync that the
            # others wait in: refuse here instead of hanging there.
            raise ConfigurationError(
                f"the evaluation split has {len(dataset)} samples, fewer than the {num_replicas} "
                "processes; evaluate it with fewer devices"
            )
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = self.shares()[rank]
        self.total_size = len(dataset)

    def shares(self) -> list[int]:
        """The samples each process takes, by rank (they differ by at most one)."""
        return [len(range(rank, len(self.dataset), self.num_replicas)) for rank in range(self.num_replicas)]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))


def _read_errors_handed_over(batches: Iterator[Any], loader: Any) -> Iterator[Any]:
    """``batches``, with a batch that raised ``SampleReadError`` as an :class:`UnreadableBatch`
    while ``loader.hand_over_read_errors`` is set. (A ``DataLoader``'s iterator goes on after
    an error, with its workers or without.)"""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except SampleReadError as error:
            if not loader.hand_over_read_errors:
                raise
            batch = UnreadableBatch(error)
        yield batch


class UnreadableBatch:
    """What :class:`ResumableDataLoader` and :class:`EvaluationDataLoader` hand over, with
    ``hand_over_read_errors``, in place of a batch that could not be read: the
    ``SampleReadError`` (naming the sample, its file and row), to be raised once the processes
    have saved their state (``callbacks.DataErrorCheckpoint``)."""

    def __init__(self, error: SampleReadError) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"UnreadableBatch({self.error!r})"


class ResumableDataLoader(_StopSignalsShieldedLoader):
    """A ``DataLoader`` over a :class:`ResumableDistributedSampler` whose position survives a checkpoint.

    It counts the batches it has handed out in the current iteration; :meth:`state_dict`
    turns that into the sampler's resume position. Lightning saves it under
    ``loops.fit_loop.state_dict.combined_loader``, and ``callbacks.ExactResume`` under its own
    state; :meth:`load_state_dict` is called before the resumed epoch's first batch (by
    ``ExactResume`` where Lightning drops the state, Lightning-AI/pytorch-lightning#20550).
    Iteration is lazy (nothing is read before the first ``next``), so a state loaded after
    ``iter()`` but before the first batch still applies.

    Worker seeds come from the loader's own generator (seeded from the sampler's seed)
    instead of the global RNG, so iterating does not shift the global random stream that a
    resumed run restores.

    With ``hand_over_read_errors`` (set by ``callbacks.DataErrorCheckpoint``), a batch whose
    samples cannot be read (``SampleReadError``, raised in the loader or in a worker) is handed
    to the loop as an :class:`UnreadableBatch` instead of raising there. The training loop can
    then :meth:`give_back_last_batch` on every process and save at a clean point, before the
    batch: the resumed run starts with it.
    """

    def __init__(self, dataset: Any, *, sampler: ResumableDistributedSampler, **kwargs: Any) -> None:
        if not isinstance(sampler, ResumableDistributedSampler):
            raise TypeError(f"ResumableDataLoader needs a ResumableDistributedSampler, got {type(sampler).__name__}")
        if kwargs.get("generator") is None:
            generator = torch.Generator()
            generator.manual_seed(sampler.seed)
            kwargs["generator"] = generator
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._batches_handed_out = 0
        self.hand_over_read_errors = False

    def __iter__(self) -> Iterator[Any]:
        return self._counting_iterator()

    def _counting_iterator(self) -> Iterator[Any]:
        self._batches_handed_out = 0
        for batch in _read_errors_handed_over(super().__iter__(), self):
            # Counted before the hand-over: once the loop holds the batch, it is consumed.
            self._batches_handed_out += 1
            yield batch

    def give_back_last_batch(self) -> None:
        """Count the last batch handed out as not consumed: a state saved now resumes with it."""
        if self._batches_handed_out < 1:
            raise RuntimeError("no batch of this iteration has been handed out to give back")
        self._batches_handed_out -= 1

    def state_dict(self) -> dict[str, Any]:
        """The sampler's resume state, counting the samples of the batches handed out so far."""
        assert self.batch_size is not None  # a sampler-driven loader always batches
        return {"sampler": self.sampler.state_dict(consumed=self._batches_handed_out * self.batch_size)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the sampler; the next iteration yields the rest of the saved epoch."""
        self.sampler.load_state_dict(state["sampler"])
        self._batches_handed_out = 0

    def batches_to_come(self) -> int:
        """The batches the next iteration yields to this process: the rest of a restored
        epoch (from the sampler's position, in this run's layout of processes), else an epoch."""
        assert self.batch_size is not None
        sampler = self.sampler
        samples = len(sampler._remaining_global(sampler.position)[sampler.rank :: sampler.num_replicas])
        return samples // self.batch_size if self.drop_last else math.ceil(samples / self.batch_size)
