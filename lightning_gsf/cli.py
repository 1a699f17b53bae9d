"""The ``gsf`` command: LightningCLI for training, plus five small tools.

::

    gsf fit      --config configs/epic100/gsf_resnet50.yaml [--ckpt_path last]
    gsf validate --config ... --ckpt_path runs/.../checkpoints/best-epochNNN-accXX.ckpt
    gsf test     --config ... --ckpt_path ...
    gsf predict  --config ... --ckpt_path ...    # writes the submission zip and results.pkl
    gsf synth    ...                              # write the synthetic dataset
    gsf import-original ...                       # original release checkpoint -> Lightning
    gsf export-original ...                       # Lightning checkpoint -> original release layout
    gsf evaluate PREDICTIONS ANNOTATIONS_CSV      # score a submission or results.pkl
    gsf benchmark ...                             # GSF speed

The five tools have their own argument parsers and are dispatched before LightningCLI
parses anything. For the Lightning subcommands the config is the interface: the model's and
the data module's typed ``__init__`` are the ``model:`` and ``data:`` sections, and the data
module's ``num_classes`` and ``num_segments`` are linked into the model so a config states
them once. ``gsf fit --print_config`` prints a complete, runnable config.

Defaults that every run gets (each can be changed from a config):

- ``checkpoint``: ``ModelCheckpoint`` keeping the best epoch by ``val/accuracy_at_1`` (action
  top-1 for EPIC, top-1 otherwise), and ``last_checkpoint``: a second ``ModelCheckpoint`` that
  overwrites ``last.ckpt`` at the end of every epoch, both in ``<trainer.default_root_dir>/checkpoints``,
  a fixed folder, so that ``--ckpt_path last`` finds the last run's latest epoch to resume.
  (Lightning >= 2.6 writes a monitored checkpoint's ``save_last`` only when the metric improves,
  so ``save_last`` alone would resume from the best epoch, not the latest.)
- ``submission``: the prediction writer; ``gsf predict`` writes ``<default_root_dir>/submission.zip`` (and ``results.pkl``).
- loggers: TensorBoard and CSV under ``<default_root_dir>/{tensorboard,csv}`` when
  ``trainer.logger`` is left unset; a rich progress bar, a learning-rate monitor and
  Lightning's ``ThroughputMonitor`` (``train/time``, ``train/samples`` and, once
  :data:`THROUGHPUT_WINDOW` batches have run, ``train/device/samples_per_sec``: clips a second;
  the same under ``validate/``, ``test/`` and ``predict/``).
- reliability (``callbacks/``): checkpoints written atomically (when ``trainer.plugins`` is
  left unset), a ``last.ckpt`` saved on SIGTERM and when ``fit`` meets a batch that cannot
  be read, and the random state and loader position saved so a resumed run continues exactly.
- host memory (``host_memory.py``): glibc's malloc keeps freed blocks for reuse, so a CPU
  training step does not fault its activations in again every step;
  ``LIGHTNING_GSF_MALLOC=default`` leaves glibc's settings alone.
- CPU DDP (``gloo_exit.py``): every process gives gloo's worker threads the GIL before the
  interpreter finalizes, which otherwise aborts a finished run at exit now and then.
- exit status: 0 when the command ran to its end; :data:`EXIT_STOPPED_BY_SIGTERM` (143, from
  rank 0; see :func:`main`) when a SIGTERM stopped it, after its checkpoint was saved;
  :data:`EXIT_STOPPED_BY_CTRL_C` (130, from rank 0) when a Ctrl-C did (a second Ctrl-C stops
  at once, without a checkpoint: Lightning's exit, status 1, or, during the save, the signal's).
  (Lightning ends such a run with a bare ``SystemExit``, status 0, so ``gsf fit ... && gsf
  test ...``, or a SLURM job that depends on the training job with ``afterok``, would go on as
  if training had finished.)
"""

from __future__ import annotations

import argparse
import difflib
import logging
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar, RichProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lightning_gsf import __version__, gloo_exit, host_memory
from lightning_gsf.callbacks import (  # (EXIT_STOPPED_BY_CTRL_C: gsf's status after a Ctrl-C stopped fit)
    EXIT_STOPPED_BY_CTRL_C,
    AtomicCheckpointIO,
    ClipThroughputMonitor,
    DataErrorCheckpoint,
    ExactResume,
    PreemptionCheckpoint,
    SubmissionWriter,
    stop_signal,
)
from lightning_gsf.checkpoint_matching import CheckpointMismatchError
from lightning_gsf.data.base import VideoDataModule
from lightning_gsf.data.errors import (AnnotationError, ConfigurationError, ResumeMismatchError, SampleReadError,
                                       original_message)
