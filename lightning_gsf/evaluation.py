"""EPIC-KITCHENS-100 submissions and ``gsf evaluate``.

Submission format (action recognition challenge, as produced by the official
``epic-kitchens/C1-Action-Recognition`` tooling)::

    {"version": "0.2", "challenge": "action_recognition",
     "sls_pt": 1, "sls_tl": 3, "sls_td": 3,
     "results": {"P01_101_0": {"verb": {"0": 1.22, ..., "96": 0.02},
                               "noun": {"0": 0.80, ..., "299": 0.02}}, ...}}

Scores are the raw model outputs (logits averaged over views), not softmaxed; every class
of every head is present, keyed by its class number as a string. The official format has
no "action" entry (the server derives actions from verb and noun), so none is written.
The file is uploaded as a zip holding it under the name ``test.json``.

The SLS (supervision levels scale) fields describe the training: ``sls_pt`` pre-training
(1 = public image dataset, i.e. ImageNet), ``sls_tl`` training labels (3 = temporal
boundaries used), ``sls_td`` training data (3 = the training split; 4 = train + val); each
is a level from 0 to 5.

Results file (the input of the official ``evaluate.py`` and ``create_submission.py``, the
"dict format" of their ``load_results``), written beside the submission by ``gsf predict``::

    {"verb_output": float32 array (N, 97), "noun_output": float32 array (N, 300),
     "narration_id": str array (N,)}

pickled into a ``.pkl`` file (their ``.pt`` alternative would need ``torch.load(...,
weights_only=False)`` on torch >= 2.6 to read its NumPy arrays, so it is not written).

``gsf evaluate`` scores a submission, or a results file (dict or list format), against a
labelled annotation CSV as the official ``evaluate.py`` does: classes and actions ranked by
its steps (:mod:`lightning_gsf.official_ranking`, NumPy, in the file's dtype, float64 for a
submission's JSON numbers; ties and underflows included), subsets and keys by the functions
of the epoch metrics (:func:`lightning_gsf.metrics.accuracies_from_hits`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch import Tensor

from lightning_gsf.data.epic import read_csv_rows, read_participant_ids, read_tail_classes
from lightning_gsf.metrics import (HEADLINE_METRIC, TAIL_NOUN, TAIL_VERB, TOP_K, UNSEEN, accuracies_from_hits,
                                   check_evaluation_inputs, first_per_index, non_finite_rows)
from lightning_gsf.official_ranking import action_id, action_ranking, class_ranking, topk_hits

log = logging.getLogger(__name__)

SUBMISSION_VERSION = "0.2"
CHALLENGE = "action_recognition"
SUBMISSION_MEMBER = "test.json"  # the name the challenge server reads inside the zip
EPIC_HEADS = ("verb", "noun")
EPIC_CLASS_COUNTS = {"verb": 97, "noun": 300}  # every class scored, as the challenge checks
RESULTS_SUFFIX = ".pkl"
RESULTS_ID_KEY = "narration_id"

# The official side files, looked up beside the annotation CSV when not given.
TAIL_VERBS_CSV = "EPIC_100_tail_verbs.csv"
TAIL_NOUNS_CSV = "EPIC_100_tail_nouns.csv"
UNSEEN_PARTICIPANTS_CSV = "EPIC_100_unseen_participant_ids_{split}.csv"
SPLITS = ("validation", "test")


# --------------------------------------------------------------------------- submission


def make_submission(
    scores: Mapping[str, Tensor],
    ids: Sequence[str],
    *,
    sls_pt: int = 1,
    sls_tl: int = 3,
    sls_td: int = 3,
    challenge: str = CHALLENGE,
) -> dict[str, Any]:
    """The submission dict for ``scores`` ``{head: (N, K)}`` of the samples ``ids``. Verb and
    noun scores of other class counts than EPIC-KITCHENS-100's (a synthetic dataset's) are
    written with a warning: the challenge's ``create_submission.py`` refuses them."""
    _check_predictions(scores, ids)
    _warn_unless_epic_class_counts(scores, challenge)
    check_supervision_levels(sls_pt=sls_pt, sls_tl=sls_tl, sls_td=sls_td)
    as_lists = {head: head_scores.float().cpu().tolist() for head, head_scores in scores.items()}
    results = {
        str(sample_id): {
            head: {str(cls): float(value) for cls, value in enumerate(rows[i])} for head, rows in as_lists.items()
        }
        for i, sample_id in enumerate(ids)
    }
    return {
        "version": SUBMISSION_VERSION,
        "challenge": challenge,
        "sls_pt": sls_pt,
        "sls_tl": sls_tl,
        "sls_td": sls_td,
        "results": results,
    }


