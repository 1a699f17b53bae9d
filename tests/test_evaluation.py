"""``gsf evaluate``: predictions scored against labelled annotations as the official evaluator scores them."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from lightning_gsf.data.epic import read_participant_ids, read_tail_classes
from lightning_gsf.evaluation import evaluate_main, evaluate_scores, read_labelled_annotations, results_table, split_of
from lightning_gsf.metrics import compute_accuracies
from lightning_gsf.official_ranking import action_id, action_ranking
from lightning_gsf.submission import (make_submission, read_predictions, read_submission, submission_scores,
                                      write_submission)

NUM_VERBS, NUM_NOUNS = 97, 300


@pytest.fixture(scope="module")
def validation(shared_data):
    return read_labelled_annotations(shared_data / "epic100" / "EPIC_100_validation.csv")


def _scores_for(annotations, ids, seed=0):
    """Random logits with the true class boosted on every other sample."""
    generator = torch.Generator().manual_seed(seed)
    verb = torch.randn(len(ids), NUM_VERBS, generator=generator)
    noun = torch.randn(len(ids), NUM_NOUNS, generator=generator)
    for row, sample_id in enumerate(ids):
        if row % 2 == 0:
            verb[row, annotations[sample_id][1]] += 5
        if row % 3 == 0:
            noun[row, annotations[sample_id][2]] += 5
    return {"verb": verb, "noun": noun}


def test_official_side_files(shared_data):
    folder = shared_data / "epic100"
    tail_verbs = read_tail_classes(folder / "EPIC_100_tail_verbs.csv", "verb")
    tail_nouns = read_tail_classes(folder / "EPIC_100_tail_nouns.csv", "noun")
    assert len(tail_verbs) == 86 and max(tail_verbs) < NUM_VERBS
    assert len(tail_nouns) == 228 and max(tail_nouns) < NUM_NOUNS
    assert read_participant_ids(folder / "EPIC_100_unseen_participant_ids_validation.csv") == {"P18", "P32"}


def test_gsf_evaluate_round_trip_on_the_validation_csv(tmp_path, shared_data, validation):
    """Scores written as a submission and scored by ``gsf evaluate`` equal the direct metrics."""
    folder = shared_data / "epic100"
    # A spread of validation samples, unseen participants (P18, P32) included.
    ids = list(validation)[::40]
    scores = _scores_for(validation, ids)
    zip_path = write_submission(make_submission(scores, ids), tmp_path / "submission.zip")

    out = tmp_path / "metrics.json"
    results = evaluate_main([str(zip_path), str(folder / "EPIC_100_validation.csv"), "--json", str(out)])
    assert json.loads(out.read_text()) == pytest.approx(results)

    tail_verbs = read_tail_classes(folder / "EPIC_100_tail_verbs.csv", "verb")
    tail_nouns = read_tail_classes(folder / "EPIC_100_tail_nouns.csv", "noun")
    labels = {
        "verb": torch.tensor([validation[i][1] for i in ids]),
        "noun": torch.tensor([validation[i][2] for i in ids]),
    }
    subsets = {
        "tail_verb": torch.tensor([v in tail_verbs for v in labels["verb"].tolist()]),
        "tail_noun": torch.tensor([n in tail_nouns for n in labels["noun"].tolist()]),
        "unseen": torch.tensor([validation[i][0] in {"P18", "P32"} for i in ids]),
    }
    assert subsets["unseen"].any() and subsets["tail_verb"].any() and subsets["tail_noun"].any()
    expected = compute_accuracies(scores, labels, subsets)
    expected.pop("accuracy_at_1")
    assert results == pytest.approx(expected)
    assert set(results) == {
        *(f"{s}_{t}_accuracy_at_1" for s in ("all", "tail", "unseen") for t in ("verb", "noun", "action")),
        *(f"all_{t}_accuracy_at_5" for t in ("verb", "noun", "action")),
    }
    # Every other verb and every third noun was boosted to the top.
    assert results["all_verb_accuracy_at_1"] >= 50.0


def test_submission_scores_are_ranked_in_the_precision_of_their_json_numbers(tmp_path, shared_data, validation):
    """A submission's JSON numbers are doubles: a true class ahead of the next by 1e-9 (lost in
    float32, where the two tie) ranks first, as it does in the official evaluator's NumPy arrays."""
    ids = list(validation)[:50]
    submission = make_submission({"verb": torch.zeros(len(ids), NUM_VERBS), "noun": torch.zeros(len(ids), NUM_NOUNS)},
                                 ids)
    for sample_id in ids:
        verb, noun = validation[sample_id][1:3]
        runner_up = (verb + 1) % NUM_VERBS
        submission["results"][sample_id]["verb"][str(verb)] = 1.0 + 1e-9
        submission["results"][sample_id]["verb"][str(runner_up)] = 1.0
        submission["results"][sample_id]["noun"][str(noun)] = 1.0
    path = write_submission(submission, tmp_path / "submission.json")
    assert submission_scores(read_submission(path))[1]["verb"].dtype == torch.float64
    results = evaluate_main([str(path), str(shared_data / "epic100" / "EPIC_100_validation.csv")])
    assert results["all_verb_accuracy_at_1"] == 100.0
    assert results["all_noun_accuracy_at_1"] == 100.0


