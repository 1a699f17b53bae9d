"""Rankings as the official EPIC-KITCHENS-100 action-recognition evaluator makes them, in NumPy.

``gsf evaluate`` must report what the official evaluator (``epic-kitchens/C1-Action-Recognition``,
``evaluate.py``) reports for the same scores, sample for sample. The epoch metrics
(:mod:`lightning_gsf.metrics`) rank with torch's ``topk`` and log-softmaxes, which agree with
it wherever no two scores tie and no probability underflows; scores from bf16 heads tie
often enough to move top-1 by a tenth of a point, and large logits underflow. So
``gsf evaluate`` ranks the way the official code does, step by step:

- a head's classes: NumPy's ``argsort`` (its default sort, which is not stable) reversed,
  so equal scores come in NumPy's order;
- actions: the 100 best verbs and the 100 best nouns keep their scores, and each of the two
  ``(N, 100)`` arrays is softmaxed **as a whole** (``scipy.special.softmax`` called without
  an axis: one maximum and one sum over every sample), in the scores' own dtype; the
  ``(N, 100, 100)`` products are arg-sorted, the 100 best pairs kept, and those arg-sorted
  once more, one sample at a time (the evaluator turns them into a ``{action: score}``
  dict per sample and ranks that). Where the whole-array softmax underflows to 0 for a
  sample, its actions tie and take that order;
- an action's id is ``verb * 1000 + noun``.

These are the evaluator's documented steps written anew (its code is under a non-commercial
licence and is not copied here).
"""

from __future__ import annotations

import numpy as np

TOP_N = 100  # the verbs, nouns and actions the evaluator keeps per sample
ACTION_VERB_MULTIPLIER = 1000  # action id = verb * 1000 + noun


def class_ranking(scores: np.ndarray) -> np.ndarray:
    """``(N, K)`` class indices of each sample, best first: ``argsort`` reversed."""
    return np.argsort(scores, axis=-1)[:, ::-1]


def action_id(verb: np.ndarray | int, noun: np.ndarray | int) -> np.ndarray | int:
    """The evaluator's action id of a (verb, noun) pair."""
    return verb * ACTION_VERB_MULTIPLIER + noun


def _softmax_over_all(x: np.ndarray) -> np.ndarray:
    """Softmax over every element of ``x`` together (one maximum, one sum), in ``x``'s dtype."""
    shifted = np.exp(x - np.max(x, axis=None, keepdims=True))
    return shifted / np.sum(shifted, axis=None, keepdims=True)


def action_ranking(verb_scores: np.ndarray, noun_scores: np.ndarray, top_n: int = TOP_N) -> np.ndarray:
    """``(N, min(top_n, V * K))`` action ids (:func:`action_id`) of each sample, best first,
    from verb scores ``(N, V)`` and noun scores ``(N, K)``; see the module doc."""
    if verb_scores.ndim != 2 or noun_scores.ndim != 2 or len(verb_scores) != len(noun_scores):
        raise ValueError(f"expected verb and noun scores (N, V) and (N, K), got {verb_scores.shape} and "
                         f"{noun_scores.shape}")
    if not len(verb_scores):  # (no samples: nothing to take a softmax over)
        return np.zeros((0, min(top_n, verb_scores.shape[1] * noun_scores.shape[1])), dtype=np.int64)
    rows = np.arange(len(verb_scores))[:, None]
    verbs = class_ranking(verb_scores)[:, :top_n]
    nouns = class_ranking(noun_scores)[:, :top_n]
    verb_probs = _softmax_over_all(verb_scores[rows, verbs])
    noun_probs = _softmax_over_all(noun_scores[rows, nouns])
    pair_probs = (verb_probs[:, :, None] * noun_probs[:, None, :]).reshape(len(rows), -1)
    best = class_ranking(pair_probs)[:, :top_n]
    verb_at, noun_at = np.unravel_index(best, (verbs.shape[1], nouns.shape[1]))
    actions = action_id(verbs[rows, verb_at], nouns[rows, noun_at])
    best_probs = pair_probs[rows, best]
    # ranked once more one sample at a time, as the evaluator ranks its per-sample dicts
    ranked = [sample_actions[np.argsort(probs)[::-1]] for sample_actions, probs in zip(actions, best_probs)]
    return np.stack(ranked)


def topk_hits(ranking: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Bool ``(N,)``: whether each sample's label is among the first ``k`` of its ranking."""
    return (ranking[:, :k] == np.asarray(labels).reshape(-1, 1)).any(axis=1)