from lightning_gsf.metrics import HEADLINE_METRIC
from lightning_gsf.module import VideoClassificationModule

log = logging.getLogger(__name__)

CHECKPOINT_MONITOR = f"val/{HEADLINE_METRIC}"

#: ``gsf``'s exit status when a SIGTERM stopped the command: the shell's status of a process that
#: SIGTERM ended, 128 + 15. The run is unfinished (``--ckpt_path last`` resumes it).
EXIT_STOPPED_BY_SIGTERM = 128 + signal.SIGTERM

#: LightningCLI's subcommands; each gets its own parser, and each parser the settings below.
LIGHTNING_SUBCOMMANDS = tuple(LightningCLI.subcommands())
# The errors of Lightning's subcommands that are about the user's input and name it (the file
# and row, the checkpoint's differing settings, a setting that cannot work, a path that names no
# file): ``gsf`` prints their message, not a traceback.
INPUT_ERRORS = (AnnotationError, SampleReadError, CheckpointMismatchError, ResumeMismatchError, ConfigurationError,
                FileNotFoundError, IsADirectoryError)

#: Settings of every ``gsf`` parser. ``allow_abbrev=False``: argparse would otherwise read a
#: typo that is a prefix of a real option (``--model.temporal_modul``) as that option.
PARSER_SETTINGS: dict[str, Any] = {"allow_abbrev": False}


def _synth(argv: Sequence[str]) -> Any:
    from lightning_gsf.data.synthetic import main

    return main(list(argv))


def _add_trust_pickle(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-pickle", "--trust_pickle", action="store_true", help="allow arbitrary pickled objects (only for files you trust)"
    )


def _import_original(argv: Sequence[str]) -> Any:
    from lightning_gsf.convert import import_original

    parser = argparse.ArgumentParser(
        prog="gsf import-original",
        description="Convert a checkpoint of the original GSF release into a Lightning checkpoint "
        "that `gsf validate/test/predict --ckpt_path` load.",
    )
    parser.add_argument("checkpoint", type=Path, help="the original release's .pth.tar / .pth file")
    parser.add_argument("output", type=Path, help="the Lightning checkpoint to write (.ckpt)")
    # Both spellings: `--num_segments` matches the LightningCLI subcommands' option names.
    parser.add_argument("--num-segments", "--num_segments", type=int, required=True, help="frames per clip (16 for the released models)")
    parser.add_argument("--backbone", help="check that the file holds this backbone")
    parser.add_argument("--num-classes", "--num_classes", type=int, help="check the classifier's number of classes")
    parser.add_argument("--head", default="class", help="name of the classification head (default: class)")
    parser.add_argument("--dropout", type=float, default=0.5)
    _add_trust_pickle(parser)
    args = parser.parse_args(list(argv))
    info = import_original(
        args.checkpoint,
        args.output,
        num_segments=args.num_segments,
        backbone=args.backbone,
        num_classes=args.num_classes,
        head=args.head,
        dropout=args.dropout,
        trust_pickle=args.trust_pickle,
    )
    log.info("wrote %s: %s", args.output, info)
    return info


def _export_original(argv: Sequence[str]) -> Any:
    from lightning_gsf.convert import export_original

    parser = argparse.ArgumentParser(
        prog="gsf export-original",
        description="Write a Lightning checkpoint (one head; GSF or no temporal module; ResNet, BNInception or "
        "inception_v3_tf) in the original GSF release's layout, for its code or `gsf import-original`.",
    )
    parser.add_argument("checkpoint", type=Path, help="a checkpoint of gsf fit or gsf import-original (.ckpt)")
    parser.add_argument("output", type=Path, help="the file to write (e.g. .pth.tar)")
    parser.add_argument("--head", help="the head that becomes new_fc (default: the only one)")
    _add_trust_pickle(parser)
    args = parser.parse_args(list(argv))
    info = export_original(args.checkpoint, args.output, head=args.head, trust_pickle=args.trust_pickle)
    log.info("wrote %s: %s", args.output, info)
    return info


def _evaluate(argv: Sequence[str]) -> Any:
    from lightning_gsf.evaluation import evaluate_main

    return evaluate_main(list(argv))


def _benchmark(argv: Sequence[str]) -> Any:
    from lightning_gsf.benchmark import main

    return main(list(argv))


