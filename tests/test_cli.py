"""``gsf`` end to end on a tiny synthetic dataset: fit, resume, validate, test, predict, evaluate,
and an imported original-release checkpoint through ``gsf validate``."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import re
import logging
import os
import shutil
import signal
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ThroughputMonitor, TQDMProgressBar
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.model_summary.model_summary import get_human_readable_count
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lightning_gsf import cli
from lightning_gsf.callbacks import (
    AtomicCheckpointIO,
    DataErrorCheckpoint,
    ExactResume,
    PreemptionCheckpoint,
)
from lightning_gsf.checkpoint_matching import CheckpointMismatchError
from lightning_gsf.cli import CHECKPOINT_MONITOR, EXIT_STOPPED_BY_SIGTERM, main, run, show_info_messages
from lightning_gsf.data.epic import EpicKitchensDataModule
from lightning_gsf.data.errors import SampleReadError, original_message
from lightning_gsf.model import VideoClassifier
from lightning_gsf.module import VideoClassificationModule
from test_convert import _original_checkpoint_of

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

NUM_SEGMENTS = 2


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["gsf"])  # LightningCLI warns when it sees pytest's own arguments


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A few synthetic clips, written through ``gsf synth`` (frames only, 32 px)."""
    root = tmp_path_factory.mktemp("synthetic")
    main(["synth", "--out", str(root), "--num-train", "8", "--num-val", "6", "--num-test", "4",
          "--size", "32", "--min-frames", "4", "--max-frames", "8", "--no-videos", "--overwrite"])  # fmt: skip
    return root


