"""Keep freed CPU memory in the process, so that a training step does not fault its
activations in again every step (glibc's malloc settings).

glibc gives memory back to the kernel eagerly: a block above the mmap threshold (128 KiB at
first, raised up to 32 MiB as larger blocks are freed) is unmapped when freed, and the heap's
top is trimmed once more than the trim threshold (twice the mmap threshold) of it is free. A
training step frees and
reallocates hundreds of MB of activations, so at its end most of them lie free at the heap's
top and are trimmed; whatever glibc gave back comes in again on the
next step one page fault at a time, each page zeroed by the kernel. Which model crosses the
thresholds is an accident of its allocation sizes: on ResNet-50 (8 x 160 px, bf16, one
thread) TSM's training step took 14,000 page faults and 20 ms of system time (4.5 % of TSN's
step) and TSN's none; with 16 float32 frames, 74,000 faults and 100 ms (7 %).

:func:`retain_freed_memory` fixes the mmap threshold at 32 MiB, the ceiling of glibc's own
adjustment, and the trim threshold at its largest value (``mallopt``): blocks up to 32 MiB
come from the heap, and freed ones stay there for the next step's allocations (larger ones are
mapped and unmapped as before). The process keeps its peak heap in exchange, as PyTorch's
CUDA caching allocator does on the GPU; ResNet-50 training steps kept the same resident
memory either way (2.3 GB after 12 steps of three models). ``gsf`` (the Lightning
subcommands) and ``gsf benchmark`` call it; ``LIGHTNING_GSF_MALLOC=default`` keeps glibc's
defaults. An allocator preloaded instead of glibc's (tcmalloc, jemalloc: ``LD_PRELOAD``) has
its own caching; glibc's settings then change nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

#: The environment variable that chooses: ``retain`` (the default) or ``default``.
ENVIRONMENT_VARIABLE = "LIGHTNING_GSF_MALLOC"
MODES = ("retain", "default")

# mallopt's parameters (malloc.h) and the values set.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems
TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes (a C int)


def is_glibc() -> bool:
    """Whether this process runs on glibc (Linux; not musl, macOS or Windows)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _glibc() -> ctypes.CDLL | None:
    if not is_glibc():
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def retain_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks up to 32 MiB for reuse instead of returning them
    to the kernel; whether it took both settings (False off glibc). The mmap threshold goes
    first: setting either turns glibc's adjustment of both off, and a trim threshold alone
    would leave every block above 128 KiB mapped and unmapped each time."""
    libc = _glibc()
    if libc is None:
        log.debug("not glibc: malloc settings left alone")
        return False
    if libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        log.warning("glibc refused M_MMAP_THRESHOLD=%d: malloc settings left at their defaults", MMAP_THRESHOLD)
        return False
    if libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        log.warning("glibc refused M_TRIM_THRESHOLD=%d (its M_MMAP_THRESHOLD is set)", TRIM_THRESHOLD)
        return False
    log.debug("glibc malloc keeps freed blocks up to %d bytes", MMAP_THRESHOLD)
    return True


def mode_from_environment() -> str:
    """``$LIGHTNING_GSF_MALLOC``, ``retain`` when unset; a clear error for anything else."""
    mode = os.environ.get(ENVIRONMENT_VARIABLE, "retain").strip().lower() or "retain"
    if mode not in MODES:
        raise ValueError(f"{ENVIRONMENT_VARIABLE}={os.environ[ENVIRONMENT_VARIABLE]!r}: expected one of {MODES}")
    return mode


def configure(mode: str) -> bool:
    """Apply ``mode`` (one of :data:`MODES`); whether freed memory is now retained."""
    if mode not in MODES:
        raise ValueError(f"malloc mode {mode!r}: expected one of {MODES}")
    return mode == "retain" and retain_freed_memory()
