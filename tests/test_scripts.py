"""The helper scripts in ``scripts/`` run (on tiny inputs) and say what they measure."""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_profile_gsf_prints_every_formulation_for_every_stage(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["profile_gsf.py", "--input-size", "32", "--num-segments", "2",
                                      "--repeats", "1", "--warmup", "0"])
    runpy.run_path(str(SCRIPTS / "profile_gsf.py"), run_name="__main__")
    output = capsys.readouterr().out
    for mode in ("inference", "training step"):
        assert mode in output
    header = next(line for line in output.splitlines() if line.strip().startswith("stage"))
    assert header.split() == ["stage", "no", "GSF", "fast", "torch", "compilable", "reference"]
    stages = [line.split()[0] for line in output.splitlines() if line.strip()[:1].isdigit()]
    assert stages == ["256x8x8", "512x4x4", "1024x2x2", "2048x1x1"] * 2
    totals = [line for line in output.splitlines() if line.strip().startswith("GSF ms per clip")]
    assert len(totals) == 2 and all(len(line.split()) == 4 + 4 for line in totals)


def test_gsf_host_cost_dry_run_on_the_cpu(capsys, monkeypatch):
    """``--device cpu`` (the Triton kernels under the interpreter): every row and the profile
    of the Triton path's training step are printed."""
    monkeypatch.setattr(sys, "argv", ["gsf_host_cost.py", "--device", "cpu", "--calls", "1", "--warmup", "0",
                                      "--profile-rows", "3"])
    runpy.run_path(str(SCRIPTS / "gsf_host_cost.py"), run_name="__main__")
    output = capsys.readouterr().out
    rows = [line.rsplit(":", 1)[0].strip() for line in output.splitlines() if line.rstrip()[-1:].isdigit()
            and ":" in line and not line.lstrip()[:1].isdigit()]
    assert rows[:7] == ["training step: x.clone() + forward + backward, nothing else",
                        "training step, forward_triton", "training step, forward_torch",
                        "training step, forward_reference", "inference, forward_triton", "inference, forward_torch",
                        "inference, forward_reference"]
    assert "cProfile of 1 training steps of forward_triton" in output


def test_gsf_host_cost_with_stubbed_kernels_times_the_glue_alone(capsys, monkeypatch):
    """``--stub-kernels``: GSF's Triton kernels launch nothing (each launch goes to a stand-in)."""
    from lightning_gsf import gsf_kernels

    launched = []
    for name in [name for name in dir(gsf_kernels) if name.endswith("_kernel") and name.startswith("_")]:
        monkeypatch.setattr(gsf_kernels, name, getattr(gsf_kernels, name))  # (restored after the test)
    real = gsf_kernels._blend_kernel
    monkeypatch.setattr(type(real), "__getitem__", lambda self, grid: launched.append(grid) or (lambda *a, **k: None))
    monkeypatch.setattr(sys, "argv", ["gsf_host_cost.py", "--device", "cpu", "--stub-kernels", "--calls", "1",
                                      "--warmup", "0", "--profile-rows", "1"])
    runpy.run_path(str(SCRIPTS / "gsf_host_cost.py"), run_name="__main__")
    output = capsys.readouterr().out
    assert output.startswith("12 Triton kernels stubbed out")
    assert "training step, forward_triton" in output and launched == []


@pytest.mark.parametrize("script", ["trace_gpu_step.py", "tune_gsf_kernels.py"])
def test_gpu_profiling_scripts_say_they_need_a_gpu(script, capsys, monkeypatch):
    """Without CUDA they stop with an argparse error naming what is missing (on a GPU
    machine they run; their figures are in docs/performance.md)."""
    if torch.cuda.is_available():
        pytest.fail("this test checks the behaviour on a machine without CUDA")
    monkeypatch.setattr(sys, "argv", [script])
    monkeypatch.syspath_prepend(str(SCRIPTS))  # (as when the script runs: its folder first)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(SCRIPTS / script), run_name="__main__")
    assert exit_info.value.code == 2
    assert "needs a CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["gpu_checks.sh", "slurm_gsf.sbatch", "torchrun_gsf.sh"])
def test_shell_scripts_parse(script):
    subprocess.run(["bash", "-n", str(SCRIPTS / script)], check=True)


