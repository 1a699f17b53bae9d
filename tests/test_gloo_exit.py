"""Two-process gloo runs exit 0 once their work is done (``lightning_gsf.gloo_exit``).

Without the exit handler, two processes that run three DDP steps and exit at once abort at
exit in about one run of three on the development machine (15 of 50; this test, made of 10
such runs, failed 3 times of 3 without the handler), so several runs are made. This file is also the script the test runs (``python tests/test_gloo_exit.py
RANK STORE [--no-release]``; ``--no-release`` shows the abort).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lightning_gsf import cli, gloo_exit

RUNS = 10


def _exercise(rank: int, store: Path, release: bool) -> None:
    import torch
    import torch.distributed as dist

    from lightning_gsf.gloo_exit import release_gloo_workers_at_exit

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    if release:
        release_gloo_workers_at_exit()
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
    for _ in range(3):
        model(torch.randn(8, 4)).sum().backward()  # (the gradients' all-reduce runs in backward)


@pytest.mark.slow
def test_two_process_gloo_runs_exit_zero(tmp_path):
    failures = []
    for run in range(RUNS):
        store = tmp_path / f"store{run}"
        processes = [
            subprocess.Popen([sys.executable, __file__, str(rank), str(store)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
            for rank in (0, 1)
        ]
        try:
            for rank, process in enumerate(processes):
                output, _ = process.communicate(timeout=120)
                if process.returncode != 0:
                    failures.append(f"run {run}, rank {rank}: exit status {process.returncode}\n{output[-2000:]}")
        finally:
            for process in processes:  # (after a timeout: none left running)
                process.kill()
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(("initialized", "backend", "sleeps"), [(False, None, False), (True, "gloo", True),
                                                                 (True, "nccl", False)])
def test_the_exit_handler_waits_only_in_a_process_with_a_gloo_group(monkeypatch, initialized, backend, sleeps):
    slept = []
    monkeypatch.setattr(gloo_exit.dist, "is_initialized", lambda: initialized)
    monkeypatch.setattr(gloo_exit.dist, "get_backend", lambda: backend)
    monkeypatch.setattr(gloo_exit.time, "sleep", slept.append)
    gloo_exit._release_gloo_workers()
    assert slept == ([gloo_exit.RELEASE_SECONDS] if sleeps else [])


def test_gsf_registers_the_exit_handler_before_it_runs_a_command(monkeypatch):
    events = []
    monkeypatch.setattr(cli.gloo_exit, "release_gloo_workers_at_exit", lambda: events.append("registered"))
    monkeypatch.setattr(cli, "run", lambda args: events.append(("run", args)))
    cli.main(["fit"])
    assert events == ["registered", ("run", ["fit"])]


def test_the_exit_handler_does_nothing_in_a_process_without_a_group(monkeypatch):
    slept = []
    monkeypatch.setattr(gloo_exit.time, "sleep", slept.append)
    assert not gloo_exit.dist.is_initialized()
    gloo_exit._release_gloo_workers()  # (dist.get_backend() raises in a process without a group)
    assert slept == []


def test_the_exit_handler_is_registered_once_a_process(monkeypatch):
    registered = []
    monkeypatch.setattr(gloo_exit.atexit, "register", registered.append)
    clear = getattr(gloo_exit.release_gloo_workers_at_exit, "cache_clear", lambda: None)
    clear()
    try:
        gloo_exit.release_gloo_workers_at_exit()
        gloo_exit.release_gloo_workers_at_exit()
    finally:
        clear()
    assert registered == [gloo_exit._release_gloo_workers]


if __name__ == "__main__":
    _exercise(int(sys.argv[1]), Path(sys.argv[2]), release="--no-release" not in sys.argv[3:])
