"""Submission writing (official schema) and its round trip through ``gsf evaluate``."""

from __future__ import annotations

import json
import pickle
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lightning_gsf.callbacks import SubmissionWriter
from lightning_gsf.data.epic import read_participant_ids, read_tail_classes
from lightning_gsf.evaluation import evaluate_main, evaluate_scores, read_labelled_annotations, results_table, split_of
from lightning_gsf.metrics import compute_accuracies
from lightning_gsf.official_ranking import action_id, action_ranking
from lightning_gsf.submission import (
    make_submission,
    read_predictions,
    read_results,
    read_submission,
    submission_scores,
    write_results,
    write_submission,
)

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


def _predict_trainer(tmp_path, samples, world_size=1, is_global_zero=True):
    """What :class:`SubmissionWriter` reads of a ``gsf predict`` trainer."""
    return SimpleNamespace(world_size=world_size, is_global_zero=is_global_zero, default_root_dir=str(tmp_path),
                           predict_dataloaders=SimpleNamespace(dataset=SimpleNamespace(samples=samples)))


def _predictions(ids, index, heads=("verb", "noun")):
    """One batch of ``predict_step`` outputs (zero scores)."""
    sizes = {"verb": NUM_VERBS, "noun": NUM_NOUNS, "class": 5}
    scores = {head: torch.zeros(len(ids), sizes[head]) for head in heads}
    return {"id": list(ids), "index": torch.tensor(index), "scores": scores}


