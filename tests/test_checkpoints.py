"""Atomic checkpoint writes and the explained configuration-mismatch error."""

from __future__ import annotations

import io
import logging
import pickle
import queue
import random
import re
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, ThroughputMonitor
from pytorch_lightning.demos.boring_classes import BoringModel
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn

from lightning_gsf.callbacks import (
    AtomicCheckpointIO,
    ClipThroughputMonitor,
    ExactResume,
    PreemptionCheckpoint,
    stop_signal,
)
from lightning_gsf.checkpoint_matching import CheckpointMismatchError, check_checkpoint_matches
from lightning_gsf.data.errors import SampleReadError
from lightning_gsf.data.samplers import UnreadableBatch
from media_writers import fit_tiny_synthetic_epic

OLD = {"state_dict": {"weight": torch.ones(3)}, "epoch": 1}
NEW = {"state_dict": {"weight": torch.zeros(300_000)}, "epoch": 2}


class CrashMidWrite(Exception):
    """Stands for whatever stops a save part-way (a bug, a full disk turned into an error)."""


def test_atomic_save_round_trips(tmp_path):
    AtomicCheckpointIO().save_checkpoint(NEW, tmp_path / "sub" / "last.ckpt")
    loaded = AtomicCheckpointIO().load_checkpoint(tmp_path / "sub" / "last.ckpt")
    assert torch.equal(loaded["state_dict"]["weight"], NEW["state_dict"]["weight"])
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["last.ckpt"]


@pytest.mark.parametrize("failure", [CrashMidWrite, KeyboardInterrupt, OSError])
def test_failure_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(OLD, target)

    def fail(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise failure("stopped mid-write")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(failure):
        io.save_checkpoint(NEW, target)
    monkeypatch.undo()
    assert io.load_checkpoint(target)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


CRASHING_WRITER = """
import os, sys, torch
from lightning_gsf.callbacks import AtomicCheckpointIO
def die_half_way(obj, file, *args, **kwargs):
    file.write(b"PK half a checkpoint")
    file.flush()
    os._exit(9)  # no cleanup at all, as after SIGKILL
torch.save = die_half_way
AtomicCheckpointIO().save_checkpoint({"epoch": 2}, sys.argv[1])
"""


def test_process_killed_mid_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(OLD, target)
    result = subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(target)], capture_output=True, text=True)
    assert result.returncode == 9, result.stderr
    assert AtomicCheckpointIO().load_checkpoint(target)["epoch"] == 1
    # What a hard kill leaves is a hidden temporary file, never a truncated last.ckpt.
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.ckpt.") and leftovers[0].endswith(".tmp")


