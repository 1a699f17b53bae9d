"""``gsf predict``'s writer: the predictions of every process, de-duplicated, in the submission and results files."""

from __future__ import annotations

import json
import zipfile
from types import SimpleNamespace

import pytest
import torch

from lightning_gsf.callbacks import SubmissionWriter
from lightning_gsf.submission import make_submission, read_results

NUM_VERBS, NUM_NOUNS = 97, 300


def _predict_trainer(tmp_path, samples, world_size=1, is_global_zero=True):
    """What :class:`SubmissionWriter` reads of a ``gsf predict`` trainer."""
    return SimpleNamespace(world_size=world_size, is_global_zero=is_global_zero, default_root_dir=str(tmp_path),
                           predict_dataloaders=SimpleNamespace(dataset=SimpleNamespace(samples=samples)))


def _predictions(ids, index, heads=("verb", "noun")):
    """One batch of ``predict_step`` outputs (zero scores)."""
    sizes = {"verb": NUM_VERBS, "noun": NUM_NOUNS, "class": 5}
    scores = {head: torch.zeros(len(ids), sizes[head]) for head in heads}
    return {"id": list(ids), "index": torch.tensor(index), "scores": scores}


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
