"""The LightningModule: losses, epoch metrics, and the optimiser policy of the paper's code.

Its typed ``__init__`` is the ``model:`` section of a config. ``num_classes`` and
``num_segments`` come from the data module (``gsf`` links them), so a config states them once.

Training policy (the GSF release, inherited from TSN/TSM):

- SGD, momentum 0.9, weight decay 5e-4 on every parameter, biases and normalisation
  parameters included: the release builds TSN's parameter groups with their ``decay_mult``
  of 0 for biases and BN, but its SGD applies one ``weight_decay`` to every group and never
  reads the multipliers (nor the ``lr_mult`` of 2 for biases). ``decay_biases_and_norms=False``
  exempts every parameter with fewer than two dimensions instead (the common ImageNet recipe).
- ``lr`` is explicit: 0.01 is the paper's value for a batch of 32. Scale it linearly with the
  global batch (``batch_size x devices x accumulate_grad_batches``), e.g. 0.02 for 64;
  each config states the value it was tuned for.
- Learning rate updated every optimiser step: linear warm-up from ``warmup_start_factor x
  lr`` (0.1, the release's ``WarmupCosineLR``) to ``lr`` over ``warmup_epochs``, then a cosine
  decay to zero at the trainer's last step (``max_epochs``, 60 in the paper's recipe). The
  release steps the same curve once per epoch (0.1, 0.19, ... 0.91 x lr over 10 warm-up epochs).
- ``freeze_bn`` ("partial BN", as the TSN/TSM EPIC baselines): every BatchNorm of the
  backbone but the first keeps its pre-trained statistics and affine parameters. The BN
  inside GSF modules is new (no pre-trained statistics), so it always trains.
- Gradient clipping (norm 20) is the Trainer's ``gradient_clip_val``, set in the configs.

Evaluation batches hold ``V = clips x crops`` views per sample, ``(B, V, T, 3, H, W)``: each
view is scored and the logits averaged over views. Metrics are computed once per epoch over
all samples (see ``metrics.py``), de-duplicated by dataset index under DDP, and so is the
evaluation loss (the training loss over those samples, each once): the same with one process
or several, whatever ``skip_unreadable`` substituted.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from lightning_gsf.backbones import DEFAULT_GSF_RATIO, DEFAULT_NORMALIZATION
from lightning_gsf.checkpoint_matching import CheckpointMismatchError, check_checkpoint_matches
from lightning_gsf.data.errors import ConfigurationError
from lightning_gsf.data.samplers import UnreadableBatch
from lightning_gsf.gsf import GSF
from lightning_gsf.metrics import ClassificationScores, classification_loss
from lightning_gsf.model import VideoClassifier

log = logging.getLogger(__name__)

#: Hyper-parameters a checkpoint must share with the model it loads into, even where every
#: tensor fits: a TSN ResNet's weights load into a TSM one (TSM has no parameters), which then
#: computes something else.
ARCHITECTURE_HPARAMS = ("backbone", "temporal_module")


def effective_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """``hparams`` (flattened) with the settings that ``None`` leaves to the backbone resolved as
    :class:`VideoClassifier` resolves them (``gsf_ratio``, ``normalization``): a checkpoint that
    records the resolved value (``gsf import-original`` does) then matches a run that leaves it
    unset."""
    backbone = hparams.get("backbone")
    if backbone not in DEFAULT_GSF_RATIO:
        return hparams
    defaults = {"gsf_ratio": DEFAULT_GSF_RATIO[backbone], "normalization": DEFAULT_NORMALIZATION[backbone]}
    return {key: defaults[key] if key in defaults and value is None else value for key, value in hparams.items()}


# Lightning recommends sync_dist=True for every epoch-level tensor logged under DDP. The
# accuracies and the evaluation loss are gathered and de-duplicated across processes before
# they are logged, so its warning (one per metric and run) is silenced for their names alone
# (ClassificationScores' keys), so that it still speaks for any other metric in the process.
GATHERED_METRICS_ADVICE = (
    r"It is recommended to use `self\.log\('(val|test)/(loss|(all|tail|unseen)_\w+_accuracy_at_\d+|accuracy_at_1)'"
)
warnings.filterwarnings("ignore", message=GATHERED_METRICS_ADVICE, category=PossibleUserWarning)


# The optimiser steps per epoch of the run that saved a checkpoint (its schedule counts them).
STEPS_PER_EPOCH_KEY = "lr_schedule_steps_per_epoch"


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, start_factor: float = 0.1) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based).

    Linear warm-up from ``start_factor`` at step 0 towards 1 over the first ``warmup_steps``
    steps (``start_factor + (1 - start_factor) * step / warmup_steps``), then
    ``0.5 * (1 + cos(pi * progress))`` with ``progress`` going from 0 to 1 over the rest.
    """
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def partial_batchnorms(backbone: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The backbone's BatchNorms that "partial BN" freezes: all but the first, skipping GSF's own."""
    inside_gsf = {id(m) for gsf in backbone.modules() if isinstance(gsf, GSF) for m in gsf.modules()}
    norms = [
        m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inside_gsf
    ]
    return norms[1:]


class VideoClassificationModule(pl.LightningModule):
    """GSF / TSM / TSN video classifier with one classification head per label.

    Args:
        num_classes: head name -> number of classes (linked from ``data.num_classes``).
        num_segments: frames per clip ``T`` (linked from ``data.num_segments``).
        backbone: ``resnet18|34|50|101|152``, ``bninception``, ``inception_v3`` (torchvision) or
            ``inception_v3_tf`` (the original release's TF-converted InceptionV3).
        temporal_module: ``"gsf"``, ``"tsm"`` or ``"none"`` (TSN).
        gsf_ratio: fraction of each GSF layer's channels that GSF processes; ``None``: the
            paper's value for the backbone (0.25 for ResNets, 1.0 for the Inceptions).
        dropout: dropout before the heads (0.5 in the paper).
        pretrained: the backbone's ImageNet weights: a torchvision weights name
            (``"IMAGENET1K_V1"``, the weights the paper's ResNet-50 started from) or a
            state-dict file; ``None`` trains from scratch. Only the starting point: a restored
            checkpoint (``load_from_checkpoint``, ``gsf ... --ckpt_path``) does not load it.
        normalization: input normalisation name (``"imagenet"``, ``"bgr255"``); ``None``
            takes the backbone's own.
        label_smoothing: cross-entropy label smoothing.
        loss_weights: head -> weight of its loss in the sum (default 1 for every head).
        lr: peak learning rate (0.01 for a global batch of 32; scale linearly).
        momentum: SGD momentum.
        weight_decay: L2 penalty (SGD's ``weight_decay``).
        decay_biases_and_norms: apply ``weight_decay`` to biases and normalisation parameters
            too, as the release does; ``False`` exempts every parameter of fewer than two
            dimensions.
        warmup_epochs: epochs of linear warm-up before the cosine decay.
        warmup_start_factor: the warm-up's first learning rate as a fraction of ``lr``.
        freeze_bn: partial BN: freeze all backbone BatchNorms but the first.
        compile: run the network under ``torch.compile`` (in place: checkpoints keep their
            parameter names): ``true``, or a dict of ``torch.compile`` arguments such as
            ``{mode: max-autotune}``. On the CPU GSF and TSM enter the graph as their C++
            kernels (custom ops); elsewhere GSF switches to a formulation the compiler fuses
            (``docs/performance.md`` has what each saves). The first steps of each stage
            compile, which takes a minute or two.
    """

    def __init__(
        self,
        num_classes: dict[str, int],
        num_segments: int = 8,
        backbone: str = "resnet50",
        temporal_module: Literal["gsf", "tsm", "none"] = "gsf",
        gsf_ratio: float | None = None,
        dropout: float = 0.5,
        pretrained: str | None = None,
        normalization: str | None = None,
        label_smoothing: float = 0.0,
        loss_weights: dict[str, float] | None = None,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        decay_biases_and_norms: bool = True,
        warmup_epochs: float = 10.0,
        warmup_start_factor: float = 0.1,
        freeze_bn: bool = False,
        compile: bool | dict[str, Any] = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not 0.0 <= warmup_start_factor <= 1.0:
            raise ConfigurationError(f"warmup_start_factor must be in [0, 1], got {warmup_start_factor}")
        unknown = set(loss_weights or {}) - set(num_classes)
        if unknown:
            raise ConfigurationError(f"loss_weights names heads {sorted(unknown)} that num_classes "
                                     f"{dict(num_classes)} lacks")
        self.loss_weights = {head: float((loss_weights or {}).get(head, 1.0)) for head in num_classes}
        # Read by Lightning's ThroughputMonitor (gsf adds one where a logger is on); None: no
        # FLOPs a second are logged. FlopCounterMode does not see GSF's C++ and Triton
        # kernels; ``gsf benchmark`` counts GSF's FLOPs through its reference computation.
        self.flops_per_batch: int | None = None
        self.model = VideoClassifier(
            backbone=backbone,
            temporal_module=temporal_module,
            num_segments=num_segments,
            num_classes=dict(num_classes),
            gsf_ratio=gsf_ratio,
            dropout=dropout,
            pretrained=pretrained,
            normalization=normalization,
        )
        # Names, not module references: DDP's ``sync_batchnorm`` replaces every BatchNorm with a
        # new SyncBatchNorm module (same name, same parameter and buffer tensors), and the
        # freeze must apply to whatever module holds the name when training starts.
        frozen = {id(norm) for norm in partial_batchnorms(self.model.base_model)} if freeze_bn else set()
        self.frozen_norm_names: tuple[str, ...] = tuple(
            name for name, submodule in self.named_modules() if id(submodule) in frozen
        )
        for norm in self.frozen_norms:
            for parameter in norm.parameters():
                parameter.requires_grad_(False)
        self.val_scores = ClassificationScores(num_classes, loss_weights=self.loss_weights,
                                               label_smoothing=label_smoothing)
        self.test_scores = ClassificationScores(num_classes, loss_weights=self.loss_weights,
                                                label_smoothing=label_smoothing)
        # Optimiser steps per epoch: this run's (set with the optimiser) and a resumed
        # checkpoint's, which the learning-rate schedule is rescaled by (see on_train_start).
        self._steps_per_epoch: int | None = None
        self._saved_steps_per_epoch: int | None = None
        self._compiled = False

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        # The checkpoint holds every weight: the ImageNet starting point it was trained from
        # (hparams "pretrained") is not loaded again, so the file need not exist here.
        kwargs.setdefault("pretrained", None)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def setup(self, stage: str) -> None:
        # A clip of the data module's size for Lightning's model summary, which then counts the
        # FLOPs of a clip in its table ("Total FLOPs: 0" without one). GSF's C++ and Triton
        # kernels are not counted (``gsf benchmark`` counts GSF's reference computation). Not
        # under torch.compile, which would compile the summary's batch of one for nothing.
        input_size = getattr(getattr(self._trainer, "datamodule", None), "input_size", None)
        if input_size and not self.hparams.compile:
            self.example_input_array = torch.zeros(1, self.hparams.num_segments, 3, input_size, input_size)

    def configure_model(self) -> None:
        # Lightning calls this at every stage's start: compile once. nn.Module.compile wraps
        # the call in place, so the state-dict names stay those of the eager model.
        options = self.hparams.compile
        if options and not self._compiled:
            self.model.compile(**(options if isinstance(options, Mapping) else {}))
            self._compiled = True

    @property
    def frozen_norms(self) -> list[nn.Module]:
        """The norms that partial BN keeps frozen, looked up by name (see ``frozen_norm_names``)."""
        return [self.get_submodule(name) for name in self.frozen_norm_names]

    # ------------------------------------------------------------------ forward and loss

    def forward(self, clip: Tensor) -> dict[str, Tensor]:
        """Logits per head for ``(B, T, 3, H, W)`` clips or ``(B, V, T, 3, H, W)`` views."""
        if clip.ndim == 5:
            return self.model(clip)
        if clip.ndim != 6:
            raise ValueError(f"expected clips (B, T, 3, H, W) or views (B, V, T, 3, H, W), got {tuple(clip.shape)}")
        batch, views = clip.shape[:2]
        logits = self.model(clip.flatten(0, 1))
        return {head: head_logits.view(batch, views, -1).mean(dim=1) for head, head_logits in logits.items()}

    def compute_loss(self, logits: Mapping[str, Tensor], labels: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted sum of the heads' cross-entropies, and each head's own loss."""
        return classification_loss(logits, labels, self.loss_weights, self.hparams.label_smoothing)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Say which setting differs before Lightning's strict load lists tensor names.
        source = getattr(self._trainer, "ckpt_path", None)
        check_checkpoint_matches(self, checkpoint, source, must_match=ARCHITECTURE_HPARAMS,
                                 effective=effective_hparams)
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:  # (a fit loads the optimiser;
            self._check_optimizer_groups(checkpoint, source)  # validate, test, predict, load_from_checkpoint do not)
        self._saved_steps_per_epoch = checkpoint.get(STEPS_PER_EPOCH_KEY)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._steps_per_epoch is not None:
            checkpoint[STEPS_PER_EPOCH_KEY] = self._steps_per_epoch

    def on_train_start(self) -> None:
        self._go_on_with_this_runs_schedule()

    def _go_on_with_this_runs_schedule(self) -> None:
        """Before the first optimiser step, the optimiser takes this run's settings and the
        learning rate its place on this run's schedule. A resumed optimiser and schedule hold the
        checkpoint's ``lr``, ``momentum`` and ``weight_decay`` (this run's, ``--model.lr 0.02``
        say, were ignored, though recorded as the run's hyperparameters) and the learning rate
        of the saved step on the saved schedule: 0 at the end of a finished one, whose training
        this run extends (``max_steps`` or ``max_epochs`` raised), for its first step. (Unchanged
        settings give the same learning rate, to the bit: an exact resume stays exact.)

        The schedule counts optimiser steps. A run resumed with another number of steps per
        epoch (other GPUs, batch size or accumulation) would read the saved count in its own
        steps, away from the saved point in the schedule (on twice the GPUs, twice as far): the
        count is rescaled to this run's steps, so the schedule goes on from the same fraction of
        training. (``trainer.global_step``, and with it ``max_steps``, counts on as before:
        optimiser steps taken. So a schedule that ends at ``max_steps`` is already at the same
        fraction: :meth:`configure_optimizers` keeps the saved steps per epoch for it, and
        nothing is rescaled.)"""
        saved, current = self._saved_steps_per_epoch, self._steps_per_epoch
        self._saved_steps_per_epoch = None
        schedulers, optimizers = self.trainer.lr_scheduler_configs, self.trainer.optimizers
        if not schedulers or not optimizers:
            return
        optimizer, scheduler = optimizers[0], schedulers[0].scheduler
        def settings_of(group: dict[str, Any]) -> tuple[Any, ...]:
            return group.get("initial_lr"), group.get("momentum"), group.get("weight_decay")

        kept = [settings_of(group) for group in optimizer.param_groups]
        for group, settings in zip(optimizer.param_groups, self.parameter_groups()):
            group.update(initial_lr=self.hparams.lr, momentum=self.hparams.momentum,
                         weight_decay=settings["weight_decay"])
        scheduler.base_lrs = [self.hparams.lr] * len(optimizer.param_groups)
        now = [settings_of(group) for group in optimizer.param_groups]
        if self.trainer.ckpt_path and kept != now:
            log.info("resumed with this run's optimiser settings (lr, momentum, weight decay of each group) %s where "
                     "the checkpoint had %s", now, kept)
        step = scheduler.last_epoch
        if saved and current and saved != current:
            step = round(scheduler.last_epoch * current / saved)
            log.info("resumed with %d optimiser steps per epoch where the checkpoint had %d: the learning-rate "
                     "schedule goes on from step %d of this run (step %d of the saved one)", current, saved, step,
                     scheduler.last_epoch)
        scheduler.last_epoch = step - 1
        with warnings.catch_warnings():  # (stepping the schedule before this run's first optimiser step, knowingly)
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()  # to ``step``, the learning rates set as this run's schedule sets them

    def _check_optimizer_groups(self, checkpoint: Mapping[str, Any], source: str | None) -> None:
        """A resumed optimiser needs this run's parameter groups: checkpoints written before
        weight decay covered every parameter (two groups) resume with ``decay_biases_and_norms:
        false``; say so rather than let the optimiser's load fail on a group count."""
        states = checkpoint.get("optimizer_states") or []
        if not states or "param_groups" not in states[0]:
            return
        saved, current = len(states[0]["param_groups"]), len(self.parameter_groups())
        if saved != current:
            raise CheckpointMismatchError(
                f"checkpoint {source or ''} holds an optimiser with {saved} parameter groups, this run builds "
                f"{current}: set model.decay_biases_and_norms to {'false' if saved == 2 else 'true'} to resume it "
                f"(two groups exempt biases and norms from weight decay, one decays every parameter)"
            )

    def train(self, mode: bool = True) -> VideoClassificationModule:
        super().train(mode)
        if mode:  # (partial BN stays in eval mode whoever switches the module to training)
            self._freeze_norms()
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning never calls ``train()`` while fitting (a new module is in training mode
        # already, and around validation it restores each submodule's own flag), so partial
        # BN is set here, before the first step of every epoch (a resumed one included).
        self._freeze_norms()

    def _freeze_norms(self) -> None:
        for norm in self.frozen_norms:
            norm.eval()

    # ------------------------------------------------------------------ steps

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        logits = self(batch["clip"])
        loss, per_head = self.compute_loss(logits, batch["labels"])
        batch_size = batch["clip"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for head, head_loss in per_head.items():
            self.log(f"train/loss_{head}", head_loss, batch_size=batch_size)
        return loss

    def _evaluation_step(self, batch: Mapping[str, Any], scores: ClassificationScores) -> None:
        logits = self(batch["clip"])
        labels = batch.get("labels")
        if labels is None:  # an unlabelled split (EPIC test): nothing to measure
            return
        scores.update(logits, labels, batch["index"], batch.get("subsets"))

    def _log_epoch_metrics(self, stage: str, scores: ClassificationScores) -> None:
        if not scores.update_called:
            return
        results = scores.compute()  # already gathered and de-duplicated across processes
        scores.reset()
        self.log(f"{stage}/loss", results.pop("loss"), prog_bar=stage == "val", sync_dist=False)
        self.log_dict({f"{stage}/{key}": value for key, value in results.items()}, sync_dist=False)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        if isinstance(batch, UnreadableBatch):  # (fit stops after the validation: callbacks.DataErrorCheckpoint)
            return
        self._evaluation_step(batch, self.val_scores)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val", self.val_scores)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, self.test_scores)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test", self.test_scores)

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Per sample: its id, dataset index and raw (view-averaged) logits per head."""
        logits = self(batch["clip"])
        return {"id": list(batch["id"]), "index": batch["index"], "scores": {h: v.float() for h, v in logits.items()}}

    # ------------------------------------------------------------------ optimiser

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The trainable parameters with weight decay: all of them in one group, or (with
        ``decay_biases_and_norms=False``) the weights, then biases and normalisation
        parameters without."""
        trainable = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        if self.hparams.decay_biases_and_norms:
            return [{"params": trainable, "weight_decay": self.hparams.weight_decay}]
        return [
            {"params": [p for p in trainable if p.ndim > 1], "weight_decay": self.hparams.weight_decay},
            {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
        ]

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.SGD(self.parameter_groups(), lr=self.hparams.lr, momentum=self.hparams.momentum)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ConfigurationError("the learning-rate schedule (cosine to the end of training) needs the training's "
                                     "length: set trainer.max_epochs or trainer.max_steps")
        total_steps = int(total)
        batches = self.trainer.num_training_batches
        if not math.isfinite(batches):
            # max_steps without max_epochs: estimated_stepping_batches returned max_steps without
            # loading the train loader, which the warm-up (in epochs) needs.
            self.trainer.fit_loop.setup_data()
            batches = self.trainer.num_training_batches
        if not math.isfinite(batches):
            if self.hparams.warmup_epochs:
                raise ConfigurationError("the warm-up is in epochs, and the train loader has no length (an "
                                         "iterable dataset?): set model.warmup_epochs to 0")
            batches = total_steps * self.trainer.accumulate_grad_batches  # (the run as one epoch; no warm-up)
        steps_per_epoch = max(1, math.ceil(batches / self.trainer.accumulate_grad_batches))
        if total_steps == self.trainer.max_steps and self._saved_steps_per_epoch:
            # A schedule to max_steps is in optimiser steps, which global_step goes on counting:
            # resumed, it stays the saved one (its warm-up included), whatever this run's epochs.
            steps_per_epoch = self._saved_steps_per_epoch
        self._steps_per_epoch = steps_per_epoch
        warmup_steps = round(self.hparams.warmup_epochs * steps_per_epoch)
        log.info("lr schedule: %d warm-up steps, cosine to step %d", warmup_steps, total_steps)
        if warmup_steps >= total_steps > 0:
            log.warning("the warm-up (%d steps, model.warmup_epochs %g) is as long as the training or longer "
                        "(%d steps): the learning rate never reaches model.lr %g", warmup_steps,
                        self.hparams.warmup_epochs, total_steps, self.hparams.lr)
        start_factor = self.hparams.warmup_start_factor
        scheduler = LambdaLR(optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps, start_factor))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
