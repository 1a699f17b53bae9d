"""Something-Something v1: 174 classes of hand-object interactions, 108,499 videos as JPEG frames.

Layout::

    <root>/<video id>/00001.jpg ...              the frames, numbered from 1 (template configurable)
    something-something-v1-labels.csv            one class name per line
    something-something-v1-{train,validation}.csv   "<video id>;<class name>" lines, no header
    something-something-v1-test.csv              "<video id>" lines

The class index is the position of the name in alphabetical order, as in the original code;
this equals Something-Something v2's numbering, so the two versions share class indices (and
the left/right pairs 86/87, 93/94, 166/167).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from lightning_gsf.data.annotation_files import check_class_count
from lightning_gsf.data.sources import MediaKind
from lightning_gsf.data.something import (
    SOMETHING_SOMETHING_NUM_CLASSES,
    SomethingSomethingDataModule,
    read_class_names,
    read_id_class_csv,
    sorted_class_index,
)

__all__ = ["SomethingSomethingV1DataModule"]


class SomethingSomethingV1DataModule(SomethingSomethingDataModule):
    """Something-Something v1 from its extracted frames (or from videos, with ``layout="video"``).

    Args:
        root: folder of the per-video frame folders (``20bn-something-something-v1``).
        annotations_dir: folder of the CSV files.
        labels_file, train_file, val_file, test_file: the annotation files' names in
            ``annotations_dir`` (the official names by default).
        video_suffix: with ``layout="video"``, the video files are ``<root>/<id><suffix>``.
        layout, frame_template, first_frame_index, **kwargs: see ``WholeVideoDataModule`` and
            ``VideoDataModule``.
    """

    dataset_name = "ssv1"

    def __init__(
        self,
        root: str | Path,
        annotations_dir: str | Path,
        *,
        labels_file: str = "something-something-v1-labels.csv",
        train_file: str = "something-something-v1-train.csv",
        val_file: str = "something-something-v1-validation.csv",
        test_file: str = "something-something-v1-test.csv",
        layout: MediaKind = "frames",
        frame_template: str = "{:05d}.jpg",
        first_frame_index: int = 1,
        video_suffix: str = ".mp4",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root, annotations_dir, layout=layout, frame_template=frame_template, first_frame_index=first_frame_index, **kwargs
        )
        self.labels_file = labels_file
        self.split_files = {"train": train_file, "val": val_file, "test": test_file}
        self.video_suffix = video_suffix

    @cached_property
    def class_to_index(self) -> dict[str, int]:
        path = self.annotations_dir / self.labels_file
        names = read_class_names(path)
        check_class_count(len(names), SOMETHING_SOMETHING_NUM_CLASSES, path, "Something-Something")
        return sorted_class_index(names, path)

    def read_split_rows(self, split: str, path: Path) -> list[tuple[str, int | None]]:
        return read_id_class_csv(path, None if split == "test" else self.class_to_index)
