"""The suite's own setup (``conftest.py``): how pytest-xdist's processes share the cores."""

from __future__ import annotations

import pytest

from conftest import threads_per_worker


@pytest.mark.parametrize("worker_count,cores,threads", [
    (None, 2, None), ("", 16, None),  # not under xdist: PyTorch's own choice
    ("2", 2, 1), ("1", 2, 2), ("4", 16, 4), ("3", 16, 5),  # each process its share of the cores
    ("8", 2, 1), ("2", 1, 1)])  # more processes than cores: still one thread each
def test_each_xdist_process_takes_its_share_of_the_cores(worker_count, cores, threads):
    assert threads_per_worker(worker_count, cores) == threads