def test_evaluate_rejects_unknown_ids(tmp_path, shared_data):
    zip_path = write_submission(
        make_submission({"verb": torch.zeros(1, NUM_VERBS), "noun": torch.zeros(1, NUM_NOUNS)}, ["P99_99_9"]),
        tmp_path / "submission.zip",
    )
    with pytest.raises(ValueError, match="not in the annotations"):
        evaluate_main([str(zip_path), str(shared_data / "epic100" / "EPIC_100_validation.csv")])


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("EPIC_100_validation.csv", "validation"),
        ("EPIC_100_test.csv", "test"),
        ("EPIC_100_test_labelled.csv", "test"),
        ("my-test.csv", "test"),
        ("EPIC_100_validation_latest.csv", "validation"),  # "test" inside a word is no split
        ("contested_validation.csv", "validation"),
    ],
)
def test_the_split_is_a_word_of_the_annotation_file_name(tmp_path, name, split):
    assert split_of(tmp_path / "tests" / name) == split  # (a folder's name does not count)


@pytest.mark.parametrize("split", ["validation", "test"])
def test_gsf_evaluate_takes_the_unseen_participants_of_the_split(tmp_path, shared_data, validation, split):
    """The default unseen-participants file is the one of --split, or of the file name's split."""
    folder = tmp_path / "annotations"
    folder.mkdir()
    ids = list(validation)[:20]
    (folder / "EPIC_100_latest.csv").write_text(
        (shared_data / "epic100" / "EPIC_100_validation.csv").read_text()
    )
    # Every scored sample's participant is unseen in one split's file, none in the other's.
    participants = sorted({validation[i][0] for i in ids})
    (folder / f"EPIC_100_unseen_participant_ids_{split}.csv").write_text(
        "participant_id\n" + "".join(f"{p}\n" for p in participants)
    )
    other = "test" if split == "validation" else "validation"
    (folder / f"EPIC_100_unseen_participant_ids_{other}.csv").write_text("participant_id\nP99\n")
    zip_path = write_submission(make_submission(_scores_for(validation, ids), ids), tmp_path / "submission.zip")
    results = evaluate_main([str(zip_path), str(folder / "EPIC_100_latest.csv"), "--split", split])
    assert results["unseen_verb_accuracy_at_1"] == results["all_verb_accuracy_at_1"]
    if split == "validation":  # also the default for a name without "test" as a word
        assert evaluate_main([str(zip_path), str(folder / "EPIC_100_latest.csv")]) == results


def test_annotation_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("narration_id,participant_id,verb_class,noun_class\nP01_1_0,P01,3,4\nP01_1_1,P01,x,4\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 3 \(narration_id P01_1_1\): column 'verb_class' is 'x'"):
        read_labelled_annotations(path)
    path.write_text("narration_id,verb_class\n")
    with pytest.raises(ValueError, match=r"bad.csv, header: missing column\(s\) \['participant_id', 'noun_class'\]"):
        read_labelled_annotations(path)


def test_annotations_with_a_byte_order_mark_read_as_without(tmp_path):
    text = "narration_id,participant_id,verb_class,noun_class\nP01_1_0,P01,3,4\n"
    plain, marked = tmp_path / "plain.csv", tmp_path / "marked.csv"
    plain.write_text(text)
    marked.write_text("\ufeff" + text, encoding="utf-8")
    assert [row[:3] for row in read_labelled_annotations(marked).values()] == [("P01", 3, 4)]
    assert read_labelled_annotations(marked)["P01_1_0"][:3] == read_labelled_annotations(plain)["P01_1_0"][:3]