def test_submission_schema(tmp_path):
    generator = torch.Generator().manual_seed(0)
    scores = {"verb": torch.randn(2, NUM_VERBS, generator=generator), "noun": torch.randn(2, NUM_NOUNS, generator=generator)}
    path = write_submission(make_submission(scores, ["P01_11_0", "P01_11_1"]), tmp_path / "submission.zip")
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["test.json"]
        submission = json.loads(archive.read("test.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.zip"]  # written through a renamed file
    assert submission["version"] == "0.2"
    assert submission["challenge"] == "action_recognition"
    assert {key: submission[key] for key in ("sls_pt", "sls_tl", "sls_td")} == {"sls_pt": 1, "sls_tl": 3, "sls_td": 3}
    entry = submission["results"]["P01_11_1"]
    assert set(entry) == {"verb", "noun"}
    assert list(entry["verb"]) == [str(c) for c in range(NUM_VERBS)]
    assert list(entry["noun"]) == [str(c) for c in range(NUM_NOUNS)]
    # Raw scores, not probabilities.
    assert entry["noun"]["299"] == pytest.approx(scores["noun"][1, 299].item())


@pytest.mark.parametrize("suffix", [".zip", ".json"])
def test_submission_round_trip(tmp_path, suffix):
    generator = torch.Generator().manual_seed(1)
    scores = {"verb": torch.randn(3, NUM_VERBS, generator=generator), "noun": torch.randn(3, NUM_NOUNS, generator=generator)}
    ids = ["a", "b", "c"]
    path = write_submission(make_submission(scores, ids), tmp_path / f"out{suffix}")
    read_ids, read_scores = submission_scores(read_submission(path))
    assert read_ids == ids
    for head in scores:  # (float32 scores written, read as JSON numbers are: doubles of the same values)
        torch.testing.assert_close(read_scores[head], scores[head].double(), rtol=0, atol=0)


def test_scores_a_submission_holds_besides_verb_and_noun_are_named_as_unused(caplog):
    """A submission's own action rankings would be silently ignored: the evaluator ranks actions
    from the verb and noun scores (as the official evaluate.py does) and says so."""
    scores = {"verb": torch.randn(3, NUM_VERBS), "noun": torch.randn(3, NUM_NOUNS)}
    submission = make_submission(scores, ["a", "b", "c"])
    with caplog.at_level("WARNING", logger="lightning_gsf.submission"):
        submission_scores(submission, source="plain.zip")
    assert "not used" not in caplog.text
    for entry in list(submission["results"].values())[:2]:
        entry["action"] = {"3,5": 0.9}
    with caplog.at_level("WARNING", logger="lightning_gsf.submission"):
        ids, read = submission_scores(submission, source="ranked.zip")
    assert "ranked.zip: scores under 'action' in 2 of 3 entries are not used; only verb and noun are read" in caplog.text
    torch.testing.assert_close(read["verb"], scores["verb"].double(), rtol=0, atol=0)


@pytest.mark.parametrize("counts,warns", [((NUM_VERBS, NUM_NOUNS), False), ((5, 7), True), ((NUM_VERBS, 299), True)])
def test_submission_of_other_class_counts_than_epic_warns(caplog, counts, warns):
    """The challenge's create_submission.py refuses verb and noun scores of other counts than
    97 and 300; a synthetic dataset's submission is still written, with a warning."""
    scores = {"verb": torch.zeros(1, counts[0]), "noun": torch.zeros(1, counts[1])}
    with caplog.at_level("WARNING", logger="lightning_gsf.submission"):
        submission = make_submission(scores, ["a"])
    assert len(submission["results"]["a"]["noun"]) == counts[1]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if warns:
        assert warnings == [f"the submission has {counts[0]} verb and {counts[1]} noun scores a sample; the "
                            "action_recognition challenge takes 97 and 300 (its create_submission.py refuses "
                            "other counts): this file is for gsf evaluate, not for upload"]
    else:
        assert warnings == []


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda s: s["results"]["a"].pop("noun"), "no 'noun'"),
        (lambda s: s["results"]["b"]["verb"].pop("96"), "verb classes"),
        (lambda s: s["results"].clear(), "empty"),
        (lambda s: s["results"]["b"]["verb"].update({"x": s["results"]["b"]["verb"].pop("5")}),
         "entry 'b' must map verb classes '0'..'96' to scores, found unexpected keys 'x'; no keys '5'"),
        (lambda s: s["results"].update(b=[1, 2]), "entry 'b' .* found a JSON list instead of an object"),
        (lambda s: s["results"]["a"].update(verb=3), "entry 'a' .* found a JSON int as 'verb'"),
        (lambda s: s["results"]["b"]["noun"].update({"7": "high"}), "entry 'b' has a noun score that is not a number"),
        (lambda s: s["results"]["b"]["noun"].update({"7": "1.5"}), "entry 'b' has a noun score that is not a number"),
        (lambda s: s["results"]["b"]["noun"].update({"7": True}), "entry 'b' has a noun score that is not a number"),
        (lambda s: s["results"]["b"]["verb"].update({"97": 0.5}),
         "entry 'b' must map verb classes '0'..'96' to scores, found unexpected keys '97'$"),
    ],
)
def test_malformed_submission_is_rejected(mutate, message):
    submission = make_submission({"verb": torch.zeros(2, NUM_VERBS), "noun": torch.zeros(2, NUM_NOUNS)}, ["a", "b"])
    mutate(submission)
    with pytest.raises(ValueError, match=f"^my.zip: .*{message}"):
        submission_scores(submission, source="my.zip")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_scores_are_rejected_naming_the_sample(tmp_path, value):
    scores = {"verb": torch.zeros(3, NUM_VERBS), "noun": torch.zeros(3, NUM_NOUNS)}
    scores["noun"][1, 7] = value
    with pytest.raises(ValueError, match="1 samples have non-finite noun scores .*, the first 'b'"):
        make_submission(scores, ["a", "b", "c"])
    with pytest.raises(ValueError, match="non-finite noun scores"):
        write_results(scores, ["a", "b", "c"], tmp_path / "results.pkl")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("levels", [{"sls_pt": 6}, {"sls_tl": -1}, {"sls_td": 2.5}, {"sls_pt": True}])
def test_supervision_levels_are_0_to_5(levels):
    name = next(iter(levels))
    with pytest.raises(ValueError, match=f"{name} must be a supervision level from 0 to 5"):
        make_submission({"verb": torch.zeros(1, 3)}, ["a"], **levels)
    with pytest.raises(ValueError, match=f"{name} must be a supervision level"):
        SubmissionWriter(**levels)


