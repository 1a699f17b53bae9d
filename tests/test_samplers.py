"""Training/evaluation samplers: DistributedSampler-equivalent order, exact mid-epoch resume."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from lightning_gsf.data.errors import ConfigurationError, ResumeMismatchError
from lightning_gsf.data.samplers import (
    EvaluationDataLoader,
    _new_workers_ignore_stop_signals,
    ResumableDataLoader,
    ResumableDistributedSampler,
    UnpaddedDistributedSampler,
)


class Indices(torch.utils.data.Dataset):
    """A dataset whose item is its own index."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index


@pytest.mark.parametrize("size", [1, 7, 10, 13])
@pytest.mark.parametrize("num_replicas", [1, 2, 3, 8])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_fresh_epoch_order_equals_distributed_sampler(size, num_replicas, shuffle, drop_last):
    for rank in range(num_replicas):
        ours = ResumableDistributedSampler(
            Indices(size), shuffle=shuffle, seed=5, drop_last=drop_last, num_replicas=num_replicas, rank=rank
        )
        reference = DistributedSampler(
            Indices(size), shuffle=shuffle, seed=5, drop_last=drop_last, num_replicas=num_replicas, rank=rank
        )
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            reference.set_epoch(epoch)
            assert list(ours) == list(reference)
            assert len(ours) == len(reference)