def _warn_unless_epic_class_counts(scores: Mapping[str, Tensor], challenge: str) -> None:
    counts = {head: head_scores.shape[1] for head, head_scores in scores.items()}
    if challenge == CHALLENGE and set(counts) == set(EPIC_HEADS) and counts != EPIC_CLASS_COUNTS:
        log.warning("the submission has %d verb and %d noun scores a sample; the %s challenge takes %d and %d "
                    "(its create_submission.py refuses other counts): this file is for gsf evaluate, not for upload",
                    counts["verb"], counts["noun"], challenge, EPIC_CLASS_COUNTS["verb"], EPIC_CLASS_COUNTS["noun"])


def _check_predictions(scores: Mapping[str, Tensor], ids: Sequence[str]) -> None:
    for head, head_scores in scores.items():
        if head_scores.ndim != 2 or head_scores.shape[0] != len(ids):
            raise ValueError(
                f"expected {head} scores of shape ({len(ids)}, num_classes), got {tuple(head_scores.shape)}"
            )
    if len(set(ids)) != len(ids):
        raise ValueError("sample ids are not unique; de-duplicate the predictions first")
    for head, head_scores in scores.items():
        if (rows := non_finite_rows(head_scores)).numel():
            raise ValueError(f"{len(rows)} samples have non-finite {head} scores (NaN or inf), the "
                             f"first {ids[int(rows[0])]!r}: the submission and results files take finite scores")


def check_supervision_levels(**levels: int) -> None:
    """Raise ``ValueError`` unless every ``sls_*`` level is an integer from 0 to 5."""
    for name, level in levels.items():
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 5:
            raise ValueError(f"{name} must be a supervision level from 0 to 5, got {level!r}")


