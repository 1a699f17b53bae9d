"""Let a CPU (gloo) DDP process exit without aborting after its work is done.

PyTorch's gloo backend runs every collective on a worker thread, and that thread drops the
last reference to the finished work. A collective launched in backward (DDP's gradient
all-reduce) keeps a Python object in the thread-local state it captured (the autograd engine
stashes the ``contextvars`` context there), so the work's destructor takes the GIL. When the
worker gets there after the interpreter has begun to finalize, taking the GIL ends the
thread inside a ``noexcept`` destructor and the C++ runtime aborts the whole process
("terminate called without an active exception", exit status 134, or -6 from Python) after
training, checkpoints and all, has finished (an open PyTorch issue, pytorch/pytorch#190489;
seen here with torch 2.14.1). Two processes that run three DDP steps and exit at once
(``tests/test_gloo_exit.py``) aborted in 15 of 50 runs on the development machine (2
cores), and in 5 of 20 with ``destroy_process_group`` at exit; ``tests/test_resume.py``'s
two-process resumes aborted so in 2 of 7 repetitions while other jobs ran.

:func:`release_gloo_workers_at_exit` registers an exit handler that, while the interpreter
is still whole, releases the GIL for a moment so that the workers finish those destructors
(0 of 50 runs aborted). ``gsf``'s ``main`` calls it, so every rank that Lightning's DDP
launcher, ``torchrun`` or ``srun`` starts with ``gsf`` has it (``ddp_spawn``'s workers, which
no config uses, would not).
"""

from __future__ import annotations

import atexit
import functools
import time

import torch.distributed as dist

__all__ = ["release_gloo_workers_at_exit"]

#: How long the exit handler sleeps, releasing the GIL, in a process whose gloo group is up.
RELEASE_SECONDS = 0.2


def _release_gloo_workers() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo":
        time.sleep(RELEASE_SECONDS)


@functools.cache  # (one handler a process, however often it is called)
def release_gloo_workers_at_exit() -> None:
    """At this process's exit, give gloo's worker threads the GIL before the interpreter
    finalizes (see the module's docstring)."""
    atexit.register(_release_gloo_workers)