def test_slurm_script_signals_the_job_step_not_srun_then_requeues(tmp_path):
    """Near the time limit (USR1) the sbatch script has SLURM send SIGTERM to the training
    tasks (scancel on step 0: srun answers a SIGTERM of its own with a SIGKILL of its tasks, and
    no checkpoint would be written), waits for them to stop and requeues the job. SLURM's
    commands are stand-ins that record their arguments."""
    log, stop = tmp_path / "calls.log", tmp_path / "stop"
    tools = {
        # srun: runs until the step is signalled (the stand-in scancel's flag); a SIGTERM to
        # srun itself is recorded, as the defect it would be.
        "srun": f'echo "srun $*" >> {log}; echo $$ > {tmp_path}/srun.pid\n'
                f'trap \'echo "srun got SIGTERM" >> {log}; exit 143\' TERM\n'
                f'while [ ! -f {stop} ]; do sleep 0.05; done; echo "tasks stopped" >> {log}',
        "scancel": f'echo "scancel $*" >> {log}; touch {stop}',
        "scontrol": f'echo "scontrol $*" >> {log}',
    }
    for name, body in tools.items():
        (tmp_path / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (tmp_path / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_NNODES": "1",
           "SLURM_NTASKS_PER_NODE": "2", "SLURM_CPUS_PER_TASK": "3"}
    script = subprocess.Popen(["bash", str(SCRIPTS / "slurm_gsf.sbatch"), "configs/x.yaml", "--model.lr", "0.02"],
                              env=env, cwd=tmp_path)
    deadline = time.monotonic() + 30
    while not (tmp_path / "srun.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    script.send_signal(signal.SIGUSR1)
    script.wait(timeout=30)
    calls = log.read_text().splitlines()
    assert calls[0].startswith("srun --kill-on-bad-exit=1 gsf fit --config configs/x.yaml --trainer.num_nodes 1 "
                               "--trainer.devices 2 --trainer.strategy ddp --data.init_args.num_workers 2 "
                               "--ckpt_path last --model.lr 0.02")
    assert calls[1:] == ["scancel --signal=TERM 4242.0", "tasks stopped", "scontrol requeue 4242"]


def run_gpu_checks(tmp_path: Path, cases: str, **env: str) -> tuple[subprocess.CompletedProcess, str, Path]:
    """``gpu_checks.sh`` with a stand-in interpreter that records its arguments (exit codes by
    ``cases``, a bash ``case`` body matched against them) and a stand-in ``nvidia-smi``:
    the result, its checks.log and its output folder."""
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\necho "ran: $*"\ncase "$*" in {cases} esac\n')
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/usr/bin/env bash\necho 'NVIDIA H200, 143771 MiB'\n")
    for tool in (fake, smi):
        tool.chmod(0o755)
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(SCRIPTS / "gpu_checks.sh"), str(out)], cwd=SCRIPTS.parent,
                            env={**os.environ, "PYTHON": str(fake), "GPU_CHECKS_COMPILE": "0",
                                 "PATH": f"{tmp_path}:{os.environ['PATH']}", **env},
                            capture_output=True, text=True)
    return result, (out / "checks.log").read_text(), out


def test_gpu_checks_run_every_step_most_wanted_first(tmp_path):
    """The tests (failing here), then the float32 costs with and without gradient reuse, the
    other cost tables, the profiles, then the loader on the synthetic set generated during the
    tests (and finished before the first timed step); every later step still runs, each
    logged as it ends, and the exit status is the first failure's."""
    result, log, out = run_gpu_checks(tmp_path, '*"-m pytest"*) exit 3;; *"import xdist"*) exit 0;;',
                                      PYTEST_WORKERS="5")
    assert result.returncode == 3
    ended = [line.split()[1].rstrip(":") for line in log.splitlines() if line.startswith("== ") and " exit " in line]
    assert ended[2:] == ["test_gpu", "loader_data", "fp32_t8", "no_reuse_fp32_t8", "fp32_t16", "bf16_t8", "bf16_cl_t8",
                         "trace", "host_cost", "host_glue", "tune", "profile", "loader", "fp32_t8_slow_paths",
                         "resources"]
    assert "== test_gpu: exit 3" in log and "== fp32_t8: exit 0" in log
    started = {line.split()[1].rstrip(":"): line for line in log.splitlines() if line.startswith("== ") and " exit " not in line}
    assert "LIGHTNING_GSF_CUDA_GRADIENT_REUSE=0" in started["no_reuse_fp32_t8"]
    assert "--stub-kernels" in started["host_glue"] and "--stub-kernels" not in started["host_cost"]
    assert started["test_gpu"].endswith("-n 5")
    synthetic = next(line for line in log.splitlines() if line.startswith("ran: -m lightning_gsf.data.synthetic"))
    loader_root = synthetic.split("--out ")[1].split()[0]
    assert f"--root {loader_root} " in started["loader"] and "--size 256" in synthetic
    assert not Path(loader_root).parent.exists()  # the generated set is removed at the end
    assert sorted(path.name for path in out.iterdir()) == ["checks.log"]  # the stand-in wrote no CSVs


def test_gpu_checks_end_with_the_compiled_networks_unless_told_not_to(tmp_path):
    """GPU_CHECKS_COMPILE unset or empty (the default, 1) adds the networks replayed as CUDA
    graphs, then compiled plainly, after every other step."""
    result, log, _ = run_gpu_checks(tmp_path, "", GPU_CHECKS_COMPILE="")
    assert result.returncode == 0
    ended = [line.split()[1].rstrip(":") for line in log.splitlines() if line.startswith("== ") and " exit " in line]
    assert ended[-3:] == ["resources", "cuda_graphs_t8", "compile_t8"]
    started = {line.split()[1].rstrip(":"): line for line in log.splitlines() if line.startswith("== ") and " exit " not in line}
    assert "--compile --compile-mode reduce-overhead" in started["cuda_graphs_t8"]
    assert "--compile " in started["compile_t8"] and "--compile-mode" not in started["compile_t8"]