@contextlib.contextmanager
def _replaced_atomically(path: Path) -> Iterator[Path]:
    """A sibling file to write ``path``'s content to, renamed onto ``path`` when the block ends
    without an error: a crash leaves the previous file or none, never a truncated one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    yield partial
    os.replace(partial, path)


def write_results(scores: Mapping[str, Tensor], ids: Sequence[str], path: str | Path) -> Path:
    """Write the official results file (``.pkl``, dict format, see the module doc) of the
    verb and noun ``scores`` ``{head: (N, K)}`` of the samples ``ids``, atomically."""
    path = Path(path)
    if path.suffix.lower() != RESULTS_SUFFIX:
        raise ValueError(f"{path}: the results file is pickled; name it *{RESULTS_SUFFIX}")
    missing = [head for head in EPIC_HEADS if head not in scores]
    if missing:
        raise ValueError(f"the results file holds verb and noun scores; the predictions have no {missing}")
    _check_predictions(scores, ids)
    results = {f"{head}_output": scores[head].float().cpu().numpy() for head in EPIC_HEADS}
    results[RESULTS_ID_KEY] = np.array([str(sample_id) for sample_id in ids])
    with _replaced_atomically(path) as partial, partial.open("wb") as handle:
        pickle.dump(results, handle, protocol=4)
    log.info("wrote the scores of %d samples to %s", len(ids), path)
    return path


def read_results(path: str | Path) -> tuple[list[str], dict[str, Tensor]]:
    """Sample ids and verb / noun scores of an official results file: the dict format of
    :func:`write_results` or the list format (one ``{"verb_output", "noun_output",
    "narration_id"}`` dict per sample), pickled (``.pkl``), or saved by ``torch.save``
    (``.pt``, read with ``weights_only=True``: tensors, lists and dicts only). The scores keep
    the file's floating-point dtype, as the official evaluator ranks them in it. Unpickling
    runs code from the file: read only results you trust."""
    path = Path(path)
    if path.suffix.lower() == ".pt":
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"{path}: not a results file that torch.load reads with weights_only=True (NumPy arrays "
                f"need the .pkl format): {error}"
            ) from None
    else:
        with path.open("rb") as handle:
            try:
                loaded = pickle.load(handle)  # noqa: S301 (the official format is a pickle)
            except (pickle.UnpicklingError, EOFError) as error:
                raise ValueError(f"{path}: not a pickled results file ({error!r})") from None
    keys = [f"{head}_output" for head in EPIC_HEADS] + [RESULTS_ID_KEY]
    if isinstance(loaded, list):  # list format: one dict per sample
        if not loaded or not all(isinstance(row, Mapping) and set(keys) <= set(row) for row in loaded):
            raise ValueError(f"{path}: a list-format results file needs a {keys} dict per sample")
        loaded = {RESULTS_ID_KEY: [row[RESULTS_ID_KEY] for row in loaded],
                  **{f"{head}_output": _stacked_rows(loaded, head, path) for head in EPIC_HEADS}}
    if not isinstance(loaded, Mapping) or not set(keys) <= set(loaded):
        raise ValueError(f"{path}: expected a results dict with the keys {keys}")
    ids = [str(sample_id) for sample_id in np.asarray(loaded[RESULTS_ID_KEY]).reshape(-1).tolist()]
    scores = {}
    for head in EPIC_HEADS:
        values = loaded[f"{head}_output"]
        if isinstance(values, torch.Tensor) and values.dtype == torch.bfloat16:
            values = values.float()  # (NumPy has no bf16)
        values = np.asarray(values)
        if not np.issubdtype(values.dtype, np.floating):  # (kept otherwise: the evaluator ranks in it)
            values = values.astype(np.float64)
        values = torch.as_tensor(values)
        if values.ndim != 2 or values.shape[0] != len(ids):
            raise ValueError(
                f"{path}: {head}_output must be ({len(ids)}, num_classes) for {len(ids)} narration ids, "
                f"got {tuple(values.shape)}"
            )
        scores[head] = values
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: the narration ids are not unique")
    return ids, scores


def _stacked_rows(rows: Sequence[Mapping[str, Any]], head: str, path: Path) -> np.ndarray:
    """The ``(N, K)`` ``<head>_output`` of a list-format results file's rows, each row's scores
    one vector of ``K`` (bf16 tensors as float32); a row that is not names the file, the entry
    (numbered from 0) and its narration id."""
    key, arrays = f"{head}_output", []
    for index, row in enumerate(rows):
        value = row[key]
        if isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16:
            value = value.float()  # (NumPy has no bf16)
        where = f"{path}: entry {index} (narration id {row[RESULTS_ID_KEY]!r})"
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {key} is not an array of scores ({error})") from None
        expected = f"({arrays[0].shape[0]},)" if arrays else "one score per class"
        if array.ndim != 1 or (arrays and array.shape != arrays[0].shape):
            raise ValueError(f"{where}: {key} must be {expected} as in entry 0, got shape {array.shape}")
        arrays.append(array)
    return np.stack(arrays)


def read_predictions(path: str | Path) -> tuple[list[str], dict[str, Tensor]]:
    """Sample ids and verb / noun scores of a submission (zip or JSON) or a results file
    (``.pkl`` or ``.pt``)."""
    path = Path(path)
    if path.suffix.lower() in {RESULTS_SUFFIX, ".pt"}:
        return read_results(path)
    return submission_scores(read_submission(path), EPIC_HEADS, str(path))


def write_submission(submission: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``submission`` as a zip holding ``test.json`` (or as plain JSON for ``*.json``, any case),
    atomically: a crash leaves the previous file or none, never a truncated one."""
    path = Path(path)
    text = json.dumps(submission)
    with _replaced_atomically(path) as partial:
        if path.suffix.lower() == ".json":
            partial.write_text(text)
        else:
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(SUBMISSION_MEMBER, text)
    log.info("wrote %d predictions to %s", len(submission["results"]), path)
    return path