def test_epochs_and_seeds_change_the_order():
    sampler = ResumableDistributedSampler(Indices(50), seed=0, num_replicas=1, rank=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(ResumableDistributedSampler(Indices(50), seed=1, num_replicas=1, rank=0)) != first


def _consume(loaders, num_batches):
    """Take ``num_batches`` batches from each rank's loader; returns the items per rank and the iterators."""
    iterators = [iter(loader) for loader in loaders]
    taken = [[int(i) for _ in range(num_batches) for i in next(it)] for it in iterators]
    return taken, iterators


def _loaders(size, num_replicas, batch_size, num_workers=0, seed=3):
    return [
        ResumableDataLoader(
            Indices(size),
            sampler=ResumableDistributedSampler(Indices(size), seed=seed, num_replicas=num_replicas, rank=rank),
            batch_size=batch_size,
            num_workers=num_workers,
        )
        for rank in range(num_replicas)
    ]


@pytest.mark.parametrize(("size", "num_replicas", "batch_size"), [(13, 1, 2), (13, 2, 2), (20, 4, 1), (17, 3, 2)])
def test_mid_epoch_resume_yields_exactly_the_rest_of_the_epoch(size, num_replicas, batch_size):
    epoch = 2
    uninterrupted = _loaders(size, num_replicas, batch_size)
    for loader in uninterrupted:
        loader.sampler.set_epoch(epoch)
    full = [[int(i) for batch in loader for i in batch] for loader in uninterrupted]

    interrupted = _loaders(size, num_replicas, batch_size)
    for loader in interrupted:
        loader.sampler.set_epoch(epoch)
    before, _ = _consume(interrupted, num_batches=2)
    states = [loader.state_dict() for loader in interrupted]

    resumed = _loaders(size, num_replicas, batch_size)
    for loader, state in zip(resumed, states):
        loader.load_state_dict(state)
        loader.sampler.set_epoch(epoch)  # what Lightning does at the start of the resumed epoch
        # (a checkpoint before the first batch, a second stop during start-up, keeps the position)
        assert loader.state_dict()["sampler"] == state["sampler"]
    after = [[int(i) for batch in loader for i in batch] for loader in resumed]
    assert [b + a for b, a in zip(before, after)] == full
    # The restored position applies once: iterated again in the same epoch, a whole epoch.
    assert [[int(i) for batch in loader for i in batch] for loader in resumed] == full
    # The following epoch is a whole, fresh one again.
    for loader, reference in zip(resumed, uninterrupted):
        loader.sampler.set_epoch(epoch + 1)
        reference.sampler.set_epoch(epoch + 1)
        assert [int(i) for b in loader for i in b] == [int(i) for b in reference for i in b]


def test_resume_counts_batches_handed_out_not_indices_prefetched_by_workers():
    (loader,) = _loaders(24, num_replicas=1, batch_size=2, num_workers=2)
    full = [int(i) for batch in _loaders(24, 1, 2)[0] for i in batch]
    iterator = iter(loader)
    seen = [int(i) for _ in range(3) for i in next(iterator)]
    state = loader.state_dict()
    assert state["sampler"]["position"] == 6
    del iterator
    (resumed,) = _loaders(24, num_replicas=1, batch_size=2, num_workers=2)
    resumed.load_state_dict(state)
    assert seen + [int(i) for batch in resumed for i in batch] == full


def test_repeated_resumes_within_one_epoch_stay_aligned():
    full = [int(i) for batch in _loaders(30, 1, 3)[0] for i in batch]
    seen: list[int] = []
    state = None
    for _ in range(3):
        (loader,) = _loaders(30, 1, 3)
        if state is not None:
            loader.load_state_dict(state)
        taken, _ = _consume([loader], num_batches=2)
        seen += taken[0]
        state = loader.state_dict()
    (loader,) = _loaders(30, 1, 3)
    loader.load_state_dict(state)
    assert seen + [int(i) for batch in loader for i in batch] == full


def test_resume_on_a_different_number_of_processes_covers_the_rest_once():
    size = 40
    assert _loaders(size, 4, 2)[0].state_dict()["sampler"]["position"] == 0  # nothing handed out yet
    loaders = _loaders(size, num_replicas=4, batch_size=2)
    taken, _ = _consume(loaders, num_batches=3)
    state = loaders[0].state_dict()
    assert state["sampler"]["position"] == 24
    resumed = _loaders(size, num_replicas=2, batch_size=2)
    for loader in resumed:
        loader.load_state_dict(state)
    rest = [int(i) for loader in resumed for batch in loader for i in batch]
    assert sorted(list(itertools.chain(*taken)) + rest) == list(range(size))


@pytest.mark.parametrize(("key", "value"), [("seed", 99), ("dataset_size", 11), ("shuffle", False)])
def test_resume_with_changed_sampler_settings_names_the_difference(key, value):
    """Mid-epoch, a changed seed, dataset or shuffling cannot continue the saved order: the
    resumed iteration says which; a new epoch (an end-of-epoch checkpoint) starts afresh."""
    (loader,) = _loaders(12, 1, 2)
    _consume([loader], num_batches=2)
    state = loader.state_dict()
    state["sampler"][key] = value
    (resumed,) = _loaders(12, 1, 2)
    resumed.load_state_dict(state)
    with pytest.raises(ResumeMismatchError, match=f"cannot resume the training order mid-epoch.*{key}: checkpoint"):
        next(iter(resumed))
    (next_epoch,) = _loaders(12, 1, 2)
    next_epoch.load_state_dict(state)
    next_epoch.sampler.set_epoch(state["sampler"]["epoch"] + 1)
    assert sorted(int(i) for batch in next_epoch for i in batch) == list(range(12))


@pytest.mark.parametrize(("size", "num_replicas"), [(7, 2), (5, 3), (4, 4), (9, 1)])
def test_unpadded_sampler_scores_every_sample_exactly_once(size, num_replicas):
    samplers = [UnpaddedDistributedSampler(Indices(size), num_replicas=num_replicas, rank=r)
                for r in range(num_replicas)]  # fmt: skip
    shares = [list(sampler) for sampler in samplers]
    assert sorted(itertools.chain(*shares)) == list(range(size))
    assert [len(sampler) for sampler in samplers] == [len(share) for share in shares]


@pytest.mark.parametrize("size", [1, 2, 3])
def test_unpadded_sampler_refuses_processes_without_samples(size):
    # A process with no batch would skip the epoch-end metric sync and hang the others.
    with pytest.raises(ConfigurationError, match=f"{size} samples, fewer than the 4 processes"):  # (gsf: one line)
        UnpaddedDistributedSampler(Indices(size), num_replicas=4, rank=0)
    assert len(UnpaddedDistributedSampler(Indices(4), num_replicas=4, rank=3)) == 1


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("resumed_at", [0, 2])
def test_batches_to_come_are_the_batches_the_next_iteration_yields(drop_last, resumed_at):
    """13 samples in batches of 4: 3 batches with drop_last, 4 without; after 2 batches, the rest."""
    def loader():
        return ResumableDataLoader(Indices(13), sampler=ResumableDistributedSampler(Indices(13), seed=3),
                                   batch_size=4, drop_last=drop_last)

    first = loader()
    iterator = iter(first)
    for _ in range(resumed_at):
        next(iterator)
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    expected = resumed.batches_to_come()
    assert expected == len(list(resumed)) == (3 if drop_last else 4) - resumed_at


def test_samplers_default_to_one_process_without_a_process_group():
    assert (ResumableDistributedSampler(Indices(4)).num_replicas, UnpaddedDistributedSampler(Indices(4)).rank) == (1, 0)
    with pytest.raises(ValueError, match="rank 2 of 2"):
        ResumableDistributedSampler(Indices(4), num_replicas=2, rank=2)


def test_iterating_the_loader_leaves_the_global_rng_alone():
    (loader,) = _loaders(8, 1, 2)
    before = torch.get_rng_state()
    list(loader)
    assert torch.equal(torch.get_rng_state(), before)


def test_the_epoch_reaches_a_dataset_that_seeds_by_epoch():
    class EpochAware(Indices):
        epoch = -1

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

    dataset = EpochAware(6)
    sampler = ResumableDistributedSampler(dataset, num_replicas=1, rank=0)
    sampler.set_epoch(4)
    assert dataset.epoch == 4
    sampler.load_state_dict({**sampler.state_dict(), "epoch": 7})
    assert dataset.epoch == 7


class StopSignalSetting(Indices):
    """Item: whether the process that reads it ignores SIGINT and SIGTERM."""

    def __getitem__(self, index: int) -> bool:
        return all(signal.getsignal(signum) is signal.SIG_IGN for signum in (signal.SIGINT, signal.SIGTERM))


_initialised_worker = None


def _note_worker(worker_id: int) -> None:
    """A loader's own ``worker_init_fn``: notes its call in the worker process."""
    global _initialised_worker
    _initialised_worker = worker_id


class WorkerInitialisation(Indices):
    """Item: the ``worker_id`` that :func:`_note_worker` received in this process, or -1."""

    def __getitem__(self, index: int) -> int:
        return -1 if _initialised_worker is None else _initialised_worker


class SignalWhileWorkersStart(ResumableDistributedSampler):
    """Sends this process ``signum`` as the loader starts its workers (it asks for its first
    indices then, before handing the iteration over): a Ctrl-C or SIGTERM in that instant."""

    def __init__(self, dataset: Indices, signum: int) -> None:
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=False)
        self.signum = signum

    def __iter__(self) -> Iterator[int]:
        os.kill(os.getpid(), self.signum)
        return super().__iter__()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("loader_class", [ResumableDataLoader, EvaluationDataLoader])
