"""What Something-Something v1 and v2 share: class names, the ``id;class`` CSV, the flip swap.

Both versions use the same 174 class names. The original code indexes v1 classes by sorting the
names alphabetically, and v2's ``labels.json`` happens to use that same order, so one sorted
index serves both and a checkpoint's class ``k`` means the same action on either version.

Several classes name a direction ("Pushing something from left to right"). A horizontal flip
turns such a video into its mirror class, so the label must be swapped whenever the clip is
flipped; :func:`left_right_flip_pairs` derives those pairs from the names themselves instead of
hard-coding indices.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from functools import cached_property
from pathlib import Path

from lightning_gsf.data.annotation_files import read_class_name_lines, read_text
from lightning_gsf.data.errors import AnnotationError
from lightning_gsf.data.sources import SampleCandidate, WholeVideoDataModule

__all__ = [
    "SOMETHING_SOMETHING_NUM_CLASSES",
    "SomethingSomethingDataModule",
    "class_name_from_template",
    "left_right_flip_pairs",
    "mirror_class_name",
    "read_class_names",
    "read_id_class_csv",
    "sorted_class_index",
]

SOMETHING_SOMETHING_NUM_CLASSES = 174

_LEFT_OR_RIGHT = re.compile(r"\b(left|right)\b")


def sorted_class_index(class_names: Iterable[str], source: Path | str) -> dict[str, int]:
    """Map each class name to its position in alphabetical order (the original code's rule)."""
    names = list(class_names)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise AnnotationError(f"{source}: class name {name!r} is listed twice")
        seen.add(name)
    return {name: index for index, name in enumerate(sorted(names))}


def class_name_from_template(template: str) -> str:
    """``"Putting [something] onto [something]"`` -> ``"Putting something onto something"``.

    SSv2's ``label`` field is a free-text caption with the objects filled in; the class is the
    template with its placeholder brackets removed.
    """
    return template.replace("[", "").replace("]", "")


def mirror_class_name(name: str) -> str:
    """The class name with the words "left" and "right" exchanged (whole words only)."""
    return _LEFT_OR_RIGHT.sub(lambda match: "right" if match.group(1) == "left" else "left", name)


def left_right_flip_pairs(class_to_index: Mapping[str, int]) -> dict[int, int]:
    """Class index -> index of its mirror class, for every class whose mirror is also a class.

    Classes that mention a direction without having a mirror class ("... pulling it right out
    ...") are left alone, as are the direction-free ones. The mapping is symmetric.
    """
    pairs: dict[int, int] = {}
    for name, index in class_to_index.items():
        mirrored = mirror_class_name(name)
        if mirrored != name and mirrored in class_to_index:
            pairs[index] = class_to_index[mirrored]
    return pairs


def read_class_names(path: Path) -> list[str]:
    """One class name per line (SSv1's ``something-something-v1-labels.csv``); blank lines ignored."""
    return read_class_name_lines(path)


def read_id_class_csv(
    path: Path, class_to_index: Mapping[str, int] | None
) -> list[tuple[str, int | None]]:
    """Read a ``<video id>;<class name>`` file (no header), or ids alone when unlabelled.

    With ``class_to_index=None`` the file is a test list and each line must be a bare id;
    otherwise each line must hold exactly an id and a known class name.
    """
    rows: list[tuple[str, int | None]] = []
    first_line: dict[str, int] = {}
    for line_number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(";")
        if class_to_index is None:
            if len(fields) != 1 or not fields[0].strip():
                raise AnnotationError(
                    f"{path}, line {line_number}: expected a video id alone, got {line!r}"
                )
        elif len(fields) != 2 or not fields[0].strip():
            raise AnnotationError(
                f"{path}, line {line_number}: expected '<video id>;<class name>', got {line!r}"
            )
        video_id = fields[0].strip()
        if video_id in first_line:
            raise AnnotationError(f"{path}, line {line_number}: video id {video_id!r} repeats line {first_line[video_id]}")
        first_line[video_id] = line_number
        if class_to_index is None:
            rows.append((video_id, None))
            continue
        class_name = fields[1].strip()
        if class_name not in class_to_index:
            raise AnnotationError(
                f"{path}, line {line_number}: unknown class {class_name!r} "
                f"(not among the {len(class_to_index)} classes of the label file)"
            )
        rows.append((video_id, class_to_index[class_name]))
    return rows


class SomethingSomethingDataModule(WholeVideoDataModule):
    """What both Something-Something DataModules share: 174 classes and the left/right swap.

    Subclasses set ``split_files`` (split -> file name in ``annotations_dir``) and
    ``video_suffix``, and provide :attr:`class_to_index` and :meth:`read_split_rows` for their
    annotation format; the videos are ``<root>/<id><video_suffix>`` (or frame folders ``<root>/<id>``).
    """

    split_files: dict[str, str]
    video_suffix: str

    @property
    def num_classes(self) -> dict[str, int]:
        return {"class": SOMETHING_SOMETHING_NUM_CLASSES}

    @property
    @abstractmethod
    def class_to_index(self) -> dict[str, int]:
        """``{class name: index}`` of this dataset version."""

    @abstractmethod
    def read_split_rows(self, split: str, path: Path) -> list[tuple[str, int | None]]:
        """``(video id, class index or None)`` of the split list ``path``, in file order."""

    def candidates(self, split: str) -> list[SampleCandidate]:
        path = self.annotations_dir / self.split_files[split]
        return [
            SampleCandidate(
                id=video_id,
                source=self.source_by_id(video_id, self.video_suffix),
                where=f"{path}, id {video_id}",
                labels=None if label is None else {"class": label},
            )
            for video_id, label in self.read_split_rows(split, path)
        ]

    @cached_property
    def flip_pairs(self) -> dict[int, int]:
        """Class index -> its mirror class (86 <-> 87, 93 <-> 94, 166 <-> 167)."""
        return left_right_flip_pairs(self.class_to_index)

    def transform_labels(self, labels: dict[str, int], flipped: bool) -> dict[str, int]:
        """A flipped clip of "... from left to right" shows "... from right to left"."""
        if not flipped:
            return labels
        return {head: self.flip_pairs.get(label, label) for head, label in labels.items()}
