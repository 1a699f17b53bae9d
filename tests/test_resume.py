"""Preemption and exact resumption with real processes.

A training process is stopped with a real SIGTERM (or a Ctrl-C) in the middle of an epoch. It
must save a checkpoint (``PreemptionCheckpoint``), and training resumed from it must end with the same
weights as an uninterrupted run of the same length: the loader continues with exactly the
remaining samples (``ResumableDataLoader``), dropout draws the same numbers (``ExactResume``),
and the optimiser, the schedule and the loops continue where they were (Lightning). A sample
that cannot be read, in training or in validation, must likewise leave a checkpoint
(``DataErrorCheckpoint``) from which the run, once the data reads again, ends the same.

This file is also the training script the tests run (``python tests/test_resume.py ...``): a
small model with dropout, batch norm, momentum SGD and a per-step schedule computed from
``trainer.estimated_stepping_batches`` (the case in which Lightning drops a loader's saved
state, Lightning-AI/pytorch-lightning#20550).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.connectors.signal_connector import _HandlersCompose
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn
from torch.utils.data import Dataset

from lightning_gsf.callbacks import (
    AtomicCheckpointIO,
    DataErrorCheckpoint,
    ExactResume,
    PreemptionCheckpoint,
)
from lightning_gsf.callbacks.exact_resume import _count_batches_in_this_layout
from lightning_gsf.callbacks.stopping import restart_validation_on_resume
from lightning_gsf.cli import EXIT_STOPPED_BY_CTRL_C, EXIT_STOPPED_BY_SIGTERM
from lightning_gsf.data.errors import SampleReadError
from lightning_gsf.data.samplers import (
    EvaluationDataLoader,
    ResumableDataLoader,
    ResumableDistributedSampler,
    UnpaddedDistributedSampler,
    UnreadableBatch,
)
from lightning_gsf.fit_loop import install_step_limited_resume
from lightning_gsf.gloo_exit import release_gloo_workers_at_exit

SCRIPT = Path(__file__).resolve()
DATASET_SIZE, BATCH_SIZE = 23, 4
# One process: 6 steps per epoch, the last one short (3 samples): odd sizes are where off-by-ones hide.


class FixedVectors(Dataset):
    """Item ``i`` is a fixed random vector and a label, both a function of ``i`` only; with
    ``unreadable=(epoch, index)``, that item cannot be read in that epoch; reading an item
    takes ``seconds_per_item``."""

    def __init__(self, size: int = DATASET_SIZE, unreadable: tuple[int, int] | None = None,
                 seconds_per_item: float = 0.0) -> None:
        generator = torch.Generator().manual_seed(1234)
        self.inputs = torch.randn(size, 6, generator=generator)
        self.labels = (self.inputs.sum(dim=1) > 0).long()
        self.unreadable = unreadable
        self.seconds_per_item = seconds_per_item
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # (called by the sampler, in the workers' copies too)
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        if (self.epoch, index) == self.unreadable:
            raise SampleReadError(f"sample {index} (vectors.csv, line {index + 2}): cannot be read")
        time.sleep(self.seconds_per_item)
        return self.inputs[index], self.labels[index], index


class DropoutNet(pl.LightningModule):
    def __init__(self, unreadable: tuple[int, int] | None = None, num_workers: int = 0,
                 seconds_per_item: float = 0.0, multiprocessing_context: str | None = None) -> None:
        super().__init__()
        self.unreadable, self.num_workers, self.seconds_per_item = unreadable, num_workers, seconds_per_item
        self.multiprocessing_context = multiprocessing_context
        self.net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))
        self.seen: list[int] = []
        self.validated: list[tuple[int, int]] = []  # (epoch, batch) of every validation batch

    def training_step(self, batch, batch_idx):
        inputs, labels, indices = batch
        self.seen += indices.tolist()
        return nn.functional.cross_entropy(self.net(inputs), labels)

    def train_dataloader(self):
        dataset = FixedVectors(unreadable=self.unreadable, seconds_per_item=self.seconds_per_item)
        return ResumableDataLoader(dataset, sampler=ResumableDistributedSampler(dataset, seed=7), batch_size=BATCH_SIZE,
                                   num_workers=self.num_workers, multiprocessing_context=self.multiprocessing_context)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        total = self.trainer.estimated_stepping_batches
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / (total + 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class ValidatedDropoutNet(DropoutNet):
    """The same with a validation set, scored after every epoch."""

    def __init__(self, unreadable: tuple[int, int] | None = None, num_workers: int = 0,
                 unreadable_in_validation: tuple[int, int] | None = None) -> None:
        super().__init__(unreadable, num_workers)
        self.unreadable_in_validation = unreadable_in_validation

    def validation_step(self, batch, batch_idx):
        if isinstance(batch, UnreadableBatch):  # (as the real module does)
            return
        inputs, labels, _ = batch
        if not self.trainer.sanity_checking:
            self.validated.append((self.current_epoch, batch_idx))
        # (synchronised across processes at the epoch's end, as the real module's metrics are)
        self.log("val_loss", nn.functional.cross_entropy(self.net(inputs), labels), sync_dist=True)

    def on_validation_epoch_start(self):
        self.trainer.val_dataloaders.dataset.set_epoch(self.current_epoch)

    def val_dataloader(self):
        # As the data modules evaluate: unpadded, so that under DDP rank 0 has 5 samples (2
        # batches) and rank 1 has 4 (1 batch).
        dataset = FixedVectors(9, unreadable=self.unreadable_in_validation)
        return EvaluationDataLoader(dataset, batch_size=BATCH_SIZE, sampler=UnpaddedDistributedSampler(dataset))


class WaitForSignalAt(pl.Callback):
    """At ``step``, announce it in ``ready_file`` and wait for the parent's SIGTERM (or Ctrl-C);
    with ``wait``, just announce it; with ``then_another``, once the signal has come, announce
    that in ``<ready_file>.2`` and wait a minute (for a second Ctrl-C)."""

    def __init__(self, step: int, ready_file: Path, wait: bool = True, then_another: bool = False,
                 rank: int | None = None) -> None:
        self.step, self.ready_file, self.wait, self.then_another = step, Path(ready_file), wait, then_another
        self.rank = rank

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self.step or self.rank not in (None, trainer.global_rank):
            return
        self.ready_file.write_text(str(os.getpid()))
        if self.wait:
            _wait_for_the_signal(trainer, self.ready_file)
        if self.then_another and trainer.received_sigterm:
            Path(f"{self.ready_file}.2").write_text(str(os.getpid()))
            time.sleep(60)


class WaitForSignalInValidation(pl.Callback):
    """After validation batch ``batch`` of epoch ``epoch``, announce it and wait for the SIGTERM."""

    def __init__(self, epoch: int, batch: int, ready_file: Path) -> None:
        self.epoch, self.batch, self.ready_file = epoch, batch, ready_file

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking or (trainer.current_epoch, batch_idx) != (self.epoch, self.batch):
            return
        if trainer.is_global_zero:  # (under DDP the other ranks wait too)
            self.ready_file.write_text(str(os.getpid()))
        _wait_for_the_signal(trainer, self.ready_file)


def _wait_for_the_signal(trainer: pl.Trainer, ready_file: Path) -> None:
    """Wait (a minute at most) until the test has sent its signal (``<ready_file>.sent``), which
    Python has handled by the time this wait next looks, or Lightning's flag says it came."""
    sent = Path(f"{ready_file}.sent")
    deadline = time.monotonic() + 60
    while not (sent.exists() or trainer.received_sigterm) and time.monotonic() < deadline:
        time.sleep(0.01)