def test_a_stop_signal_while_the_workers_start_reaches_the_main_process_once(loader_class, signum):
    """The main process's handler is called for it (not lost while the workers start, nor
    run by a forked worker), once, and the workers, which ignore it, read every batch."""
    calls = []

    def handler(signum, frame):
        calls.append((signum, os.getpid()))

    dataset = StopSignalSetting(4)
    previous = signal.signal(signum, handler)
    try:
        batches = list(loader_class(dataset, sampler=SignalWhileWorkersStart(dataset, signum), batch_size=1,
                                    num_workers=2))  # fmt: skip
        time.sleep(0.1)  # (a signal taken by another thread reaches the main thread's handler in this time)
    finally:
        signal.signal(signum, previous)
    assert calls == [(signum, os.getpid())]
    assert [bool(batch) for batch in batches] == [True] * 4


class StuckAfterTheFirst(Indices):
    """Item 0 is read; any other never is (its worker sleeps on, ignoring SIGTERM as all do)."""

    def __getitem__(self, index: int) -> int:
        while index:
            time.sleep(1)
        return index


@pytest.mark.slow
def test_a_worker_stuck_in_a_read_does_not_outlive_its_loader():
    """PyTorch ends workers with a sentinel, then SIGTERM, which these ignore: one stuck in a
    read is killed when the iteration shuts down (after PyTorch's two 5-second waits)."""
    loader = EvaluationDataLoader(StuckAfterTheFirst(4), batch_size=1, num_workers=1)
    with _new_workers_ignore_stop_signals(loader):  # (PyTorch's iterator, as the loader's own starts it)
        iterator = loader._get_iterator()
    assert int(next(iterator)) == 0
    workers = list(iterator._workers)
    iterator._shutdown_workers()
    alive = [worker.is_alive() for worker in workers]
    for worker in workers:  # (a failing test must not hang at exit: Python's own exit would wait for the worker)
        worker.kill()
    assert alive == [False]


