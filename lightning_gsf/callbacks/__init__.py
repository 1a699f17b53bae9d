"""Callbacks for runs on clusters: atomic checkpoints, a checkpoint on preemption or on a data error,
exact resumption, and the clip throughput; and the writer of ``gsf predict``'s submission.

- :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file in the *same directory*
  and renames it over the target, so a job killed while saving leaves the previous
  ``last.ckpt`` intact. (Lightning's own writer stages the file in the system temporary
  directory and moves it; across file systems, node-local ``/tmp`` to a shared checkpoint
  directory, that move is a copy, and a kill during it truncates the target.)
- :class:`PreemptionCheckpoint` saves a checkpoint when the job is told to stop. SLURM (and
  most schedulers) send SIGTERM some time before SIGKILL. Lightning's signal connector
  already catches SIGTERM, lets the current batch finish and raises ``SIGTERMException``;
  this callback adds the save, at that clean batch boundary (a training batch that ends a
  gradient-accumulation window, or with one process a validation batch of ``fit``: then the
  resumed run validates that epoch again, from its first batch), and under DDP makes the
  processes agree on the signal at the end of every batch, and holds it during validation
  until the validation ends (the ranks would otherwise deadlock).
  It does the same for the first Ctrl-C (SIGINT) of ``fit``'s training, on one process or
  under DDP; a second Ctrl-C stops at once, as Lightning does, without a checkpoint.
- :class:`DataErrorCheckpoint` saves a checkpoint when ``fit`` meets a batch that cannot be
  read (a corrupt video, a broken frame): before a training batch, or at the end of a
  validation (whose epoch the resumed run validates again), on every process at once, then
  stops with the error that names the sample. Once the data is mended, the run resumes there.
- :class:`ExactResume` saves every rank's global random state (dropout draws from
  it) and restores it before the first batch after a resume, so a resumed run takes the
  same random draws as an uninterrupted one, and makes sure the position of the
  :class:`~lightning_gsf.data.samplers.ResumableDataLoader` is restored. A deterministic run
  resumed mid-epoch then ends with the same weights.
- :class:`ClipThroughputMonitor` is Lightning's ``ThroughputMonitor`` counting clips.
- :class:`SubmissionWriter` writes ``gsf predict``'s outputs as an EPIC-KITCHENS-100 submission
  and the official results file (:mod:`lightning_gsf.submission`), gathered from every process.

One module each: ``checkpoint_io``, ``preemption``, ``data_errors``, ``exact_resume``,
``throughput`` and ``submission_writer``; ``stopping`` holds what the two stopping callbacks
share. (Why a checkpoint does not fit a model is :mod:`lightning_gsf.checkpoint_matching`'s.)
"""

from lightning_gsf.callbacks.checkpoint_io import AtomicCheckpointIO
from lightning_gsf.callbacks.data_errors import DataErrorCheckpoint
from lightning_gsf.callbacks.exact_resume import ExactResume
from lightning_gsf.callbacks.preemption import EXIT_STOPPED_BY_CTRL_C, PreemptionCheckpoint, stop_signal
from lightning_gsf.callbacks.submission_writer import SubmissionWriter
from lightning_gsf.callbacks.throughput import ClipThroughputMonitor

__all__ = [
    "EXIT_STOPPED_BY_CTRL_C",
    "AtomicCheckpointIO",
    "ClipThroughputMonitor",
    "DataErrorCheckpoint",
    "ExactResume",
    "PreemptionCheckpoint",
    "SubmissionWriter",
    "stop_signal",
]
