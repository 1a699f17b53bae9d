"""Accuracy metrics: top-k per head, EPIC-KITCHENS-100 action accuracy, and its subsets.

One set of pure functions computes every number, and both the epoch metrics
(:class:`ClassificationScores`, a torchmetrics ``Metric``) and ``gsf evaluate``
(``evaluation.py``) call it, so the numbers logged in training are the numbers a
submission gets.

The definitions follow the official EPIC-KITCHENS-100 action recognition evaluator
(``epic-kitchens/C1-Action-Recognition``, ``evaluate.py`` and ``utils/metrics.py``):

- **action**: the ``(verb, noun)`` pairs are ranked by ``p(verb) * p(noun)``, the product
  of the two heads' softmax probabilities, i.e. by the sum of their log-softmaxes; a sample
  is right at ``k`` when its true pair is among the ``k`` best. (The official code ranks
  the 100 best verbs x 100 best nouns with a softmax over all samples' scores at once and
  NumPy's sort: the same ranking unless scores tie or that softmax underflows, which happens
  with large logits. ``gsf evaluate`` follows it step by step,
  :mod:`lightning_gsf.official_ranking`; the epoch metrics rank with torch, here.)
- **all**: every sample, top-1 and top-5 for verb, noun and action.
- **unseen**: samples of participants absent from training, top-1 only.
- **tail**: top-1 only; verb accuracy over samples whose *verb* is a tail class, noun
  accuracy over samples whose *noun* is a tail class, action accuracy over samples whose
  verb *or* noun is a tail class.

Keys are flat and in percent, as the official evaluator prints them:
``{all,tail,unseen}_{verb,noun,action}_accuracy_at_1`` and
``all_{verb,noun,action}_accuracy_at_5``. Datasets with other heads get
``all_{head}_accuracy_at_{1,5}`` (and ``unseen_{head}_accuracy_at_1`` if they mark such a
subset). :data:`HEADLINE_METRIC` names the one number a checkpoint is selected on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

log = logging.getLogger(__name__)

TOP_K = (1, 5)
ACTION_HEADS = ("verb", "noun")
# The subsets a dataset may mark per sample (``batch["subsets"]``); EPIC marks all three.
TAIL_VERB, TAIL_NOUN, UNSEEN = "tail_verb", "tail_noun", "unseen"
# Logged alongside the full set: the action top-1 when the heads are verb + noun, otherwise
# the top-1 of the only head (or the mean top-1 of several). Checkpoints monitor it.
HEADLINE_METRIC = "accuracy_at_1"


def topk_hits(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """Bool ``(N,)``: whether each sample's label is among its ``k`` best-scored classes.

    ``k`` larger than the number of classes counts every sample as a hit, as ranking all
    classes does.
    """
    k = min(k, scores.shape[-1])
    best = scores.topk(k, dim=-1).indices
    return (best == labels.unsqueeze(-1)).any(dim=-1)


def action_labels(verb_labels: Tensor, noun_labels: Tensor, num_nouns: int) -> Tensor:
    """Action class of each sample: the flat index ``verb * num_nouns + noun``."""
    return verb_labels * num_nouns + noun_labels


def top_actions(verb_scores: Tensor, noun_scores: Tensor, k: int) -> Tensor:
    """The ``k`` best actions ``(N, k)``, as flat ``verb * num_nouns + noun`` indices.

    Actions are ranked by ``log_softmax(verb) + log_softmax(noun)``. Only the ``k`` best verbs
    and ``k`` best nouns can form a top-``k`` pair (a pair with a worse verb is beaten by ``k``
    pairs sharing its noun), so ranking ``k x k`` candidates is exact and avoids the
    ``N x 97 x 300`` matrix.
    """
    num_verbs, num_nouns = verb_scores.shape[-1], noun_scores.shape[-1]
    k = min(k, num_verbs * num_nouns)
    verb_logp, verb_idx = verb_scores.float().log_softmax(-1).topk(min(k, num_verbs), dim=-1)
    noun_logp, noun_idx = noun_scores.float().log_softmax(-1).topk(min(k, num_nouns), dim=-1)
    pair_logp = verb_logp.unsqueeze(-1) + noun_logp.unsqueeze(-2)  # (N, kv, kn)
    pair_ids = verb_idx.unsqueeze(-1) * num_nouns + noun_idx.unsqueeze(-2)
    best = pair_logp.flatten(1).topk(k, dim=-1).indices
    return pair_ids.flatten(1).gather(1, best)


def action_topk_hits(
    verb_scores: Tensor, noun_scores: Tensor, verb_labels: Tensor, noun_labels: Tensor, k: int
) -> Tensor:
    """Bool ``(N,)``: whether the true ``(verb, noun)`` pair is among the ``k`` best actions."""
    truth = action_labels(verb_labels, noun_labels, noun_scores.shape[-1])
    return (top_actions(verb_scores, noun_scores, k) == truth.unsqueeze(-1)).any(dim=-1)


def _percent(hits: Tensor) -> float:
    # (counts in integers, the ratio in float64 and then in percent: NumPy's ``hits.mean() * 100``,
    # the official evaluator's figure, to the last bit)
    return hits.sum().item() / hits.numel() * 100.0


def compute_accuracies(
    scores: Mapping[str, Tensor],
    labels: Mapping[str, Tensor],
    subsets: Mapping[str, Tensor] | None = None,
) -> dict[str, float]:
    """All accuracies of one evaluation, in percent, keyed as described in the module doc.

    Args:
        scores: head -> ``(N, K)`` raw scores (logits); only their ranking matters, except
            for the action, which softmaxes them.
        labels: head -> ``(N,)`` class indices, same heads as ``scores``.
        subsets: optional subset name -> bool ``(N,)``; ``tail_verb``, ``tail_noun`` and
            ``unseen`` are understood. A subset with no sample yields no key (the official
            evaluator drops "unseen" the same way).
    """
    check_evaluation_inputs(scores, labels, subsets)
    # hits[task][k]: bool (N,), for every head and (for verb + noun) the action.
    hits: dict[str, dict[int, Tensor]] = {
        head: {k: topk_hits(scores[head], labels[head], k) for k in TOP_K} for head in scores
    }
    if set(ACTION_HEADS) <= set(scores):
        hits["action"] = {
            k: action_topk_hits(scores["verb"], scores["noun"], labels["verb"], labels["noun"], k)
            for k in TOP_K
        }
    return accuracies_from_hits(hits, subsets)


def check_evaluation_inputs(scores: Mapping[str, Tensor], labels: Mapping[str, Tensor],
                            subsets: Mapping[str, Tensor] | None = None) -> None:
    """Raise ``ValueError`` unless ``scores`` and ``labels`` have the same heads and scores,
    labels and subsets the same number of samples, at least one; every label names one of its
    head's classes (an action id made of an out-of-range noun could equal another pair's); and
    every score is finite (the classes a NaN row "ranks" first are arbitrary, and torch and
    NumPy pick different ones: a diverged model would get accuracies)."""
    if set(scores) != set(labels):
        raise ValueError(f"scores have heads {sorted(scores)} but labels have {sorted(labels)}")
    num_samples = {head: s.shape[0] for head, s in scores.items()}
    num_samples.update({f"{head} labels": lab.shape[0] for head, lab in labels.items()})
    num_samples.update({f"subset {name}": m.shape[0] for name, m in (subsets or {}).items()})
    if len(set(num_samples.values())) > 1:
        raise ValueError(f"scores, labels and subsets disagree on the number of samples: {num_samples}")
    if not num_samples or next(iter(num_samples.values())) == 0:
        raise ValueError("need at least one sample to compute accuracies")
    for head, head_scores in scores.items():
        if (rows := non_finite_rows(head_scores)).numel():
            raise ValueError(f"{len(rows)} of {len(head_scores)} samples have non-finite {head} scores (NaN or "
                             f"inf), the first sample {int(rows[0])}: has the model diverged?")
    for head, head_labels in labels.items():
        num_classes = scores[head].shape[-1]
        outside = ((head_labels < 0) | (head_labels >= num_classes)).nonzero().flatten()
        if len(outside):
            raise ValueError(
                f"{len(outside)} {head} labels are outside the {num_classes} scored classes, the first "
                f"{int(head_labels[outside[0]])} (sample {int(outside[0])}); expected 0..{num_classes - 1}"
            )


def non_finite_rows(scores: Tensor) -> Tensor:
    """Positions of the rows of ``scores`` ``(N, K)`` holding a NaN or an infinity."""
    return (~torch.isfinite(scores).all(dim=-1)).nonzero().flatten()


def accuracies_from_hits(hits: Mapping[str, Mapping[int, Tensor]],
                         subsets: Mapping[str, Tensor] | None = None) -> dict[str, float]:
    """The accuracies of :func:`compute_accuracies` from each task's hits: ``{task: {k: bool
    (N,)}}`` for every head and (verb + noun) ``"action"``, at every k of :data:`TOP_K`."""
    has_action = "action" in hits
    results: dict[str, float] = {}
    for task, task_hits in hits.items():
        for k in TOP_K:
            results[f"all_{task}_accuracy_at_{k}"] = _percent(task_hits[k])

    subsets = subsets or {}
    # Which samples each task is scored on within each subset family.
    subset_masks: dict[str, dict[str, Tensor]] = {}
    if UNSEEN in subsets:
        subset_masks["unseen"] = {task: subsets[UNSEEN] for task in hits}
    if has_action and (TAIL_VERB in subsets or TAIL_NOUN in subsets):
        nobody = torch.zeros_like(hits["action"][1])
        tail_verb = subsets.get(TAIL_VERB, nobody).bool()
        tail_noun = subsets.get(TAIL_NOUN, nobody).bool()
        subset_masks["tail"] = {"verb": tail_verb, "noun": tail_noun, "action": tail_verb | tail_noun}
    for family, masks in subset_masks.items():
        for task, mask in masks.items():
            mask = mask.bool()
            if not mask.any():
                log.info("no %s samples to compute %s %s accuracy on", family, family, task)
                continue
            results[f"{family}_{task}_accuracy_at_1"] = _percent(hits[task][1][mask])

    if has_action:
        results[HEADLINE_METRIC] = results["all_action_accuracy_at_1"]
    else:
        top1 = [results[f"all_{head}_accuracy_at_1"] for head in hits]
        results[HEADLINE_METRIC] = sum(top1) / len(top1)
    return results


def classification_loss(
    logits: Mapping[str, Tensor], labels: Mapping[str, Tensor], weights: Mapping[str, float], label_smoothing: float = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """The weighted sum of the heads' cross-entropies (each a mean over the samples), and each
    head's own: the training loss, and the evaluation loss over every sample once."""
    per_head = {head: F.cross_entropy(logits[head], labels[head], label_smoothing=label_smoothing) for head in weights}
    total = sum(weights[head] * loss for head, loss in per_head.items())
    return total, per_head