class SaveFinalWeights(pl.Callback):
    """Write the weights at the end of training to ``path`` (independent of any checkpoint policy)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            torch.save({"state_dict": pl_module.state_dict(), "step": trainer.global_step}, self.path)


def train(args: argparse.Namespace) -> None:
    pl.seed_everything(0, workers=True)
    callbacks: list[pl.Callback] = []  # (the waits first: the signal arrives before the other hooks run)
    if args.wait_at_step is not None:
        callbacks.append(WaitForSignalAt(args.wait_at_step, Path(args.ready_file), then_another=args.then_another,
                                         rank=args.wait_rank))
    if args.announce_step is not None:
        callbacks.append(WaitForSignalAt(args.announce_step, Path(args.ready_file), wait=False))
    if args.wait_in_validation is not None:
        callbacks.append(WaitForSignalInValidation(*args.wait_in_validation, Path(args.ready_file)))
    callbacks += [PreemptionCheckpoint(), DataErrorCheckpoint(), ExactResume()]
    trainer = pl.Trainer(
        default_root_dir=args.root,
        max_epochs=args.max_epochs,
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        deterministic=True,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    unreadable = None if args.unreadable is None else tuple(args.unreadable)
    if args.validate:
        in_validation = None if args.unreadable_in_validation is None else tuple(args.unreadable_in_validation)
        model = ValidatedDropoutNet(unreadable, args.num_workers, in_validation)
    else:
        model = DropoutNet(unreadable, args.num_workers, args.seconds_per_item, args.multiprocessing_context)
    trainer.fit(model, ckpt_path=args.ckpt_path)
    torch.save(model.seen, f"{args.out}.seen{trainer.global_rank}")  # (every rank's samples)
    if trainer.is_global_zero:
        torch.save({"state_dict": model.state_dict(), "seen": model.seen, "step": trainer.global_step,
                    "validated": model.validated}, args.out)


def _run(tmp_path: Path, name: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, str(SCRIPT), "--root", str(tmp_path / name), "--out", str(tmp_path / f"{name}.pt")]
    command += extra
    # (a session of its own, so that a run that hangs is killed with the processes it started)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_sigint_as_in_a_terminal)


def _sigint_as_in_a_terminal() -> None:
    """(In the child, before it starts.) SIGINT's default action, as a command started from a
    terminal has it: a test run started in the background (``cmd &`` in a script) ignores
    SIGINT, and a Python started so keeps ignoring it, with no Ctrl-C handler to test."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def sigint_as_in_a_terminal():
    """Python's own SIGINT handler in this process for the test (see :func:`_sigint_as_in_a_terminal`)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _finish(process: subprocess.Popen, timeout: float = 120, returncode: int = 0) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # (the run and the DDP processes it started)
        output, _ = process.communicate()
        raise AssertionError(f"the run did not finish within {timeout} s:\n{output}") from None
    assert process.returncode == returncode, output
    return output


@pytest.mark.parametrize(
    ("stop_at_step", "devices", "signalled"),
    [
        (8, 1, "rank 0"),  # in the middle of the second epoch, after a whole one
        pytest.param(2, 1, "rank 0", marks=pytest.mark.slow),  # in the first epoch
        # DDP, two CPU processes, second epoch. Rank 1 alone, or every process (as SLURM signals
        # a job step), while rank 1 lags behind rank 0 (Lightning's own handling let rank 0 go on
        # into the next batch's collectives): before the processes agreed on the signal at the
        # end of each batch, both hung.
        pytest.param(4, 2, "rank 0", marks=pytest.mark.slow),
        pytest.param(4, 2, "rank 1", marks=pytest.mark.slow),
        pytest.param(4, 2, "every process", marks=pytest.mark.slow),
    ],
)
def test_sigterm_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path, stop_at_step, devices, signalled):
    run_options = ["--max-epochs", "2", "--devices", str(devices)]
    samples_per_rank = math.ceil(DATASET_SIZE / devices)  # the sampler pads to equal shares
    steps_per_epoch = math.ceil(samples_per_rank / BATCH_SIZE)
    reference = _run(tmp_path, "reference", *run_options)

    ready = tmp_path / "ready"
    waiting = [] if signalled == "rank 0" else ["--wait-rank", "1"]  # (rank 0: every rank waits at the step)
    preempted = _run(
        tmp_path, "preempted", *run_options, "--wait-at-step", str(stop_at_step), "--ready-file", str(ready), *waiting
    )
    output = _stop_when_ready(preempted, ready, to_process_in_ready=signalled == "rank 1",
                              to_process_group=signalled == "every process")
    checkpoint_path = tmp_path / "preempted" / "checkpoints" / "last.ckpt"
    assert checkpoint_path.is_file(), output
    assert not (tmp_path / "preempted.pt").exists(), "the preempted run must stop, not finish"
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    assert checkpoint["global_step"] == stop_at_step
    loader_state = checkpoint["callbacks"]["ExactResume"]["train_loader"]["sampler"]
    epoch, steps_into_epoch = divmod(stop_at_step, steps_per_epoch)
    assert (loader_state["epoch"], loader_state["position"]) == (epoch, BATCH_SIZE * devices * steps_into_epoch)
    assert len(checkpoint["callbacks"]["ExactResume"]["random_state_per_rank"]) == devices

    resumed = _run(tmp_path, "preempted", *run_options, "--ckpt-path", str(checkpoint_path))
    _finish(resumed)
    _finish(reference)

    expected = torch.load(tmp_path / "reference.pt", weights_only=True)
    actual = torch.load(tmp_path / "preempted.pt", weights_only=True)
    assert actual["step"] == expected["step"] == 2 * steps_per_epoch
    # After the resume, rank 0 saw exactly the samples it saw after the stop in the reference.
    seen_before_stop = samples_per_rank * epoch + BATCH_SIZE * steps_into_epoch
    assert actual["seen"] == expected["seen"][seen_before_stop:]
    for name, tensor in expected["state_dict"].items():
        torch.testing.assert_close(actual["state_dict"][name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    ("devices", "num_workers"),
    [
        (1, 0),
        pytest.param(1, 2, marks=pytest.mark.slow),  # the error raised in a worker process
        pytest.param(2, 0, marks=pytest.mark.slow),  # DDP: only rank 1's batch is unreadable
    ],
)
def test_unreadable_sample_saves_the_state_before_its_batch_and_the_mended_run_resumes_exactly(
        tmp_path, devices, num_workers):
    """A sample that cannot be read in the second epoch stops the run with its error (naming it)
    after a checkpoint of the state before its batch, on every process; resumed once the data
    reads again, the run ends with the weights of an uninterrupted one."""
    run_options = ["--max-epochs", "2", "--devices", str(devices), "--num-workers", str(num_workers)]
    samples_per_rank = math.ceil(DATASET_SIZE / devices)
    steps_per_epoch = math.ceil(samples_per_rank / BATCH_SIZE)
    reference = _run(tmp_path, "reference", *run_options)

    position = 2 * BATCH_SIZE * devices + devices - 1  # epoch 1's third batch, on the last rank
    sampler = ResumableDistributedSampler(FixedVectors(), seed=7, num_replicas=1, rank=0)
    sampler.set_epoch(1)
    bad = sampler.epoch_order()[position]
    failed = _finish(_run(tmp_path, "failed", *run_options, "--unreadable", "1", str(bad)), returncode=1)
    assert f"sample {bad} (vectors.csv, line {bad + 2}): cannot be read" in failed
    if devices > 1:  # (rank 0 read its batch, and says whose failed)
        assert "another process could not read its training batch" in failed and "rank 1: " in failed
    saved_at = steps_per_epoch + 2
    checkpoint_path = tmp_path / "failed" / "checkpoints" / "last.ckpt"
    assert f"saved a checkpoint at epoch 1, step {saved_at} to {checkpoint_path}" in failed
    assert not (tmp_path / "failed.pt").exists()
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    assert checkpoint["global_step"] == saved_at
    loader_state = checkpoint["callbacks"]["ExactResume"]["train_loader"]["sampler"]
    assert (loader_state["epoch"], loader_state["position"]) == (1, 2 * BATCH_SIZE * devices)

    _finish(_run(tmp_path, "failed", *run_options, "--ckpt-path", str(checkpoint_path)))
    _finish(reference)
    expected = torch.load(tmp_path / "reference.pt", weights_only=True)
    actual = torch.load(tmp_path / "failed.pt", weights_only=True)
    assert actual["step"] == expected["step"] == 2 * steps_per_epoch
    assert actual["seen"] == expected["seen"][samples_per_rank + 2 * BATCH_SIZE:]
    for name, tensor in expected["state_dict"].items():
        torch.testing.assert_close(actual["state_dict"][name], tensor, rtol=0, atol=1e-6, msg=name)


def test_resumed_mid_epoch_on_more_processes_the_epoch_trains_every_remaining_sample(tmp_path):
    """Stopped at step 2 of one process (8 of 23 samples), resumed on two: Lightning's restored
    count of batches is of the one process's shares; the epoch must still run to the end of the
    data, every remaining sample trained once (and one repeated to pad the shares)."""
    ready = tmp_path / "ready"
    preempted = _run(tmp_path, "preempted", "--max-epochs", "1", "--wait-at-step", "2", "--ready-file", str(ready))
    _stop_when_ready(preempted, ready)
    checkpoint_path = tmp_path / "preempted" / "checkpoints" / "last.ckpt"
    _finish(_run(tmp_path, "preempted", "--max-epochs", "1", "--devices", "2", "--ckpt-path", str(checkpoint_path)))
    seen = [torch.load(tmp_path / f"preempted.pt.seen{rank}", weights_only=True) for rank in (0, 1)]
    order = ResumableDistributedSampler(FixedVectors(), seed=7, num_replicas=1, rank=0).epoch_order()
    remaining = order[2 * BATCH_SIZE:]  # 15 samples, padded with the order's first to 16
    assert sorted(seen[0] + seen[1]) == sorted(remaining + order[:1])
    assert (seen[0], seen[1]) == ((remaining + order[:1])[0::2], (remaining + order[:1])[1::2])



@pytest.mark.slow
def test_resumed_mid_epoch_on_fewer_processes_trains_the_rest_then_whole_epochs(tmp_path):
    """Stopped at step 2 of two processes (16 of 23 samples), resumed on one: the epoch trains
    the 7 remaining samples once (2 batches; Lightning's restored count of 2 batches was of the
    two processes' shares, and becomes 4 of this layout's 6), then the next epoch every sample.
    (A count one too high ended the epoch after one batch.)"""
    ready = tmp_path / "ready"
    preempted = _run(tmp_path, "preempted", "--max-epochs", "2", "--devices", "2", "--wait-at-step", "2",
                     "--ready-file", str(ready))
    _stop_when_ready(preempted, ready)
    checkpoint_path = tmp_path / "preempted" / "checkpoints" / "last.ckpt"
    _finish(_run(tmp_path, "preempted", "--max-epochs", "2", "--ckpt-path", str(checkpoint_path)))
    actual = torch.load(tmp_path / "preempted.pt", weights_only=True)
    sampler = ResumableDistributedSampler(FixedVectors(), seed=7, num_replicas=1, rank=0)
    remaining = sampler.epoch_order()[2 * BATCH_SIZE * 2:]
    sampler.set_epoch(1)
    assert actual["seen"] == remaining + sampler.epoch_order()
    assert actual["step"] == 2 + math.ceil(len(remaining) / BATCH_SIZE) + math.ceil(DATASET_SIZE / BATCH_SIZE)

def _stop_when_ready(process: subprocess.Popen, ready: Path, timeout: float = 120, returncode: int = 0,
                     signum: int = signal.SIGTERM, to_process_group: bool = False,
                     to_process_in_ready: bool = False) -> str:
    """``signum`` to ``process`` (or to its process group, as a terminal's Ctrl-C or SLURM, or
    to the process whose pid is in ``ready``) once it has written ``ready``, then
    ``<ready>.sent``; its output once it has exited with ``returncode`` (``timeout`` seconds for
    each). (Lightning's own exit after a SIGTERM is status 0, ``gsf``'s 143; after a Ctrl-C that
    PreemptionCheckpoint took as a stop, both exit with 130.)"""
    _wait_for(process, ready, timeout)
    if to_process_group:
        os.killpg(process.pid, signum)  # (the process leads its session: see _run)
    elif to_process_in_ready:
        os.kill(int(ready.read_text()), signum)
    else:
        process.send_signal(signum)
    Path(f"{ready}.sent").write_text("")
    return _finish(process, timeout=timeout, returncode=returncode)


def _wait_for(process: subprocess.Popen, ready: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, f"the training process never wrote {ready.name}"
        time.sleep(0.05)


@pytest.mark.parametrize(("context", "devices"), [
    ("fork", 1),
    pytest.param("spawn", 1, marks=pytest.mark.slow),
    pytest.param("fork", 2, marks=pytest.mark.slow, id="fork-DDP"),
])
def test_ctrl_c_while_the_loader_workers_read_saves_and_the_run_resumes_exactly(tmp_path, context, devices):
    """A Ctrl-C from the terminal (SIGINT to the process group: the training processes and
    their two loader workers each) while the training waits for slow batches: the run finishes
    the batch, saves and stops; resumed, it ends with the uninterrupted run's weights.
    (Spawned workers that the Ctrl-C ended would fail the batch the stop still reads: no
    checkpoint; forked ones would inherit the training process's handler and announce the stop
    too. Under DDP every process stops at the same batch, rank 0's.)"""
    run_options = ["--max-epochs", "2", "--num-workers", "2", "--seconds-per-item", "0.1",
                   "--multiprocessing-context", context, "--devices", str(devices)]
    reference = _run(tmp_path, "reference", "--max-epochs", "2", "--devices", str(devices))  # (same samples)
    ready = tmp_path / "ready"
    stopped = _run(tmp_path, "stopped", *run_options, "--announce-step", "3", "--ready-file", str(ready))
    output = _stop_when_ready(stopped, ready, signum=signal.SIGINT, to_process_group=True,
                              returncode=EXIT_STOPPED_BY_CTRL_C)  # (Trainer.fit's exception: not 0)
    checkpoint_path = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    assert output.count("Ctrl-C: stopping after this batch") == devices, output  # (not the workers too)
    assert "Ctrl-C: saved a checkpoint at epoch" in output and checkpoint_path.is_file(), output
    assert not (tmp_path / "stopped.pt").exists(), "the stopped run must stop, not finish"
    stopped_at_step = torch.load(checkpoint_path, weights_only=True)["global_step"]
    samples_per_rank = math.ceil(DATASET_SIZE / devices)  # the sampler pads to equal shares
    steps_per_epoch = math.ceil(samples_per_rank / BATCH_SIZE)
    assert 3 <= stopped_at_step < 2 * steps_per_epoch

    _finish(_run(tmp_path, "stopped", *run_options, "--ckpt-path", str(checkpoint_path)))
    _finish(reference)
    expected = torch.load(tmp_path / "reference.pt", weights_only=True)
    actual = torch.load(tmp_path / "stopped.pt", weights_only=True)
    assert actual["step"] == expected["step"] == 2 * steps_per_epoch
    epoch, steps_into_epoch = divmod(stopped_at_step, steps_per_epoch)
    assert actual["seen"] == expected["seen"][epoch * samples_per_rank + steps_into_epoch * BATCH_SIZE :]
    for name, tensor in expected["state_dict"].items():
        torch.testing.assert_close(actual["state_dict"][name], tensor, rtol=0, atol=1e-6, msg=name)


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path):
    ready = tmp_path / "ready"
    process = _run(tmp_path, "stopped", "--max-epochs", "2", "--wait-at-step", "3", "--ready-file", str(ready),
                   "--then-another")
    _wait_for(process, ready, timeout=120)
    process.send_signal(signal.SIGINT)
    _wait_for(process, Path(f"{ready}.2"), timeout=120)  # (the first was taken as a stop after the batch)
    output = _stop_when_ready(process, ready, returncode=1, signum=signal.SIGINT)  # (Lightning's exit)
    assert "Ctrl-C: stopping after this batch" in output and "Detected KeyboardInterrupt" in output
    assert not (tmp_path / "stopped" / "checkpoints").exists(), output


