"""lightning_gsf: Gate-Shift-Fuse video action recognition in PyTorch Lightning."""

__version__ = "0.1.0"

from lightning_gsf.gsf import GSF  # noqa: E402

__all__ = ["GSF", "__version__"]