def test_trainer_uses_the_plugin_for_its_checkpoints(tmp_path, monkeypatch):
    calls: list[str] = []
    original = AtomicCheckpointIO.save_checkpoint

    def spy(self, checkpoint, path, storage_options=None):
        calls.append(Path(path).name)
        original(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", spy)
    trainer = pl.Trainer(
        default_root_dir=tmp_path, plugins=[AtomicCheckpointIO()], max_steps=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(BoringModel())
    trainer.save_checkpoint(tmp_path / "manual.ckpt")
    assert "manual.ckpt" in calls and len(calls) == 2  # ModelCheckpoint's and ours


class Tiny(pl.LightningModule):
    """A model whose tensor shapes depend on one hyper-parameter (``width``) and not the other (``lr``)."""

    def __init__(self, width: int = 4, lr: float = 0.1, head: str = "linear") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Linear(3, width)
        self.head = nn.Linear(width, 2) if head == "linear" else nn.Sequential(nn.Linear(width, 2))


def _checkpoint(model: pl.LightningModule) -> dict:
    return {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}


def test_matching_checkpoint_passes():
    check_checkpoint_matches(Tiny(), _checkpoint(Tiny()))


def test_other_shapes_name_the_hyper_parameter_and_the_tensors():
    with pytest.raises(CheckpointMismatchError) as error:
        check_checkpoint_matches(Tiny(width=8), _checkpoint(Tiny(width=4)), source="runs/a/last.ckpt")
    message = str(error.value)
    assert "runs/a/last.ckpt" in message
    assert "width: checkpoint 4, this run 8" in message
    assert "body.weight (4, 3) vs (8, 3)" in message and "head.weight (2, 4) vs (2, 8)" in message
    assert "lr" not in message


def test_other_structure_names_missing_and_unexpected_tensors():
    with pytest.raises(CheckpointMismatchError, match=r"head: checkpoint 'linear', this run 'seq'") as error:
        check_checkpoint_matches(Tiny(head="seq"), _checkpoint(Tiny()))
    assert "not in the checkpoint: head.0.bias, head.0.weight" in str(error.value)
    assert "not in the model: head.bias, head.weight" in str(error.value)


def test_hyper_parameters_that_leave_shapes_alone_only_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.checkpoint_matching"):
        check_checkpoint_matches(Tiny(lr=0.01), _checkpoint(Tiny(lr=0.1)))
    assert "lr: checkpoint 0.1, this run 0.01" in caplog.text


def test_settings_the_checkpoint_does_not_record_are_not_compared(caplog):
    """A file an importer wrote (or older code) records fewer hyper-parameters: those it lacks
    are not differences (they were listed as "checkpoint '<absent>'"); one it records that this
    run lacks still is."""
    checkpoint = _checkpoint(Tiny())
    del checkpoint["hyper_parameters"]["lr"]
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.checkpoint_matching"):
        check_checkpoint_matches(Tiny(lr=0.01), checkpoint)
    assert caplog.text == ""
    checkpoint["hyper_parameters"]["schedule"] = "cosine"
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.checkpoint_matching"):
        check_checkpoint_matches(Tiny(lr=0.01), checkpoint)
    assert "(schedule: checkpoint 'cosine', this run '<absent>')" in caplog.text


def test_effective_values_are_compared(caplog):
    """``effective`` resolves both sides first (here: a None width stands for 4)."""
    def effective(hparams):
        return {**hparams, "width": 4 if hparams.get("width") is None else hparams["width"]}

    checkpoint = _checkpoint(Tiny())
    checkpoint["hyper_parameters"]["width"] = None
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.checkpoint_matching"):
        check_checkpoint_matches(Tiny(), checkpoint, effective=effective)
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.checkpoint_matching"):
        check_checkpoint_matches(Tiny(), checkpoint)
    assert "width: checkpoint None, this run 4" in caplog.text
    # The other way round (an import-original checkpoint records the value, the run leaves None).
    caplog.clear()
    model, checkpoint = Tiny(), _checkpoint(Tiny())
    model.hparams["width"] = None
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.checkpoint_matching"):
        check_checkpoint_matches(model, checkpoint, effective=effective)
    assert caplog.text == ""


def test_the_starting_weights_are_not_compared(caplog):
    """``pretrained`` names where training started, which the restored weights replace (gsf
    ... --ckpt_path runs with pretrained None): no warning about it."""
    model, checkpoint = Tiny(), _checkpoint(Tiny())
    checkpoint["hyper_parameters"]["pretrained"] = "IMAGENET1K_V1"
    model.hparams["pretrained"] = None
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.checkpoint_matching"):
        check_checkpoint_matches(model, checkpoint)
    assert caplog.text == ""


def test_a_file_that_is_not_a_lightning_checkpoint_is_named():
    with pytest.raises(CheckpointMismatchError, match="no 'state_dict'"):
        check_checkpoint_matches(Tiny(), {"model": {}}, source="weights.pth")


def test_nested_hyper_parameters_are_compared_by_dotted_key():
    class Nested(Tiny):
        def __init__(self, optimizer: dict | None = None, width: int = 4) -> None:
            super().__init__(width=width)
            self.save_hyperparameters()

    saved = _checkpoint(Nested(optimizer={"name": "sgd", "momentum": 0.9}, width=4))
    with pytest.raises(CheckpointMismatchError, match=r"optimizer\.momentum: checkpoint 0\.9, this run 0\.0"):
        check_checkpoint_matches(Nested(optimizer={"name": "sgd", "momentum": 0.0}, width=5), saved)


@pytest.mark.parametrize("check_val_every_n_epoch", [1, 3])
def test_gsf_last_checkpoint_is_the_latest_epoch_even_without_improvement(tmp_path, monkeypatch, check_val_every_n_epoch):
    """``--ckpt_path last`` (and the SLURM requeue) must resume from the latest epoch, not the best one.

    Lightning >= 2.6 writes ``save_last`` only when a top-k checkpoint is written in the same step,
    so with a monitored metric that stops improving ``last.ckpt`` silently stays at the best epoch.
    With ``lr=0`` the metric cannot improve after the first epoch. When validation runs less
    often than every epoch, ``last.ckpt`` must still be written at every epoch's end.
    """
    monkeypatch.setattr(sys, "argv", ["gsf"])  # the arguments are passed, not read from pytest's command line
    run = fit_tiny_synthetic_epic(tmp_path, "--model.lr=0",
                                  f"--trainer.check_val_every_n_epoch={check_val_every_n_epoch}")
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 2)  # end of the second epoch


def test_gsf_fit_with_an_ema_of_the_weights_saves_and_resumes_it(tmp_path, monkeypatch):
    """Lightning's EMAWeightAveraging, added from the command line (or a config's
    ``trainer.callbacks``), works beside gsf's own callbacks: checkpoints hold the averaged
    weights (what validation scored, and what export-original writes) and the training weights
    apart, and a run resumes from them."""
    monkeypatch.setattr(sys, "argv", ["gsf"])
    ema = ("--trainer.callbacks+=pytorch_lightning.callbacks.EMAWeightAveraging", "--trainer.callbacks.decay=0.5")
    run = fit_tiny_synthetic_epic(tmp_path, *ema)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert "EMAWeightAveraging" in last["callbacks"] and "averaging_state" in last
    averaged, trained = last["state_dict"], last["current_model_state"]
    assert averaged.keys() == trained.keys()
    assert not torch.equal(averaged["model.heads.verb.weight"], trained["model.heads.verb.weight"])
    run = fit_tiny_synthetic_epic(tmp_path, *ema, "--trainer.max_epochs=3", "--ckpt_path=last")
    resumed = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (resumed["epoch"], resumed["global_step"]) == (2, 3)


def test_a_stop_during_validation_with_an_ema_saves_the_training_weights_as_such(tmp_path):
    """With an EMA of the weights the module holds the averaged weights during validation, and
    the training weights wait in the callback: a SIGTERM (or Ctrl-C) there waits for the
    validation's end, and the checkpoint holds the training weights as ``current_model_state``
    and the averaged ones as ``state_dict``. (Saved mid-validation, the two were swapped: the
    resumed run trained on from the averaged weights.)"""
    from pytorch_lightning.callbacks import EMAWeightAveraging

    class StopInValidation(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            self.trained = {name: value.clone() for name, value in pl_module.state_dict().items()}

        def on_validation_batch_start(self, trainer, *args) -> None:
            if trainer.current_epoch == 1 and not trainer.sanity_checking:
                trainer._signal_connector.received_sigterm = True  # (as Lightning's SIGTERM handler, mid-batch)

    stop = StopInValidation()
    trainer = pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_epochs=3, limit_train_batches=2,
                         limit_val_batches=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[EMAWeightAveraging(decay=0.5), PreemptionCheckpoint(), stop])
    with pytest.raises(SIGTERMException):
        trainer.fit(BoringModel())
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4  # (no training step after the weights recorded, the validation's)
    for name, value in stop.trained.items():
        assert torch.equal(saved["current_model_state"][name], value), name
        assert not torch.equal(saved["state_dict"][name], value), name


@pytest.mark.parametrize(
    ("dirpath", "model_checkpoint_dir", "expected"),
    [
        ("explicit", None, "explicit/last.ckpt"),
        ("explicit", "model_checkpoints", "explicit/last.ckpt"),  # (the callback's own folder wins)
        (None, "model_checkpoints", "model_checkpoints/last.ckpt"),
        (None, None, "root/checkpoints/last.ckpt"),
    ],
    ids=["explicit", "explicit-beside-a-model-checkpoint", "model-checkpoint-folder", "default-root"],
)
def test_preemption_checkpoint_goes_next_to_the_other_checkpoints(
    tmp_path, monkeypatch, dirpath, model_checkpoint_dir, expected
):
    monkeypatch.chdir(tmp_path)
    callbacks = [ModelCheckpoint(dirpath=model_checkpoint_dir)] if model_checkpoint_dir else []
    trainer = pl.Trainer(default_root_dir="root", callbacks=callbacks, enable_checkpointing=bool(callbacks))
    path = PreemptionCheckpoint(dirpath=dirpath).checkpoint_path(trainer)
    assert path.resolve() == (tmp_path / expected).resolve()


def _draws() -> list[float]:
    return [torch.rand(1).item(), float(np.random.rand()), random.random()]


def test_exact_resume_restores_this_ranks_random_state_at_the_first_batch():
    callback = ExactResume()
    saved = callback.state_dict()
    expected = _draws()
    callback.load_state_dict(saved)
    _draws()  # whatever happens between loading the checkpoint and the first batch
    callback.on_train_batch_start(SimpleNamespace(world_size=1, global_rank=0), None, None, 0)
    assert _draws() == expected
    callback.on_train_batch_start(SimpleNamespace(world_size=1, global_rank=0), None, None, 1)  # only once
    assert _draws() != expected


def _resume_random_state_on(rank: int, store: str, results) -> None:
    """(In a forked process: rank ``rank`` of two, over gloo.) Whether ExactResume gives this
    rank its own random state back from a checkpoint that rank 0 wrote."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.manual_seed(rank)  # (the ranks' random states differ)
        callback = ExactResume()
        saved = [callback.state_dict()]
        expected = _draws()
        torch.distributed.broadcast_object_list(saved, src=0)  # (rank 0 writes the checkpoint; every rank loads it)
        callback.load_state_dict(saved[0])
        _draws()
        callback.on_train_batch_start(SimpleNamespace(world_size=2, global_rank=rank), None, None, 0)
        results.put((rank, _draws() == expected))
    finally:
        torch.distributed.destroy_process_group()


def test_exact_resume_saves_every_ranks_own_random_state_under_ddp(tmp_path):
    """Two processes with their own random states: the checkpoint holds both, and each rank
    resumes its own (a checkpoint of rank 0's state alone gave rank 1 rank 0's draws)."""
    context = torch.multiprocessing.get_context("fork")
    results = context.Queue()
    processes = [context.Process(target=_resume_random_state_on, args=(rank, str(tmp_path / "store"), results))
                 for rank in (0, 1)]
    for process in processes:
        process.start()
    try:
        assert sorted(results.get(timeout=60) for _ in processes) == [(0, True), (1, True)]
    except queue.Empty:
        raise AssertionError("a process gave no result within 60 s") from None
    finally:
        for process in processes:
            process.join(timeout=10)
            process.kill()


def test_exact_resume_on_another_world_size_keeps_fresh_random_state_and_says_so(caplog):
    callback = ExactResume()
    state = callback.state_dict()
    callback.load_state_dict({**state, "random_state_per_rank": state["random_state_per_rank"] * 2})
    before = torch.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.callbacks.exact_resume"):
        callback.on_train_batch_start(SimpleNamespace(world_size=1, global_rank=0), None, None, 0)
    assert torch.equal(torch.get_rng_state(), before)
    assert "random state of 2 processes, this run has 1" in caplog.text


def test_hyper_parameters_that_change_what_the_tensors_compute_are_an_error():
    """``must_match``: a TSN checkpoint fits a TSM network tensor for tensor (TSM has no
    parameters) but computes something else there."""
    with pytest.raises(CheckpointMismatchError, match="hyper-parameters differ: lr: checkpoint 0.1, this run 0.01"):
        check_checkpoint_matches(Tiny(lr=0.01), _checkpoint(Tiny(lr=0.1)), must_match=("lr",))


def test_a_tsn_checkpoint_does_not_load_into_a_tsm_module():
    from lightning_gsf.module import VideoClassificationModule

    def module(temporal_module: str) -> VideoClassificationModule:
        return VideoClassificationModule({"class": 3}, num_segments=2, backbone="resnet18",
                                         temporal_module=temporal_module)

    tsn = module("none")
    checkpoint = {"state_dict": tsn.state_dict(), "hyper_parameters": dict(tsn.hparams)}
    with pytest.raises(CheckpointMismatchError, match="temporal_module: checkpoint 'none', this run 'tsm'"):
        module("tsm").on_load_checkpoint(checkpoint)
    module("none").on_load_checkpoint(checkpoint)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n", "truncated"], ids=["empty", "text", "truncated"])
def test_a_checkpoint_that_cannot_be_read_is_named(tmp_path, content):
    path = tmp_path / "broken.ckpt"
    if content == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: not a readable checkpoint, truncated or corrupt\? \("):
        AtomicCheckpointIO().load_checkpoint(path)


def _legacy_checkpoint(path: Path, storage_record: tuple, storage_keys: list[str]) -> None:
    """A file in torch's legacy (pre-zip) format: its header, an object holding one storage by
    ``storage_record`` (a persistent id), and the keys of the storages said to follow."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return storage_record if obj == "a storage" else None

    with path.open("wb") as file:
        for header in (MAGIC_NUMBER, PROTOCOL_VERSION, {}):
            pickle.dump(header, file)
        Pickler(file).dump({"weights": "a storage"})
        pickle.dump(storage_keys, file)


@pytest.mark.parametrize("weights_only", [None, False], ids=["default", "full_pickle"])
@pytest.mark.parametrize("kind", ["unknown_storage", "short_record"])
def test_a_corrupt_legacy_checkpoint_is_named(tmp_path, kind, weights_only):
    # torch's legacy loader (reached with weights_only=False) fails on these with an
    # AssertionError and a tuple-unpacking ValueError: neither names the file
    path = tmp_path / "legacy.ckpt"
    if kind == "unknown_storage":
        _legacy_checkpoint(path, ("storage", torch.FloatStorage, "0", "cpu", 4, None), ["not-saved"])
    else:
        _legacy_checkpoint(path, ("storage", torch.FloatStorage, "0", "cpu"), ["0"])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: not a readable checkpoint, truncated or corrupt\? \("):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=weights_only)


def test_a_legacy_tar_checkpoint_naming_a_missing_storage_is_named(tmp_path):
    """torch's oldest format, a tar of pickles: a tensor whose storage the file does not hold
    fails in torch's loader with a bare KeyError."""
    path = tmp_path / "legacy.tar"
    with tarfile.open(path, "w") as tar:
        for name, objects in (("storages", (0, [])), ("tensors", (1, ("t0", "not-saved", None))),
                              ("pickle", ({"state_dict": {}},))):
            data = b"".join(pickle.dumps(obj) for obj in objects)
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: not a readable checkpoint, truncated or "
                                         r"corrupt\? \(KeyError: 'not-saved'\)"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)


def test_storage_options_are_refused_not_ignored(tmp_path):
    """(Lightning's remote writers take them; the local atomic writer has no use for them.)"""
    with pytest.raises(TypeError, match=r"AtomicCheckpointIO does not take storage_options, got \{'acl': 'private'\}"):
        AtomicCheckpointIO().save_checkpoint({"epoch": 1}, tmp_path / "last.ckpt", storage_options={"acl": "private"})
    assert not (tmp_path / "last.ckpt").exists()


def test_private_hyper_parameters_are_not_compared(caplog):
    """Names with a leading underscore (LightningCLI's ``_instantiator``) are bookkeeping, not
    settings: a checkpoint that has one the model lacks gives no warning."""
    checkpoint = _checkpoint(Tiny())
    checkpoint["hyper_parameters"]["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.checkpoint_matching"):
        check_checkpoint_matches(Tiny(), checkpoint)
    assert caplog.text == ""


def test_a_checkpoint_with_tensors_the_model_lacks_is_refused():
    """A tensor the model has no place for is an error naming it, not silently dropped."""
    checkpoint = _checkpoint(Tiny())
    checkpoint["state_dict"]["extra.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointMismatchError,
                       match=r"1 tensors of the checkpoint are not in the model: extra\.weight"):
        check_checkpoint_matches(Tiny(), checkpoint)


def test_long_lists_of_tensors_are_cut_short_with_a_count():
    """Eight missing tensors: the first five named, then how many more."""
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(4)])
    with pytest.raises(CheckpointMismatchError, match=r"8 tensors of the model are not in the checkpoint: "
                                                      r"0\.bias, 0\.weight, 1\.bias, 1\.weight, 2\.bias and 3 more\."):
        check_checkpoint_matches(model, {"state_dict": {}})


