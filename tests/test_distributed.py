"""DDP on CPU (gloo) with real processes: torchrun training, and evaluation equal to one process.

The processes are real (``torchrun`` and Lightning's own DDP launcher start them), the data
is a tiny synthetic EPIC-KITCHENS set with an odd number of validation samples (so a padding
sampler would score one twice), and the model a ResNet-18 GSF on 2 segments of 32 px.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import zipfile
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from pytorch_lightning.plugins.layer_sync import TorchSyncBatchNorm
from torch import nn

from lightning_gsf.data.synthetic import generate_synthetic_dataset
from lightning_gsf.gsf import GSF
from lightning_gsf.module import VideoClassificationModule

NUM_VAL = 7  # odd: two processes cannot split it evenly
TIMEOUT = 240


@pytest.fixture(scope="module")
def tiny_epic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_epic")
    generate_synthetic_dataset(root, num_train=8, num_val=NUM_VAL, num_test=1, size=32, videos=False, overwrite=True)
    return root


def gsf_arguments(data_root: Path, run_dir: Path, devices: int) -> list[str]:
    """A complete ``gsf`` configuration on the command line: tiny data, tiny model, CPU."""
    arguments = [
        "--data=lightning_gsf.data.epic.EpicKitchensDataModule",
        f"--data.init_args.root={data_root}",
        "--data.init_args.num_segments=2",
        "--data.init_args.batch_size=2",
        "--data.init_args.num_workers=0",
        "--data.init_args.input_size=32",
        "--data.init_args.resize_size=32",
        "--model.backbone=resnet18",
        "--model.pretrained=null",
        "--model.warmup_epochs=0",
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.accelerator=cpu",
        f"--trainer.devices={devices}",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.deterministic=true",
        "--seed_everything=0",
    ]
    if devices > 1:
        arguments.append("--trainer.strategy=ddp")
    return arguments


def run(command: list[str]) -> str:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=environment)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result.stdout + result.stderr


def gsf(subcommand: str, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "lightning_gsf.cli", subcommand, *arguments]


def logged_metrics(run_dir: Path) -> dict[str, float]:
    """The last logged value of every metric in the run's CSV log."""
    (metrics_file,) = (run_dir / "csv").glob("version_*/metrics.csv")
    values: dict[str, float] = {}
    with metrics_file.open() as file:
        for row in csv.DictReader(file):
            values.update({key: float(value) for key, value in row.items() if value not in ("", None)})
    return values


@pytest.fixture(scope="module")
def torchrun_checkpoint(tiny_epic, tmp_path_factory) -> Path:
    """Two CPU processes started by ``torchrun`` train for two steps (one epoch) and checkpoint."""
    run_dir = tmp_path_factory.mktemp("torchrun_fit")
    torchrun = Path(sys.executable).with_name("torchrun")
    run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "lightning_gsf.cli", "fit",
         *gsf_arguments(tiny_epic, run_dir, devices=2), "--trainer.max_epochs=1"]
    )  # fmt: skip
    return run_dir / "checkpoints" / "last.ckpt"


def test_torchrun_trains_with_two_processes(torchrun_checkpoint):
    checkpoint = torch.load(torchrun_checkpoint, map_location="cpu", weights_only=True)
    # 8 training samples, 2 per process and step, 2 processes: 2 optimiser steps per epoch.
    assert checkpoint["global_step"] == 2
    sampler_state = checkpoint["callbacks"]["ExactResume"]["train_loader"]["sampler"]
    assert (sampler_state["epoch"], sampler_state["position"]) == (0, 8)


EVALUATIONS = {
    "validate": ("val", ()),
    # the test loop on the labelled validation split, each sample as 2 clips x 3 crops = 6 views
    "test": ("test", ("--data.init_args.test_split=val", "--data.init_args.test_clips=2",
                      "--data.init_args.test_crops=3")),
}  # fmt: skip