class RecordSigintHandler(pl.Callback):
    """The SIGINT handler at the first training and validation batches of every fit."""

    def __init__(self) -> None:
        self.handlers: dict[str, object] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.handlers.setdefault("training", signal.getsignal(signal.SIGINT))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.handlers.setdefault("sanity check" if trainer.sanity_checking else "validation",
                                 signal.getsignal(signal.SIGINT))


@pytest.mark.parametrize("stop_on_ctrl_c", [True, False])
def test_ctrl_c_is_taken_as_a_stop_during_training_only(tmp_path, stop_on_ctrl_c, sigint_as_in_a_terminal):
    record = RecordSigintHandler()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[record, PreemptionCheckpoint(stop_on_ctrl_c=stop_on_ctrl_c)])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    trainer.fit(ValidatedDropoutNet())
    assert record.handlers["sanity check"] is signal.default_int_handler  # (nothing trained to save yet)
    if stop_on_ctrl_c:
        assert record.handlers["training"] is record.handlers["validation"] is not signal.default_int_handler
    else:
        assert record.handlers["training"] is record.handlers["validation"] is signal.default_int_handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # (put back after training)


class FailAtSecondBatch(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 1:
            raise RuntimeError("a bug in the second batch")


def test_the_sigint_handler_is_put_back_when_training_fails(tmp_path, sigint_as_in_a_terminal):
    """(PreemptionCheckpoint puts it back in on_exception; Lightning's signal connector, at its
    teardown, puts back the handlers it found too, so this holds either way.)"""
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[FailAtSecondBatch(), PreemptionCheckpoint()])
    with pytest.raises(RuntimeError, match="a bug in the second batch"):
        trainer.fit(DropoutNet())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not (tmp_path / "checkpoints").exists()


