"""The data pipeline: annotations -> frame indices -> uint8 frames -> uint8 clips -> batches.

See ``docs/architecture.md`` for the interfaces between the modules of this package. The public
pieces are importable from here; each is loaded on first use (PEP 562), so that importing one
light submodule (``lightning_gsf.data.errors``, ``lightning_gsf.data.sampling``) does not pull
in Lightning, PyAV and every dataset.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_gsf.data.base import ClipDataset, ClipSample, VideoDataModule
    from lightning_gsf.data.diving48 import Diving48DataModule
    from lightning_gsf.data.epic import EpicKitchensDataModule
    from lightning_gsf.data.errors import AnnotationError, ConfigurationError, MissingMediaError, SampleReadError
    from lightning_gsf.data.kinetics import Kinetics400DataModule
    from lightning_gsf.data.sampling import (
        TRAIN_SAMPLERS,
        eval_indices,
        multi_clip_indices,
        release_train_indices,
        train_indices,
    )
    from lightning_gsf.data.sources import WholeVideoDataModule
    from lightning_gsf.data.ssv1 import SomethingSomethingV1DataModule
    from lightning_gsf.data.ssv2 import SomethingSomethingV2DataModule
    from lightning_gsf.data.synthetic import generate_synthetic_dataset
    from lightning_gsf.data.transforms import EvalClipTransform, TrainClipTransform
    from lightning_gsf.data.video import ClipReader, FrameFolderReader, VideoFileReader, count_video_frames

#: public name -> the submodule that defines it
_SOURCES = {
    # samples, datasets and DataModules
    "ClipSample": "base",
    "ClipDataset": "base",
    "VideoDataModule": "base",
    "WholeVideoDataModule": "sources",
    "EpicKitchensDataModule": "epic",
    "SomethingSomethingV1DataModule": "ssv1",
    "SomethingSomethingV2DataModule": "ssv2",
    "Diving48DataModule": "diving48",
    "Kinetics400DataModule": "kinetics",
    "generate_synthetic_dataset": "synthetic",
    # frame readers
    "ClipReader": "video",
    "FrameFolderReader": "video",
    "VideoFileReader": "video",
    "count_video_frames": "video",
    # frame sampling
    "train_indices": "sampling",
    "release_train_indices": "sampling",
    "TRAIN_SAMPLERS": "sampling",
    "eval_indices": "sampling",
    "multi_clip_indices": "sampling",
    # clip transforms
    "TrainClipTransform": "transforms",
    "EvalClipTransform": "transforms",
    # errors
    "AnnotationError": "errors",
    "SampleReadError": "errors",
    "MissingMediaError": "errors",
    "ConfigurationError": "errors",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_SOURCES[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))