@pytest.mark.parametrize("rows,message", [
    ("P01_1_0,P01,3,4\nP01_1_0,P01,5,6\n", r"bad.csv, line 3 .*: narration_id 'P01_1_0' again \(first at line 2\)"),
    ("P01_1_0,P01,3\n", r"bad.csv, line 2 .*: 3 fields; expected the header's 4"),
    ("P01_1_0,P01,3,4,5\n", r"bad.csv, line 2 .*: 5 fields; expected the header's 4"),
])
def test_repeated_or_short_annotation_rows_are_named(tmp_path, rows, message):
    path = tmp_path / "bad.csv"
    path.write_text("narration_id,participant_id,verb_class,noun_class\n" + rows)
    with pytest.raises(ValueError, match=message):
        read_labelled_annotations(path)


@pytest.mark.parametrize("label", [3, -1])
@pytest.mark.parametrize("head,column", [("verb", 2), ("noun", 3)])
def test_evaluate_rejects_labels_outside_the_scored_classes(tmp_path, head, column, label):
    """A label past the scored classes (annotations of another class list, say) or below them is
    named by file, line and sample: scored anyway, an out-of-range noun's action id could equal
    another pair's and count a wrong answer as right."""
    rows = [["P01_1_0", "P01", "0", "1"], ["P01_1_1", "P01", "1", "2"]]
    rows[1][column] = str(label)
    path = tmp_path / "labels.csv"
    path.write_text("narration_id,participant_id,verb_class,noun_class\n" + "".join(",".join(r) + "\n" for r in rows))
    scores = {"verb": torch.randn(2, 3), "noun": torch.randn(2, 3)}
    with pytest.raises(ValueError, match=rf"labels.csv, line 3: {head}_class {label} of P01_1_1 is outside the 3 "
                                         rf"{head} classes that preds scores; expected 0..2"):
        evaluate_scores(["P01_1_0", "P01_1_1"], scores, read_labelled_annotations(path), source="preds")
    labels = {"verb": torch.tensor([0, 1]), "noun": torch.tensor([1, 2])}
    labels[head][1] = label
    with pytest.raises(ValueError, match=rf"1 {head} labels are outside the 3 scored classes, the first {label} "
                                         rf"\(sample 1\)"):
        compute_accuracies(scores, labels)


def test_results_file_scores_keep_their_dtype(tmp_path):
    """The official evaluator ranks a results file's scores in the dtype it holds them in."""
    path = tmp_path / "results.pkl"
    content = {"verb_output": np.zeros((1, 3)), "noun_output": np.zeros((1, 4), dtype=np.float32),
               "narration_id": np.array(["a"])}
    path.write_bytes(pickle.dumps(content))
    _, scores = read_predictions(path)
    assert (scores["verb"].dtype, scores["noun"].dtype) == (torch.float64, torch.float32)
    content = {"verb_output": np.zeros((1, 3), dtype=np.float16), "noun_output": np.zeros((1, 4), dtype=np.float32),
               "narration_id": np.array(["a"])}
    path.write_bytes(pickle.dumps(content))
    from lightning_gsf.evaluation import _as_numpy_floats
    assert _as_numpy_floats(read_predictions(path)[1]["verb"]).dtype == np.float16
    tensors = tmp_path / "results.pt"  # (bf16, which NumPy lacks, read as float32)
    torch.save({"verb_output": torch.zeros(1, 3, dtype=torch.bfloat16), "noun_output": torch.zeros(1, 4),
                "narration_id": ["a"]}, tensors)
    assert read_predictions(tensors)[1]["verb"].dtype == torch.float32
    torch.save([{"verb_output": torch.zeros(3, dtype=torch.bfloat16), "noun_output": torch.zeros(4, dtype=torch.bfloat16),
                 "narration_id": "a"}], tensors)  # (the list format, a row at a time)
    assert [scores.dtype for scores in read_predictions(tensors)[1].values()] == [torch.float32] * 2


def test_results_table_has_a_row_per_subset():
    table = results_table({"all_verb_accuracy_at_1": 1.0, "all_verb_accuracy_at_5": 2.0, "tail_verb_accuracy_at_1": 3.0})
    assert [column.header for column in table.columns] == ["subset", "verb@1", "verb@5"]
    assert table.row_count == 2
    table = results_table({f"all_{task}_accuracy_at_{k}": 1.0 for task in ("verb", "noun") for k in (1, 5)})
    assert [column.header for column in table.columns] == ["subset", "verb@1", "noun@1", "verb@5", "noun@5"]