#: Subcommands outside LightningCLI: name -> handler of the remaining arguments.
TOOLS: dict[str, Callable[[Sequence[str]], Any]] = {
    "synth": _synth,
    "import-original": _import_original,
    "export-original": _export_original,
    "evaluate": _evaluate,
    "benchmark": _benchmark,
}

# The batches the logged clips a second are measured over (the last ones before each log).
THROUGHPUT_WINDOW = 20

DESCRIPTION = (
    f"Gate-Shift-Fuse video recognition (lightning-gsf {__version__}). "
    "Lightning subcommands: fit, validate, test, predict. "
    "Tools (each with its own --help): synth, import-original, export-original, evaluate, benchmark."
)


def checkpoint_dir(default_root_dir: str | Path | None) -> str:
    """Where checkpoints go: a fixed folder per run directory, so ``--ckpt_path last`` resumes."""
    return str(Path(default_root_dir or ".") / "checkpoints")


def restored_checkpoint(ckpt_path: str | None, default_root_dir: str | Path | None) -> Path | None:
    """The checkpoint file ``--ckpt_path`` restores, where it exists: a path, or ``last`` in
    :func:`checkpoint_dir`; None otherwise (no checkpoint, ``best``, ``hpc``, a missing file)."""
    if not ckpt_path:
        return None
    path = Path(checkpoint_dir(default_root_dir)) / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    return path if path.is_file() else None


