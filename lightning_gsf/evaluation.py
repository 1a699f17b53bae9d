"""``gsf evaluate``: EPIC-KITCHENS-100 predictions scored against a labelled annotation CSV.

It scores a submission, or a results file (dict or list format; both files are
:mod:`lightning_gsf.submission`'s), as the official ``evaluate.py`` does: classes and actions
ranked by its steps (:mod:`lightning_gsf.official_ranking`, NumPy, in the file's dtype, float64
for a submission's JSON numbers; ties and underflows included), subsets and keys by the
functions of the epoch metrics (:func:`lightning_gsf.metrics.accuracies_from_hits`).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from lightning_gsf.data.epic import read_csv_rows, read_participant_ids, read_tail_classes
from lightning_gsf.metrics import (HEADLINE_METRIC, TAIL_NOUN, TAIL_VERB, TOP_K, UNSEEN, accuracies_from_hits,
                                   check_evaluation_inputs)
from lightning_gsf.official_ranking import action_id, action_ranking, class_ranking, topk_hits
from lightning_gsf.submission import read_predictions

log = logging.getLogger(__name__)

# The official side files, looked up beside the annotation CSV when not given.
TAIL_VERBS_CSV = "EPIC_100_tail_verbs.csv"
TAIL_NOUNS_CSV = "EPIC_100_tail_nouns.csv"
UNSEEN_PARTICIPANTS_CSV = "EPIC_100_unseen_participant_ids_{split}.csv"
SPLITS = ("validation", "test")


class LabelledSample(NamedTuple):
    """A labelled annotation row as ``gsf evaluate`` needs it, and where it was read."""

    participant_id: str
    verb_class: int
    noun_class: int
    where: str = "annotations"


def read_labelled_annotations(path: str | Path) -> dict[str, LabelledSample]:
    """``narration_id -> (participant_id, verb_class, noun_class, where)`` of a labelled EPIC CSV.

    Only these four columns are needed to score a submission, so unlike
    :func:`lightning_gsf.data.epic.read_actions` this accepts any CSV that has them; rows are
    read and checked as that reader reads them (:func:`~lightning_gsf.data.epic.read_csv_rows`:
    UTF-8 with or without a byte-order mark, every row as long as the header, integers where
    classes go), and a narration_id seen before is an error naming both lines.
    """
    path = Path(path)
    columns = ("narration_id", "participant_id", "verb_class", "noun_class")
    annotations: dict[str, LabelledSample] = {}
    lines: dict[str, int] = {}
    for row in read_csv_rows(path, columns, "narration_id"):
        narration_id = row.text("narration_id")
        if narration_id in annotations:
            raise row.error(f"narration_id {narration_id!r} again (first at line {lines[narration_id]})")
        lines[narration_id] = row.line
        annotations[narration_id] = LabelledSample(row.text("participant_id"), row.integer("verb_class"),
                                                   row.integer("noun_class"), f"{path}, line {row.line}")
    return annotations


def evaluate_scores(
    ids: Sequence[str],
    scores: Mapping[str, Tensor],
    annotations: Mapping[str, tuple[str, int, int]],
    *,
    tail_verbs: AbstractSet[int] | None = None,
    tail_nouns: AbstractSet[int] | None = None,
    unseen_participants: AbstractSet[str] | None = None,
    source: str = "predictions",
) -> dict[str, float]:
    """Accuracies (percent, official flat keys) of verb and noun ``scores`` ``{head: (N, K)}``
    of the samples ``ids`` on labelled annotations (``narration_id -> (participant_id,
    verb_class, noun_class[, where])``), ranked as the official evaluator ranks them
    (:mod:`lightning_gsf.official_ranking`).

    Like the official evaluator, only the predicted samples are scored; a prediction for a
    sample the annotations lack is an error, annotated samples without a prediction a warning;
    a label outside the scored classes is an error naming its row.
    """
    unknown = [sample_id for sample_id in ids if sample_id not in annotations]
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} predicted ids are not in the annotations, e.g. {unknown[:3]}")
    if len(ids) < len(annotations):
        predicted = set(ids)
        absent = [sample_id for sample_id in annotations if sample_id not in predicted]
        log.warning("%s: %d of %d annotated samples have no prediction, e.g. %s; the accuracies are over the %d "
                    "predicted ones (as the official evaluator scores)", source, len(absent), len(annotations),
                    absent[:3], len(ids))
    rows = [annotations[i] for i in ids]
    for column, head in ((1, "verb"), (2, "noun")):
        num_classes = scores[head].shape[-1]
        outside = next((i for i, row in enumerate(rows) if not 0 <= row[column] < num_classes), None)
        if outside is not None:
            row = rows[outside]
            where = row[3] if len(row) > 3 else "annotations"
            raise ValueError(f"{where}: {head}_class {row[column]} of {ids[outside]} is outside the {num_classes} "
                             f"{head} classes that {source} scores; expected 0..{num_classes - 1}")
    labels = {"verb": torch.tensor([row[1] for row in rows]), "noun": torch.tensor([row[2] for row in rows])}
    subsets = {}
    if tail_verbs is not None:
        subsets[TAIL_VERB] = torch.tensor([v in tail_verbs for v in labels["verb"].tolist()])
    if tail_nouns is not None:
        subsets[TAIL_NOUN] = torch.tensor([n in tail_nouns for n in labels["noun"].tolist()])
    if unseen_participants is not None:
        subsets[UNSEEN] = torch.tensor([row[0] in unseen_participants for row in rows])
    members = {TAIL_VERB: "has a tail verb", TAIL_NOUN: "has a tail noun", UNSEEN: "is of an unseen participant"}
    for subset, mask in subsets.items():
        if not mask.any():  # (its rows are left out of the results, as the official evaluator warns)
            log.warning("%s: none of the %d predicted samples %s: no %s accuracies (another split's subset file?)",
                        source, len(ids), members[subset], subset.replace("_", " "))
    check_evaluation_inputs(scores, labels, subsets)
    results = accuracies_from_hits(official_hits(scores["verb"], scores["noun"], labels["verb"], labels["noun"]),
                                   subsets)
    results.pop(HEADLINE_METRIC)
    return results


def official_hits(verb_scores: Tensor, noun_scores: Tensor, verb_labels: Tensor,
                  noun_labels: Tensor) -> dict[str, dict[int, Tensor]]:
    """``{task: {k: bool (N,)}}`` for verb, noun and action at every k of ``TOP_K``, ranked as
    the official evaluator ranks (NumPy, in the scores' dtype)."""
    verb, noun = (_as_numpy_floats(scores) for scores in (verb_scores, noun_scores))
    verb_labels, noun_labels = verb_labels.cpu().numpy(), noun_labels.cpu().numpy()
    rankings = {
        "verb": (class_ranking(verb), verb_labels),
        "noun": (class_ranking(noun), noun_labels),
        "action": (action_ranking(verb, noun), action_id(verb_labels, noun_labels)),
    }
    return {task: {k: torch.from_numpy(topk_hits(ranking, task_labels, k)) for k in TOP_K}
            for task, (ranking, task_labels) in rankings.items()}


def results_table(results: Mapping[str, float], title: str = "accuracy (%)"):
    """A rich table: one row per subset, one column per task and k."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("subset")
    tasks = [t for t in ("verb", "noun", "action") if any(f"_{t}_accuracy" in key for key in results)]
    heads = tasks or sorted({key.split("_")[1] for key in results if key.startswith("all_")})
    columns = [(task, k) for k in (1, 5) for task in heads]
    for task, k in columns:
        table.add_column(f"{task}@{k}", justify="right")
    for subset in ("all", "tail", "unseen"):
        cells = [results.get(f"{subset}_{task}_accuracy_at_{k}") for task, k in columns]
        if any(cell is not None for cell in cells):
            table.add_row(subset, *("" if cell is None else f"{cell:.2f}" for cell in cells))
    return table


def split_of(annotations: Path) -> str:
    """The split an annotation file holds, by the words of its name (``EPIC_100_test.csv``:
    test; ``EPIC_100_validation.csv``, or any name without ``test`` as a word: validation)."""
    words = re.split(r"[^0-9a-z]+", annotations.name.lower())
    return "test" if "test" in words else "validation"


def _side_file(explicit: Path | None, default: Path, what: str) -> Path | None:
    """An explicitly given side file must exist; a default one is used when present."""
    if explicit is not None:
        if not explicit.is_file():
            raise FileNotFoundError(f"{what} file {explicit} does not exist")
        return explicit
    if default.is_file():
        return default
    log.warning("no %s file at %s; skipping that subset", what, default)
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gsf evaluate",
        description="Score EPIC-KITCHENS-100 predictions (a submission, or the official results file) "
        "against labelled annotations.",
    )
    parser.add_argument(
        "predictions",
        type=Path,
        help="submission zip (holding test.json) or JSON; or a results file (.pkl, as gsf predict writes "
        "and the official evaluate.py reads, or .pt): unpickling runs code from the file, so only files you trust",
    )
    parser.add_argument("annotations", type=Path, help="labelled annotation CSV, e.g. EPIC_100_validation.csv")
    parser.add_argument("--tail-verbs", type=Path, help=f"default: {TAIL_VERBS_CSV} beside the annotations")
    parser.add_argument("--tail-nouns", type=Path, help=f"default: {TAIL_NOUNS_CSV} beside the annotations")
    parser.add_argument(
        "--unseen-participants",
        type=Path,
        help=UNSEEN_PARTICIPANTS_CSV.format(split="{split}") + " beside the annotations",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        help="which unseen-participants file is the default: 'test' when the annotation file's name has "
        "'test' as a word (EPIC_100_test.csv), else 'validation'",
    )
    parser.add_argument("--json", type=Path, help="also write the accuracies to this JSON file")
    return parser


def evaluate_main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """``gsf evaluate``: print the accuracy table, optionally write the flat keys as JSON."""
    from rich.console import Console

    args = build_parser().parse_args(argv)
    folder = args.annotations.parent
    split = args.split or split_of(args.annotations)
    tail_verbs_csv = _side_file(args.tail_verbs, folder / TAIL_VERBS_CSV, "tail verbs")
    tail_nouns_csv = _side_file(args.tail_nouns, folder / TAIL_NOUNS_CSV, "tail nouns")
    unseen_csv = _side_file(
        args.unseen_participants, folder / UNSEEN_PARTICIPANTS_CSV.format(split=split), "unseen participants"
    )
    results = evaluate_scores(
        *read_predictions(args.predictions),
        read_labelled_annotations(args.annotations),
        tail_verbs=read_tail_classes(tail_verbs_csv, "verb") if tail_verbs_csv else None,
        tail_nouns=read_tail_classes(tail_nouns_csv, "noun") if tail_nouns_csv else None,
        unseen_participants=read_participant_ids(unseen_csv) if unseen_csv else None,
        source=str(args.predictions),
    )
    Console().print(results_table(results, title=f"{args.predictions.name} on {args.annotations.name} (%)"))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results


def _as_numpy_floats(scores: Tensor) -> np.ndarray:
    """``scores`` in NumPy, its float dtype kept (the evaluator ranks in it); bf16, which NumPy
    lacks, and integers as float32."""
    scores = scores.detach().cpu()
    return (scores if scores.dtype in (torch.float16, torch.float32, torch.float64) else scores.float()).numpy()