def _config(tmp_path: Path, dataset: Path, data_class: str = "lightning_gsf.data.epic.EpicKitchensDataModule") -> Path:
    config = {
        "seed_everything": 0,
        "model": {"backbone": "resnet18", "temporal_module": "gsf", "pretrained": None, "lr": 0.01, "warmup_epochs": 1},
        "data": {
            "class_path": data_class,
            "init_args": {
                "root": str(dataset),
                "num_segments": NUM_SEGMENTS,
                "batch_size": 4,
                "num_workers": 0,
                "input_size": 32,
                "resize_size": 32,
                "scales": [1.0],
                "flip": False,
                "test_split": "val",
                "predict_split": "val",
            },
        },
        "trainer": {
            "default_root_dir": str(tmp_path / "run"),
            "max_epochs": 1,
            "accelerator": "cpu",
            "gradient_clip_val": 20,
            "log_every_n_steps": 1,
            "enable_model_summary": False,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _saved_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def test_fit_validate_test_predict_and_evaluate(tmp_path, dataset):
    config = _config(tmp_path, dataset)
    root = tmp_path / "run"
    trainer = run(["fit", "--config", str(config)]).trainer
    checkpoints = root / "checkpoints"
    # The monitored checkpoint is the trainer's (--ckpt_path best); last.ckpt, the SIGTERM
    # checkpoint and --ckpt_path last share its folder.
    assert trainer.checkpoint_callback.monitor == CHECKPOINT_MONITOR
    assert trainer.checkpoint_callback.mode == "max"  # (an accuracy: best-*.ckpt keeps the highest)
    folders = {Path(c.dirpath) for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)}
    assert folders == {checkpoints}
    (preemption,) = (c for c in trainer.callbacks if isinstance(c, PreemptionCheckpoint))
    assert preemption.checkpoint_path(trainer) == checkpoints / "last.ckpt"
    best = sorted(checkpoints.glob("best-*.ckpt"))
    assert (checkpoints / "last.ckpt").is_file() and len(best) == 1
    assert _saved_step(checkpoints / "last.ckpt") == 2  # 8 clips / batch 4, one epoch
    with (root / "csv" / "version_0" / "metrics.csv").open() as handle:
        logged = set(next(csv.reader(handle)))
    assert {"train/loss", "val/all_verb_accuracy_at_1", "val/all_action_accuracy_at_5", "val/accuracy_at_1"} <= logged
    assert {"val/tail_verb_accuracy_at_1", "val/unseen_action_accuracy_at_1"} & logged
    assert (root / "tensorboard" / "version_0").is_dir()

    validated = run(["validate", "--config", str(config), "--ckpt_path", str(best[0])]).trainer.callback_metrics
    tested = run(["test", "--config", str(config), "--ckpt_path", str(best[0])]).trainer.callback_metrics
    # test_split is the validation split with the same single view: the same numbers.
    for key in ("all_verb_accuracy_at_1", "all_noun_accuracy_at_1", "all_action_accuracy_at_5"):
        assert tested[f"test/{key}"] == pytest.approx(validated[f"val/{key}"].item())

    main(["predict", "--config", str(config), "--ckpt_path", str(best[0])])
    submission_path = root / "submission.zip"
    with zipfile.ZipFile(submission_path) as archive:
        submission = json.loads(archive.read("test.json"))
    assert len(submission["results"]) == 6
    entry = next(iter(submission["results"].values()))
    datamodule = EpicKitchensDataModule(root=dataset)
    assert {head: len(scores) for head, scores in entry.items()} == datamodule.num_classes

    # gsf evaluate on the written submission reproduces gsf validate (same code, same views).
    out = tmp_path / "metrics.json"
    main(["evaluate", str(submission_path), str(dataset / "annotations" / "EPIC_100_validation.csv"), "--json", str(out)])
    evaluated = json.loads(out.read_text())
    for key, value in evaluated.items():
        assert value == pytest.approx(validated[f"val/{key}"].item(), abs=1e-4), key
    # ... and so does the official results file written beside the submission.
    out_results = tmp_path / "metrics_from_results.json"
    main(["evaluate", str(root / "results.pkl"), str(dataset / "annotations" / "EPIC_100_validation.csv"),
          "--json", str(out_results)])
    assert json.loads(out_results.read_text()) == evaluated


@pytest.mark.parametrize("data_seed", [None, 1], ids=["same_data", "other_data_seed"])
def test_resume_from_last_continues_at_the_saved_step(tmp_path, dataset, data_seed):
    """From the end-of-epoch last.ckpt, with the same data settings or another data seed (the
    next epoch's order owes nothing to the saved one)."""
    config = _config(tmp_path, dataset)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    main(["fit", "--config", str(config)])
    first = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert (first["global_step"], first["epoch"]) == (2, 0)

    other_seed = [] if data_seed is None else ["--data.init_args.seed", str(data_seed)]
    cli = run(["fit", "--config", str(config), "--trainer.max_epochs", "2", "--ckpt_path", "last", *other_seed])
    assert cli.trainer.ckpt_path == str(checkpoint)
    assert cli.trainer.global_step == 4  # two more steps after the saved two, not four from zero
    assert _saved_step(checkpoint) == 4
    # The optimiser's schedule went on from where it stopped (step 2 of 4 in the second epoch).
    resumed = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert resumed["lr_schedulers"][0]["last_epoch"] == 4


def test_resume_with_other_steps_per_epoch_keeps_the_schedules_place(tmp_path, dataset):
    """Saved after epoch 0 of 2 at 2 steps an epoch (half-way through the schedule), resumed at
    4 steps an epoch (as on twice the GPUs): the schedule goes on from half-way, step 4 of 8,
    and ends at its end (step 8, learning rate 0), not at step 2 + 4 = 6 of 8."""
    config = _config(tmp_path, dataset)
    main(["fit", "--config", str(config), "--trainer.max_epochs", "2", "--trainer.max_steps", "2"])
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["lr_schedule_steps_per_epoch"] == 2 and checkpoint["global_step"] == 2
    cli = run(["fit", "--config", str(config), "--trainer.max_epochs", "2", "--ckpt_path", "last",
               "--data.init_args.batch_size", "2"])
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 8
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


class SigtermInFirstBatch(pl.Callback):
    """Send this process a SIGTERM while the first training batch runs (Lightning's handler,
    installed for the run, takes it)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def test_gsf_stopped_by_sigterm_saves_last_then_exits_143(tmp_path, dataset):
    """A run that SIGTERM stopped is unfinished: ``gsf`` exits with status 128 + 15, as a process
    ended by SIGTERM does, so ``gsf fit ... && gsf test ...`` stops there (Lightning's own exit
    is a ``SystemExit`` of status 0); the checkpoint is written first."""
    config = _config(tmp_path, dataset)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--trainer.max_epochs", "2",
              "--trainer.callbacks+=test_cli.SigtermInFirstBatch"])  # fmt: skip
    assert exit_info.value.code == EXIT_STOPPED_BY_SIGTERM == 143
    assert _saved_step(tmp_path / "run" / "checkpoints" / "last.ckpt") == 1


def test_gsf_fit_stopped_by_an_unreadable_sample_saves_last_and_resumes_once_mended(tmp_path, dataset):
    """A sample of the second training batch whose frames are corrupt: ``gsf fit`` stops with the
    error naming its folder, after saving ``last.ckpt`` at step 1; with the frames mended,
    ``--ckpt_path last`` trains the second batch and ends at step 2."""
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    config = _config(tmp_path, data)
    probe = run(["fit", "--config", str(config), "--trainer.max_steps", "1",
                 "--trainer.default_root_dir", str(tmp_path / "probe")]).trainer.train_dataloader  # fmt: skip
    probe.sampler.set_epoch(0)
    sample = probe.dataset.samples[probe.sampler.epoch_order()[4]]  # the second batch's first
    folder = Path(sample.source)  # (a video's frames, shared with other segments: only this one's are broken)
    pristine = {frame: frame.read_bytes() for frame in folder.iterdir()
                if sample.start <= int(re.sub(r"\D", "", frame.name)) <= sample.stop + 1}
    for frame in pristine:
        frame.write_bytes(b"not a JPEG")

    with pytest.raises(SampleReadError, match=re.escape(str(folder))):
        run(["fit", "--config", str(config)])
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert _saved_step(checkpoint) == 1

    for frame, content in pristine.items():
        frame.write_bytes(content)
    assert run(["fit", "--config", str(config), "--ckpt_path", "last"]).trainer.global_step == 2
    assert _saved_step(checkpoint) == 2


def test_gsf_fit_stopped_by_an_unreadable_validation_sample_saves_the_epoch_and_validates_it_again(tmp_path, dataset):
    """A validation sample whose frames are corrupt: the validation after the epoch goes on,
    then ``gsf fit`` saves the trained epoch (no best checkpoint is chosen on the partial
    metrics) and stops; mended, ``--ckpt_path last`` validates the epoch again, in full."""
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    config = _config(tmp_path, data)
    options = ["--config", str(config), "--trainer.num_sanity_val_steps", "0"]
    sample = EpicKitchensDataModule(root=data).samples("val")[0]
    pristine = {frame: frame.read_bytes() for frame in Path(sample.source).iterdir()
                if sample.start <= int(re.sub(r"\D", "", frame.name)) <= sample.stop + 1}
    for frame in pristine:
        frame.write_bytes(b"not a JPEG")

    with pytest.raises(SampleReadError, match="1 validation batch.es. cannot be read, so the run stops before scoring"):
        run(["fit", *options])
    checkpoints = tmp_path / "run" / "checkpoints"
    assert _saved_step(checkpoints / "last.ckpt") == 2 and not list(checkpoints.glob("best-*.ckpt"))

    for frame, content in pristine.items():
        frame.write_bytes(content)
    metrics = run(["fit", *options, "--ckpt_path", "last"]).trainer.callback_metrics
    assert "val/all_action_accuracy_at_1" in metrics and len(list(checkpoints.glob("best-*.ckpt"))) == 1
    assert _saved_step(checkpoints / "last.ckpt") == 2


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_subcommand_stopped_by_bad_data_ends_with_its_message_not_a_traceback(tmp_path, dataset, num_workers):
    """``gsf fit`` on a clip that cannot be read (in the process or in a loader worker, whose
    traceback PyTorch puts into the message) and on a malformed annotation row: one line naming
    the file, as argparse gives (``run`` still raises, for programs)."""
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    config = _config(tmp_path, data)
    for frame in (data / "P01" / "rgb_frames").rglob("*.jpg"):
        frame.write_bytes(b"not a JPEG")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--data.init_args.num_workers", str(num_workers),
              "--trainer.num_sanity_val_steps", "0"])  # fmt: skip
    message = str(exit_info.value.code)
    assert re.match(r"gsf fit: error: sample 'P01_\d+_\d+' \(\S+EPIC_100_train.csv, line \d+; ", message), message
    assert "Traceback" not in message and "\n" not in message

    train_csv = data / "annotations" / "EPIC_100_train.csv"
    lines = train_csv.read_text().splitlines()
    train_csv.write_text("\n".join([*lines[:2], "P01_01_9,P01,P01_01,not enough fields", *lines[2:]]) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert re.match(r"gsf fit: error: \S+EPIC_100_train.csv, line 3\b", str(exit_info.value.code)), exit_info.value.code


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "--data.init_args.root", "{tmp}/nowhere"], r"annotation file \S+nowhere/annotations/EPIC_100_\w+.csv does not exist"),
        (["fit", "--data.init_args.annotations_dir", "{tmp}"], r"annotation file \S+/EPIC_100_\w+.csv does not exist"),
        (["fit", "--data.init_args.batch_size", "1000"], r"the train split has \d+ samples: fewer than one batch of 1000"),
        # (jsonargparse wraps an error of the data module's class_path component in its own)
        (["fit", "--data.init_args.num_workers", "-1"], r"num_workers must be >= 0, got -1$"),
        (["fit", "--data.init_args.frame_template", "{{}}_{{}}.jpg"], r"frame_template '\{\}_\{\}.jpg' must format one"),
        (["fit", "--model.backbone", "resnet19"], r"unknown backbone 'resnet19'"),
        (["fit", "--model.gsf_ratio", "0.33"], r"cannot insert GSF after layer1.0.conv2: GSF cannot split 64 channels"),
        (["fit", "--model.pretrained", "{tmp}/weights.pth"], r"pretrained weights file \S+weights.pth does not exist"),
        (["fit", "--model.pretrained", "{tmp}"], r"pretrained weights \S+ is a folder"),
        (["fit", "--trainer.max_epochs", "-1"], r"the learning-rate schedule .* needs the training's length"),
        (["validate", "--ckpt_path", "{tmp}/nope.ckpt"], r"Checkpoint file not found: \S+nope.ckpt"),
        (["validate", "--ckpt_path", "last"], r"--ckpt_path last: no last.ckpt in "),
        (["test", "--ckpt_path", "best"], r"--ckpt_path best names the best checkpoint of a fit run in the same process"),
    ],
    ids=["data_root", "annotations_dir", "batch_size", "num_workers", "frame_template", "backbone", "gsf_ratio",
         "missing_weights", "weights_folder", "no_length", "missing_checkpoint", "no_last", "best"],
)
def test_a_subcommand_stopped_by_a_setting_ends_with_its_message_not_a_traceback(tmp_path, dataset, argv, message):
    """A setting that cannot work (a path that names nothing, an option's value, a checkpoint
    choice) ends ``gsf fit/validate/test`` with one line naming it, as a bad annotation row does."""
    config = _config(tmp_path, dataset)
    argv = [argv[0], "--config", str(config), *(argument.format(tmp=tmp_path) for argument in argv[1:])]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    text = str(exit_info.value.code)
    assert re.match(rf"gsf {argv[0]}: error: ", text) and re.search(message, text), text
    assert "Traceback" not in text and "\n" not in text


def test_a_mid_epoch_resume_with_another_seed_ends_with_its_message_not_a_traceback(tmp_path, dataset):
    """Resuming a mid-epoch checkpoint with another shuffling seed cannot continue the saved
    order: ``gsf fit`` ends with one line naming the setting, and the checkpoint is untouched."""
    config = _config(tmp_path, dataset)
    run(["fit", "--config", str(config), "--trainer.max_steps", "1"])  # 2 batches an epoch: stops mid-epoch
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = last.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--trainer.max_steps", "2", "--data.init_args.seed", "7",
              "--ckpt_path", "last"])  # fmt: skip
    message = str(exit_info.value.code)
    assert message.startswith("gsf fit: error: cannot resume the training order mid-epoch"), message
    assert "seed: checkpoint 0, this run 7" in message and "\n" not in message
    assert last.read_bytes() == saved


@pytest.mark.slow
def test_fit_with_forkserver_workers_trains_the_same_weights_as_without_workers(tmp_path, dataset):
    """``worker_start_method: forkserver`` (the remedy for fork's rare hangs under DDP) pickles
    the real datasets, readers and transforms to its workers; training is unchanged by it."""
    weights = {}
    for name, options in (("in_process", ["--data.init_args.num_workers", "0"]),
                          ("forkserver", ["--data.init_args.num_workers", "2",
                                          "--data.init_args.worker_start_method", "forkserver"])):
        (tmp_path / name).mkdir()
        config = _config(tmp_path / name, dataset)
        trainer = run(["fit", "--config", str(config), "--trainer.deterministic", "true", *options]).trainer
        weights[name] = trainer.lightning_module.state_dict()
        assert "val/all_action_accuracy_at_1" in trainer.callback_metrics
    for key, value in weights["in_process"].items():
        torch.testing.assert_close(weights["forkserver"][key], value, rtol=0, atol=0, msg=key)


def test_the_original_message_of_a_loader_workers_error():
    class Unreadable(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            raise SampleReadError("sample 'x' (train.csv, line 2): cannot be read")

    with pytest.raises(SampleReadError) as raised:
        next(iter(torch.utils.data.DataLoader(Unreadable(), num_workers=1)))
    assert "Original Traceback" in str(raised.value)  # (what PyTorch re-raises)
    assert original_message(raised.value) == "sample 'x' (train.csv, line 2): cannot be read"
    assert original_message(SampleReadError("a\nb")) == "a\nb"


def test_the_original_message_keeps_the_colons_of_a_file_name():
    """Only the exception's type name is cut from the start of the line, not every
    ``name: `` inside the message."""
    message = "/data/ssv2/train.json: entry 4 (id 12): cannot be read"
    worker_error = SampleReadError(
        "Caught SampleReadError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "worker.py", line 1, in <module>\n'
        f"lightning_gsf.data.errors.SampleReadError: {message}\n"
    )
    assert original_message(worker_error) == message


def test_only_rank_0_reports_a_sigterm_stop(monkeypatch):
    """Under DDP the other processes end with Lightning's status 0: a launcher that kills the
    remaining processes once one fails must not kill rank 0 while it flushes its loggers."""
    def stopped(args):
        raise SIGTERMException

    monkeypatch.setattr(cli, "run", stopped)
    monkeypatch.setattr(cli.gloo_exit, "release_gloo_workers_at_exit", lambda: None)
    for rank, status in [(0, EXIT_STOPPED_BY_SIGTERM), (1, None)]:
        monkeypatch.setattr(rank_zero_only, "rank", rank)
        with pytest.raises(SystemExit) as exit_info:
            main(["fit"])
        assert exit_info.value.code == status


@pytest.mark.parametrize(
    ("argv", "culprit"),
    [
        (["import-original", "{tmp}/missing.pth.tar", "{tmp}/out.ckpt", "--num-segments", "8"], "missing.pth.tar"),
        (["export-original", "{tmp}/garbage.ckpt", "{tmp}/out.pth.tar"], "garbage.ckpt"),
        (["evaluate", "{tmp}/garbage.ckpt", "{tmp}/missing.csv"], "garbage.ckpt"),
    ],
    ids=["missing_file", "not_a_checkpoint", "not_a_submission"],
)
def test_a_tool_that_fails_on_its_input_ends_with_a_message_not_a_traceback(tmp_path, argv, culprit):
    """``gsf``'s tools end with ``gsf TOOL: error: ...`` naming the file (status 1); ``run`` (for
    programs) still raises the error itself."""
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    argv = [argument.format(tmp=tmp_path) for argument in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith(f"gsf {argv[0]}: error: ") and culprit in message
    with pytest.raises((ValueError, OSError)):
        run(argv)


def test_print_config_is_runnable(tmp_path, dataset, capsys):
    config = _config(tmp_path, dataset)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert {"model", "data", "trainer", "checkpoint", "submission"} <= set(printed)
    assert printed["checkpoint"]["monitor"] == "val/accuracy_at_1"
    (tmp_path / "printed.yaml").write_text(yaml.safe_dump(printed))
    main(["fit", "--config", str(tmp_path / "printed.yaml"), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"])
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize(
    ("subcommand", "typo"),
    [
        ("fit", "--model.temporal_modul=tsm"),  # a prefix of --model.temporal_module
        ("fit", "--trainer.max_epoch=3"),
        ("validate", "--data.init_args.batch_siz=2"),  # the data module's class_path/init_args
    ],
)
def test_an_abbreviated_option_is_an_error(tmp_path, dataset, capsys, subcommand, typo):
    config = _config(tmp_path, dataset)
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", str(config), typo, "--print_config"])
    assert exit_info.value.code == 2
    misspelt_name = typo.split("=")[0].rsplit(".", 1)[-1]
    assert misspelt_name in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--optimizer=Adam", "--lr_scheduler=StepLR"])
def test_lightnings_optimizer_options_are_not_offered(tmp_path, dataset, capsys, option):
    """The module makes its optimizer and learning-rate schedule from its own settings
    (``--model.lr``, ``--model.warmup_epochs``, ...): LightningCLI's ``--optimizer`` and
    ``--lr_scheduler``, which would replace them, are unknown options rather than a second way."""
    config = _config(tmp_path, dataset)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), option, "--print_config"])
    assert exit_info.value.code == 2
    assert option.split("=")[0] in capsys.readouterr().err


@pytest.mark.parametrize("seed", [5, 11])
def test_seed_everything_seeds_the_data(tmp_path, dataset, seed):
    """``--seed_everything`` reaches the data module's shuffling and augmentation."""
    config = _config(tmp_path, dataset)
    cli = run(["fit", "--config", str(config), "--seed_everything", str(seed), "--trainer.max_steps=1",
               "--trainer.limit_val_batches=0", "--trainer.logger=false"])  # fmt: skip
    assert cli.datamodule.seed == seed


@pytest.mark.parametrize("no_logger", ["false", "[]"])
def test_fit_without_a_logger(tmp_path, dataset, no_logger):
    """``--trainer.logger=false``: no loggers, and no learning-rate monitor (it needs a logger)."""
    config = _config(tmp_path, dataset)
    cli = run(["fit", "--config", str(config), f"--trainer.logger={no_logger}",
               "--trainer.max_steps=1", "--trainer.limit_val_batches=0"])  # fmt: skip
    assert cli.trainer.loggers == []
    assert not any(isinstance(c, LearningRateMonitor) for c in cli.trainer.callbacks)
    assert cli.trainer.global_step == 1
    root = tmp_path / "run"
    assert not (root / "csv").exists() and not (root / "tensorboard").exists()
    assert (root / "checkpoints" / "last.ckpt").is_file()


class SingleHeadSynthetic(EpicKitchensDataModule):
    """The synthetic data with only the verb, as one ``class`` head (like the released models)."""

    @property
    def num_classes(self) -> dict[str, int]:
        return {"class": super().num_classes["verb"]}

    def parse_split(self, split):
        return [
            dataclasses.replace(s, labels=None if s.labels is None else {"class": s.labels["verb"]}, subsets={})
            for s in super().parse_split(split)
        ]


def test_imported_original_checkpoint_validates(tmp_path, dataset):
    """A checkpoint in the original release's format -> ``gsf import-original`` -> ``gsf validate``."""
    num_verbs = SingleHeadSynthetic(root=dataset).num_classes["class"]
    torch.manual_seed(0)
    original = VideoClassifier("resnet18", "gsf", NUM_SEGMENTS, {"class": num_verbs}, dropout=0.5)
    state = {
        ("module.new_fc." + k.removeprefix("heads.class.")) if k.startswith("heads.") else f"module.{k}": v
        for k, v in original.state_dict().items()
    }
    torch.save({"epoch": 10, "state_dict": state}, tmp_path / "original.pth.tar")
    main(["import-original", str(tmp_path / "original.pth.tar"), str(tmp_path / "imported.ckpt"),
          "--num_segments", str(NUM_SEGMENTS), "--backbone", "resnet18"])  # the issue's spelling; fmt: skip

    config = _config(tmp_path, dataset, data_class=f"{__name__}.SingleHeadSynthetic")
    cli = run(["validate", "--config", str(config), "--ckpt_path", str(tmp_path / "imported.ckpt")])
    loaded = cli.model.model.state_dict()
    for key, value in original.state_dict().items():
        torch.testing.assert_close(loaded[key], value, msg=key)
    assert "val/all_class_accuracy_at_1" in cli.trainer.callback_metrics


def test_a_checkpoint_named_by_its_path_keeps_the_runs_model_settings(tmp_path, dataset):
    """``--ckpt_path FILE`` behaves as ``--ckpt_path last``: the run's own model settings stand
    (LightningCLI replaced them with the checkpoint's), and a model of another configuration is
    an error naming the difference rather than a silent switch to the checkpoint's."""
    config = _config(tmp_path, dataset)
    run(["fit", "--config", str(config)])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    for ckpt_path in (str(last), "last"):
        with pytest.raises(CheckpointMismatchError, match="backbone: checkpoint 'resnet18', this run 'resnet34'"):
            run(["validate", "--config", str(config), "--model.backbone", "resnet34", "--ckpt_path", ckpt_path])
    with pytest.raises(SystemExit) as exit_info:  # gsf itself: that message in one line, no traceback
        main(["validate", "--config", str(config), "--model.backbone", "resnet34", "--ckpt_path", "last"])
    message = str(exit_info.value.code)
    assert message.startswith(f"gsf validate: error: checkpoint {last} was saved from a different model"), message
    assert "backbone: checkpoint 'resnet18', this run 'resnet34'" in message and "\n" not in message
    resumed = run(["fit", "--config", str(config), "--trainer.max_epochs", "2", "--model.lr", "0.5",
                   "--ckpt_path", str(last)])
    assert resumed.model.hparams.lr == 0.5 and resumed.trainer.current_epoch == 2


def test_a_restored_checkpoint_does_not_need_the_imagenet_weights(tmp_path, dataset):
    """``pretrained`` is the starting point of training: fitted from a weights file that is then
    gone (another machine, an offline node), the checkpoint still validates, resumes and loads
    with ``load_from_checkpoint``; without a checkpoint to restore the file is still read."""
    weights = tmp_path / "resnet18_imagenet.pth"
    torch.manual_seed(1)
    imagenet = VideoClassifier("resnet18", "none", NUM_SEGMENTS, {"class": 2}).base_model.state_dict()
    torch.save(imagenet, weights)
    config = _config(tmp_path, dataset)
    run(["fit", "--config", str(config), "--model.pretrained", str(weights)])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["hyper_parameters"]["pretrained"] == str(weights)
    weights.unlink()

    cli = run(["validate", "--config", str(config), "--model.pretrained", str(weights), "--ckpt_path", str(last)])
    assert cli.model.hparams.pretrained is None
    restored = cli.model.model.state_dict()
    for key, value in saved["state_dict"].items():
        torch.testing.assert_close(restored[key.removeprefix("model.")], value, msg=key)
    resumed = run(["fit", "--config", str(config), "--model.pretrained", str(weights), "--trainer.max_epochs", "2",
                   "--ckpt_path", "last"])
    assert resumed.trainer.current_epoch == 2
    module = VideoClassificationModule.load_from_checkpoint(last, map_location="cpu")
    assert module.hparams.pretrained is None

    (tmp_path / "fresh").mkdir()
    fresh = _config(tmp_path / "fresh", dataset)  # nothing to resume: `last` starts from the weights
    with pytest.raises(FileNotFoundError, match="resnet18_imagenet.pth"):
        run(["fit", "--config", str(fresh), "--model.pretrained", str(weights), "--ckpt_path", "last"])


@pytest.fixture
def unconfigured_logging(monkeypatch):
    """Logging as a fresh ``gsf`` process finds it: no handlers. (Pytest adds its own to the
    root logger when the test itself starts: the test takes them away, ``no_root_handlers``.)"""
    project = logging.getLogger("lightning_gsf")
    monkeypatch.setattr(project, "handlers", [])
    monkeypatch.setattr(project, "level", logging.NOTSET)
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    return project


def test_gsf_prints_the_projects_information_messages(unconfigured_logging, monkeypatch, capsys):
    """Where ``gsf predict`` wrote its files, the schedule, ... were info messages Python does
    not show by default; now the first process prints them, every process its warnings."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    show_info_messages()
    logging.getLogger("lightning_gsf.submission").info("wrote 4 predictions to %s", "submission.zip")
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # (as Lightning sets it: RANK, SLURM_PROCID, the Trainer)
    logging.getLogger("lightning_gsf.submission").info("rank 1 information")
    logging.getLogger("lightning_gsf.submission").warning("rank 1 warning")
    assert capsys.readouterr().err.splitlines() == ["wrote 4 predictions to submission.zip", "rank 1 warning"]


def test_gsf_leaves_logging_configured_by_the_program_alone(unconfigured_logging, monkeypatch):
    configured = [logging.NullHandler()]
    monkeypatch.setattr(logging.getLogger(), "handlers", configured)
    show_info_messages()
    assert logging.getLogger().handlers == configured and unconfigured_logging.level == logging.NOTSET


def test_a_tool_that_configures_logging_prints_each_message_once(unconfigured_logging, monkeypatch, capsys):
    """``gsf synth`` calls ``logging.basicConfig``: its line came out twice."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    show_info_messages()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("lightning_gsf.data.synthetic").info("wrote data/synthetic")
    assert capsys.readouterr().err.splitlines() == ["wrote data/synthetic"]


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_scoring_without_a_checkpoint_is_warned_about(tmp_path, dataset, subcommand, caplog, monkeypatch):
    """After ``gsf fit`` it is easy to forget ``--ckpt_path``: the untrained model then scores
    (and ``predict`` writes a submission) without a word."""
    config = _config(tmp_path, dataset)
    limit = {"validate": "limit_val_batches", "test": "limit_test_batches", "predict": "limit_predict_batches"}
    with caplog.at_level("WARNING", logger="lightning_gsf.cli"):
        run([subcommand, "--config", str(config), f"--trainer.{limit[subcommand]}", "1"])
    assert f"gsf {subcommand} without --ckpt_path" in caplog.text
    if subcommand == "validate":  # once a run, not once a process
        caplog.clear()
        monkeypatch.setattr(rank_zero_only, "rank", 1)
        with caplog.at_level("WARNING", logger="lightning_gsf.cli"):
            run([subcommand, "--config", str(config), f"--trainer.{limit[subcommand]}", "1"])
        assert "without --ckpt_path" not in caplog.text


def test_ckpt_path_best_in_a_command_of_its_own_names_the_best_files(tmp_path, dataset):
    """Lightning's error said ModelCheckpoint was not configured to save the best model, which it is."""
    config = _config(tmp_path, dataset)
    with pytest.raises(ValueError, match=r"--ckpt_path best .* pass the checkpoint's file \(none in .*checkpoints\)"):
        run(["validate", "--config", str(config), "--ckpt_path", "best"])
    run(["fit", "--config", str(config)])
    best = next((tmp_path / "run" / "checkpoints").glob("best-*.ckpt"))
    with pytest.raises(ValueError, match=re.escape(f"pass the checkpoint's file ({best})")):
        run(["test", "--config", str(config), "--ckpt_path", "best"])


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_ckpt_path_last_without_a_last_checkpoint_is_an_error_when_scoring(tmp_path, dataset, subcommand):
    """Lightning scores the untrained model (and predict writes its submission) with a hint to
    turn on save_last, which is on."""
    config = _config(tmp_path, dataset)
    with pytest.raises(ValueError, match=r"--ckpt_path last: no last.ckpt in .*run/checkpoints \(trainer.default_root_dir "
                                         r".*\); checkpoints there: none"):
        run([subcommand, "--config", str(config), "--ckpt_path", "last"])


def test_fit_refuses_to_overwrite_a_previous_runs_last_checkpoint(tmp_path, dataset, caplog):
    """Run again in the same folder without --ckpt_path, a fit's first epoch overwrote the
    previous run's last.ckpt; with --ckpt_path last it resumes it."""
    config = _config(tmp_path, dataset)
    with caplog.at_level("WARNING", logger="lightning_gsf.cli"), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        run(["fit", "--config", str(config), "--ckpt_path", "last"])  # the first run of a job: nothing yet
    assert "no last.ckpt in" in caplog.text and "starts from scratch" in caplog.text
    # (and not Lightning's hint to turn on save_last: gsf's last_checkpoint writes last.ckpt)
    assert not [w for w in warned if "save_last" in str(w.message)]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = last.read_bytes()
    with pytest.raises(ValueError, match=r"last.ckpt is a previous run's, and this run would overwrite it: resume that "
                                         r"run with --ckpt_path last, or give this one another --trainer.default_root_dir"):
        run(["fit", "--config", str(config)])
    assert last.read_bytes() == saved


def test_an_unknown_subcommand_lists_every_subcommand_and_the_closest():
    with pytest.raises(SystemExit, match=r"gsf: unknown subcommand 'evalute'; did you mean 'evaluate'\? \(choose from "
                                         r"fit, validate, test, predict, synth, import-original, export-original, "
                                         r"evaluate, benchmark\)"):
        run(["evalute", "x", "y"])


def test_fit_logs_throughput_in_clips(tmp_path, dataset, monkeypatch):
    """Lightning's ThroughputMonitor, counting clips (the batch's first dimension): elapsed time
    and clips so far at every logged step, and clips a second once its window of batches ran."""
    from lightning_gsf import cli

    monkeypatch.setattr(cli, "THROUGHPUT_WINDOW", 2)  # (two training batches in this run)
    config = _config(tmp_path, dataset)
    trainer = run(["fit", "--config", str(config)]).trainer
    (monitor,) = (c for c in trainer.callbacks if isinstance(c, ThroughputMonitor))
    with (tmp_path / "run" / "csv" / "version_0" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    samples = [float(row["train/samples"]) for row in rows if row.get("train/samples")]
    assert samples == [4.0, 8.0]  # (batches of 4 clips, logged every step)
    rates = [float(row["train/device/samples_per_sec"]) for row in rows if row.get("train/device/samples_per_sec")]
    times = [float(row["train/time"]) for row in rows if row.get("train/time")]
    assert len(rates) == 1 and rates[0] == pytest.approx(4 / (times[1] - times[0]))
    assert [float(row["validate/samples"]) for row in rows if row.get("validate/samples")][-1] == 6.0
    assert monitor.batch_size_fn({"clip": torch.zeros(3, 2, 3, 4, 4)}) == 3


def test_a_fit_prints_no_advert_and_no_warning_about_lightnings_own_code(tmp_path, dataset):
    """Lightning's "Tip" lines (its cloud services) and its pytree helper's deprecation warning
    came on every command; the run's own lines stay."""
    config = _config(tmp_path, dataset)
    result = subprocess.run([sys.executable, "-m", "lightning_gsf.cli", "fit", "--config", str(config)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Tip:" not in output and "LeafSpec" not in output, output[-3000:]
    assert "lr schedule:" in output  # (the project's information lines are still printed)


def test_a_resumed_run_leaves_one_last_checkpoint(tmp_path, dataset):
    """A run resumed from a ``last.ckpt`` saved before any validation: the monitored
    checkpoint (whose version counter is on) does not also write a ``last-v1.ckpt``."""
    config = _config(tmp_path, dataset)
    run(["fit", "--config", str(config), "--trainer.max_steps", "1"])  # (mid-epoch, not validated)
    run(["fit", "--config", str(config), "--ckpt_path", "last"])
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert [n for n in names if not n.startswith("best-")] == ["last.ckpt"], names


def test_ckpt_path_best_in_predict_names_the_best_files(tmp_path, dataset):
    config = _config(tmp_path, dataset)
    with pytest.raises(ValueError, match=r"--ckpt_path best .* pass the checkpoint's file \(none in .*checkpoints\)"):
        run(["predict", "--config", str(config), "--ckpt_path", "best"])


def test_ckpt_path_last_error_lists_the_checkpoints_there(tmp_path, dataset):
    """No ``last.ckpt``: the error lists every checkpoint in the folder, not only the best ones."""
    config = _config(tmp_path, dataset)
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "epoch=3.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"; checkpoints there: \S+epoch=3\.ckpt$"):
        run(["validate", "--config", str(config), "--ckpt_path", "last"])


def test_fit_without_default_root_dir_writes_in_the_working_directory(tmp_path, dataset, monkeypatch):
    config = _config(tmp_path, dataset)
    monkeypatch.chdir(tmp_path)
    run(["fit", "--config", str(config), "--trainer.default_root_dir=null", "--trainer.max_steps=1",
         "--trainer.limit_val_batches=0"])
    assert (tmp_path / "csv" / "version_0").is_dir() and (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_logger_true_gives_the_projects_loggers_and_checkpoints_are_atomic(tmp_path, dataset):
    """``--trainer.logger=true`` means our TensorBoard and CSV loggers, not Lightning's
    ``lightning_logs``; the checkpoints go through AtomicCheckpointIO."""
    config = _config(tmp_path, dataset)
    fitted = run(["fit", "--config", str(config), "--trainer.logger=true", "--trainer.max_steps=1",
                  "--trainer.limit_val_batches=0"])
    root = tmp_path / "run"
    assert (root / "csv" / "version_0").is_dir() and (root / "tensorboard" / "version_0").is_dir()
    assert isinstance(fitted.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_configured_progress_bar_replaces_the_rich_one(tmp_path, dataset):
    """A progress bar in ``trainer.callbacks`` is the run's (two bars would stop the run)."""
    config = _config(tmp_path, dataset)
    fitted = run(["fit", "--config", str(config), "--trainer.callbacks+=pytorch_lightning.callbacks.TQDMProgressBar",
                  "--trainer.max_steps=1", "--trainer.limit_val_batches=0", "--trainer.logger=false"])
    assert type(fitted.trainer.progress_bar_callback) is TQDMProgressBar


@pytest.mark.parametrize(("kind", "settings"), [
    (PreemptionCheckpoint, {"stop_on_ctrl_c": False, "filename": "stopped"}),
    (DataErrorCheckpoint, {"filename": "unreadable"}),
    (ExactResume, {}),
])
def test_a_configured_stop_or_resume_callback_replaces_gsfs_default(tmp_path, dataset, kind, settings):
    """One of gsf's default callbacks given in ``trainer.callbacks``, with settings of its own,
    is the run's only one of its kind (a second PreemptionCheckpoint kept the default's Ctrl-C
    handling; two ExactResume are refused by Lightning)."""
    config = _config(tmp_path, dataset)
    options = [f"--trainer.callbacks.{name}={value}" for name, value in settings.items()]
    fitted = run(["fit", "--config", str(config), f"--trainer.callbacks+={kind.__module__}.{kind.__name__}", *options,
                  "--trainer.max_steps=1", "--trainer.limit_val_batches=0", "--trainer.logger=false"])
    of_the_kind = [callback for callback in fitted.trainer.callbacks if isinstance(callback, kind)]
    assert len(of_the_kind) == 1
    assert all(getattr(of_the_kind[0], name) == value for name, value in settings.items())
    defaults = (PreemptionCheckpoint, DataErrorCheckpoint, ExactResume)
    assert all(sum(isinstance(c, default) for c in fitted.trainer.callbacks) == 1 for default in defaults)


@pytest.mark.parametrize("compiled", [False, True])
def test_the_model_summary_counts_the_flops_of_a_clip(tmp_path, dataset, capsys, compiled):
    """Lightning's model summary counts the FLOPs of an example clip of the data's size (it
    printed "Total FLOPs: 0"); not under torch.compile, which would compile that clip."""
    config = _config(tmp_path, dataset)
    fitted = run(["fit", "--config", str(config), "--trainer.enable_model_summary=true", "--trainer.max_steps=1",
                  "--trainer.limit_val_batches=0", "--trainer.logger=false",
                  *(["--model.compile", "{backend: eager}"] if compiled else [])])
    total = re.search(r"Total FLOPs: *(.+?) *$", capsys.readouterr().out, flags=re.MULTILINE)
    if compiled:
        assert fitted.model.example_input_array is None and (total is None or total[1] == "0")
        return
    assert fitted.model.example_input_array.shape == (1, NUM_SEGMENTS, 3, 32, 32)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter, torch.no_grad():
        fitted.model.eval()(fitted.model.example_input_array)
    assert counter.get_total_flops() > 10**6 and total[1] == get_human_readable_count(counter.get_total_flops())


def test_gsf_help_describes_the_subcommands_and_tools(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["--help"])
    assert exit_info.value.code == 0 and "Tools (each with its own --help)" in capsys.readouterr().out


def test_resuming_a_run_without_a_logger(tmp_path, dataset):
    """Without a logger the config is saved in ``default_root_dir``; a resume overwrites it
    rather than stopping on the existing ``config.yaml``."""
    config = _config(tmp_path, dataset)
    common = ["fit", "--config", str(config), "--trainer.logger=false", "--trainer.limit_val_batches=0"]
    run([*common, "--trainer.max_steps=1"])
    assert run([*common, "--trainer.max_steps=2", "--ckpt_path", "last"]).trainer.global_step == 2


def test_a_ctrl_c_stop_exits_130(monkeypatch):
    def stopped(args):
        stop = SIGTERMException()
        stop.gsf_stop_signal = signal.SIGINT  # (as PreemptionCheckpoint.on_exception marks it)
        raise stop
    monkeypatch.setattr(cli, "run", stopped)
    monkeypatch.setattr(cli.gloo_exit, "release_gloo_workers_at_exit", lambda: None)
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit"])
    assert exit_info.value.code == cli.EXIT_STOPPED_BY_CTRL_C == 130


def _release_file(path: Path, **extra) -> None:
    """A checkpoint in the original release's layout, with ``extra`` entries."""
    original = VideoClassifier("resnet18", "gsf", NUM_SEGMENTS, {"class": 3}, dropout=0.5)
    torch.save({**_original_checkpoint_of(original), **extra}, path)


def test_import_original_keeps_the_release_dropout(tmp_path):
    _release_file(tmp_path / "o.pth.tar")
    main(["import-original", str(tmp_path / "o.pth.tar"), str(tmp_path / "i.ckpt"), "--num_segments",
          str(NUM_SEGMENTS)])
    assert torch.load(tmp_path / "i.ckpt", weights_only=False)["hyper_parameters"]["dropout"] == 0.5


def test_import_original_passes_trust_pickle(tmp_path):
    """A release file holding a pickled object (the release saves its ``args``) loads with
    ``--trust-pickle``."""
    _release_file(tmp_path / "o.pth.tar", args=argparse.Namespace(arch="resnet18"))
    main(["import-original", str(tmp_path / "o.pth.tar"), str(tmp_path / "i.ckpt"), "--num_segments",
          str(NUM_SEGMENTS), "--trust-pickle"])
    assert (tmp_path / "i.ckpt").is_file()


def test_export_original_passes_the_head(tmp_path):
    module = VideoClassificationModule({"verb": 3, "noun": 4}, num_segments=NUM_SEGMENTS, backbone="resnet18",
                                       pretrained=None)
    path = tmp_path / "trained.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    assert run(["export-original", str(path), str(tmp_path / "noun.pth.tar"), "--head", "noun"]).num_classes == 4


def test_input_errors_are_found_along_the_whole_chain_of_causes_and_only_there(monkeypatch):
    """An input error two causes down is a one-line message; a bug's error, whose chain holds
    none, keeps its traceback."""
    inner = SampleReadError("sample 'x': cannot be read")
    middle, outer, bug = ValueError("wrapped"), ValueError("wrapped again"), ValueError("a bug")
    middle.__cause__, outer.__cause__, bug.__cause__ = inner, middle, KeyError("k")
    monkeypatch.setattr(cli.gloo_exit, "release_gloo_workers_at_exit", lambda: None)
    monkeypatch.setattr(cli, "run", lambda args: (_ for _ in ()).throw(outer))
    with pytest.raises(SystemExit, match=r"^gsf fit: error: sample 'x': cannot be read$"):
        main(["fit"])
    monkeypatch.setattr(cli, "run", lambda args: (_ for _ in ()).throw(bug))
    with pytest.raises(ValueError, match="a bug"):  # not an input error: its traceback
        main(["fit"])
