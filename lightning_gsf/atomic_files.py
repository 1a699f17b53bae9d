"""Files written whole or not at all: a temporary file beside the target, then a rename.

A reader (another DDP rank parsing the same split, a job killed mid-save and requeued) sees the
old file or the new one, never half of one. The new file gets the permissions any new file
gets (``0o666`` less the umask), not the owner-only ``0o600`` of a temporary file, so that
collaborators on a shared cluster can read checkpoints and caches.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_file"]


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", *, durable: bool = False, **open_options: Any) -> Iterator[IO[Any]]:
    """Open a temporary file in ``path``'s folder for writing; on leaving the block without an
    error it replaces ``path``, on an error (or an interrupt) it is deleted and ``path`` is left
    as it was. ``durable``: flush the data and the rename to disk (``fsync``) before returning.
    ``open_options`` go to ``open`` (e.g. ``newline=""`` for CSV)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    temporary = Path(temporary_name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **open_options) as file:
            yield file
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_directory(target.parent)


def _umask() -> int:
    """The process's umask (read by setting it, then setting it back)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
