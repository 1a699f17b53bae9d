"""glibc keeps freed memory when asked (host_memory), measured by page faults in a process of
its own; the environment variable and the entry points that apply it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lightning_gsf import cli, host_memory

glibc_only = pytest.mark.skipif(not host_memory.is_glibc(), reason="glibc's malloc settings")

# Each round allocates three 16 MiB tensors, fills and frees them, and the script prints the
# share of their pages faulted in during each of six rounds, after rounds that settle the heap
# (it grows by a few blocks before a freed one fits each request) and warm up torch's threads.
# "retain": host_memory's settings. "trim": the same mmap threshold with glibc's initial trim
# threshold (128 KiB) held fixed, the control: the 48 MiB free at the heap's top after each
# round go back to the kernel, and the next round faults them in again. (glibc's defaults
# adjust both thresholds as blocks are freed, so whether they trim here depends on history.)
FAULTS_PER_ROUND = """
import ctypes, resource, sys, torch
from lightning_gsf import host_memory
if sys.argv[1] == "trim":
    libc = ctypes.CDLL("libc.so.6")
    assert libc.mallopt(-3, host_memory.MMAP_THRESHOLD) == 1 and libc.mallopt(-1, 128 << 10) == 1
else:
    assert host_memory.configure(sys.argv[1])
size = 16 << 20
def faulted_share():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.empty(size, dtype=torch.uint8) for _ in range(3)]
    for block in blocks:
        block.fill_(1)
    del blocks, block
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (3 * size / 4096)
for _ in range(8):
    faulted_share()
print(" ".join(str(faulted_share()) for _ in range(6)))
"""


def faulted_shares(mode: str) -> list[float]:
    result = subprocess.run([sys.executable, "-c", FAULTS_PER_ROUND, mode], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return [float(share) for share in result.stdout.split()]


@glibc_only
def test_retained_memory_is_not_faulted_in_again():
    # Two processes: a round may still grow the heap by a block (seen once in a fresh clone's
    # suite, a third of a round's pages, where twelve processes alone faulted none), but the
    # control faults in every process.
    retained = [faulted_shares("retain") for _ in range(2)]
    assert min(max(shares) for shares in retained) < 0.05, retained
    trimmed = faulted_shares("trim")
    assert max(trimmed) > 0.3, trimmed  # (one block or all three, by where the heap put them)


def test_mode_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(host_memory.ENVIRONMENT_VARIABLE, raising=False)
    assert host_memory.mode_from_environment() == "retain"
    monkeypatch.setenv(host_memory.ENVIRONMENT_VARIABLE, "Default")
    assert host_memory.mode_from_environment() == "default"
    monkeypatch.setenv(host_memory.ENVIRONMENT_VARIABLE, "jemalloc")
    with pytest.raises(ValueError, match="LIGHTNING_GSF_MALLOC='jemalloc': expected one of"):
        host_memory.mode_from_environment()
    with pytest.raises(ValueError, match="malloc mode 'fast'"):
        host_memory.configure("fast")


def test_default_mode_leaves_malloc_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "retain_freed_memory", lambda: calls.append(1) or True)
    assert host_memory.configure("default") is False and calls == []
    assert host_memory.configure("retain") is True and calls == [1]


@pytest.mark.parametrize("mode", ["retain", "default"])
def test_lightning_subcommands_apply_the_environment_mode(monkeypatch, mode):
    applied = []
    monkeypatch.setenv(host_memory.ENVIRONMENT_VARIABLE, mode)
    monkeypatch.setattr(host_memory, "configure", lambda chosen: applied.append(chosen) or False)
    monkeypatch.setattr(sys, "argv", ["gsf"])  # (LightningCLI warns of pytest's arguments beside args)
    with pytest.raises(SystemExit):
        cli.run(["fit", "--help"])
    assert applied == [mode]


def test_glibc_is_recognised_only_on_linux_with_glibc(monkeypatch):
    monkeypatch.setattr(host_memory.platform, "system", lambda: "Linux")
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda *a, **k: ("glibc", "2.36"))
    assert host_memory.is_glibc()
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda *a, **k: ("", ""))  # musl
    assert not host_memory.is_glibc() and host_memory.retain_freed_memory() is False
    monkeypatch.setattr(host_memory.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda *a, **k: ("glibc", "2.36"))
    assert not host_memory.is_glibc()


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_mode_is_the_default_retain(monkeypatch, value):
    monkeypatch.setenv(host_memory.ENVIRONMENT_VARIABLE, value)
    assert host_memory.mode_from_environment() == "retain"


class _Libc:
    """mallopt that refuses one parameter (returns 0, as glibc does)."""

    def __init__(self, refused):
        self.refused, self.calls = refused, []

    def mallopt(self, parameter, value):
        self.calls.append(parameter)
        return 0 if parameter == self.refused else 1


@pytest.mark.parametrize(("refused", "retained", "calls"), [
    (None, True, [host_memory._M_MMAP_THRESHOLD, host_memory._M_TRIM_THRESHOLD]),
    (host_memory._M_MMAP_THRESHOLD, False, [host_memory._M_MMAP_THRESHOLD]),
    (host_memory._M_TRIM_THRESHOLD, False, [host_memory._M_MMAP_THRESHOLD, host_memory._M_TRIM_THRESHOLD]),
], ids=["both_set", "mmap_refused", "trim_refused"])
def test_a_refused_setting_is_not_reported_as_retained(monkeypatch, refused, retained, calls):
    libc = _Libc(refused)
    monkeypatch.setattr(host_memory, "_glibc", lambda: libc)
    assert host_memory.retain_freed_memory() is retained and libc.calls == calls