def test_duplicate_ids_are_rejected():
    with pytest.raises(ValueError, match="unique"):
        make_submission({"verb": torch.zeros(2, 3)}, ["a", "a"])


def test_scores_of_another_number_of_samples_than_ids_are_rejected(tmp_path):
    scores = {"verb": torch.zeros(3, NUM_VERBS), "noun": torch.zeros(3, NUM_NOUNS)}
    with pytest.raises(ValueError, match=r"expected verb scores of shape \(2, num_classes\), got \(3, 97\)"):
        make_submission(scores, ["a", "b"])
    with pytest.raises(ValueError, match=r"expected verb scores of shape \(2, num_classes\)"):
        write_results(scores, ["a", "b"], tmp_path / "results.pkl")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("name", "is_zip"), [("submission", True), ("submission.ZIP", True),
                                             ("submission.json", False), ("submission.JSON", False)])
def test_a_submission_is_a_zip_unless_named_json(tmp_path, name, is_zip):
    path = write_submission(make_submission({"verb": torch.zeros(1, 3)}, ["a"]), tmp_path / name)
    assert zipfile.is_zipfile(path) == is_zip
    assert list(read_submission(path)["results"]) == ["a"]


def test_a_zip_without_test_json_is_named(tmp_path):
    path = tmp_path / "sub.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("results.json", "{}")
    with pytest.raises(ValueError, match=r"sub.zip: expected a member named test.json, found \['results.json'\]"):
        read_submission(path)


def test_results_file_is_the_official_dict_format(tmp_path):
    """What the official evaluate.py / create_submission.py load: a pickled dict of float32
    arrays (N, 97) and (N, 300) and a string array of narration ids."""
    generator = torch.Generator().manual_seed(2)
    scores = {"verb": torch.randn(3, NUM_VERBS, generator=generator), "noun": torch.randn(3, NUM_NOUNS, generator=generator)}
    ids = ["P01_11_0", "P01_11_1", "P02_109_12"]
    path = write_results(scores, ids, tmp_path / "results.pkl")
    with path.open("rb") as handle:
        loaded = pickle.load(handle)
    assert set(loaded) == {"verb_output", "noun_output", "narration_id"}
    assert loaded["verb_output"].dtype == np.float32 and loaded["verb_output"].shape == (3, NUM_VERBS)
    assert loaded["noun_output"].dtype == np.float32 and loaded["noun_output"].shape == (3, NUM_NOUNS)
    assert loaded["narration_id"].tolist() == ids
    np.testing.assert_array_equal(loaded["noun_output"], scores["noun"].numpy())
    assert not list(tmp_path.glob("*.partial"))


def test_half_precision_scores_are_written_as_float32(tmp_path):
    """(Predictions of a mixed-precision run: the official format holds float32.)"""
    scores = {"verb": torch.randn(2, NUM_VERBS).half(), "noun": torch.randn(2, NUM_NOUNS).bfloat16()}
    with write_results(scores, ["a", "b"], tmp_path / "results.pkl").open("rb") as handle:
        loaded = pickle.load(handle)
    assert loaded["verb_output"].dtype == np.float32 and loaded["noun_output"].dtype == np.float32
    np.testing.assert_array_equal(loaded["verb_output"], scores["verb"].float().numpy())


def test_a_failed_write_leaves_the_previous_results_file(tmp_path, monkeypatch):
    scores = {"verb": torch.zeros(1, NUM_VERBS), "noun": torch.zeros(1, NUM_NOUNS)}
    path = write_results(scores, ["a"], tmp_path / "results.pkl")
    before = path.read_bytes()

    def crash(obj, handle, protocol=None):
        handle.write(b"trunc")
        raise OSError("disk full")

    monkeypatch.setattr(pickle, "dump", crash)
    with pytest.raises(OSError, match="disk full"):
        write_results(scores, ["a"], path)
    assert path.read_bytes() == before


def _list_format(scores, ids, as_tensors):
    convert = (lambda row: row) if as_tensors else (lambda row: row.numpy())
    return [{"verb_output": convert(scores["verb"][i]), "noun_output": convert(scores["noun"][i]), "narration_id": ids[i]}
            for i in range(len(ids))]


