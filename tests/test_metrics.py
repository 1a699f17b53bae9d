"""Accuracy metrics: hand-computed examples, a brute-force action ranking, DDP de-duplication."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_gsf.metrics import (
    HEADLINE_METRIC,
    ClassificationScores,
    action_topk_hits,
    classification_loss,
    compute_accuracies,
    first_per_index,
    top_actions,
    topk_hits,
)


def _logits(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs).log()


def test_top_actions_ranks_by_product_of_probabilities():
    # p(verb) = (.5, .3, .2), p(noun) = (.6, .4): pair products are
    # (0,0) .30, (0,1) .20, (1,0) .18, (1,1) .12, (2,0) .12, (2,1) .08.
    verb, noun = _logits([[0.5, 0.3, 0.2]]), _logits([[0.6, 0.4]])
    assert top_actions(verb, noun, 3).tolist() == [[0, 1, 2]]  # flat id = verb * 2 + noun
    assert top_actions(verb, noun, 1).tolist() == [[0]]
    # The product, not the sum of probabilities: (0,1) beats (1,0) by .20 vs .18.
    hits = action_topk_hits(verb, noun, torch.tensor([1]), torch.tensor([0]), 2)
    assert hits.tolist() == [False]


@pytest.mark.parametrize(
    "num_verbs,num_nouns,k", [(7, 11, 5), (97, 300, 5), (3, 2, 5), (4, 9, 1), (3, 11, 5), (11, 3, 5), (1, 4, 5)]
)
def test_top_actions_matches_the_full_pair_matrix(num_verbs, num_nouns, k):
    generator = torch.Generator().manual_seed(num_verbs * num_nouns + k)
    verb = torch.randn(16, num_verbs, generator=generator) * 3
    noun = torch.randn(16, num_nouns, generator=generator) * 3
    full = verb.log_softmax(-1).unsqueeze(-1) + noun.log_softmax(-1).unsqueeze(-2)
    expected = full.flatten(1).topk(min(k, num_verbs * num_nouns), dim=-1).indices
    assert torch.equal(top_actions(verb, noun, k), expected)


@pytest.mark.parametrize("k,expected", [(1, [True, False, False]), (2, [True, True, False]), (5, [True, True, True])])
def test_topk_hits(k, expected):
    scores = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    assert topk_hits(scores, torch.tensor([0, 1, 2]), k).tolist() == expected


def _epic_example() -> tuple[dict, dict, dict]:
    """Four samples, 3 verbs x 2 nouns, with hand-checked hits.

    sample  verb ok@1  noun ok@1  action ok@1   tail_verb  tail_noun  unseen
    0       yes        yes        yes           no         no         no
    1       yes        no         no            yes        no         yes
    2       no         yes        no            no         yes        yes
    3       no         no         no            yes        yes        no
    """
    verb = _logits([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]])
    noun = _logits([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = {"verb": torch.tensor([0, 1, 1, 2]), "noun": torch.tensor([0, 1, 1, 1])}
    subsets = {
        "tail_verb": torch.tensor([False, True, False, True]),
        "tail_noun": torch.tensor([False, False, True, True]),
        "unseen": torch.tensor([False, True, True, False]),
    }
    return {"verb": verb, "noun": noun}, labels, subsets


def test_epic_accuracies_hand_computed():
    scores, labels, subsets = _epic_example()
    result = compute_accuracies(scores, labels, subsets)
    expected = {
        "all_verb_accuracy_at_1": 50.0,
        "all_noun_accuracy_at_1": 50.0,
        "all_action_accuracy_at_1": 25.0,
        # Top-5 of 3 verbs and 2 nouns is everything; of 6 actions, sample 3's (2, 1) has
        # the smallest product (.1 * .4) and ranks last.
        "all_verb_accuracy_at_5": 100.0,
        "all_noun_accuracy_at_5": 100.0,
        "all_action_accuracy_at_5": 75.0,
        # tail: verb on samples 1, 3; noun on samples 2, 3; action on 1, 2, 3.
        "tail_verb_accuracy_at_1": 50.0,
        "tail_noun_accuracy_at_1": 50.0,
        "tail_action_accuracy_at_1": 0.0,
        # unseen: samples 1, 2.
        "unseen_verb_accuracy_at_1": 50.0,
        "unseen_noun_accuracy_at_1": 50.0,
        "unseen_action_accuracy_at_1": 0.0,
        HEADLINE_METRIC: 25.0,
    }
    assert result == pytest.approx(expected)


def test_subsets_of_a_correct_action_hand_computed():
    """Sample 0, the one correct action, made an unseen participant's with a tail verb and a
    common noun: a tail action is one whose verb *or* noun is a tail class (official rule)."""
    scores, labels, subsets = _epic_example()
    subsets["tail_verb"][0] = True
    subsets["unseen"][0] = True
    result = compute_accuracies(scores, labels, subsets)
    assert result["tail_verb_accuracy_at_1"] == pytest.approx(200 / 3)  # samples 0, 1, 3: 0 and 1 right
    assert result["tail_action_accuracy_at_1"] == pytest.approx(25.0)  # samples 0-3: 0 right
    assert result["unseen_action_accuracy_at_1"] == pytest.approx(100 / 3)  # samples 0-2: 0 right
    assert result["unseen_noun_accuracy_at_1"] == pytest.approx(200 / 3)


def test_tail_accuracies_without_tail_nouns():
    """No tail noun among the samples (or no tail-noun file): the tail verb and tail action
    accuracies are still given, over the tail-verb samples 1 and 3, and no tail noun one."""
    scores, labels, subsets = _epic_example()
    del subsets["tail_noun"]
    result = compute_accuracies(scores, labels, subsets)
    assert (result["tail_verb_accuracy_at_1"], result["tail_action_accuracy_at_1"]) == (50.0, 0.0)
    assert "tail_noun_accuracy_at_1" not in result


def test_single_head_accuracies_and_headline():
    scores = {"class": torch.tensor([[2.0, 1.0], [2.0, 1.0]])}
    result = compute_accuracies(scores, {"class": torch.tensor([0, 1])})
    assert result == {"all_class_accuracy_at_1": 50.0, "all_class_accuracy_at_5": 100.0, HEADLINE_METRIC: 50.0}


@pytest.mark.parametrize("hits,total", [(1, 3), (2, 3), (7, 22), (1, 7), (5, 49), (1234, 9668)])
def test_percentages_equal_numpys_mean_times_100_to_the_bit(hits, total):
    """The official evaluator's percentage is NumPy's ``hits.mean() * 100``; 100 * hits / total
    differs in the last bit for 1 of 3 (33.333333333333336 against 33.33333333333333)."""
    flags = np.zeros(total, dtype=bool)
    flags[:hits] = True
    scores = {"class": torch.where(torch.from_numpy(flags)[:, None], torch.tensor([2.0, 1.0]), torch.tensor([1.0, 2.0]))}
    result = compute_accuracies(scores, {"class": torch.zeros(total, dtype=torch.long)})
    assert result["all_class_accuracy_at_1"] == float(flags.mean() * 100)


def test_headline_of_several_heads_without_an_action_is_their_mean_top1():
    """Heads other than verb + noun have no action accuracy: the headline is the mean of their top-1."""
    scores = {"scene": torch.tensor([[2.0, 1.0], [2.0, 1.0]]), "object": torch.tensor([[2.0, 1.0, 0.0]] * 2)}
    result = compute_accuracies(scores, {"scene": torch.tensor([0, 1]), "object": torch.tensor([0, 0])})
    assert (result["all_scene_accuracy_at_1"], result["all_object_accuracy_at_1"]) == (50.0, 100.0)
    assert result[HEADLINE_METRIC] == 75.0 and not any("action" in key for key in result)


def test_empty_subset_is_omitted():
    scores, labels, subsets = _epic_example()
    subsets["unseen"] = torch.zeros(4, dtype=torch.bool)
    result = compute_accuracies(scores, labels, subsets)
    assert not any(key.startswith("unseen_") for key in result)
    assert "tail_action_accuracy_at_1" in result


@pytest.mark.parametrize(
    "scores,labels,message",
    [
        ({"verb": torch.zeros(2, 3)}, {"noun": torch.zeros(2, dtype=torch.long)}, "heads"),
        ({"verb": torch.zeros(2, 3)}, {"verb": torch.zeros(3, dtype=torch.long)}, "number of samples"),
        ({"verb": torch.zeros(0, 3)}, {"verb": torch.zeros(0, dtype=torch.long)}, "at least one"),
        # (-1 would flatten into an action id naming another pair)
        ({"verb": torch.zeros(2, 3)}, {"verb": torch.tensor([0, -1])},
         r"1 verb labels are outside the 3 scored classes, the first -1 \(sample 1\)"),
    ],
)
def test_compute_accuracies_rejects_inconsistent_inputs(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        compute_accuracies(scores, labels)


def test_compute_accuracies_rejects_subsets_of_another_length():
    scores, labels, subsets = _epic_example()
    subsets["unseen"] = subsets["unseen"][:3]
    with pytest.raises(ValueError, match=r"disagree on the number of samples: .*'subset unseen': 3"):
        compute_accuracies(scores, labels, subsets)


@pytest.mark.parametrize(
    "index,expected",
    [([3, 1, 2, 0], [3, 1, 2, 0]), ([0, 1, 2, 0], [0, 1, 2]), ([4, 4, 4], [0]), ([2, 0, 2, 1, 0], [1, 3, 0])],
)
def test_first_per_index(index, expected):
    assert first_per_index(torch.tensor(index)).tolist() == expected


def _split_like_distributed_sampler(num_samples: int, world_size: int) -> list[list[int]]:
    """Indices each rank sees: padded with repeats from the start, then strided by rank."""
    total = math.ceil(num_samples / world_size) * world_size
    padded = list(range(num_samples)) + list(range(total - num_samples))
    return [padded[rank::world_size] for rank in range(world_size)]


@pytest.mark.parametrize("world_size", [3, 5, 8])
def test_gathered_duplicates_give_one_process_numbers(world_size):
    """Concatenating every rank's states (what ``dist_reduce_fx="cat"`` does) with the
    sampler's padding must give exactly the single-process accuracies and loss."""
    scores, labels, subsets = _epic_example()
    num_classes = {"verb": 3, "noun": 2}
    loss = {"loss_weights": {"verb": 1.0, "noun": 0.5}, "label_smoothing": 0.1}

    single = ClassificationScores(num_classes, **loss)
    single.update(scores, labels, torch.arange(4), subsets)

    gathered = ClassificationScores(num_classes, **loss)
    for rank_indices in _split_like_distributed_sampler(4, world_size):
        idx = torch.tensor(rank_indices)
        gathered.update(
            {h: s[idx] for h, s in scores.items()},
            {h: lab[idx] for h, lab in labels.items()},
            idx,
            {n: f[idx] for n, f in subsets.items()},
        )
    assert sum(i.numel() for i in gathered.index) > 4  # the padding did add duplicates
    results = gathered.compute()
    assert results == single.compute()
    expected, _ = classification_loss(scores, labels, loss["loss_weights"], label_smoothing=0.1)
    assert results["loss"] == pytest.approx(float(expected), rel=1e-6)


def test_padded_duplicates_are_removed():
    scores, labels, subsets = _epic_example()
    num_classes = {"verb": 3, "noun": 2}
    duplicated = ClassificationScores(num_classes)
    # Sample 0 is a hit on everything; counted three times it would lift every accuracy.
    order = torch.tensor([0, 1, 2, 3, 0, 0])
    duplicated.update(
        {h: s[order] for h, s in scores.items()},
        {h: lab[order] for h, lab in labels.items()},
        order,
        {n: f[order] for n, f in subsets.items()},
    )
    assert duplicated.compute() == compute_accuracies(scores, labels, subsets)


def test_metric_without_subsets_reports_only_all():
    metric = ClassificationScores({"class": 3})
    metric.update({"class": torch.eye(3)}, {"class": torch.tensor([0, 1, 0])}, torch.arange(3))
    result = metric.compute()
    assert result["all_class_accuracy_at_1"] == pytest.approx(200 / 3)
    assert set(result) == {"all_class_accuracy_at_1", "all_class_accuracy_at_5", HEADLINE_METRIC}