def test_evaluating_a_subset_names_the_samples_left_out(tmp_path, caplog):
    """As the official evaluator, the predicted samples are scored; the warning says which
    annotated ones were not, and over how many the accuracies are."""
    rows = [["P01_1_0", "P01", "0", "1"], ["P01_1_1", "P01", "1", "2"], ["P01_1_2", "P01", "2", "0"]]
    path = tmp_path / "labels.csv"
    path.write_text("narration_id,participant_id,verb_class,noun_class\n" + "".join(",".join(r) + "\n" for r in rows))
    scores = {"verb": torch.eye(3)[:2] * 5, "noun": torch.eye(3)[[1, 2]] * 5}
    with caplog.at_level("WARNING", logger="lightning_gsf.evaluation"):
        results = evaluate_scores(["P01_1_0", "P01_1_1"], scores, read_labelled_annotations(path), source="preds")
    assert "preds: 1 of 3 annotated samples have no prediction, e.g. ['P01_1_2']; the accuracies are over the 2" in caplog.text
    assert results["all_action_accuracy_at_1"] == 100.0
    caplog.clear()  # (every annotated sample predicted: no warning)
    path.write_text("narration_id,participant_id,verb_class,noun_class\n"
                    + "".join(",".join(row) + "\n" for row in rows[:2]))
    with caplog.at_level("WARNING", logger="lightning_gsf.evaluation"):
        evaluate_scores(["P01_1_0", "P01_1_1"], scores, read_labelled_annotations(path), source="preds")
    assert not caplog.records


def test_a_subset_that_no_predicted_sample_is_in_is_warned_of(tmp_path, caplog):
    """A subset file that matches no predicted sample (the test split's unseen participants
    given with validation annotations) leaves its rows out of the results, with a warning
    that says so, not silently."""
    rows = [["P01_1_0", "P01", "0", "1"], ["P01_1_1", "P01", "1", "2"]]
    path = tmp_path / "labels.csv"
    path.write_text("narration_id,participant_id,verb_class,noun_class\n" + "".join(",".join(r) + "\n" for r in rows))
    scores = {"verb": torch.eye(3)[:2] * 5, "noun": torch.eye(3)[[1, 2]] * 5}
    with caplog.at_level("WARNING", logger="lightning_gsf.evaluation"):
        results = evaluate_scores(["P01_1_0", "P01_1_1"], scores, read_labelled_annotations(path), source="preds",
                                  tail_verbs={1}, tail_nouns={7}, unseen_participants={"P99"})
    assert "preds: none of the 2 predicted samples is of an unseen participant: no unseen accuracies" in caplog.text
    assert "preds: none of the 2 predicted samples has a tail noun: no tail noun accuracies" in caplog.text
    assert "tail verb" not in caplog.text
    assert not [key for key in results if key.startswith("unseen")]
    assert results["tail_verb_accuracy_at_1"] == 100.0 and "tail_noun_accuracy_at_1" not in results


# -- the official ranking's own contract (lightning_gsf.official_ranking) ----------------------


def test_action_ranking_keeps_top_n_verbs_and_nouns_and_names_actions_verb_times_1000_plus_noun():
    """With ``top_n`` smaller than the verb count, the second-best verb still pairs with the best
    noun; an action's id is ``verb * 1000 + noun``, as in the official evaluator."""
    verb = np.array([[3.0, 2.9, 0.0]], dtype=np.float32)
    noun = np.array([[0.0, 5.0, 0.0]], dtype=np.float32)
    assert action_ranking(verb, noun, top_n=2).tolist() == [[1, 1001]]
    assert action_id(np.array([2, 96]), np.array([7, 299])).tolist() == [2007, 96299]


@pytest.mark.parametrize(("verbs", "nouns", "top_n", "width"), [(97, 300, 100, 100), (3, 4, 100, 12)])
def test_action_ranking_of_no_samples_is_empty(verbs, nouns, top_n, width):
    ranking = action_ranking(np.zeros((0, verbs), dtype=np.float32), np.zeros((0, nouns), dtype=np.float32), top_n)
    assert ranking.shape == (0, width) and ranking.dtype == np.int64


@pytest.mark.parametrize(("verb_shape", "noun_shape"), [((3, 5), (1, 4)), ((5,), (5,)), ((2, 5), (2, 4, 1))])
def test_action_ranking_rejects_scores_that_are_not_two_arrays_of_one_length(verb_shape, noun_shape):
    with pytest.raises(ValueError, match=r"expected verb and noun scores \(N, V\) and \(N, K\)"):
        action_ranking(np.zeros(verb_shape, dtype=np.float32), np.zeros(noun_shape, dtype=np.float32))