@pytest.mark.parametrize("loader_class", [ResumableDataLoader, EvaluationDataLoader])
def test_a_process_that_fails_while_its_workers_read_exits(tmp_path, loader_class):
    """An error that ends the program mid-iteration leaves the loader's workers alive; at exit
    ``multiprocessing`` sends them SIGTERM, which they ignore, and waits for them: the loader
    must shut them down before that, or the program never exits."""
    script = tmp_path / "fails_mid_iteration.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, sys.argv[1])
        from lightning_gsf.data.samplers import {loader_class.__name__}, ResumableDistributedSampler
        from test_samplers import Indices

        dataset = Indices(8)
        sampler = ResumableDistributedSampler(dataset, num_replicas=1, rank=0)
        batches = iter({loader_class.__name__}(dataset, sampler=sampler, batch_size=1, num_workers=2))
        next(batches)
        raise RuntimeError("a bug in the training step")
    """))
    result = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)], capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 1 and "a bug in the training step" in result.stderr, result.stderr


@pytest.mark.slow
@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no fork server here")
def test_forkserver_workers_ignore_stop_signals_though_the_server_started_with_pythons_handlers(tmp_path):
    """A fork server started before the loader (by another library, or by an earlier loader
    outside ``gsf``) hands its own SIGINT handler to every worker it forks: the workers must
    still ignore SIGINT and SIGTERM. (In a fresh process, so that this test's server is the first.)"""
    script = tmp_path / "forkserver_workers.py"
    script.write_text(textwrap.dedent("""
        import signal, sys
        from multiprocessing import forkserver
        from lightning_gsf.data.samplers import EvaluationDataLoader, ResumableDataLoader, ResumableDistributedSampler

        if __name__ == "__main__":  # (the fork server imports this module)
            sys.path.insert(0, sys.argv[1])
            from test_samplers import StopSignalSetting

            signal.signal(signal.SIGINT, signal.default_int_handler)  # (as a terminal's command has it)
            forkserver.ensure_running()
            dataset = StopSignalSetting(4)
            options = {"batch_size": 1, "num_workers": 2, "multiprocessing_context": "forkserver"}
            sampler = ResumableDistributedSampler(dataset, num_replicas=1, rank=0)
            for loader in (ResumableDataLoader(dataset, sampler=sampler, **options),
                           EvaluationDataLoader(dataset, **options)):
                print([bool(batch) for batch in loader])
    """))
    result = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)], capture_output=True,
                            text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[True, True, True, True]"] * 2, result.stdout


@pytest.mark.parametrize("loader_class", [ResumableDataLoader, EvaluationDataLoader])
@pytest.mark.parametrize("context", ["fork", pytest.param("forkserver", marks=pytest.mark.slow),
                                     pytest.param("spawn", marks=pytest.mark.slow)])
def test_loader_workers_ignore_stop_signals_and_the_main_process_keeps_its_handlers(loader_class, context):
    """A Ctrl-C in the terminal (SLURM's SIGTERM) reaches the workers too; they must go on
    reading for the training's clean stop (callbacks.PreemptionCheckpoint), whatever handlers
    the main process has."""

    def handler(signum, frame):  # (as PreemptionCheckpoint's, which forked workers would inherit)
        raise AssertionError("not to be called")

    dataset = StopSignalSetting(4)
    options = {"batch_size": 1, "num_workers": 2, "multiprocessing_context": context}
    if loader_class is ResumableDataLoader:
        options["sampler"] = ResumableDistributedSampler(dataset, num_replicas=1, rank=0)
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        batches = list(loader_class(dataset, **options))
        assert signal.getsignal(signal.SIGINT) is signal.getsignal(signal.SIGTERM) is handler
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
    assert [bool(batch) for batch in batches] == [True] * 4
    options.update(num_workers=0, multiprocessing_context=None)
    assert not any(list(loader_class(dataset, **options)))  # (no workers: the main process, untouched)

    # The loader's own worker_init_fn (Lightning's, with seed_everything(workers=True)) still runs.
    dataset = WorkerInitialisation(4)
    options.update(num_workers=2, multiprocessing_context=context, worker_init_fn=_note_worker)
    if loader_class is ResumableDataLoader:
        options["sampler"] = ResumableDistributedSampler(dataset, num_replicas=1, rank=0)
    loader = loader_class(dataset, **options)
    assert sorted(set(int(batch) for batch in loader)) == [0, 1]
    assert loader.worker_init_fn is _note_worker