class GSFCLI(LightningCLI):
    """LightningCLI with the project's links, checkpointing, loggers and prediction writer."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.init_args.num_segments", "model.num_segments")

        # The monitored checkpoint comes first: it is trainer.checkpoint_callback.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": CHECKPOINT_MONITOR,
                "checkpoint.mode": "max",
                "checkpoint.save_last": False,  # last_checkpoint writes last.ckpt every epoch
                "checkpoint.filename": "best-epoch{epoch:03d}-acc{" + CHECKPOINT_MONITOR + ":.2f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=checkpoint_dir)
        # last.ckpt of the latest epoch, improved or not: no monitor, one file overwritten in
        # place. Same folder as the best checkpoint, where PreemptionCheckpoint writes its
        # last.ckpt too and where --ckpt_path last looks.
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "last_checkpoint.filename": ModelCheckpoint.CHECKPOINT_NAME_LAST,
                "last_checkpoint.monitor": None,
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.every_n_epochs": 1,
                # At every training epoch's end, also when validation runs less often.
                "last_checkpoint.save_on_train_epoch_end": True,
                "last_checkpoint.enable_version_counter": False,
            }
        )
        parser.link_arguments("trainer.default_root_dir", "last_checkpoint.dirpath", compute_fn=checkpoint_dir)
        parser.add_lightning_class_args(SubmissionWriter, "submission")

    def _parse_ckpt_path(self) -> None:
        """Leave the model's configuration as given. (LightningCLI replaces every ``model``
        setting by the checkpoint's hyper-parameters when ``--ckpt_path`` names a file, but not
        for ``last``: a checkpoint named by its path then silently overrode ``--model.lr`` or
        ``--model.compile``, and a model of another configuration loaded without the error
        ``check_checkpoint_matches`` gives.)"""

    def before_instantiate_classes(self) -> None:
        """A run that restores a checkpoint takes every weight from it: the backbone's ImageNet
        starting point (``model.pretrained``) is then not loaded, so ``gsf validate/test/predict
        --ckpt_path`` and a resumed ``gsf fit`` need neither the weights file nor a download
        (an offline node). Only a checkpoint that exists counts: ``--ckpt_path last`` before
        the first checkpoint starts from scratch, from the ImageNet weights."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand in ("validate", "test", "predict") and config.get("ckpt_path") == "best":
            folder = Path(checkpoint_dir(config.get("trainer", {}).get("default_root_dir")))
            found = sorted(str(path) for path in folder.glob("best-*.ckpt"))
            raise ConfigurationError(
                f"--ckpt_path best names the best checkpoint of a fit run in the same process, and gsf {self.subcommand} "
                f"is a process of its own: pass the checkpoint's file ({', '.join(found) or f'none in {folder}'})"
            )
        self._check_last_checkpoint(config)
        if self.subcommand in ("validate", "test", "predict") and not config.get("ckpt_path") and rank_zero_only.rank == 0:
            log.warning("gsf %s without --ckpt_path: scoring the model as configured, with untrained heads, "
                        "not a trained checkpoint (pass --ckpt_path <run>/checkpoints/best-*.ckpt)", self.subcommand)
        if config.get("model") is None or config.model.get("pretrained") is None:
            return
        restored = restored_checkpoint(config.get("ckpt_path"), config.get("trainer", {}).get("default_root_dir"))
        if restored is not None:
            log.info("restoring %s: not loading model.pretrained=%s", restored, config.model.pretrained)
            config.model.pretrained = None

    def _check_last_checkpoint(self, config: Any) -> None:
        """``last.ckpt`` is what ``--ckpt_path last`` resumes and what every epoch overwrites:
        ``gsf validate/test/predict --ckpt_path last`` without one is an error (Lightning would
        score the untrained model), and ``gsf fit`` without ``--ckpt_path`` refuses a folder
        that holds a previous run's (its first epoch would overwrite it). ``gsf fit --ckpt_path
        last`` before the first checkpoint (a job's first run) starts from scratch, saying so."""
        ckpt_path = config.get("ckpt_path")
        folder = Path(checkpoint_dir(config.get("trainer", {}).get("default_root_dir")))
        last = folder / "last.ckpt"
        if self.subcommand in ("validate", "test", "predict") and ckpt_path == "last" and not last.is_file():
            found = sorted(str(path) for path in folder.glob("*.ckpt"))
            raise ConfigurationError(f"--ckpt_path last: no last.ckpt in {folder} (trainer.default_root_dir "
                                     f"{config.get('trainer', {}).get('default_root_dir')!r}); checkpoints there: "
                                     f"{', '.join(found) or 'none'}")
        if self.subcommand == "fit" and ckpt_path == "last" and not last.is_file():
            if rank_zero_only.rank == 0:
                log.warning("--ckpt_path last: no last.ckpt in %s yet, so this run starts from scratch", folder)
            # (Lightning would add a hint to turn on ModelCheckpoint's save_last, which gsf's
            # last_checkpoint does the work of)
            config["ckpt_path"] = None
        if self.subcommand == "fit" and not ckpt_path and last.is_file():
            raise ConfigurationError(f"{last} is a previous run's, and this run would overwrite it: resume that run "
                                     f"with --ckpt_path last, or give this one another --trainer.default_root_dir (or "
                                     f"remove {folder})")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer_config = self._get(self.config_init, "trainer", default={})
        root = trainer_config.get("default_root_dir") or "."
        if trainer_config.get("logger") in (None, True) and "logger" not in kwargs:
            kwargs["logger"] = [TensorBoardLogger(root, name="tensorboard"), CSVLogger(root, name="csv")]
        loggers = kwargs.get("logger", trainer_config.get("logger"))
        if trainer_config.get("plugins") is None and "plugins" not in kwargs:
            kwargs["plugins"] = [AtomicCheckpointIO()]
        # Callbacks that only make sense with a logger / a progress bar, added when those are on.
        callbacks = trainer_config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if "callbacks" not in kwargs:
            if loggers:  # LearningRateMonitor refuses a trainer without one (logger false or [])
                callbacks.append(LearningRateMonitor(logging_interval="step"))
                callbacks.append(ClipThroughputMonitor(window_size=THROUGHPUT_WINDOW, separator="/"))
            has_bar = any(isinstance(c, ProgressBar) for c in callbacks)
            if trainer_config.get("enable_progress_bar") is not False and not has_bar:
                callbacks.append(RichProgressBar())
            kwargs["callbacks"] = callbacks
            # A callback of gsf's defaults given in the config replaces the default (its settings,
            # PreemptionCheckpoint(stop_on_ctrl_c=false) say, would otherwise run beside the default's).
            self.trainer_defaults["callbacks"] = [
                default for default in self.trainer_defaults.get("callbacks", [])
                if not any(isinstance(callback, type(default)) for callback in callbacks)
            ]
        return super().instantiate_trainer(**kwargs)