def read_submission(path: str | Path) -> dict[str, Any]:
    """Read a submission written by :func:`write_submission` (zip or JSON)."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if SUBMISSION_MEMBER not in archive.namelist():
                    raise ValueError(f"{path}: expected a member named {SUBMISSION_MEMBER}, found {archive.namelist()}")
                submission = json.loads(archive.read(SUBMISSION_MEMBER))
        else:
            submission = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable submission (JSON, or a zip holding {SUBMISSION_MEMBER}): {error}") from None
    if not isinstance(submission, dict) or not isinstance(submission.get("results"), dict):
        raise ValueError(f"{path}: expected a JSON object with a 'results' object")
    return submission


def submission_scores(
    submission: Mapping[str, Any], heads: Sequence[str] = EPIC_HEADS, source: str = "submission"
) -> tuple[list[str], dict[str, Tensor]]:
    """Sample ids and ``{head: (N, K)}`` scores, checking every class key ``"0".."K-1"``."""
    results = submission["results"]
    if not results:
        raise ValueError(f"{source}: 'results' is empty")
    ids = list(results)
    first = results[ids[0]]
    num_classes = {}
    for head in heads:
        if not isinstance(first, dict) or not isinstance(first.get(head), dict):
            raise ValueError(f"{source}: entry {ids[0]!r} must map {head} classes to scores, found "
                             f"{_describe_keys(first, head, [])}")
        num_classes[head] = len(first[head])
    rows: dict[str, list[list[float]]] = {head: [] for head in heads}
    for sample_id in ids:
        entry = results[sample_id]
        for head in heads:
            expected = [str(c) for c in range(num_classes[head])]
            head_scores = entry.get(head) if isinstance(entry, dict) else None
            if not isinstance(head_scores, dict) or set(head_scores) != set(expected):
                raise ValueError(
                    f"{source}: entry {sample_id!r} must map {head} classes '0'..'{num_classes[head] - 1}' "
                    f"to scores, found {_describe_keys(entry, head, expected)}"
                )
            values = [head_scores[c] for c in expected]
            if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values):
                # (a JSON string or boolean, which float() would read, is no score)
                raise ValueError(f"{source}: entry {sample_id!r} has a {head} score that is not a number")
            rows[head].append(values)
    _warn_of_unused_entries(results, heads, source)
    # (in float64, as JSON numbers are read: scores that differ only past float32's precision
    # keep their order, as the official evaluator, ranking NumPy arrays of the file's numbers, keeps it)
    return ids, {head: torch.tensor(values, dtype=torch.float64) for head, values in rows.items()}


def _warn_of_unused_entries(results: Mapping[str, Any], heads: Sequence[str], source: str) -> None:
    """A submission's scores besides ``heads`` (its own ``action`` rankings, say) are not used:
    actions are ranked from the verb and noun scores, as the official ``evaluate.py`` ranks them."""
    unused: dict[str, int] = {}
    for entry in results.values():
        for key in set(entry) - set(heads):
            unused[key] = unused.get(key, 0) + 1
    if unused:
        listed = ", ".join(f"{key!r} in {count} of {len(results)} entries" for key, count in sorted(unused.items()))
        log.warning("%s: scores under %s are not used; only %s are read (actions are ranked from the verb and noun "
                    "scores, as the official evaluate.py ranks them)", source, listed, " and ".join(heads))


def _describe_keys(entry: Any, head: str, expected: Sequence[str]) -> str:
    """What a malformed submission entry holds for ``head``, briefly, for an error message."""
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__} instead of an object"
    if not isinstance(entry.get(head), dict):
        return f"no {head!r} object" if head not in entry else f"a JSON {type(entry[head]).__name__} as {head!r}"
    keys = set(entry[head])
    unexpected = sorted(keys - set(expected))[:3]
    missing = [key for key in expected if key not in keys][:3]
    return "; ".join([f"unexpected keys {', '.join(map(repr, unexpected))}"] * bool(unexpected)
                     + [f"no keys {', '.join(map(repr, missing))}"] * bool(missing))


# --------------------------------------------------------------------------- annotations


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


# --------------------------------------------------------------------------- evaluate


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


# --------------------------------------------------------------------------- prediction writer


def _warn_of_samples_without_prediction(loader: Any, ids: Sequence[str], output: Path) -> None:
    """Warn when the predicted split has samples without a prediction: the unreadable ones that
    ``skip_unreadable`` replaced, or those past ``trainer.limit_predict_batches``. A challenge
    submission must score every sample."""
    samples = getattr(getattr(loader, "dataset", None), "samples", None)
    if samples is None or len(ids) >= len(samples):
        return
    predicted = set(ids)
    missing = [sample.id for sample in samples if sample.id not in predicted]
    log.warning(
        "%s: %d of the %d samples have no prediction (unreadable ones skipped by skip_unreadable, or "
        "trainer.limit_predict_batches), e.g. %s; a challenge submission must score every sample",
        output, len(missing), len(samples), missing[:5],
    )


def merge_predictions(batches: Sequence[Mapping[str, Any]]) -> tuple[list[str], dict[str, Tensor]]:
    """Join ``predict_step`` outputs, keeping one row per dataset index, in index order.

    The gathered predictions can hold a sample twice (``skip_unreadable``'s substitute, or a
    padding sampler, which the evaluation sampler is not); duplicates are removed by ``index``.
    """
    if not batches:
        raise ValueError("no predictions to merge")
    ids = [sample_id for batch in batches for sample_id in batch["id"]]
    index = torch.cat([torch.as_tensor(batch["index"]).cpu() for batch in batches])
    scores = {head: torch.cat([batch["scores"][head].cpu() for batch in batches]) for head in batches[0]["scores"]}
    keep = first_per_index(index)
    return [ids[i] for i in keep.tolist()], {head: head_scores[keep] for head, head_scores in scores.items()}


def default_results_path(submission: Path) -> Path:
    """Where ``gsf predict`` writes the results file by default: ``results.pkl`` beside the
    default ``submission.zip`` (or ``.json``), ``<name>_results.pkl`` beside any other
    ``<name>.zip`` or ``<name>.json``."""
    prefix = "" if submission.stem == "submission" else f"{submission.stem}_"
    return submission.with_name(f"{prefix}results{RESULTS_SUFFIX}")


class SubmissionWriter(BasePredictionWriter):
    """Writes ``gsf predict`` outputs as a submission zip (the EPIC-KITCHENS-100 format) and,
    for verb and noun heads, the official results file beside it. Other heads (the one
    ``class`` head of the other datasets) are written in the same layout, with a warning that
    no challenge takes that file.

    Every process hands its predictions to process 0, which de-duplicates them by dataset
    index and writes the files. Works for any heads; for EPIC (verb, noun) the zip is the
    challenge's upload, and the results file what the official ``evaluate.py`` and
    ``create_submission.py`` read.

    Args:
        output: the zip (or ``.json``) to write; default ``<trainer.default_root_dir>/submission.zip``.
        results: the results file (``.pkl``) to write; default beside the submission,
            ``results.pkl`` beside ``submission.zip`` (or ``.json``) and ``<name>_results.pkl``
            beside any other ``<name>.zip`` or ``<name>.json`` (so that two predictions written
            to one folder keep both).
            Written only for verb and noun heads.
        sls_pt, sls_tl, sls_td: the supervision levels declared in the submission.
    """

    def __init__(self, output: str | None = None, results: str | None = None, sls_pt: int = 1, sls_tl: int = 3,
                 sls_td: int = 3) -> None:
        super().__init__(write_interval="epoch")
        self.output = output
        self.results = results
        self.sls = {"sls_pt": sls_pt, "sls_tl": sls_tl, "sls_td": sls_td}
        check_supervision_levels(**self.sls)  # (now, not after the predictions have run)
        self.written: Path | None = None
        self.written_results: Path | None = None

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:  # noqa: ANN001
        batches = list(predictions)
        if batches and isinstance(batches[0], list):  # one list per predict dataloader
            if len(batches) > 1:
                # Dataset indices restart in every loader: merging by index would drop rows.
                raise ValueError(f"the submission takes one predict dataloader, got {len(batches)}")
            batches = batches[0]
        if trainer.world_size > 1:
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, batches)
            batches = [batch for rank_batches in gathered for batch in rank_batches]
        if not trainer.is_global_zero:
            return
        ids, scores = merge_predictions(batches)
        epic = set(scores) == set(EPIC_HEADS)
        if self.results and not epic:  # (before anything is written)
            raise ValueError(f"the results file holds verb and noun scores; these predictions have {sorted(scores)}")
        output = Path(self.output) if self.output else Path(trainer.default_root_dir) / "submission.zip"
        _warn_of_samples_without_prediction(trainer.predict_dataloaders, ids, output)
        self.written = write_submission(make_submission(scores, ids, **self.sls), output)
        if epic:
            results = Path(self.results) if self.results else default_results_path(output)
            self.written_results = write_results(scores, ids, results)
        else:  # (Something-Something, Kinetics, Diving48: no challenge takes this file)
            log.warning("the predictions have the head(s) %s, not EPIC-KITCHENS' verb and noun: %s holds each "
                        "sample's raw scores in the EPIC-KITCHENS submission layout (results -> sample id -> head -> "
                        "class number -> score), to read, not to upload to a challenge", sorted(scores), self.written)