def test_gpu_checks_skip_the_loader_when_its_data_set_was_not_written(tmp_path):
    """A failed generation fails its step and skips the loader's (whose benchmark would have
    timed a set of its own instead)."""
    result, log, _ = run_gpu_checks(tmp_path, '*"data.synthetic"*) exit 5;;')
    assert result.returncode == 1 and "== loader_data: exit 1" in log and "ran: -m lightning_gsf.data.synthetic" in log
    assert "== loader:" not in log and "== resources: exit 0" in log


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


def test_tune_script_default_setting_is_the_kernels_defaults(monkeypatch):
    """``tune_gsf_kernels.py``'s "default" row times the settings the kernels ship with, and
    every row sets each tuned constant (a renamed constant fails here, not on the GPU)."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    tune = runpy.run_path(str(SCRIPTS / "tune_gsf_kernels.py"))
    from lightning_gsf import gsf_kernels

    assert tune["SETTINGS"]["default"] == tuple(getattr(gsf_kernels, name) for name in tune["CONSTANTS"])
    assert all(len(values) == len(tune["CONSTANTS"]) for values in tune["SETTINGS"].values())


def test_kernel_resources_compiles_each_kernel_offline():
    """``kernel_resources.py`` builds kernels for sm_90 with Triton's bundled ptxas (no GPU)
    and prints each one's registers and the occupancy they allow; in a process of its own,
    since this suite imports the kernels for Triton's interpreter."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(SCRIPTS / "kernel_resources.py"), "--kernels", "gate", "gated_means",
                             "--warps", "4", "8"], env=env, capture_output=True, text=True, check=True)
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert [row[:2] for row in rows] == [["gate", "4"], ["gate", "8"], ["gated_means", "4"], ["gated_means", "8"]]
    assert all(0 < int(row[2]) <= 255 and 0 < int(row[5]) <= 64 for row in rows)


def test_kernel_resources_refuses_interpreted_kernels(capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(sys, "argv", ["kernel_resources.py"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(SCRIPTS / "kernel_resources.py"), run_name="__main__")
    assert "TRITON_INTERPRET is set" in capsys.readouterr().err


def _compare_cpu_kernels():
    return runpy.run_path(str(SCRIPTS / "compare_cpu_kernels.py"))


def test_compare_cpu_kernels_renames_every_library_block():
    """The revision's kernels are built under a namespace of their own: every
    ``TORCH_LIBRARY`` / ``TORCH_LIBRARY_IMPL`` block of the source moves to it (one left behind
    would register the revision's kernels over the checkout's), and nothing else changes."""
    with_namespace = _compare_cpu_kernels()["with_namespace"]
    source = (SCRIPTS.parent / "lightning_gsf" / "csrc" / "gsf_cpu.cpp").read_text()
    renamed = with_namespace(source, "lightning_gsf_at_0123456789ab")
    blocks = source.count("TORCH_LIBRARY(lightning_gsf,") + source.count("TORCH_LIBRARY_IMPL(lightning_gsf,")
    assert blocks >= 3
    assert "(lightning_gsf," not in renamed
    assert renamed.count("(lightning_gsf_at_0123456789ab,") == blocks
    assert renamed.replace("lightning_gsf_at_0123456789ab,", "lightning_gsf,") == source
    with pytest.raises(ValueError, match="no TORCH_LIBRARY block"):
        with_namespace("int main() {}", "other")


@pytest.mark.slow  # (builds a second copy of the kernels: about a minute, once)
@pytest.mark.parametrize("op,header,sites", [
    ("gsf", "GSF infer, in place, channels-last, float32, T=2", ["256", "512", "1024", "2048"]),
    ("tsm", "TSM shift and unshift, in place, channels-last, float32, T=2", ["64", "256", "512", "1024", "2048"]),
])
def test_compare_cpu_kernels_times_both_builds_on_the_same_inputs(op, header, sites, capsys, monkeypatch):
    """Against HEAD, whose kernels are a clean checkout's own: every site's outputs bitwise
    equal (with uncommitted kernel changes they may differ)."""
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=SCRIPTS.parent, capture_output=True).returncode:
        pytest.fail("the checkout has no git history for the script to read older kernels from")
    monkeypatch.setattr(sys, "argv", ["compare_cpu_kernels.py", "--revision", "HEAD", "--op", op, "--input-size", "64",
                                      "--num-segments", "2", "--rounds", "2", "--warmup", "0", "--channels-last"])
    runpy.run_path(str(SCRIPTS / "compare_cpu_kernels.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(header)
    rows = lines[2:2 + len(sites)]
    assert [line.split()[0] for line in rows] == sites
    assert all(line.endswith("True") for line in rows)
    assert lines[2 + len(sites)].strip().startswith("per clip (16 sites)")
