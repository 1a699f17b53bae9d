"""The submission and results files (the official formats): written, read back, and bad ones refused."""

from __future__ import annotations

import json
import pickle
import zipfile

import numpy as np
import pytest
import torch

from lightning_gsf.callbacks import SubmissionWriter
from lightning_gsf.submission import (
    make_submission,
    read_predictions,
    read_submission,
    submission_scores,
    write_results,
    write_submission,
)

NUM_VERBS, NUM_NOUNS = 97, 300


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
