"""EPIC-KITCHENS-100 submission and results files: what ``gsf predict`` writes (through
:class:`~lightning_gsf.callbacks.SubmissionWriter`) and ``gsf evaluate`` reads.

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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_gsf.metrics import non_finite_rows

log = logging.getLogger(__name__)

SUBMISSION_VERSION = "0.2"
CHALLENGE = "action_recognition"
SUBMISSION_MEMBER = "test.json"  # the name the challenge server reads inside the zip
EPIC_HEADS = ("verb", "noun")
EPIC_CLASS_COUNTS = {"verb": 97, "noun": 300}  # every class scored, as the challenge checks
RESULTS_SUFFIX = ".pkl"
RESULTS_ID_KEY = "narration_id"


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