def test_sigterm_during_validation_then_resume_validates_that_epoch_again(tmp_path):
    """Stopped after the first of three validation batches of epoch 0, the resumed run scores
    all of epoch 0's validation again (no metric state survives a checkpoint), then trains
    epoch 1 to the uninterrupted run's weights."""
    run_options = ["--max-epochs", "2", "--validate"]
    reference = _run(tmp_path, "reference", *run_options)
    ready = tmp_path / "ready"
    output = _stop_when_ready(
        _run(tmp_path, "preempted", *run_options, "--wait-in-validation", "0", "0", "--ready-file", str(ready)), ready)
    checkpoint_path = tmp_path / "preempted" / "checkpoints" / "last.ckpt"
    assert checkpoint_path.is_file(), output
    assert torch.load(checkpoint_path, weights_only=True)["global_step"] == 6  # the whole first epoch

    _finish(_run(tmp_path, "preempted", *run_options, "--ckpt-path", str(checkpoint_path)))
    _finish(reference)
    expected = torch.load(tmp_path / "reference.pt", weights_only=True)
    actual = torch.load(tmp_path / "preempted.pt", weights_only=True)
    assert expected["validated"] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert actual["validated"] == expected["validated"]  # (the resumed process's own record)
    assert actual["step"] == expected["step"] == 12
    for name, tensor in expected["state_dict"].items():
        torch.testing.assert_close(actual["state_dict"][name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_ddp_sigterm_during_validation_stops_after_it_on_every_rank(tmp_path):
    """Two processes, rank 0 with two validation batches and rank 1 with one: the signal comes
    while both sit after their first batch, rank 1's last. Both finish the validation (Lightning
    alone raises on rank 0 only, which then waits in the checkpoint's collectives while rank 1
    waits in the metrics', forever), then stop together at the next training batch, and the
    run resumed from there ends with the uninterrupted run's weights."""
    run_options = ["--max-epochs", "2", "--validate", "--devices", "2"]
    reference = _run(tmp_path, "reference", *run_options)
    ready = tmp_path / "ready"
    output = _stop_when_ready(
        _run(tmp_path, "preempted", *run_options, "--wait-in-validation", "0", "0", "--ready-file", str(ready)),
        ready, timeout=90)
    checkpoint_path = tmp_path / "preempted" / "checkpoints" / "last.ckpt"
    assert checkpoint_path.is_file(), output
    assert "validation finished; stopping at the next training batch" in output
    steps_per_epoch = math.ceil(math.ceil(DATASET_SIZE / 2) / BATCH_SIZE)
    assert torch.load(checkpoint_path, weights_only=True)["global_step"] == steps_per_epoch

    _finish(_run(tmp_path, "preempted", *run_options, "--ckpt-path", str(checkpoint_path)))
    _finish(reference)
    expected = torch.load(tmp_path / "reference.pt", weights_only=True)
    actual = torch.load(tmp_path / "preempted.pt", weights_only=True)
    assert expected["validated"] == [(0, 0), (0, 1), (1, 0), (1, 1)]  # (rank 0's record)
    assert actual["validated"] == [(1, 0), (1, 1)]  # epoch 0's validation ran whole before the stop
    assert actual["step"] == expected["step"] == 2 * steps_per_epoch
    for name, tensor in expected["state_dict"].items():
        torch.testing.assert_close(actual["state_dict"][name], tensor, rtol=0, atol=1e-6, msg=name)


def _gsf_fit(data_root: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    """``gsf fit`` on the tiny synthetic set (ResNet-18 GSF, 2 segments of 32 px, CPU), two epochs."""
    command = [
        sys.executable, "-m", "lightning_gsf.cli", "fit",
        "--data=lightning_gsf.data.epic.EpicKitchensDataModule", f"--data.init_args.root={data_root}",
        "--data.init_args.num_segments=2", "--data.init_args.batch_size=2", "--data.init_args.num_workers=0",
        "--data.init_args.input_size=32", "--data.init_args.resize_size=32",
        "--model.backbone=resnet18", "--model.pretrained=null", "--model.warmup_epochs=0.5",
        f"--trainer.default_root_dir={run_dir}", "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.max_epochs=2", "--trainer.deterministic=true", "--seed_everything=0", *extra,
    ]  # fmt: skip
    command += ["--trainer.callbacks+=test_resume.SaveFinalWeights", f"--trainer.callbacks.path={run_dir}.pt"]
    environment = {**os.environ, "PYTHONPATH": str(SCRIPT.parent), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
                            start_new_session=True, preexec_fn=_sigint_as_in_a_terminal)


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "returncode"), [
    pytest.param(signal.SIGTERM, EXIT_STOPPED_BY_SIGTERM, id="SIGTERM"),
    pytest.param(signal.SIGINT, EXIT_STOPPED_BY_CTRL_C, id="Ctrl-C"),
])
def test_gsf_fit_stopped_by_a_signal_resumes_to_the_same_weights(tmp_path, signum, returncode):
    """The same check through ``gsf fit``: its default callbacks save on SIGTERM (or a Ctrl-C,
    exit status 130) and resume exactly."""
    from lightning_gsf.data.synthetic import generate_synthetic_dataset

    data = tmp_path / "data"
    generate_synthetic_dataset(data, num_train=8, num_val=3, num_test=1, size=32, videos=False)
    stop_at_step = 5  # 4 steps per epoch: in the middle of the second epoch
    reference = _gsf_fit(data, tmp_path / "reference")
    ready = tmp_path / "ready"
    preempted = _gsf_fit(
        data, tmp_path / "preempted", "--trainer.callbacks+=test_resume.WaitForSignalAt",
        f"--trainer.callbacks.step={stop_at_step}", f"--trainer.callbacks.ready_file={ready}",
    )  # fmt: skip
    output = _stop_when_ready(preempted, ready, timeout=300, returncode=returncode, signum=signum)
    assert f"{'SIGTERM' if signum == signal.SIGTERM else 'Ctrl-C'}: saved a checkpoint at epoch 1, step 5" in output
    last = tmp_path / "preempted" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == stop_at_step

    _finish(_gsf_fit(data, tmp_path / "preempted", "--ckpt_path=last"), timeout=300)
    _finish(reference, timeout=300)
    expected = torch.load(tmp_path / "reference.pt", weights_only=True)
    actual = torch.load(tmp_path / "preempted.pt", weights_only=True)
    assert actual["step"] == expected["step"] == 8
    for name, tensor in expected["state_dict"].items():
        torch.testing.assert_close(actual["state_dict"][name], tensor, rtol=0, atol=1e-5, msg=name)


def test_sigterm_checkpoint_is_not_written_on_other_errors(tmp_path):
    class Boom(pl.Callback):
        def on_train_batch_end(self, *args):
            raise RuntimeError("boom")

    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_steps=3, callbacks=[PreemptionCheckpoint(), Boom()], logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(DropoutNet())
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("devices", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_unreadable_validation_sample_saves_the_epoch_and_the_mended_run_validates_it_again(tmp_path, devices):
    """A validation sample that cannot be read after epoch 1 (under DDP in rank 0's first batch
    of two; rank 1 has one): every process finishes the validation, then all save the trained
    epoch and stop before scoring it; resumed with the data mended, the run validates epoch 1
    again from its first batch and ends with an uninterrupted run's weights. (Each rank keeps a
    readable batch: Lightning syncs ``self.log(..., sync_dist=True)`` values only on the
    processes that logged one.)"""
    run_options = ["--max-epochs", "3", "--validate", "--devices", str(devices)]
    steps_per_epoch = math.ceil(math.ceil(DATASET_SIZE / devices) / BATCH_SIZE)
    reference = _run(tmp_path, "reference", *run_options)
    failed = _finish(_run(tmp_path, "failed", *run_options, "--unreadable-in-validation", "1", "2"), returncode=1)
    assert "sample 2 (vectors.csv, line 4): cannot be read" in failed
    assert "1 validation batch(es) cannot be read, so the run stops before scoring epoch 1" in failed
    checkpoint_path = tmp_path / "failed" / "checkpoints" / "last.ckpt"
    assert f"saved a checkpoint at epoch 1, step {2 * steps_per_epoch} to {checkpoint_path}" in failed
    assert torch.load(checkpoint_path, weights_only=True)["global_step"] == 2 * steps_per_epoch

    _finish(_run(tmp_path, "failed", *run_options, "--ckpt-path", str(checkpoint_path)))
    _finish(reference)
    expected = torch.load(tmp_path / "reference.pt", weights_only=True)
    actual = torch.load(tmp_path / "failed.pt", weights_only=True)
    batches = 3 if devices == 1 else 2  # (rank 0's)
    assert actual["validated"] == [(epoch, batch) for epoch in (1, 2) for batch in range(batches)]
    assert actual["step"] == expected["step"] == 3 * steps_per_epoch
    for name, tensor in expected["state_dict"].items():
        torch.testing.assert_close(actual["state_dict"][name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    ("batch", "accumulate", "outcome"),
    [
        (0, 1, "no batch has been trained in this run, so no checkpoint was written"),
        (1, 2, "no checkpoint was written: the batch is inside a gradient-accumulation window"),
    ],
)
def test_unreadable_sample_saves_nothing_where_no_clean_state_is_new(tmp_path, batch, accumulate, outcome):
    """An unreadable sample in the run's first batch, or in the second batch of an accumulation
    window, stops the run with its error and writes no checkpoint, and says why."""
    order = ResumableDistributedSampler(FixedVectors(), seed=7, num_replicas=1, rank=0).epoch_order()
    unreadable = (0, order[batch * BATCH_SIZE])
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=1, accumulate_grad_batches=accumulate,
        callbacks=[DataErrorCheckpoint(), ExactResume()], logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )
    with pytest.raises(SampleReadError, match=f"sample {unreadable[1]} "):
        with _log_records("lightning_gsf.callbacks.data_errors") as records:
            trainer.fit(DropoutNet(unreadable))
    assert any(outcome in record for record in records), records
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("order", ["ema_first", "ema_last"])
def test_an_unreadable_validation_batch_with_an_ema_saves_the_training_weights_as_such(tmp_path, order):
    """With an EMA of the weights the module holds the averaged weights during validation. The
    save at the end of a validation that met an unreadable batch holds the training weights as
    ``current_model_state`` and the averaged ones as ``state_dict``, whichever of the two
    callbacks comes first (with the EMA listed after, they were saved swapped)."""
    from pytorch_lightning.callbacks import EMAWeightAveraging

    class RecordTrained(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            self.trained = {name: value.clone() for name, value in pl_module.state_dict().items()}

    record = RecordTrained()
    pair = [DataErrorCheckpoint(), EMAWeightAveraging(decay=0.5)]
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=3, callbacks=[*(pair[::-1] if order == "ema_first" else pair), record],
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    model = ValidatedDropoutNet(unreadable_in_validation=(1, 2))
    with pytest.raises(SampleReadError, match="validation batch"):
        with _log_records("pytorch_lightning.trainer.connectors.checkpoint_connector") as records:
            trainer.fit(model)
    assert not [record for record in records if "weights_only" in record]  # (Lightning's note when it is not given)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 1
    for name, value in record.trained.items():
        assert torch.equal(saved["current_model_state"][name], value), name
        if name.endswith("weight"):
            assert not torch.equal(saved["state_dict"][name], value), name


def test_the_loader_raises_a_read_error_unless_told_to_hand_it_over():
    dataset = FixedVectors(unreadable=(0, 5))
    loader = ResumableDataLoader(dataset, sampler=ResumableDistributedSampler(dataset, shuffle=False), batch_size=4)
    with pytest.raises(SampleReadError, match="sample 5 "):
        list(loader)
    loader.hand_over_read_errors = True
    batches = iter(loader)
    assert not isinstance(next(batches), UnreadableBatch)
    unreadable = next(batches)
    assert isinstance(unreadable, UnreadableBatch) and "sample 5 " in str(unreadable.error)
    loader.give_back_last_batch()  # (what DataErrorCheckpoint does before it saves)
    assert loader.state_dict()["sampler"]["position"] == 4
    assert [int(i) for batch in batches for i in batch[2]] == list(range(8, 23))  # (the iteration goes on)


@contextlib.contextmanager
def _log_records(name: str):
    """The messages logged to ``name`` inside the block (a handler of its own: Lightning's
    logging setup leaves pytest's caplog out of some loggers)."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


class SignalAfterBatch(pl.Callback):
    """Raise Lightning's SIGTERM flag during training batch ``batch`` of the first epoch (as the
    signal handler does when a SIGTERM arrives while the batch runs)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == self.batch:
            trainer._signal_connector.received_sigterm = True


@pytest.mark.parametrize(("signalled_in_batch", "saved_at_step"), [(1, 1), (2, 2), (4, 3)])
def test_sigterm_inside_an_accumulation_window_stops_at_its_end(tmp_path, signalled_in_batch, saved_at_step):
    """With two batches accumulated per optimiser step, a SIGTERM in the window's first batch
    stops after its second (the first's gradients are in no checkpoint): resumed, the run ends
    with the weights of an uninterrupted one."""

    def fit(*callbacks: pl.Callback, ckpt_path: Path | None = None) -> tuple[DropoutNet, pl.Trainer]:
        torch.manual_seed(0)
        model = DropoutNet()
        trainer = pl.Trainer(accelerator="cpu", max_epochs=2, accumulate_grad_batches=2, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             deterministic=True, default_root_dir=tmp_path,
                             callbacks=[*callbacks, ExactResume(), PreemptionCheckpoint(dirpath=tmp_path)])
        trainer.fit(model, ckpt_path=ckpt_path)
        return model, trainer

    uninterrupted, _ = fit()
    with pytest.raises(SystemExit):
        fit(SignalAfterBatch(signalled_in_batch))
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == saved_at_step
    resumed, trainer = fit(ckpt_path=tmp_path / "last.ckpt")
    assert trainer.global_step == 6  # (3 steps an epoch: 6 batches, the last one steps alone)
    for name, value in uninterrupted.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


class SignalInValidationBatch(pl.Callback):
    """Raise Lightning's SIGTERM flag in the first validation's batch ``batch`` of a fit."""

    def __init__(self, batch: int) -> None:
        self.batch, self.done = batch, False

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking and not self.done and batch_idx == self.batch:
            self.done = True
            trainer._signal_connector.received_sigterm = True


def test_sigterm_in_a_validation_inside_an_accumulation_window_stops_at_its_end(tmp_path):
    """val_check_interval=3 with two batches a window validates after the first batch of the
    second window: a SIGTERM there is held through the validation to the window's end (step 2),
    and the resumed run ends with the uninterrupted weights."""

    def fit(*callbacks: pl.Callback, ckpt_path: Path | None = None) -> tuple[DropoutNet, pl.Trainer]:
        torch.manual_seed(0)
        model = ValidatedDropoutNet()
        trainer = pl.Trainer(accelerator="cpu", max_epochs=2, accumulate_grad_batches=2, val_check_interval=3,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, deterministic=True, default_root_dir=tmp_path,
                             num_sanity_val_steps=0,
                             callbacks=[*callbacks, ExactResume(), PreemptionCheckpoint(dirpath=tmp_path)])
        trainer.fit(model, ckpt_path=ckpt_path)
        return model, trainer

    uninterrupted, _ = fit()
    with pytest.raises(SystemExit):
        fit(SignalInValidationBatch(0))
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2
    resumed, trainer = fit(ckpt_path=tmp_path / "last.ckpt")
    assert trainer.global_step == 6
    for name, value in uninterrupted.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


class RecordBatches(pl.Callback):
    """Record (epoch, batch index) of every training batch."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append((trainer.current_epoch, batch_idx))


@pytest.mark.parametrize("validate", [False, True], ids=["no-validation", "validation"])
@pytest.mark.parametrize(
    ("first_run", "stopped_at_step"),
    [
        ({"max_epochs": 2, "max_steps": 100}, 12),  # the end of a fit limited by epochs
        ({"max_epochs": 3, "max_steps": 12}, 12),  # max_steps at an epoch's last batch
        ({"max_epochs": 3, "max_steps": 9}, 9),  # max_steps in the middle of the second epoch
        ({"max_epochs": 3, "max_steps": 7}, 7),  # max_steps after the second epoch's first batch
    ],
    ids=["epochs", "steps-at-epoch-end", "steps-mid-epoch", "steps-one-into-epoch"],
)
def test_a_run_limited_by_max_steps_resumes_every_remaining_batch(tmp_path, first_run, stopped_at_step, validate):
    """Resumed from ``last.ckpt`` with ``max_steps`` set, a run trains the batches an
    uninterrupted one trains after that point, in the same epochs (Lightning 2.6 alone trains
    one batch or none of the next epoch, or counts an epoch cut by ``max_steps`` twice;
    ``lightning_gsf.fit_loop``), and ends with the epoch counts (current and total, saved in
    every later checkpoint) of the uninterrupted run."""

    def fit(name: str, max_epochs: int, max_steps: int,
            ckpt_path: Path | None = None) -> tuple[DropoutNet, RecordBatches, dict]:
        torch.manual_seed(0)
        model, record = (ValidatedDropoutNet() if validate else DropoutNet()), RecordBatches()
        checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / name, save_last=True, save_top_k=0)
        trainer = pl.Trainer(accelerator="cpu", max_epochs=max_epochs, max_steps=max_steps, logger=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             callbacks=[record, checkpoint, ExactResume()])
        trainer.fit(model, ckpt_path=ckpt_path)
        return model, record, trainer.fit_loop.epoch_progress.state_dict()

    uninterrupted, all_batches, epoch_counts = fit("uninterrupted", max_epochs=3, max_steps=100)
    assert len(all_batches.batches) == 18  # (3 epochs of 6 batches)
    fit("stopped", **first_run)
    resumed, rest, resumed_epoch_counts = fit("resumed", max_epochs=3, max_steps=100,
                                              ckpt_path=tmp_path / "stopped" / "last.ckpt")
    assert rest.batches == all_batches.batches[stopped_at_step:]
    epochs, batches = divmod(stopped_at_step, 6)
    assert resumed.seen == uninterrupted.seen[epochs * DATASET_SIZE + batches * BATCH_SIZE :]
    assert resumed_epoch_counts == epoch_counts


def test_clearing_the_restart_flag_leaves_the_epoch_counts_alone():
    """Only a restart mends the counts of an epoch that ``max_steps`` cut short: setting the fit
    loop's ``restarting`` to False changes none of them."""
    trainer = pl.Trainer(accelerator="cpu", max_epochs=3, max_steps=9, logger=False)
    install_step_limited_resume(trainer)
    loop = trainer.fit_loop
    for counts in (loop.epoch_progress.current, loop.epoch_progress.total):
        counts.ready = counts.started = counts.processed = counts.completed = 2
    loop.epoch_loop.batch_progress.current.completed = 3  # (not the epoch's last batch)
    loop.restarting = False
    assert loop.epoch_progress.current.processed == loop.epoch_progress.total.processed == 2
    loop.restarting = True
    assert loop.restarting
    assert loop.epoch_progress.current.processed == loop.epoch_progress.total.processed == 1


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-epochs", type=int, default=2)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--ckpt-path")
    parser.add_argument("--wait-at-step", type=int)
    parser.add_argument("--validate", action="store_true", help="validate after every epoch")
    parser.add_argument("--wait-in-validation", type=int, nargs=2, metavar=("EPOCH", "BATCH"))
    parser.add_argument("--ready-file")
    parser.add_argument("--unreadable", type=int, nargs=2, metavar=("EPOCH", "INDEX"),
                        help="the training sample INDEX cannot be read in EPOCH")
    parser.add_argument("--unreadable-in-validation", type=int, nargs=2, metavar=("EPOCH", "INDEX"),
                        help="with --validate: the validation sample INDEX cannot be read in EPOCH")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seconds-per-item", type=float, default=0.0, help="how long reading a training item takes")
    parser.add_argument("--multiprocessing-context", help="how the training loader starts its workers")
    parser.add_argument("--announce-step", type=int, help="write --ready-file at this step, and go on")
    parser.add_argument("--wait-rank", type=int, help="with --wait-at-step: only this rank announces and waits")
    parser.add_argument("--then-another", action="store_true",
                        help="with --wait-at-step: once signalled, write <ready-file>.2 and wait a minute")
    return parser.parse_args(argv)


if __name__ == "__main__":
    release_gloo_workers_at_exit()  # (as ``gsf`` does: two-process runs would abort at exit now and then)
    train(_arguments())


def _resumed_layout(position: int, ready: int, num_training_batches: int | None = None):
    """A checkpoint's progress (``ready`` batches of the epoch) restored onto a loader of two
    processes whose sampler resumes at ``position`` samples: the loader and the progress that
    ``_count_batches_in_this_layout`` leaves."""
    dataset = FixedVectors()
    loader = ResumableDataLoader(dataset, sampler=ResumableDistributedSampler(dataset, seed=7, num_replicas=2, rank=0),
                                 batch_size=BATCH_SIZE)
    loader.sampler.position = position
    progress = SimpleNamespace(ready=ready, started=ready, processed=ready, completed=ready)
    trainer = SimpleNamespace(num_training_batches=num_training_batches or len(loader), fit_loop=SimpleNamespace(
        epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=progress))))
    _count_batches_in_this_layout(trainer, loader)
    return loader, progress