def first_per_index(index: Tensor) -> Tensor:
    """Positions that keep one sample per dataset index, ordered by index.

    Scores gathered from all processes can hold a sample twice (the copy ``skip_unreadable``
    substitutes for an unreadable sample; the repeats of a padding ``DistributedSampler``,
    which evaluation does not use). Keeping the first occurrence of each index makes the
    metrics equal those of one process.
    """
    if index.ndim != 1:
        raise ValueError(f"expected a 1-D tensor of dataset indices, got shape {tuple(index.shape)}")
    order = torch.sort(index, stable=True).indices
    sorted_index = index[order]
    is_first = torch.ones_like(sorted_index, dtype=torch.bool)
    is_first[1:] = sorted_index[1:] != sorted_index[:-1]
    return order[is_first]


class ClassificationScores(Metric):
    """Collects every sample's scores, labels and subset flags; computes the accuracies once.

    Accuracies over subsets and over actions need all scores, so this metric keeps them
    (EPIC validation: ~10k x 397 floats) rather than running sums. States are concatenated
    across processes, then de-duplicated by dataset index (:func:`first_per_index`). Given
    ``loss_weights``, ``compute`` also gives ``loss``, :func:`classification_loss` over the
    same de-duplicated samples: a sample that ``skip_unreadable`` substitutes for an unreadable
    one counts once, as in the accuracies.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        num_classes: Mapping[str, int],
        subset_names: tuple[str, ...] = (TAIL_VERB, TAIL_NOUN, UNSEEN),
        loss_weights: Mapping[str, float] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.heads = tuple(num_classes)
        self.subset_names = subset_names
        self.loss_weights = dict(loss_weights) if loss_weights is not None else None
        self.label_smoothing = label_smoothing
        self.add_state("index", default=[], dist_reduce_fx="cat")
        for head in self.heads:
            self.add_state(f"scores_{head}", default=[], dist_reduce_fx="cat")
            self.add_state(f"labels_{head}", default=[], dist_reduce_fx="cat")
        for name in subset_names:
            self.add_state(f"subset_{name}", default=[], dist_reduce_fx="cat")

    def update(
        self,
        scores: Mapping[str, Tensor],
        labels: Mapping[str, Tensor],
        index: Tensor,
        subsets: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Add one batch: scores ``{head: (B, K)}``, labels ``{head: (B,)}``, index ``(B,)``."""
        self.index.append(index.detach().long())
        for head in self.heads:
            getattr(self, f"scores_{head}").append(scores[head].detach().float())
            getattr(self, f"labels_{head}").append(labels[head].detach().long())
        subsets = subsets or {}
        for name in self.subset_names:
            flags = subsets.get(name)
            # A dataset without this subset marks nobody; compute_accuracies then omits it.
            if flags is None:
                flags = torch.zeros_like(index, dtype=torch.bool)
            getattr(self, f"subset_{name}").append(flags.detach().bool())

    def compute(self) -> dict[str, float]:
        keep = first_per_index(dim_zero_cat(self.index))
        scores = {head: dim_zero_cat(getattr(self, f"scores_{head}"))[keep] for head in self.heads}
        labels = {head: dim_zero_cat(getattr(self, f"labels_{head}"))[keep] for head in self.heads}
        subsets = {name: dim_zero_cat(getattr(self, f"subset_{name}"))[keep] for name in self.subset_names}
        # Subsets nobody belongs to are not measured (e.g. no tail classes in a dataset).
        subsets = {name: flags for name, flags in subsets.items() if flags.any()}
        results = compute_accuracies(scores, labels, subsets)
        if self.loss_weights is not None:
            loss, _ = classification_loss(scores, labels, self.loss_weights, self.label_smoothing)
            results["loss"] = float(loss)
        return results
