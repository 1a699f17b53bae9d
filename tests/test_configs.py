"""Every YAML under configs/ parses with the ``gsf`` parser, and ``--print_config`` round-trips.

New datasets' configs (``configs/<dataset>/*.yaml``) are picked up automatically.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest
import yaml

from lightning_gsf.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO_ROOT / "configs").rglob("*.yaml"))
# One config per folder also goes through the (slower) print -> parse round trip.
FIRST_OF_FOLDER = {min(p for p in CONFIGS if p.parent == folder) for folder in {p.parent for p in CONFIGS}}


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["gsf"])  # LightningCLI warns when it sees pytest's own arguments


def _printed_config(*args: str) -> dict:
    """The config ``gsf fit ... --print_config`` prints (it exits 0 after printing)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None), out.getvalue()
    return yaml.safe_load(out.getvalue())


def test_there_are_configs():
    names = {path.relative_to(REPO_ROOT / "configs").as_posix() for path in CONFIGS}
    expected = {f"{d}/{m}_{b}.yaml" for d, b in (("epic100", "resnet50"), ("synthetic", "resnet18")) for m in ("gsf", "tsm", "tsn")}
    assert expected <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(REPO_ROOT / "configs").as_posix())
def test_config_parses_and_prints_a_complete_config(config, tmp_path):
    printed = _printed_config("--config", str(config))
    source = yaml.safe_load(config.read_text())
    # What the file states survives parsing.
    for section in ("model", "trainer"):
        for key, value in (source.get(section) or {}).items():
            assert printed[section][key] == value, f"{config}: {section}.{key}"
    assert printed["data"]["class_path"].endswith(source["data"]["class_path"].rsplit(".", 1)[-1])
    # num_classes / num_segments come from the data module, stated once.
    assert "num_classes" not in printed["model"] and "num_segments" not in printed["model"]
    # The printed config is complete: fed back, it prints the same config.
    if config not in FIRST_OF_FOLDER:
        return
    again = tmp_path / "printed.yaml"
    again.write_text(yaml.safe_dump(printed))
    assert _printed_config("--config", str(again)) == printed


# The release's Something-Something v1 recipe (train_rgb.sh, main.py, utils/opts.py), which every
# real-dataset config states (the release publishes no other; see docs/training.md).
RELEASE_RECIPE = {
    "model": {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "warmup_epochs": 10, "dropout": 0.5, "freeze_bn": False},
    "trainer": {"max_epochs": 60, "gradient_clip_val": 20},
    "data": {"batch_size": 32, "train_sampling": "release", "randaugment": True, "test_clips": 2, "test_crops": 3},
}
REAL_DATASET_CONFIGS = [path for path in CONFIGS if path.parent.name != "synthetic"]


@pytest.mark.parametrize("config", REAL_DATASET_CONFIGS, ids=lambda p: p.relative_to(REPO_ROOT / "configs").as_posix())
def test_real_dataset_configs_state_the_release_recipe(config):
    source = yaml.safe_load(config.read_text())
    stated = {"model": source["model"], "trainer": source["trainer"], "data": source["data"]["init_args"]}
    for section, values in RELEASE_RECIPE.items():
        for key, value in values.items():
            assert stated[section].get(key) == value, f"{config}: {section}.{key}"


@pytest.mark.parametrize("config", REAL_DATASET_CONFIGS, ids=lambda p: p.relative_to(REPO_ROOT / "configs").as_posix())
def test_real_dataset_configs_train_with_the_release_global_batch_and_shapes(config):
    """The recipe's lr is for 32 clips a step: one process, no accumulation (a user scales from
    there). The paper's channel ratio per backbone, the release's crop sizes, the frames the
    file's name says, and the precision docs/training.md states (the release used float16 AMP)."""
    source = yaml.safe_load(config.read_text())
    model, trainer, data = source["model"], source["trainer"], source["data"]["init_args"]
    name = config.stem
    processes = trainer.get("devices") * trainer.get("num_nodes", 1) * trainer.get("accumulate_grad_batches", 1)
    assert data["batch_size"] * processes == 32, name
    assert trainer["precision"] == "bf16-mixed"
    if model["temporal_module"] == "gsf":
        assert model["gsf_ratio"] == (0.25 if model["backbone"].startswith("resnet") else 1.0), name
    sizes = (229, 261) if model["backbone"].startswith("inception_v3") else (224, 256)
    assert (data["input_size"], data["resize_size"]) == sizes, name
    frames = {"8f": 8, "16f": 16}.get(name.rsplit("_", 1)[-1], 8)  # (EPIC's names carry no count: 8)
    assert data["num_segments"] == frames, name