def test_resumed_one_batch_in_on_more_processes_no_batch_of_the_new_layout_counts_as_done():
    """One process stopped after one batch (4 samples), resumed on two: the 4 samples are less
    than one batch of the new layout (8 across both), so none of its batches counts as done
    and the epoch runs all 3 (not 2, which would leave 8 samples untrained)."""
    loader, progress = _resumed_layout(BATCH_SIZE, 1)
    assert (len(loader), loader.batches_to_come()) == (3, 3)
    assert vars(progress) == {"ready": 0, "started": 0, "processed": 0, "completed": 0}


def test_with_limit_train_batches_the_restored_count_of_batches_stays_lightnings():
    """With ``limit_train_batches`` the epoch is the limit's, not the loader's: the restored
    count is left as Lightning has it."""
    _, progress = _resumed_layout(2 * BATCH_SIZE, 2, num_training_batches=2)
    assert vars(progress) == {"ready": 2, "started": 2, "processed": 2, "completed": 2}


def test_a_programs_own_sigint_handler_is_kept(tmp_path):
    """A program that set its own SIGINT handler keeps it in training and validation, and
    after the fit: only Python's default handler is taken over."""
    def own_handler(signum, frame):
        pass
    previous = signal.signal(signal.SIGINT, own_handler)
    try:
        record = RecordSigintHandler()
        trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                             callbacks=[record, PreemptionCheckpoint()])
        trainer.fit(ValidatedDropoutNet())
        assert record.handlers["training"] is record.handlers["validation"] is own_handler
        assert signal.getsignal(signal.SIGINT) is own_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_unreadable_sample_stops_trainer_validate_with_its_error(tmp_path):
    """Outside a fit (``validate``) there is nothing to save: the unreadable sample's error
    stops the run, rather than a score of the set without that batch."""
    trainer = pl.Trainer(accelerator="cpu", default_root_dir=tmp_path, callbacks=[DataErrorCheckpoint()], logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(SampleReadError, match="sample 5 "):
        trainer.validate(ValidatedDropoutNet(unreadable_in_validation=(0, 5)))


def test_an_unreadable_validation_sample_inside_an_accumulation_window_saves_nothing(tmp_path):
    """Validation after the first batch of a two-batch accumulation window: a checkpoint there
    would lose the window's gradients, so none is written and the error says why."""
    trainer = pl.Trainer(accelerator="cpu", default_root_dir=tmp_path, max_epochs=1, accumulate_grad_batches=2,
                         val_check_interval=1, num_sanity_val_steps=0, callbacks=[DataErrorCheckpoint(), ExactResume()],
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    with pytest.raises(SampleReadError, match="no checkpoint was written: the batch is inside a gradient-accumulation"):
        trainer.fit(ValidatedDropoutNet(unreadable_in_validation=(0, 2)))
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("callback", [PreemptionCheckpoint, DataErrorCheckpoint])
def test_a_stop_checkpoint_needs_a_file_name(callback):
    with pytest.raises(ValueError, match="needs a non-empty filename"):
        callback(filename="")


def test_a_restarted_validation_keeps_the_epochs_earlier_validations_in_the_total():
    """A checkpoint saved at a validation's unreadable batch: the validation restarts on
    resume (current progress 1 ready, 0 done), and the total keeps the epoch's earlier
    validations (7 - 2 = 5 done, plus the restarted one ready)."""
    progress = {"current": dict.fromkeys(("ready", "started", "processed", "completed"), 2),
                "total": dict.fromkeys(("ready", "started", "processed", "completed"), 7), "is_last_batch": True}
    restart_validation_on_resume({"loops": {"fit_loop": {"epoch_loop.val_loop.batch_progress": progress}}})
    assert progress == {"current": {"ready": 1, "started": 1, "processed": 0, "completed": 0},
                        "total": {"ready": 6, "started": 6, "processed": 5, "completed": 5}, "is_last_batch": False}


# The signal and DDP paths of the stop callbacks with a stand-in trainer: one process plays one
# rank, its all-reduce adding the other rank's value (the two-process runs above cannot see
# which rank said what, nor a signal's name in every order).


class StandInTrainer:
    """Rank ``rank`` of a two-process fit (or the one process, ``world_size=1``); its all-reduce
    adds ``other``, the other rank's value (0: the max is this rank's)."""

    accumulate_grad_batches, sanity_checking, current_epoch, global_step = 1, False, 1, 3
    train_dataloader = val_dataloaders = None

    def __init__(self, rank: int = 0, other: int = 0, world_size: int = 2) -> None:
        self.world_size, self.global_rank, self.is_global_zero, self.callbacks = world_size, rank, rank == 0, []
        self._signal_connector = SimpleNamespace(received_sigterm=False)
        self.strategy = SimpleNamespace(root_device=torch.device("cpu"),
                                        reduce=lambda tensor, reduce_op: tensor + other)
        self.state = SimpleNamespace(fn=TrainerFn.FITTING)
        self.fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(
            _should_accumulate=lambda: False, batch_progress=SimpleNamespace(current=SimpleNamespace(ready=1))))

    @property
    def received_sigterm(self) -> bool:
        return self._signal_connector.received_sigterm


@contextlib.contextmanager
def _lightnings_sigterm_handler(trainer: StandInTrainer,
                                *others: Callable[[int, object], None]) -> Iterator[None]:
    """As Lightning sets SIGTERM up: its notifier (which sets its flag) composed with ``others``."""
    def notifier(signum: int, frame: object) -> None:
        trainer._signal_connector.received_sigterm = True

    trainer._signal_connector._sigterm_notifier_fn = notifier
    previous = signal.signal(signal.SIGTERM, _HandlersCompose([*others, notifier]))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("order", [(signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGTERM)],
                         ids=["sigterm_first", "ctrl_c_first"])
def test_a_sigterm_outranks_a_ctrl_c_in_either_order(world_size, order, sigint_as_in_a_terminal):
    """A run preempted after a Ctrl-C (or the other way round) ends as preempted (143), so that
    it is resubmitted. (With one process a SIGTERM after the Ctrl-C was Lightning's alone and
    left the run named by the Ctrl-C.)"""
    callback, trainer = PreemptionCheckpoint(), StandInTrainer(world_size=world_size)
    with _lightnings_sigterm_handler(trainer):
        callback.on_train_start(trainer, None)
        try:
            for signum in order:
                os.kill(os.getpid(), signum)
            callback.on_train_batch_end(trainer, None, None, None, 0)
        finally:
            callback.on_train_end(trainer, None)
    assert trainer.received_sigterm and callback._stop_name() == "SIGTERM"


def test_under_ddp_a_ctrl_c_held_to_the_end_of_an_accumulation_window_stays_a_ctrl_c(caplog):
    """(It was agreed on as a Ctrl-C, then taken for a SIGTERM at the window's end: exit 143.)"""
    callback, trainer = PreemptionCheckpoint(), StandInTrainer()
    accumulating = iter([True, False])
    trainer.fit_loop.epoch_loop._should_accumulate = lambda: next(accumulating)
    callback._note_stop_signal(trainer, signal.SIGINT)
    callback.on_train_batch_end(trainer, None, None, None, 0)
    assert not trainer.received_sigterm
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.callbacks.preemption"):
        callback.on_train_batch_end(trainer, None, None, None, 1)
    assert trainer.received_sigterm and callback._stop_name() == "Ctrl-C"
    assert "Ctrl-C inside a gradient-accumulation window: stopping at its end, step 3" in caplog.text


def test_under_ddp_lightnings_own_sigterm_flag_in_a_validation_is_agreed_on():
    """Lightning's flag, set by its own handler before the callback's took over (in the sanity
    check), is held to the validation's end, then agreed on as a SIGTERM."""
    callback, trainer = PreemptionCheckpoint(), StandInTrainer()
    trainer._signal_connector.received_sigterm = True
    callback.on_validation_batch_end(trainer, None, None, None, 0)
    assert not trainer.received_sigterm
    callback.on_validation_end(trainer, None)
    assert trainer.received_sigterm and callback._stop_name() == "SIGTERM"


def test_under_ddp_rank_0_announces_the_agreed_stop_once(caplog):
    callback, trainer = PreemptionCheckpoint(), StandInTrainer()
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.callbacks.preemption"):
        callback.on_train_batch_end(trainer, None, None, None, 0)
        assert caplog.text == ""
        callback._note_stop_signal(trainer, signal.SIGTERM)
        callback.on_train_batch_end(trainer, None, None, None, 1)
    assert "SIGTERM: every process stops after this batch, with a checkpoint" in caplog.text


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_sigterm_is_noted_and_the_programs_own_handler_still_runs(world_size):
    """The callback's handler replaces Lightning's (under DDP a broadcast in a signal handler)
    and keeps the handlers Lightning composed with it (a program's, SLURM's requeue message).
    One process stops after the batch at once; under DDP the processes agree at its end."""
    called, trainer = [], StandInTrainer(world_size=world_size)
    callback = PreemptionCheckpoint(stop_on_ctrl_c=False)
    with _lightnings_sigterm_handler(trainer, lambda signum, frame: called.append("program")):
        callback.on_train_start(trainer, None)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            assert called == ["program"] and trainer.received_sigterm == (world_size == 1)
            callback.on_train_batch_end(trainer, None, None, None, 0)
            assert trainer.received_sigterm and callback._stop_name() == "SIGTERM"
        finally:
            callback.on_train_end(trainer, None)
        assert signal.getsignal(signal.SIGTERM).signal_handlers[-1] is trainer._signal_connector._sigterm_notifier_fn


def _gathering(monkeypatch: pytest.MonkeyPatch, every_ranks_messages: list[list[str]]) -> None:
    """``all_gather_object`` as if the ranks had ``every_ranks_messages``."""
    monkeypatch.setattr(torch.distributed, "all_gather_object",
                        lambda into, mine: into.__setitem__(slice(None), every_ranks_messages))


def test_under_ddp_the_rank_that_read_its_batch_names_the_others_unreadable_sample(monkeypatch):
    _gathering(monkeypatch, [[], ["sample 5 (vectors.csv, line 7): cannot be read"]])
    with pytest.raises(SampleReadError, match=r"another process could not .*\. rank 1: sample 5 \(vectors.csv"):
        DataErrorCheckpoint().on_train_batch_start(StandInTrainer(rank=0, other=1), None, ("a batch",), 0)


def test_under_ddp_every_rank_counts_the_unreadable_validation_batches_of_all(monkeypatch):
    callback, trainer = DataErrorCheckpoint(), StandInTrainer(rank=1, other=1)
    trainer.callbacks = [callback]
    _gathering(monkeypatch, [["sample 2 (vectors.csv, line 4): cannot be read"], []])
    with pytest.raises(SampleReadError, match=r"^1 validation batch\(es\) cannot be read, .* rank 0: sample 2 "):
        callback.on_validation_epoch_end(trainer, None)


def test_a_customised_fit_loop_is_left_alone():
    from pytorch_lightning.loops.fit_loop import _FitLoop

    class CustomisedFitLoop(_FitLoop):
        pass

    trainer = pl.Trainer(accelerator="cpu", max_epochs=3, max_steps=9, logger=False)
    trainer.fit_loop.__class__ = CustomisedFitLoop
    install_step_limited_resume(trainer)
    assert type(trainer.fit_loop) is CustomisedFitLoop


@pytest.mark.parametrize("max_steps", [100, -1], ids=["max_steps", "epochs"])
def test_a_resume_from_an_epoch_s_last_batch_checkpoint_can_itself_be_resumed(tmp_path, max_steps):
    """A checkpoint of an epoch's last batch, saved before the epoch ended (here every 6 steps,
    6 batches an epoch). Lightning 2.6 resumed
    it with the next epoch's ready and started counts missing, so a later resume of that run's
    own ``last.ckpt`` trained one batch of the next epoch instead of six (a helper's find)."""

    def fit(max_epochs, callbacks=(), ckpt_path=None):
        torch.manual_seed(0)
        record = RecordBatches()
        trainer = pl.Trainer(accelerator="cpu", max_epochs=max_epochs, max_steps=max_steps, logger=False,
                             default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[record, ExactResume(), *callbacks])
        trainer.fit(DropoutNet(), ckpt_path=ckpt_path)
        return record.batches, trainer.fit_loop.epoch_progress.state_dict()

    every_epoch = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=6, save_top_k=-1,
                                               filename="{step}")
    full, counts = fit(4, [every_epoch])
    last = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "r", save_last=True, save_top_k=0)
    first, first_counts = fit(3, [last], tmp_path / "step=6.ckpt")
    assert first == full[6:18]
    assert first_counts["current"] == dict.fromkeys(("ready", "started", "processed", "completed"), 3)
    second, resumed_counts = fit(4, ckpt_path=tmp_path / "r" / "last.ckpt")
    assert second == full[18:]
    assert resumed_counts == counts


