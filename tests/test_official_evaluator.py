"""``gsf evaluate`` against an independent NumPy rendering of the official EPIC-KITCHENS-100
action-recognition evaluator's definitions, on the real validation annotations.

The official evaluator (epic-kitchens/C1-Action-Recognition) ranks classes by arg-sorting the
scores (NumPy's default sort) and reversing; for actions it takes the 100 best verb and the
100 best noun scores of every sample, softmaxes each (N, 100) array as a whole (SciPy's
``softmax`` without an axis: one maximum and one sum over all samples), ranks their outer
product, keeps the 100 best pairs as a {verb * 1000 + noun: probability} dict per sample and
ranks each dict again by arg-sorting its values. Tail subsets: verb accuracy over samples
whose verb is a tail class, noun over tail nouns, action over samples with either; unseen:
samples of the unseen participants; both top-1 only. Everything below is written from that
description with NumPy and the ``csv`` module, sharing no code with ``lightning_gsf``; the
scores come continuous, tied (bf16-rounded and coarsely rounded, where the sort's order among
equal scores decides) and large (where the whole-array softmax underflows).
"""

from __future__ import annotations

import csv
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_gsf.evaluation import evaluate_main
from lightning_gsf.submission import make_submission, write_results, write_submission

NUM_VERBS, NUM_NOUNS = 97, 300
ACTION_MULTIPLIER = 1000


