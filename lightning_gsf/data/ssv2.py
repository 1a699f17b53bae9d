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

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_gsf.data.errors import AnnotationError
from lightning_gsf.data.something import class_name_from_template


def _load_json(path: Path, expected: type) -> Any:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, expected):
        raise AnnotationError(
            f"{path}: expected a JSON {expected.__name__} at the top level, got {type(data).__name__}"
        )
    return data


def read_label_map(path: Path) -> dict[str, int]:
    """``labels.json`` as ``{class name: index}``, checked to number the classes 0..K-1 once each."""
    class_to_index: dict[str, int] = {}
    for name, value in _load_json(path, dict).items():
        if not (isinstance(value, str) and value.isdigit()):
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
    for position, entry in enumerate(_load_json(path, list)):
        where = f"{path}, entry {position}"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str | int) or entry["id"] == "":
            raise AnnotationError(f"{where}: expected an object with an 'id', got {entry!r}")
        video_id = str(entry["id"])
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
