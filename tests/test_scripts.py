"""The helper scripts in ``scripts/`` run (on tiny inputs) and say what they measure."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_profile_gsf_prints_every_formulation_for_every_stage(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["profile_gsf.py", "--input-size", "32", "--num-segments", "2",
                                      "--repeats", "1", "--warmup", "0"])
    runpy.run_path(str(SCRIPTS / "profile_gsf.py"), run_name="__main__")
    output = capsys.readouterr().out
    for mode in ("inference", "training step"):
        assert mode in output
    header = next(line for line in output.splitlines() if line.strip().startswith("stage"))
    assert header.split() == ["stage", "no", "GSF", "fast", "compilable", "reference"]
    stages = [line.split()[0] for line in output.splitlines() if line.strip()[:1].isdigit()]
    assert stages == ["256x8x8", "512x4x4", "1024x2x2", "2048x1x1"] * 2
    totals = [line for line in output.splitlines() if line.strip().startswith("GSF ms per clip")]
    assert len(totals) == 2 and all(len(line.split()) == 4 + 3 for line in totals)


@pytest.mark.parametrize("script", ["gpu_checks.sh", "slurm_gsf.sbatch", "torchrun_gsf.sh"])
def test_shell_scripts_parse(script):
    subprocess.run(["bash", "-n", str(SCRIPTS / script)], check=True)


def test_compare_gsf_revisions_runs_both_gsfs_next_to_tsn(capsys, monkeypatch):
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=SCRIPTS.parent, capture_output=True).returncode:
        pytest.fail("the checkout has no git history for the script to read an older GSF from")
    monkeypatch.setattr(sys, "argv", ["compare_gsf_revisions.py", "--revision", "HEAD", "--backbone", "resnet18",
                                      "--input-size", "32", "--num-segments", "2", "--rounds", "1",
                                      "--warmup", "0", "--mode", "train"])
    runpy.run_path(str(SCRIPTS / "compare_gsf_revisions.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "8 GSF modules run the code of HEAD"  # one per BasicBlock
    assert lines[1].startswith("train, resnet18, T=2, 32 px")
    assert [line.split(":")[0].strip() for line in lines[2:]] == ["TSN", "GSF@HEAD", "GSF@checkout", "old - checkout"]