def run(args: Sequence[str] | None = None) -> GSFCLI | Any:
    """Run ``gsf`` with ``args`` (default ``sys.argv[1:]``); returns the CLI or the tool's result."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in TOOLS:
        return TOOLS[argv[0]](argv[1:])
    if argv and not argv[0].startswith("-") and argv[0] not in LIGHTNING_SUBCOMMANDS:
        # (LightningCLI's own message lists its four subcommands only)
        known = [*LIGHTNING_SUBCOMMANDS, *TOOLS]
        close = difflib.get_close_matches(argv[0], known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SystemExit(f"gsf: unknown subcommand {argv[0]!r}{hint} (choose from {', '.join(known)})")
    host_memory.configure(host_memory.mode_from_environment())  # LIGHTNING_GSF_MALLOC; see host_memory
    return GSFCLI(
        VideoClassificationModule,
        VideoDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        trainer_defaults={
            "callbacks": [
                PreemptionCheckpoint(),
                DataErrorCheckpoint(),
                ExactResume(),
            ]
        },
        save_config_kwargs={"overwrite": True},
        # The main parser's settings do not reach the subcommands' parsers: each is named.
        parser_kwargs={
            "description": DESCRIPTION,
            **PARSER_SETTINGS,
            **{subcommand: dict(PARSER_SETTINGS) for subcommand in LIGHTNING_SUBCOMMANDS},
        },
        args=None if args is None else argv,  # None: LightningCLI reads sys.argv itself
    )


class _NoAdverts(logging.Filter):
    """Drops Lightning's "Tip" lines advertising its cloud services: a line or two on every
    command that say nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


for _name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_NoAdverts())
# Lightning 2.6's own pytree helper uses an API that torch deprecates: a warning on every
# command, about Lightning's code, not the run's.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


class _FirstProcessInfo(logging.Filter):
    """Lets warnings and errors through from every process, information from the first only, as
    Lightning prints its own messages (its global rank: from ``RANK``, ``SLURM_PROCID`` and the
    like, then set by the Trainer)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or getattr(rank_zero_only, "rank", 0) == 0


def show_info_messages() -> None:
    """Print the project's information messages (the files a command wrote, the learning-rate
    schedule, the samples found) on stderr, unless the program has configured logging itself.
    Python shows only warnings by default, so ``gsf predict`` did not say where it wrote."""
    root = logging.getLogger()
    if root.handlers:
        return
    # On the root logger, so that a tool's own logging.basicConfig then adds no second handler.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_FirstProcessInfo())
    root.addHandler(handler)
    logging.getLogger("lightning_gsf").setLevel(logging.INFO)


def _input_error(error: BaseException) -> BaseException | None:
    """The first of :data:`INPUT_ERRORS` along ``error``'s chain of causes, or None: jsonargparse
    wraps an error raised while it builds a ``class_path`` component (the data module's
    settings, say) in a ``ValueError`` of its own, raised from it."""
    while error is not None and not isinstance(error, INPUT_ERRORS):
        error = error.__cause__
    return error


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``gsf``; ``args`` replaces ``sys.argv[1:]`` (tests pass a list).

    Returns nothing, so that the console script's ``sys.exit(main())`` exits 0; :func:`run`
    returns the CLI object (trainer, model) for callers that want it. A tool (``gsf evaluate``,
    ``import-original``, ...) that fails on its input (``ValueError``, ``OSError``), and a
    Lightning subcommand stopped by one of :data:`INPUT_ERRORS`, exit with a one-line message
    instead of a traceback. A command stopped by
    SIGTERM raises ``SystemExit(EXIT_STOPPED_BY_SIGTERM)`` on global rank 0 (Lightning's
    ``SystemExit`` of status 0 on the others) once Lightning has run its callbacks: the
    checkpoint is saved by then. One stopped so by a Ctrl-C raises
    ``SystemExit(EXIT_STOPPED_BY_CTRL_C)`` there.
    """
    show_info_messages()
    gloo_exit.release_gloo_workers_at_exit()  # (CPU DDP: exit 0, not an abort, once the work is done)
    command = next(iter(sys.argv[1:] if args is None else args), None)
    try:
        run(args)
    except (ValueError, OSError, SampleReadError) as error:
        # A tool's errors are about its input (a file it cannot read, an argument it cannot use),
        # and so are the data errors and checkpoint mismatches of Lightning's subcommands; they
        # name it: one line, as argparse gives, not a traceback.
        cause = _input_error(error) if command in LIGHTNING_SUBCOMMANDS else error if command in TOOLS else None
        if cause is not None:
            raise SystemExit(f"gsf {command}: error: {original_message(cause)}") from None
        raise
    except SIGTERMException as stop:
        # Every process has passed the checkpoint's barrier. Only rank 0 reports the stop: a
        # launcher that kills the other processes when one fails (srun --kill-on-bad-exit,
        # torchrun) must not cut short rank 0's last flush of the loggers; a job's status is
        # the worst of its processes'.
        if rank_zero_only.rank == 0:
            by_ctrl_c = stop_signal(stop) == signal.SIGINT
            raise SystemExit(EXIT_STOPPED_BY_CTRL_C if by_ctrl_c else EXIT_STOPPED_BY_SIGTERM) from None
        raise


if __name__ == "__main__":
    main()
