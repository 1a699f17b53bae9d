"""Checkpoints written whole or not at all, and read with an error that names a broken file.

Lightning's own writer stages the file in the system temporary directory and moves it; across
file systems (node-local ``/tmp`` to a shared checkpoint directory) that move is a copy, and a
kill during it truncates the target. :class:`AtomicCheckpointIO` writes beside the target and
renames it over.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.cloud_io import get_filesystem

from lightning_gsf.atomic_files import atomic_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that never leaves a partly written checkpoint at the target path.

    The checkpoint goes to a hidden temporary file next to the target, is flushed to disk,
    and replaces the target with ``os.replace`` (atomic within one file system; see
    :mod:`lightning_gsf.atomic_files`, which also gives it the permissions of a new file). A failure
    at any point removes the temporary file and leaves the old checkpoint as it was. Remote
    paths (``s3://`` and the like) are left to Lightning's writer.

    Use it with ``trainer.plugins``: ``Trainer(plugins=[AtomicCheckpointIO()])``, or in a
    config ``trainer: {plugins: [{class_path: lightning_gsf.callbacks.AtomicCheckpointIO}]}``.

    Reading, a file that is not a checkpoint (empty, truncated, some other file) is an error
    that names it, rather than ``torch.load``'s bare ``EOFError`` or zip-reader error.
    """

    def load_checkpoint(self, path: str | Path, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        # (torch's legacy, pre-zip loader, reached with weights_only=False, fails on a corrupt
        # file with an AssertionError or a ValueError of its own unpacking: neither names it)
        except (RuntimeError, EOFError, pickle.UnpicklingError, KeyError, AssertionError, ValueError) as error:
            raise ValueError(f"{path}: not a readable checkpoint, truncated or corrupt? "
                             f"({type(error).__name__}: {error})") from error

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path)
            return
        # Interrupted or failed (disk full, a kill turned into an exception), the target still
        # holds the previous checkpoint; only the partial temporary file goes.
        with atomic_file(path, "wb", durable=True) as file:
            torch.save(checkpoint, file)
