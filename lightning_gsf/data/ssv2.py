"""Something-Something v2: 174 classes of hand-object interactions, 220,847 WebM videos.

Layout::

    <root>/<id>.webm                       the videos (decoded with PyAV), or
    <root>/<id>/000001.jpg ...             extracted frames (template configurable)
    something-something-v2-labels.json     {"<class name>": "<index as a string>", ...}
    something-something-v2-{train,validation}.json
                                           [{"id", "label", "template", "placeholders"}, ...]
    something-something-v2-test.json       [{"id"}, ...]

The class of a video is its ``template`` without the brackets; ``label`` is a free-text caption
with the objects filled in ("pushing scissors so that ..."), not a class name.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from lightning_gsf.data.annotation_files import check_class_count, read_json
from lightning_gsf.data.errors import AnnotationError
from lightning_gsf.data.something import (
    SOMETHING_SOMETHING_NUM_CLASSES,
    SomethingSomethingDataModule,
    class_name_from_template,
    read_id_class_csv,
)
from lightning_gsf.data.sources import MediaKind

__all__ = ["SomethingSomethingV2DataModule", "read_label_map", "read_split"]


def read_label_map(path: Path) -> dict[str, int]:
    """``labels.json`` as ``{class name: index}``, checked to number the classes 0..K-1 once each."""
    class_to_index: dict[str, int] = {}
    for name, value in read_json(path, dict).items():
        if not (isinstance(value, str) and value.isascii() and value.isdigit()):
            raise AnnotationError(f"{path}, class {name!r}: expected the index as a string of digits, got {value!r}")
        class_to_index[name] = int(value)
    if sorted(class_to_index.values()) != list(range(len(class_to_index))):
        raise AnnotationError(f"{path}: expected the indices 0..{len(class_to_index) - 1}, each exactly once")
    return class_to_index


def read_split(path: Path, class_to_index: Mapping[str, int] | None) -> list[tuple[str, int | None]]:
    """``(video id, class index)`` for each entry of a split list.

    With ``class_to_index=None`` the file is the unlabelled test list ``[{"id": ...}, ...]`` and
    the class index is None.
    """
    rows: list[tuple[str, int | None]] = []
    first_entry: dict[str, int] = {}
    for position, entry in enumerate(read_json(path, list)):
        where = f"{path}, entry {position}"
        given_id = entry.get("id") if isinstance(entry, dict) else None
        # (a JSON true is no id, though Python counts it an int; blanks around one are not part of it,
        # as the Something-Something v1 lists read)
        if isinstance(given_id, bool) or not isinstance(given_id, str | int) or not str(given_id).strip():
            raise AnnotationError(f"{where}: expected an object with an 'id', got {entry!r}")
        video_id = str(given_id).strip()
        if video_id in first_entry:
            raise AnnotationError(f"{where}: video id {video_id!r} repeats entry {first_entry[video_id]}")
        first_entry[video_id] = position
        if class_to_index is None:
            rows.append((video_id, None))
            continue
        template = entry.get("template")
        if not isinstance(template, str):
            raise AnnotationError(f"{where} (id {video_id}): expected a 'template' string, got {template!r}")
        class_name = class_name_from_template(template)
        if class_name not in class_to_index:
            raise AnnotationError(
                f"{where} (id {video_id}): template {template!r} names no class of the label map"
            )
        rows.append((video_id, class_to_index[class_name]))
    return rows


class SomethingSomethingV2DataModule(SomethingSomethingDataModule):
    """Something-Something v2 from its WebM videos (or extracted frames, with ``layout="frames"``).

    Args:
        root: folder of the videos (``20bn-something-something-v2``) or of the frame folders.
        annotations_dir: folder of the JSON files.
        labels_file, train_file, val_file, test_file: the annotation files' names in
            ``annotations_dir`` (the official names by default).
        test_answers_file: optional ``<id>;<class name>`` file (``test-answers.csv``) that
            labels the test split, so that ``trainer.test`` can score it.
        video_suffix: the video files are ``<root>/<id><suffix>``.
        layout, frame_template, first_frame_index, **kwargs: see ``WholeVideoDataModule`` and
            ``VideoDataModule``.
    """

    dataset_name = "ssv2"

    def __init__(
        self,
        root: str | Path,
        annotations_dir: str | Path,
        *,
        labels_file: str = "something-something-v2-labels.json",
        train_file: str = "something-something-v2-train.json",
        val_file: str = "something-something-v2-validation.json",
        test_file: str = "something-something-v2-test.json",
        test_answers_file: str | None = None,
        layout: MediaKind = "video",
        frame_template: str = "{:06d}.jpg",
        first_frame_index: int = 1,
        video_suffix: str = ".webm",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root, annotations_dir, layout=layout, frame_template=frame_template, first_frame_index=first_frame_index, **kwargs
        )
        self.labels_file = labels_file
        self.split_files = {"train": train_file, "val": val_file, "test": test_file}
        self.test_answers_file = test_answers_file
        self.video_suffix = video_suffix

    @cached_property
    def class_to_index(self) -> dict[str, int]:
        path = self.annotations_dir / self.labels_file
        classes = read_label_map(path)
        check_class_count(len(classes), SOMETHING_SOMETHING_NUM_CLASSES, path, "Something-Something")
        return classes

    def read_split_rows(self, split: str, path: Path) -> list[tuple[str, int | None]]:
        rows = read_split(path, None if split == "test" else self.class_to_index)
        if split == "test" and self.test_answers_file is not None:
            rows = self._with_test_answers(path, rows)
        return rows

    def _with_test_answers(self, test_path: Path, rows: list[tuple[str, int | None]]) -> list[tuple[str, int | None]]:
        answers_path = self.annotations_dir / str(self.test_answers_file)
        answers = dict(read_id_class_csv(answers_path, self.class_to_index))
        unanswered = [video_id for video_id, _ in rows if video_id not in answers]
        if unanswered:
            raise AnnotationError(
                f"{answers_path}: no answer for {len(unanswered)} test videos of {test_path}, e.g. id {unanswered[0]}"
            )
        return [(video_id, answers[video_id]) for video_id, _ in rows]