class SigtermAtBatch(pl.Callback):
    """Send this process SIGTERM as training batch ``batch_idx`` of epoch 0 starts."""

    def __init__(self, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == self.batch_idx:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("validate", [False, True], ids=["no-validation", "validation"])
def test_a_sigterm_in_an_epoch_s_last_batch_resumes_exactly_and_so_does_the_resumed_run(tmp_path, validate):
    """A SIGTERM in epoch 0's last batch (of 6), with ``max_steps`` set: the run stops after
    that epoch (or in its validation, which it then scores again on resume). Resumed to 3
    epochs, it trains epochs 1 and 2; its own ``last.ckpt``, resumed to 4, trains epoch 3.
    (With Lightning's fit loop, the first resume trained the 7th batch of a 6-batch epoch, or
    the second resume trained nothing.)"""

    def fit(name, max_epochs, callbacks=(), ckpt_path=None):
        torch.manual_seed(0)
        model, record = (ValidatedDropoutNet() if validate else DropoutNet()), RecordBatches()
        trainer = pl.Trainer(accelerator="cpu", max_epochs=max_epochs, max_steps=100, logger=False,
                             default_root_dir=tmp_path / name, enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0,
                             callbacks=[record, ExactResume(), PreemptionCheckpoint(), *callbacks])
        trainer.fit(model, ckpt_path=ckpt_path)
        return model, record.batches, trainer.fit_loop.epoch_progress.state_dict()

    uninterrupted, all_batches, epoch_counts = fit("uninterrupted", 4)
    with pytest.raises(SystemExit):
        fit("stopped", 4, [SigtermAtBatch(5)])
    stopped = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    assert torch.load(stopped, weights_only=True)["global_step"] == 6
    keep_last = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "resumed", save_last=True, save_top_k=0)
    resumed, batches, counts = fit("resumed", 3, [keep_last], stopped)
    assert batches == all_batches[6:18]
    assert counts["current"] == dict.fromkeys(("ready", "started", "processed", "completed"), 3)
    if validate:
        assert resumed.validated == [(epoch, batch) for epoch in range(3) for batch in range(3)]
    resumed_again, batches, counts = fit("resumed_again", 4, ckpt_path=tmp_path / "resumed" / "last.ckpt")
    assert batches == all_batches[18:]
    assert counts == epoch_counts
    assert resumed.seen + resumed_again.seen == uninterrupted.seen[DATASET_SIZE:]