def test_exact_resume_restores_a_pending_gaussian_draw():
    """Python's and NumPy's normal generators hold the second value of their last pair: a
    resume restores it, so the next normal draws are the interrupted run's."""
    random.gauss(0, 1), np.random.standard_normal()
    callback = ExactResume()
    saved = callback.state_dict()
    expected = [random.gauss(0, 1), float(np.random.standard_normal())]
    callback.load_state_dict(saved)
    random.gauss(0, 1), np.random.standard_normal()
    callback.on_train_batch_start(SimpleNamespace(world_size=1, global_rank=0), None, None, 0)
    assert [random.gauss(0, 1), float(np.random.standard_normal())] == expected


def test_exact_resume_gives_each_rank_its_own_random_state():
    """Rank 1 resumes rank 1's generators, not rank 0's (every rank would draw rank 0's
    dropout masks)."""
    callback = ExactResume()
    rank0 = callback.state_dict()["random_state_per_rank"][0]
    _draws()
    rank1 = callback.state_dict()["random_state_per_rank"][0]
    expected = _draws()
    callback.load_state_dict({"random_state_per_rank": [rank0, rank1], "train_loader": None})
    callback.on_train_batch_start(SimpleNamespace(world_size=2, global_rank=1), None, None, 0)
    assert _draws() == expected


def test_the_clip_throughput_leaves_out_an_unreadable_validation_batch(monkeypatch):
    """An unreadable validation batch (``skip_unreadable``) has no clips to count: the
    throughput monitor passes only readable batches on."""
    counted = []
    monkeypatch.setattr(ThroughputMonitor, "on_validation_batch_end",
                        lambda self, trainer, module, outputs, batch, *args, **kwargs: counted.append(batch))
    monitor, readable = ClipThroughputMonitor(), {"clip": torch.zeros(2, 3)}
    monitor.on_validation_batch_end(None, None, None, UnreadableBatch(SampleReadError("sample 5: cannot be read")), 0)
    monitor.on_validation_batch_end(None, None, None, readable, 1)
    assert len(counted) == 1 and counted[0] is readable


def test_stop_signal_tells_a_ctrl_c_from_a_sigterm():
    """Lightning raises SIGTERMException for both; the signal recorded on it decides `gsf`'s
    exit status (130 for Ctrl-C, 143 for SIGTERM)."""
    stop = SIGTERMException()
    assert stop_signal(stop) == signal.SIGTERM
    stop.gsf_stop_signal = signal.SIGINT
    assert stop_signal(stop) == signal.SIGINT
