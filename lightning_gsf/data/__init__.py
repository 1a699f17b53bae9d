"""The data pipeline: annotations -> frame indices -> uint8 frames -> uint8 clips -> batches.

See ``docs/architecture.md`` for the interfaces between the modules of this package.
"""

from lightning_gsf.data.errors import AnnotationError, SampleReadError
from lightning_gsf.data.sampling import eval_indices, multi_clip_indices, train_indices
from lightning_gsf.data.transforms import EvalClipTransform, TrainClipTransform
from lightning_gsf.data.video import ClipReader, FrameFolderReader, VideoFileReader, count_video_frames

__all__ = [
    "AnnotationError",
    "ClipReader",
    "EvalClipTransform",
    "FrameFolderReader",
    "SampleReadError",
    "TrainClipTransform",
    "VideoFileReader",
    "count_video_frames",
    "eval_indices",
    "multi_clip_indices",
    "train_indices",
]
