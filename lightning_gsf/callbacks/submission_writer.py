"""The callback that writes ``gsf predict``'s outputs as an EPIC-KITCHENS-100 submission and
the official results file (:class:`SubmissionWriter`; the formats are
:mod:`lightning_gsf.submission`'s)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch import Tensor

from lightning_gsf.metrics import first_per_index
from lightning_gsf.submission import (EPIC_HEADS, RESULTS_SUFFIX, check_supervision_levels, make_submission,
                                      write_results, write_submission)

log = logging.getLogger(__name__)


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