@pytest.mark.parametrize("layout", ["dict.pkl", "list.pkl", "list.pt"])
def test_results_files_read_back(tmp_path, layout):
    """gsf evaluate reads the official results file in its dict and list formats (.pkl, and .pt of tensors)."""
    generator = torch.Generator().manual_seed(3)
    scores = {"verb": torch.randn(4, NUM_VERBS, generator=generator), "noun": torch.randn(4, NUM_NOUNS, generator=generator)}
    ids = ["a", "b", "c", "d"]
    path = tmp_path / f"results_{layout}"
    if layout == "dict.pkl":
        write_results(scores, ids, path)
    elif layout == "list.pkl":
        path.write_bytes(pickle.dumps(_list_format(scores, ids, as_tensors=False)))
    else:
        torch.save(_list_format(scores, ids, as_tensors=True), path)
    read_ids, read_scores = read_predictions(path)
    assert read_ids == ids
    for head in scores:
        torch.testing.assert_close(read_scores[head], scores[head], rtol=0, atol=0)


@pytest.mark.parametrize(
    "content,message",
    [
        ({"verb_output": np.zeros((2, 3)), "narration_id": np.array(["a", "b"])}, "keys"),
        ({"verb_output": np.zeros((2, 3)), "noun_output": np.zeros((3, 5)), "narration_id": np.array(["a", "b"])},
         r"noun_output must be \(2, num_classes\)"),
        ({"verb_output": np.zeros((2, 3)), "noun_output": np.zeros((2, 5)), "narration_id": np.array(["a", "a"])},
         "not unique"),
        ([{"verb_output": np.zeros(3), "narration_id": "a"}], "dict per sample"),
        ([], "dict per sample"),
        ([{"verb_output": np.zeros(3), "noun_output": np.zeros(5), "narration_id": "a"},
          {"verb_output": np.zeros(3), "noun_output": np.zeros(4), "narration_id": "b"}],
         r"entry 1 \(narration id 'b'\): noun_output must be \(5,\) as in entry 0, got shape \(4,\)"),
        ([{"verb_output": np.zeros((1, 3)), "noun_output": np.zeros(5), "narration_id": "a"}],
         r"entry 0 \(narration id 'a'\): verb_output must be one score per class as in entry 0, got shape \(1, 3\)"),
    ],
)
def test_malformed_results_file_is_rejected_naming_it(tmp_path, content, message):
    path = tmp_path / "bad_results.pkl"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match=message) as error:
        read_predictions(path)
    assert "bad_results.pkl" in str(error.value)


@pytest.mark.parametrize("content", [b"", b"not a pickle"])
def test_a_results_file_that_is_no_pickle_is_named(tmp_path, content):
    path = tmp_path / "broken_results.pkl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="broken_results.pkl: not a pickled results file"):
        read_predictions(path)


def test_results_file_needs_verb_and_noun_and_a_pkl_name(tmp_path):
    with pytest.raises(ValueError, match="no \\['noun'\\]"):
        write_results({"verb": torch.zeros(1, 3)}, ["a"], tmp_path / "results.pkl")
    with pytest.raises(ValueError, match=r"\*\.pkl"):
        write_results({"verb": torch.zeros(1, 3), "noun": torch.zeros(1, 4)}, ["a"], tmp_path / "results.pt")


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


def test_merge_predictions_drops_sampler_padding():
    """Batches from two ranks, the second padded with a repeat of sample 0."""
    from lightning_gsf.callbacks.submission_writer import merge_predictions

    scores = torch.arange(5, dtype=torch.float32).unsqueeze(1).repeat(1, 3)
    rank0 = {"id": ["n0", "n2", "n4"], "index": torch.tensor([0, 2, 4]), "scores": {"verb": scores[[0, 2, 4]]}}
    rank1 = {"id": ["n1", "n3", "n0"], "index": torch.tensor([1, 3, 0]), "scores": {"verb": scores[[1, 3, 0]]}}
    ids, merged = merge_predictions([rank0, rank1])
    assert ids == ["n0", "n1", "n2", "n3", "n4"]
    torch.testing.assert_close(merged["verb"], scores)


