"""The suite's own setup (``conftest.py``): how pytest-xdist's processes share the cores."""

from __future__ import annotations

import types

import pytest
import torch

import conftest
from conftest import threads_per_worker


@pytest.mark.parametrize("worker_count,cores,threads", [
    (None, 2, None), ("", 16, None),  # not under xdist: PyTorch's own choice
    ("2", 2, 1), ("1", 2, 2), ("4", 16, 4), ("3", 16, 5),  # each process its share of the cores
    ("8", 2, 1), ("2", 1, 1)])  # more processes than cores: still one thread each
def test_each_xdist_process_takes_its_share_of_the_cores(worker_count, cores, threads):
    assert threads_per_worker(worker_count, cores) == threads


@pytest.mark.parametrize("worker_count,threads_set", [("2", [1]), (None, [])])
def test_an_xdist_process_sets_its_threads_when_configured(worker_count, threads_set, monkeypatch):
    """``pytest_configure`` in a worker (xdist sets ``PYTEST_XDIST_WORKER_COUNT`` there) takes
    its share of two cores; outside xdist it leaves PyTorch's threads alone."""
    monkeypatch.setattr(conftest, "_cores", lambda: 2)
    if worker_count is None:
        monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    else:
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", worker_count)
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    conftest.pytest_configure(types.SimpleNamespace(option=types.SimpleNamespace(markexpr="not slow and not gpu")))
    assert calls == threads_set
