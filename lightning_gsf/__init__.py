"""lightning_gsf: Gate-Shift-Fuse video action recognition in PyTorch Lightning."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from lightning_gsf.gsf import GSF  # noqa: E402

# Imported on first use: the model pulls in torchvision and the importer Lightning, which a
# data-loading worker (or a script that needs only GSF) should not pay for.
_LAZY = {
    "VideoClassifier": "lightning_gsf.model",
    "load_original_checkpoint": "lightning_gsf.convert",
    "OriginalCheckpointInfo": "lightning_gsf.convert",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_gsf' has no attribute {name!r}")


__all__ = ["GSF", "OriginalCheckpointInfo", "VideoClassifier", "__version__", "load_original_checkpoint"]