@pytest.mark.parametrize("skipped", [0, 1])
def test_a_submission_missing_samples_is_warned_about(tmp_path, caplog, skipped):
    """With ``skip_unreadable`` an unreadable sample is replaced by the next one, whose copy the
    merge drops: its id is then absent from the submission, which says so."""
    samples = [SimpleNamespace(id=f"P01_01_{i}") for i in range(4)]
    kept = [i for i in range(4) if i != 2] if skipped else list(range(4))
    index = torch.tensor([i + 1 if i == 2 and skipped else i for i in range(4)])  # 2 replaced by 3
    batch = {"id": [samples[i].id for i in index.tolist()], "index": index,
             "scores": {"verb": torch.zeros(4, NUM_VERBS), "noun": torch.zeros(4, NUM_NOUNS)}}
    trainer = _predict_trainer(tmp_path, samples)
    writer = SubmissionWriter()
    with caplog.at_level("WARNING", logger="lightning_gsf.callbacks.submission_writer"):
        writer.write_on_epoch_end(trainer, None, [batch], None)
    with zipfile.ZipFile(writer.written) as archive:
        assert sorted(json.loads(archive.read("test.json"))["results"]) == [samples[i].id for i in kept]
    if skipped:
        assert "1 of the 4 samples have no prediction" in caplog.text and "P01_01_2" in caplog.text
    else:
        assert not caplog.records


@pytest.mark.parametrize("loaders", [1, 2])
def test_the_submission_takes_one_predict_dataloader(tmp_path, loaders):
    """Dataset indices restart in every loader: merging two loaders' predictions by index would
    drop rows, so two are refused before anything is written (one, as a list, is written)."""
    samples = [SimpleNamespace(id=f"P01_01_{i}") for i in range(2)]
    batch = {"id": [s.id for s in samples], "index": torch.arange(2),
             "scores": {"verb": torch.zeros(2, NUM_VERBS), "noun": torch.zeros(2, NUM_NOUNS)}}
    trainer = _predict_trainer(tmp_path, samples)
    writer = SubmissionWriter()
    if loaders == 1:
        writer.write_on_epoch_end(trainer, None, [[batch]], None)
        assert writer.written is not None and writer.written.is_file()
        return
    with pytest.raises(ValueError, match="the submission takes one predict dataloader, got 2"):
        writer.write_on_epoch_end(trainer, None, [[batch], [batch]], None)
    assert not list(tmp_path.iterdir())


def test_only_process_zero_writes_the_submission(tmp_path, monkeypatch):
    def all_gather_object(gathered, mine):  # (process 1 of two: its predictions reach process 0 this way)
        gathered[:] = [[_predictions(["b"], [1])], mine]

    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    writer = SubmissionWriter()
    trainer = _predict_trainer(tmp_path, [SimpleNamespace(id="a")], world_size=2, is_global_zero=False)
    writer.write_on_epoch_end(trainer, None, [_predictions(["a"], [0])], None)
    assert writer.written is None and not list(tmp_path.iterdir())


def test_every_process_predictions_reach_the_submission(tmp_path, monkeypatch):
    """Process 0 of two merges both processes' predictions (the second's padded with a repeat of sample 0)."""
    other_process = [_predictions(["b", "a"], [1, 0])]

    def all_gather_object(gathered, mine):
        gathered[:] = [mine, other_process]

    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    writer = SubmissionWriter()
    trainer = _predict_trainer(tmp_path, [SimpleNamespace(id=i) for i in "abc"], world_size=2)
    writer.write_on_epoch_end(trainer, None, [_predictions(["a", "c"], [0, 2])], None)
    with zipfile.ZipFile(writer.written) as archive:
        assert sorted(json.loads(archive.read("test.json"))["results"]) == ["a", "b", "c"]
    assert read_results(writer.written_results)[0] == ["a", "b", "c"]