def _softmax_of_the_whole_array(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _official_action_ranking(verb: np.ndarray, noun: np.ndarray, top_n: int = 100) -> np.ndarray:
    """(N, top_n) action ids ``verb * 1000 + noun``, best first, the way the evaluator builds them."""
    top_verbs = np.argsort(verb, axis=1)[:, ::-1][:, :top_n]
    top_nouns = np.argsort(noun, axis=1)[:, ::-1][:, :top_n]
    rows = np.arange(len(verb))[:, None]
    verb_probs = _softmax_of_the_whole_array(verb[rows, top_verbs])
    noun_probs = _softmax_of_the_whole_array(noun[rows, top_nouns])
    pairs = (verb_probs[:, :, None] * noun_probs[:, None, :]).reshape(len(verb), -1)
    best = np.argsort(pairs, axis=1)[:, ::-1][:, :top_n]
    verb_pos, noun_pos = np.unravel_index(best, (top_verbs.shape[1], top_nouns.shape[1]))
    ranking = []
    for i in range(len(verb)):  # per sample, {action id: probability} in rank order, then ranked by its values
        kept = {int(top_verbs[i, v]) * ACTION_MULTIPLIER + int(top_nouns[i, n]): pairs[i, b]
                for v, n, b in zip(verb_pos[i], noun_pos[i], best[i])}
        ids, probs = np.array(list(kept)), np.array(list(kept.values()))
        ranking.append(ids[np.argsort(probs)[::-1]])
    return np.array(ranking)


def _topk(ranking: np.ndarray, labels: np.ndarray, k: int) -> float:
    return float((ranking[:, :k] == labels[:, None]).any(axis=1).mean() * 100)


def _submitted_json(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("test.json"))


def _read_column(path: Path, column: str) -> list[str]:
    with path.open(newline="") as f:
        return [row[column] for row in csv.DictReader(f)]


def _official_metrics(folder: Path, ids, verb, noun) -> dict[str, float]:
    with (folder / "EPIC_100_validation.csv").open(newline="") as f:
        rows = {row["narration_id"]: row for row in csv.DictReader(f)}
    verb_labels = np.array([int(rows[i]["verb_class"]) for i in ids])
    noun_labels = np.array([int(rows[i]["noun_class"]) for i in ids])
    action_labels = verb_labels * ACTION_MULTIPLIER + noun_labels
    participants = np.array([rows[i]["participant_id"] for i in ids])
    tail_verbs = {int(v) for v in _read_column(folder / "EPIC_100_tail_verbs.csv", "verb")}
    tail_nouns = {int(n) for n in _read_column(folder / "EPIC_100_tail_nouns.csv", "noun")}
    unseen_ids = set(_read_column(folder / "EPIC_100_unseen_participant_ids_validation.csv", "participant_id"))

    ranks = {
        "verb": np.argsort(verb, axis=1)[:, ::-1],
        "noun": np.argsort(noun, axis=1)[:, ::-1],
        "action": _official_action_ranking(verb, noun),
    }
    labels = {"verb": verb_labels, "noun": noun_labels, "action": action_labels}
    tail_verb = np.isin(verb_labels, list(tail_verbs))
    tail_noun = np.isin(noun_labels, list(tail_nouns))
    masks = {
        "tail": {"verb": tail_verb, "noun": tail_noun, "action": tail_verb | tail_noun},
        "unseen": dict.fromkeys(ranks, np.isin(participants, list(unseen_ids))),
    }
    out = {}
    for task in ranks:
        for k in (1, 5):
            out[f"all_{task}_accuracy_at_{k}"] = _topk(ranks[task], labels[task], k)
        for subset, subset_masks in masks.items():
            mask = subset_masks[task]
            out[f"{subset}_{task}_accuracy_at_1"] = _topk(ranks[task][mask], labels[task][mask], 1)
    return out


def _scores_of_kind(scores: np.ndarray, kind: str) -> np.ndarray:
    """float32 scores as they come: continuous; from bf16 heads (ties at the top in about one
    sample of a hundred); coarsely rounded (ties everywhere); or large logits (the whole-array
    softmax underflows for most samples, whose actions then tie at probability 0)."""
    if kind == "bf16":
        return torch.from_numpy(scores).bfloat16().float().numpy()
    if kind == "rounded":
        return np.round(scores).astype(np.float32)
    if kind == "large":  # (large enough for float64, the dtype a submission's JSON numbers are ranked in)
        return scores * np.float32(300)
    return scores


@pytest.mark.parametrize("seed,kind", [(0, "continuous"), (1, "continuous"), (0, "bf16"), (0, "rounded"),
                                       (0, "large")])
def test_gsf_evaluate_equals_the_official_definitions(tmp_path, shared_data, seed, kind):
    folder = shared_data / "epic100"
    with (folder / "EPIC_100_validation.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    ids = [row["narration_id"] for row in rows[seed::4]]  # ~2,400 samples, P18 and P32 included
    rng = np.random.default_rng(seed)
    verb = rng.normal(size=(len(ids), NUM_VERBS)).astype(np.float32)
    noun = rng.normal(size=(len(ids), NUM_NOUNS)).astype(np.float32)
    # Informative scores, so that every accuracy is far from 0 and 100.
    by_id = {row["narration_id"]: row for row in rows}
    for i, sample_id in enumerate(ids):
        verb[i, int(by_id[sample_id]["verb_class"])] += rng.uniform(0, 3)
        noun[i, int(by_id[sample_id]["noun_class"])] += rng.uniform(0, 4)
    verb, noun = _scores_of_kind(verb * 3, kind), _scores_of_kind(noun * 3, kind)

    submission = make_submission({"verb": torch.from_numpy(verb), "noun": torch.from_numpy(noun)}, ids)
    zip_path = write_submission(submission, tmp_path / "submission.zip")
    out = tmp_path / "metrics.json"
    ours = evaluate_main([str(zip_path), str(folder / "EPIC_100_validation.csv"), "--json", str(out)])

    # The submission's JSON numbers as Python reads them (doubles) into NumPy arrays: float64.
    results = _submitted_json(zip_path)["results"]
    verb_read = np.array([[results[i]["verb"][str(c)] for c in range(NUM_VERBS)] for i in ids])
    noun_read = np.array([[results[i]["noun"][str(c)] for c in range(NUM_NOUNS)] for i in ids])
    assert verb_read.dtype == noun_read.dtype == np.float64
    expected = _official_metrics(folder, ids, verb_read, noun_read)

    assert ours == expected  # to the last bit: the same hits, the percentages computed as NumPy computes them
    if kind == "large":  # most samples' actions underflow to probability 0 and tie: near-chance action accuracy
        assert expected["all_action_accuracy_at_1"] < 1 < expected["all_verb_accuracy_at_1"] - 5
    else:
        assert 5 < expected["all_action_accuracy_at_1"] < 95
    assert json.loads(out.read_text()) == pytest.approx(ours)

    # The results file that gsf predict writes beside the submission, loaded as the official
    # load_results loads a .pkl (pickle.load, then the dict's arrays), scored both ways.
    results_path = write_results({"verb": torch.from_numpy(verb), "noun": torch.from_numpy(noun)}, ids,
                                 tmp_path / "results.pkl")
    with results_path.open("rb") as handle:
        loaded = pickle.load(handle)
    expected_from_file = _official_metrics(folder, list(loaded["narration_id"]), loaded["verb_output"],
                                           loaded["noun_output"])
    ours_from_file = evaluate_main([str(results_path), str(folder / "EPIC_100_validation.csv")])
    assert ours_from_file == expected_from_file
