"""Shared test configuration."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _pytest.mark import expression as mark_expression  # (the -m expression language; no public API)


def interprets_triton(markexpr: str, cuda_available: bool) -> bool:
    """Whether GSF's Triton kernels run under Triton's interpreter (on CPU tensors) in a run
    selecting ``markexpr``: always without a GPU; with one, unless the run selects the ``gpu``
    tests, which need the kernels compiled (one process cannot have both: Triton reads the
    flag when a kernel is defined). So ``make test`` on a GPU machine runs the CPU suite as
    it runs in CI, and ``make test-gpu`` (``-m gpu``) the CUDA checks."""
    if not cuda_available:
        return True
    if not markexpr.strip():  # (no -m: every test, the gpu ones too)
        return False
    # (pytest 8 raises its ParseError for a malformed -m, pytest 9 a SyntaxError)
    malformed = getattr(mark_expression, "ParseError", SyntaxError)
    try:
        expression = mark_expression.Expression.compile(markexpr)
    except malformed:  # (pytest reports it as a usage error once collection starts)
        return True
    # (the gpu tests carry no other marker: whether a test marked gpu alone is selected)
    return not expression.evaluate(lambda name, **kwargs: name == "gpu")


def threads_per_worker(worker_count: str | None, cores: int) -> int | None:
    """PyTorch's intra-op threads for one of ``worker_count`` pytest-xdist processes (``make
    test`` runs the suite in one per core) sharing ``cores``: its share of them, at least one;
    None outside xdist (PyTorch's own choice, every core). On this project's two-core machine
    the suite took 9 min 44 s in 2 processes of 2 threads (and xdist's default distribution)
    against 8 min 49 s in 2 of one thread each (worksteal). A test that needs more threads
    sets them itself."""
    if not worker_count:
        return None
    return max(1, cores // int(worker_count))


def _cores() -> int:
    """The cores this process may run on (the affinity mask where the OS has one)."""
    affinity = getattr(os, "sched_getaffinity", None)  # (Linux)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def pytest_configure(config: pytest.Config) -> None:
    # (before collection imports lightning_gsf.gsf_kernels; a TRITON_INTERPRET already set wins)
    if interprets_triton(config.option.markexpr, torch.cuda.is_available()):
        os.environ.setdefault("TRITON_INTERPRET", "1")
    # (PYTEST_XDIST_WORKER_COUNT: set in xdist's worker processes)
    threads = threads_per_worker(os.environ.get("PYTEST_XDIST_WORKER_COUNT"), _cores())
    if threads is not None:
        torch.set_num_threads(threads)


def _interpreter_builder() -> object | None:
    """Triton's interpreter state (its ``options``), where Triton is installed and interprets."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return None
    try:
        from triton.runtime import interpreter
    except ImportError:  # (no Triton: the Triton tests fail on their own import)
        return None
    return getattr(interpreter, "interpreter_builder", None)


def _set_overflow_checks(builder: object, enabled: bool) -> None:
    """The int32 overflow checks of every integer add, sub and mul (``sanitize_overflow``)
    and the ``debug`` mode without which their failures are dropped."""
    builder.options = dataclasses.replace(builder.options, sanitize_overflow=enabled, debug=enabled)


@pytest.fixture(scope="session", autouse=True)
def interpreter_without_overflow_checks() -> Iterator[None]:
    """By default Triton's interpreter computes an int32 overflow check for every integer add,
    sub and mul of a kernel, then drops it outside debug mode: a third of the Triton tests'
    time for nothing. Off for the suite; the tests that use ``triton_overflow_checks`` run
    every kernel with the checks on and failing."""
    builder = _interpreter_builder()
    if builder is None or not hasattr(builder.options, "sanitize_overflow"):
        yield
        return
    original = builder.options
    _set_overflow_checks(builder, False)
    yield
    builder.options = original


@pytest.fixture
def triton_overflow_checks() -> Iterator[None]:
    """Triton's interpreter with its int32 overflow checks on and failing, for this test
    (nothing to turn on where the kernels are compiled)."""
    builder = _interpreter_builder()
    if builder is None or not hasattr(builder.options, "sanitize_overflow"):
        yield
        return
    _set_overflow_checks(builder, True)
    yield
    _set_overflow_checks(builder, False)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "No tests collected" must fail the run, not pass quietly as exit code 5.
    if session.testscollected == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def no_run_seed_from_an_earlier_test(monkeypatch):
    """Lightning's ``seed_everything`` leaves its seed in ``PL_GLOBAL_SEED``, which data modules
    take as their default seed: a test starts without one, whatever ran before it."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)


@pytest.fixture(scope="session", autouse=True)
def repository_root_left_alone():
    """Fail the run if a test leaves a file in the repository's root (a report or log written
    to the working directory, say), where it would be committed by mistake."""
    expected = {".pytest_cache", "__pycache__", ".hypothesis", ".coverage"}  # (the tools' own caches)
    before = {path.name for path in REPO_ROOT.iterdir()}
    yield
    stray = sorted({path.name for path in REPO_ROOT.iterdir()} - before - expected)
    assert not stray, f"tests left {stray} in {REPO_ROOT}; write to tmp_path instead"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real annotation files in ``../shared/data`` (never copied into the repository)."""
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"expected the shared annotation files at {SHARED_DATA}")
    return SHARED_DATA