def test_a_results_file_asked_of_other_heads_is_refused_before_anything_is_written(tmp_path):
    writer = SubmissionWriter(results=str(tmp_path / "results.pkl"))
    with pytest.raises(ValueError, match=r"the results file holds verb and noun scores; these predictions have "
                                         r"\['class'\]"):
        writer.write_on_epoch_end(_predict_trainer(tmp_path, [SimpleNamespace(id="a")]), None,
                                  [_predictions(["a"], [0], heads=("class",))], None)
    assert writer.written is None and not list(tmp_path.iterdir())


def test_predictions_written_to_one_folder_under_two_names_keep_both_results_files(tmp_path):
    """``results.pkl`` beside the default ``submission.zip``; ``<name>_results.pkl`` beside any
    other name, so that a second ``gsf predict`` into the folder does not overwrite the first's."""
    samples = [SimpleNamespace(id="P01_11_0")]
    trainer = _predict_trainer(tmp_path, samples)
    written = {}
    for output, verb in ((None, 1), (tmp_path / "val.zip", 2), (tmp_path / "test.json", 3)):
        scores = {"verb": torch.eye(NUM_VERBS)[[verb]], "noun": torch.zeros(1, NUM_NOUNS)}
        writer = SubmissionWriter(output=None if output is None else str(output))
        writer.write_on_epoch_end(trainer, None, [{"id": ["P01_11_0"], "index": torch.tensor([0]), "scores": scores}],
                                  None)
        written[writer.written.name] = writer.written_results
    assert written == {"submission.zip": tmp_path / "results.pkl", "val.zip": tmp_path / "val_results.pkl",
                       "test.json": tmp_path / "test_results.pkl"}
    for verb, path in enumerate(written.values(), start=1):
        assert read_results(path)[1]["verb"].argmax().item() == verb


def test_declared_supervision_levels_reach_the_submission(tmp_path):
    """Distinct levels, so that a swap of two fields or a writer that ignores them shows."""
    scores = {"verb": torch.zeros(1, NUM_VERBS), "noun": torch.zeros(1, NUM_NOUNS)}
    submission = make_submission(scores, ["P01_11_0"], sls_pt=2, sls_tl=4, sls_td=5)
    assert {key: submission[key] for key in ("sls_pt", "sls_tl", "sls_td")} == {"sls_pt": 2, "sls_tl": 4, "sls_td": 5}

    samples = [SimpleNamespace(id="P01_11_0")]
    trainer = _predict_trainer(tmp_path, samples)
    writer = SubmissionWriter(sls_pt=0, sls_tl=2, sls_td=4)  # (as --submission.sls_pt 0 ... on the command line)
    writer.write_on_epoch_end(trainer, None, [{"id": ["P01_11_0"], "index": torch.tensor([0]), "scores": scores}], None)
    with zipfile.ZipFile(writer.written) as archive:
        written = json.loads(archive.read("test.json"))
    assert {key: written[key] for key in ("sls_pt", "sls_tl", "sls_td")} == {"sls_pt": 0, "sls_tl": 2, "sls_td": 4}


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


def test_predictions_of_another_dataset_are_written_with_a_warning(tmp_path, caplog):
    """A ``class`` head (Something-Something, Kinetics, Diving48): its scores in the
    submission's layout, no results file, and a warning that no challenge takes the file."""
    samples = [SimpleNamespace(id="74225"), SimpleNamespace(id="116154")]
    trainer = _predict_trainer(tmp_path, samples)
    writer = SubmissionWriter()
    batch = {"id": ["74225", "116154"], "index": torch.tensor([0, 1]), "scores": {"class": torch.eye(174)[[5, 7]]}}
    with caplog.at_level("WARNING", logger="lightning_gsf.callbacks.submission_writer"):
        writer.write_on_epoch_end(trainer, None, [batch], None)
    with zipfile.ZipFile(writer.written) as archive:
        results = json.loads(archive.read("test.json"))["results"]
    assert [max(results[i]["class"], key=results[i]["class"].get) for i in ("74225", "116154")] == ["5", "7"]
    assert writer.written_results is None and not (tmp_path / "results.pkl").exists()
    assert "the predictions have the head(s) ['class'], not EPIC-KITCHENS' verb and noun" in caplog.text
    assert "not to upload to a challenge" in caplog.text


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