@pytest.mark.parametrize("subcommand", EVALUATIONS)
def test_ddp_evaluation_equals_one_process_on_the_same_checkpoint(tiny_epic, torchrun_checkpoint, tmp_path,
                                                                  subcommand):
    """7 samples in batches of 3: process 0 holds 2 batches, process 1 one. Every metric state
    is gathered as one tensor a process (a state gathered batch by batch would take as many
    collectives on every process, and broke the connection here). ``gsf test`` scores each
    sample's views on one process and averages them there."""
    stage, extra = EVALUATIONS[subcommand]
    runs = {devices: tmp_path / f"{subcommand}_{devices}" for devices in (1, 2)}
    commands = [
        gsf(subcommand, *gsf_arguments(tiny_epic, run_dir, devices), f"--ckpt_path={torchrun_checkpoint}",
            "--data.init_args.eval_batch_size=3", *extra)
        for devices, run_dir in runs.items()
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        outputs = list(pool.map(run, commands))
    # (the accuracies are gathered before they are logged: Lightning's advice to sync them is silenced)
    assert "sync_dist=True" not in outputs[1]
    single, distributed = (logged_metrics(runs[devices]) for devices in (1, 2))
    accuracies = sorted(key for key in single if "accuracy" in key)
    assert accuracies and all(key.startswith(f"{stage}/") for key in accuracies)
    assert sorted(key for key in distributed if "accuracy" in key) == accuracies
    for key in accuracies:
        assert distributed[key] == single[key], key  # exact: every sample counted once
    assert distributed[f"{stage}/loss"] == pytest.approx(single[f"{stage}/loss"], rel=1e-5)


def test_sync_batchnorm_converts_every_norm_and_keeps_names_and_partial_bn():
    """``trainer.sync_batchnorm: true`` converts every BatchNorm (GSF's own too) for DDP training.

    Checkpoints must load with and without it (same tensor names), and partial BN
    (``freeze_bn``) must still keep the frozen norms in eval mode after the conversion.
    PyTorch's SyncBatchNorm only runs on GPUs, so this checks the conversion Lightning's DDP
    strategy applies rather than a CPU training run.
    """
    module = VideoClassificationModule(
        num_classes={"verb": 3, "noun": 4}, num_segments=2, backbone="resnet18", freeze_bn=True, dropout=0.0
    )
    frozen_names = {name for name, m in module.named_modules() if any(m is f for f in module.frozen_norms)}
    gsf_norm_names = {
        f"{name}.{child}" for name, m in module.named_modules() if isinstance(m, GSF)
        for child, c in m.named_children() if isinstance(c, nn.modules.batchnorm._BatchNorm)
    }  # fmt: skip
    assert frozen_names and gsf_norm_names
    plain_state = module.state_dict()

    converted = TorchSyncBatchNorm().apply(module)  # what the DDP strategy does with sync_batchnorm
    norms = {name: m for name, m in converted.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert all(isinstance(m, nn.SyncBatchNorm) for m in norms.values())
    assert gsf_norm_names <= norms.keys()
    assert converted.state_dict().keys() == plain_state.keys()
    converted.train()
    still_training = sorted(name for name in frozen_names if converted.get_submodule(name).training)
    assert not still_training, f"partial BN lost by the SyncBatchNorm conversion: {still_training[:3]}"


def test_ddp_predictions_equal_one_process_on_the_same_checkpoint(tiny_epic, torchrun_checkpoint, tmp_path):
    """``gsf predict`` under DDP: process 0 gathers every process's predictions and writes each
    of the 7 validation samples once (split unpadded, 4 and 3), in the submission
    and the results file alike, with the scores of one process."""
    runs = {devices: tmp_path / f"predict_{devices}" for devices in (1, 2)}
    commands = [
        gsf("predict", *gsf_arguments(tiny_epic, run_dir, devices), f"--ckpt_path={torchrun_checkpoint}",
            "--data.init_args.predict_split=val")
        for devices, run_dir in runs.items()
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(run, commands))
    submissions, results = {}, {}
    for devices, run_dir in runs.items():
        with zipfile.ZipFile(run_dir / "submission.zip") as archive:
            submissions[devices] = json.loads(archive.read("test.json"))["results"]
        with (run_dir / "results.pkl").open("rb") as handle:
            results[devices] = pickle.load(handle)
    assert len(submissions[2]) == NUM_VAL and sorted(submissions[2]) == sorted(submissions[1])
    assert results[2]["narration_id"].tolist() == results[1]["narration_id"].tolist()
    assert sorted(results[2]["narration_id"].tolist()) == sorted(submissions[2])
    for sample_id, entry in submissions[2].items():
        for head, head_scores in entry.items():
            assert head_scores == pytest.approx(submissions[1][sample_id][head], rel=1e-5, abs=1e-6), (sample_id, head)
    for key in ("verb_output", "noun_output"):
        assert results[2][key].shape[0] == NUM_VAL
        torch.testing.assert_close(torch.from_numpy(results[2][key]), torch.from_numpy(results[1][key]),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("limit,refused", [("0.5", True), ("1", False)])
def test_a_fraction_of_batches_that_leaves_a_process_none_is_refused_by_every_process(tiny_epic, torchrun_checkpoint,
                                                                                      tmp_path, limit, refused):
    """7 samples in batches of 3 split unpadded as 2 batches and 1: half of each leaves process 1
    none. Lightning would stop that process alone while process 0 waited for it in the metric
    sync; both now stop with the same one-line error. An integer limit evaluates."""
    command = gsf("validate", *gsf_arguments(tiny_epic, tmp_path, devices=2), f"--ckpt_path={torchrun_checkpoint}",
                  "--data.init_args.eval_batch_size=3", f"--trainer.limit_val_batches={limit}")
    if not refused:
        run(command)
        assert logged_metrics(tmp_path)["val/loss"] > 0
        return
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1, result.stderr[-3000:]
    message = ("trainer.limit_val_batches=0.5 leaves the process with the fewest val batches none to evaluate "
               "(batches of 3 clips; the 2 processes hold 2, 1)")
    assert result.stderr.count(message) == 2, result.stderr[-3000:]  # (once from each process)
    assert "Traceback" not in result.stderr and "Connection closed" not in result.stderr, result.stderr[-3000:]
