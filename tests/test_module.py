"""VideoClassificationModule: view averaging, loss, optimiser policy, schedule, partial BN."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn

from lightning_gsf.gsf import GSF
from lightning_gsf.checkpoint_matching import CheckpointMismatchError
from lightning_gsf.data.samplers import UnreadableBatch
from lightning_gsf.module import VideoClassificationModule, effective_hparams, partial_batchnorms, warmup_cosine_factor

NUM_CLASSES = {"verb": 3, "noun": 4}
NUM_SEGMENTS = 2


def _module(**overrides) -> VideoClassificationModule:
    kwargs = dict(
        num_classes=NUM_CLASSES,
        num_segments=NUM_SEGMENTS,
        backbone="resnet18",
        temporal_module="gsf",
        pretrained=None,
        dropout=0.0,
    )
    kwargs.update(overrides)
    torch.manual_seed(0)  # the network's own initialisation (nn.init uses the global RNG)
    return VideoClassificationModule(**kwargs)


@pytest.fixture(scope="module")
def module() -> VideoClassificationModule:
    return _module()


def _clips(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (*shape, NUM_SEGMENTS, 3, 32, 32), generator=generator, dtype=torch.uint8)


def test_views_are_scored_separately_and_averaged(module):
    module.eval()
    views = _clips(2, 3)  # (B=2, V=3, T, 3, H, W)
    with torch.no_grad():
        averaged = module(views)
        per_view = [module(views[:, v]) for v in range(3)]
    for head, classes in NUM_CLASSES.items():
        assert averaged[head].shape == (2, classes)
        expected = torch.stack([logits[head] for logits in per_view]).mean(0)
        torch.testing.assert_close(averaged[head], expected, rtol=1e-5, atol=1e-5)


def test_forward_rejects_other_shapes(module):
    with pytest.raises(ValueError, match=r"\(B, V, T, 3, H, W\)"):
        module(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_loss_is_the_weighted_sum_of_head_losses():
    weighted = _module(loss_weights={"noun": 0.5}, label_smoothing=0.1)
    logits = {"verb": torch.randn(4, 3), "noun": torch.randn(4, 4)}
    labels = {"verb": torch.tensor([0, 1, 2, 0]), "noun": torch.tensor([3, 2, 1, 0])}
    total, per_head = weighted.compute_loss(logits, labels)
    for head in NUM_CLASSES:
        expected = nn.functional.cross_entropy(logits[head], labels[head], label_smoothing=0.1)
        torch.testing.assert_close(per_head[head], expected)
    torch.testing.assert_close(total, per_head["verb"] + 0.5 * per_head["noun"])


def test_validation_and_test_losses_are_the_training_loss():
    """val/loss and test/loss are the training loss over their samples: the same loss weights
    and label smoothing (with either left out, the checkpoint selection on val/loss would
    follow another quantity)."""
    weighted = _module(loss_weights={"verb": 2.0, "noun": 0.5}, label_smoothing=0.2)
    generator = torch.Generator().manual_seed(5)
    logits = {"verb": torch.randn(6, 3, generator=generator), "noun": torch.randn(6, 4, generator=generator)}
    labels = {"verb": torch.tensor([0, 1, 2, 0, 1, 2]), "noun": torch.tensor([3, 2, 1, 0, 1, 2])}
    expected, _ = weighted.compute_loss(logits, labels)
    for scores in (weighted.val_scores, weighted.test_scores):
        scores.update(logits, labels, torch.arange(6))
        assert scores.compute()["loss"] == pytest.approx(expected.item(), rel=1e-6)


def _record_logs(module, monkeypatch) -> tuple[dict[str, float], set[str]]:
    """What the module logs, name -> value, and the names it puts on the progress bar."""
    logged, progress_bar = {}, set()

    def log(name, value, prog_bar=False, **kwargs):
        logged[name] = float(value)
        if prog_bar:
            progress_bar.add(name)

    monkeypatch.setattr(module, "log", log, raising=False)
    monkeypatch.setattr(module, "log_dict", lambda values, **kwargs: logged.update(values), raising=False)
    return logged, progress_bar


def test_training_logs_the_loss_and_each_heads_loss(monkeypatch):
    model = _module(loss_weights={"noun": 0.5})
    logged, _ = _record_logs(model, monkeypatch)
    batch = {"clip": _clips(2), "labels": {"verb": torch.tensor([0, 2]), "noun": torch.tensor([1, 3])}}
    loss = model.training_step(batch, 0)
    assert set(logged) == {"train/loss", "train/loss_verb", "train/loss_noun"}
    assert logged["train/loss"] == pytest.approx(loss.item())
    assert logged["train/loss"] == pytest.approx(logged["train/loss_verb"] + 0.5 * logged["train/loss_noun"], rel=1e-6)


def test_loss_weights_must_name_known_heads():
    with pytest.raises(ValueError, match="action"):
        _module(loss_weights={"action": 1.0})


def test_weight_decay_on_every_parameter_as_the_release(module):
    """The release's SGD decays every parameter (its groups' decay_mult is never read)."""
    (group,) = module.parameter_groups()
    assert group["weight_decay"] == 5e-4
    assert {id(p) for p in group["params"]} == {id(p) for p in module.parameters() if p.requires_grad}


def test_no_weight_decay_on_biases_and_norms_when_asked():
    module = _module(decay_biases_and_norms=False)
    decay, no_decay = module.parameter_groups()
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in module.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert not decayed & not_decayed
    assert decayed | not_decayed == {n for n, p in module.named_parameters() if p.requires_grad}
    norm_params = {
        f"{name}.{pname}"
        for name, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for pname, _ in m.named_parameters(recurse=False)
    }
    assert norm_params and norm_params <= not_decayed
    assert all(not n.endswith(".bias") for n in decayed)
    assert "model.heads.verb.weight" in decayed


def test_a_fit_without_decay_on_biases_and_norms_keeps_them_undecayed():
    """The groups' weight decay holds in the optimiser a fit trains with (on_train_start sets
    each group's settings, a fresh run's too)."""
    trainer = _fit(_module(temporal_module="none", decay_biases_and_norms=False, weight_decay=1e-3), max_steps=1)
    assert [group["weight_decay"] for group in trainer.optimizers[0].param_groups] == [1e-3, 0.0]


@pytest.mark.parametrize(
    "step,expected",
    [(0, 0.1), (1, 0.325), (3, 0.775), (4, 1.0), (7, 0.5), (10, 0.0), (12, 0.0)],
)
def test_warmup_cosine_factor(step, expected):
    # 4 warm-up steps from 0.1 x lr, then cosine over steps 4..10.
    assert warmup_cosine_factor(step, warmup_steps=4, total_steps=10) == pytest.approx(expected, abs=1e-9)


def test_warmup_per_epoch_is_the_release_schedule():
    """One step per epoch gives the release's WarmupCosineLR (warmup_factor 0.1, 10 warm-up
    epochs, cosine to 60): 0.1, 0.19, ..., 0.91 x lr, then 1 at epoch 10 and half at 35."""
    factors = [warmup_cosine_factor(epoch, warmup_steps=10, total_steps=60) for epoch in range(60)]
    assert factors[:10] == pytest.approx([0.1 * (1 - e / 10) + e / 10 for e in range(10)])
    assert factors[10] == 1.0 and factors[35] == pytest.approx(0.5)


def _schedule(policy, trainer) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """``policy``'s optimiser and schedule as ``trainer`` (the attributes configure_optimizers reads) sets them."""
    policy._trainer = trainer
    config = policy.configure_optimizers()
    return config["optimizer"], config["lr_scheduler"]["scheduler"]


def _learning_rates(optimizer, scheduler, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize(
    ("batches", "accumulate", "warmup_epochs", "warmup"),
    [
        (6, 2, 2, 6),  # 2 epochs of 3 optimiser steps
        (10, 3, 2, 8),  # 4 steps an epoch (Lightning steps on the epoch's short last window too)
        (6, 2, 1.25, 4),  # 3.75 warm-up steps round to 4
    ],
)
def test_scheduler_warms_up_per_step_over_warmup_epochs(batches, accumulate, warmup_epochs, warmup):
    policy = _module(lr=0.04, warmup_epochs=warmup_epochs)
    # The few trainer attributes configure_optimizers reads: 5 epochs of `batches` batches.
    total = 5 * math.ceil(batches / accumulate)
    policy._trainer = SimpleNamespace(estimated_stepping_batches=total, num_training_batches=batches,
                                      accumulate_grad_batches=accumulate, max_steps=-1)
    config = policy.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    lrs = _learning_rates(optimizer, scheduler, total)
    assert lrs[:warmup] == pytest.approx([0.04 * (0.1 + 0.9 * s / warmup) for s in range(warmup)])
    decay = [0.04 * 0.5 * (1 + math.cos(math.pi * s / (total - warmup))) for s in range(total - warmup)]
    assert lrs[warmup:] == pytest.approx(decay)


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0])
def test_the_warm_up_starts_at_warmup_start_factor(factor):
    optimizer, scheduler = _schedule(_module(lr=0.04, warmup_epochs=2, warmup_start_factor=factor),
                                     SimpleNamespace(estimated_stepping_batches=10, num_training_batches=2,
                                                     accumulate_grad_batches=1, max_steps=-1))
    lrs = _learning_rates(optimizer, scheduler, 10)
    assert lrs[:4] == pytest.approx([0.04 * (factor + (1 - factor) * s / 4) for s in range(4)])
    assert lrs[4:] == pytest.approx([0.04 * 0.5 * (1 + math.cos(math.pi * s / 6)) for s in range(6)])


def test_a_loader_without_length_needs_no_warm_up_and_schedules_the_run_as_one_epoch():
    """An iterable dataset's loader: a warm-up (in epochs) is refused; without one the run is one
    epoch of ``max_steps`` optimiser steps (the steps per epoch a checkpoint records)."""
    trainer = SimpleNamespace(estimated_stepping_batches=12, num_training_batches=float("inf"),
                              accumulate_grad_batches=2, max_steps=12,
                              fit_loop=SimpleNamespace(setup_data=lambda: None))
    with pytest.raises(ValueError, match="set model.warmup_epochs to 0"):
        _schedule(_module(warmup_epochs=1), trainer)
    policy = _module(lr=0.04, warmup_epochs=0)
    optimizer, scheduler = _schedule(policy, trainer)
    assert policy._steps_per_epoch == 12
    assert _learning_rates(optimizer, scheduler, 12) == pytest.approx(
        [0.04 * 0.5 * (1 + math.cos(math.pi * s / 12)) for s in range(12)])


def test_a_resume_on_other_steps_per_epoch_goes_on_from_the_nearest_step():
    """4 steps saved at 3 an epoch, resumed at 2 an epoch: 4 x 2 / 3 = 2.67 rounds to step 3."""
    policy = _module(lr=1.0, warmup_epochs=0)
    optimizer, scheduler = _schedule(policy, SimpleNamespace(estimated_stepping_batches=20, num_training_batches=2,
                                                             accumulate_grad_batches=1, max_steps=-1))
    _learning_rates(optimizer, scheduler, 4)
    policy._saved_steps_per_epoch, policy._steps_per_epoch = 3, 2
    policy._trainer = SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)],
                                      optimizers=[optimizer], ckpt_path="x.ckpt")
    policy._go_on_with_this_runs_schedule()
    assert scheduler.last_epoch == 3
    assert optimizer.param_groups[0]["lr"] == pytest.approx(warmup_cosine_factor(3, 0, 20))


@pytest.mark.parametrize(("warmup_epochs", "warned"), [(5, True), (4.9, False)])
def test_a_warm_up_as_long_as_the_training_is_warned_of(caplog, warmup_epochs, warned):
    """A short run of a real config (one epoch of ten warm-up epochs): the learning rate never
    reaches model.lr, and the log says so, rather than train at a fraction of it unawares."""
    policy = _module(lr=0.04, warmup_epochs=warmup_epochs)
    policy._trainer = SimpleNamespace(estimated_stepping_batches=50, num_training_batches=10,
                                      accumulate_grad_batches=1, max_steps=-1)
    with caplog.at_level("WARNING", logger="lightning_gsf.module"):
        policy.configure_optimizers()
    expected = "the warm-up (50 steps, model.warmup_epochs 5) is as long as the training or longer (50 steps)"
    assert (expected in caplog.text) == warned, caplog.text


def test_partial_bn_freezes_all_backbone_norms_but_the_first():
    frozen = _module(freeze_bn=True)
    backbone = frozen.model.base_model
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    gsf_norms = [m.bn for m in backbone.modules() if isinstance(m, GSF)]
    assert gsf_norms, "expected GSF modules in the backbone"
    assert partial_batchnorms(backbone) == [m for m in norms[1:] if all(m is not g for g in gsf_norms)]

    frozen.train()
    assert norms[0].training and all(g.training for g in gsf_norms)
    assert all(not m.training for m in frozen.frozen_norms)
    assert all(not p.requires_grad for m in frozen.frozen_norms for p in m.parameters())
    trainable = {id(p) for group in frozen.parameter_groups() for p in group["params"]}
    assert all(id(p) not in trainable for m in frozen.frozen_norms for p in m.parameters())

    before = [m.running_mean.clone() for m in frozen.frozen_norms]
    first_before = norms[0].running_mean.clone()
    frozen(_clips(2))
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, frozen.frozen_norms))
    assert not torch.equal(first_before, norms[0].running_mean)


def test_without_freeze_bn_every_norm_trains(module):
    module.train()
    assert module.frozen_norms == []
    assert all(m.training for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


@pytest.mark.parametrize("batch_sizes,repeated", [((4,), ()), ((3, 1), ()), ((1, 2, 1), ()), ((4, 2), (0, 3))],
                         ids=["one-batch", "3+1", "1+2+1", "4+repeats"])
def test_evaluation_loss_is_the_mean_over_samples_whatever_the_batches(module, monkeypatch, batch_sizes, repeated):
    """Uneven batches (a short last batch, a rank with fewer samples) weigh by their samples,
    and a sample seen twice (a ``DistributedSampler``'s padding, a ``skip_unreadable``
    substitute) counts once, as in the accuracies."""
    module.eval()
    logged, _ = _record_logs(module, monkeypatch)
    clips = _clips(4, seed=1)
    labels = {"verb": torch.tensor([0, 2, 1, 1]), "noun": torch.tensor([3, 0, 2, 1])}
    order = torch.cat([torch.arange(4), torch.tensor(repeated, dtype=torch.long)])
    with torch.no_grad():
        expected, _ = module.compute_loss(module(clips), labels)  # one mean over the four samples
        start = 0
        for size in batch_sizes:
            rows = order[start:start + size]
            batch = {"clip": clips[rows], "labels": {head: values[rows] for head, values in labels.items()},
                     "index": rows}
            module.validation_step(batch, 0)
            start += size
    module.on_validation_epoch_end()
    assert float(expected) == pytest.approx(logged["val/loss"], rel=1e-6)
    assert "val/all_verb_accuracy_at_1" in logged


def _validate(module, monkeypatch, clips, labels) -> dict[str, float]:
    logged, _ = _record_logs(module, monkeypatch)
    with torch.no_grad():
        for rows in (torch.arange(0, 3), torch.arange(3, len(clips))):
            module.validation_step({"clip": clips[rows], "index": rows,
                                    "labels": {head: values[rows] for head, values in labels.items()}}, 0)
    module.on_validation_epoch_end()
    return logged


def test_each_stage_logs_its_own_loss_and_accuracies(monkeypatch):
    """test/ metrics from the test steps alone, val/ ones from the validation steps; val/loss on
    the progress bar."""
    module = _module().eval()
    logged, progress_bar = _record_logs(module, monkeypatch)
    batch = {"clip": _clips(4, seed=1), "index": torch.arange(4),
             "labels": {"verb": torch.tensor([0, 2, 1, 1]), "noun": torch.tensor([3, 0, 2, 1])}}
    with torch.no_grad():
        module.test_step(batch, 0)
    module.on_validation_epoch_end()
    assert logged == {}
    module.on_test_epoch_end()
    assert "test/loss" in logged and "test/loss" not in progress_bar and "test/all_verb_accuracy_at_1" in logged
    assert not any(name.startswith("val/") for name in logged)
    with torch.no_grad():
        module.validation_step(batch, 0)
    module.on_validation_epoch_end()
    assert "val/loss" in progress_bar and "val/all_verb_accuracy_at_1" in logged


def test_unlabelled_and_unreadable_evaluation_batches_are_skipped(monkeypatch):
    """An unlabelled split (EPIC's test set) measures nothing; an unreadable batch (stopped after
    the validation by callbacks.DataErrorCheckpoint) is not scored."""
    module = _module().eval()
    logged, _ = _record_logs(module, monkeypatch)
    with torch.no_grad():
        module.test_step({"clip": _clips(2), "index": torch.arange(2)}, 0)
        module.validation_step(UnreadableBatch(RuntimeError("sample 5 unreadable")), 0)
    module.on_test_epoch_end()
    module.on_validation_epoch_end()
    assert logged == {}


def test_each_validation_scores_only_its_own_predictions(monkeypatch):
    """The second validation of a run (other weights) gets what a fresh module would: the
    metric's states are emptied after each (de-duplication by index would otherwise keep the
    first validation's scores, e.g. the sanity check's, and the metrics would stand still)."""
    clips = _clips(6, seed=2)
    labels = {"verb": torch.tensor([0, 2, 1, 1, 0, 2]), "noun": torch.tensor([3, 0, 2, 1, 1, 0])}
    trained = _module().eval()
    first = _validate(trained, monkeypatch, clips, labels)
    with torch.no_grad():
        for head in trained.model.heads.values():
            head.bias.copy_(torch.arange(len(head.bias), dtype=torch.float32) * 100)  # always the last class
    second = _validate(trained, monkeypatch, clips, labels)
    fresh = _module().eval()
    fresh.load_state_dict(trained.state_dict())
    assert second == _validate(fresh, monkeypatch, clips, labels)
    assert second != first
    assert second["val/all_verb_accuracy_at_1"] == pytest.approx(100 * 2 / 6)  # (labels 2 of verb class 2)


def test_a_model_giving_nan_scores_is_an_error_not_an_accuracy(monkeypatch):
    module = _module().eval()
    with torch.no_grad():
        module.model.heads["noun"].bias[1] = float("nan")
    labels = {"verb": torch.tensor([0, 2, 1, 1, 0, 2]), "noun": torch.tensor([3, 0, 2, 1, 1, 0])}
    with pytest.raises(ValueError, match=r"6 of 6 samples have non-finite noun scores \(NaN or inf\), the first "
                                         r"sample 0: has the model diverged\?"):
        _validate(module, monkeypatch, _clips(6, seed=2), labels)


@pytest.mark.parametrize("temporal_module", ["gsf", "tsm", "none"])
def test_training_step_backpropagates(temporal_module):
    model = _module(temporal_module=temporal_module)
    model.log = lambda *args, **kwargs: None  # no trainer to log to
    batch = {"clip": _clips(2), "labels": {"verb": torch.tensor([0, 2]), "noun": torch.tensor([1, 3])}}
    loss = model.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.model.heads["noun"].weight.grad is not None


@pytest.mark.parametrize("temporal_module", ["gsf", "tsm"])
def test_compile_option_compiles_the_network_in_place(temporal_module):
    """``compile`` runs the network under torch.compile (here the ``aot_eager`` backend, which
    traces like inductor but needs no C++ build) with the same losses, gradients and
    state-dict names as eager (float64: the compiled GSF is another formulation of the same
    math, so float32 rounding differs)."""
    eager = _module(temporal_module=temporal_module).double()
    compiled = _module(temporal_module=temporal_module, compile={"backend": "aot_eager", "fullgraph": True}).double()
    torch._dynamo.reset()
    compiled.configure_model()
    assert compiled.model._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(eager.state_dict())
    batch = {"clip": _clips(2), "labels": {"verb": torch.tensor([0, 2]), "noun": torch.tensor([1, 3])}}
    losses = []
    for model in (eager, compiled):
        model.log = lambda *args, **kwargs: None  # no trainer to log to
        loss = model.training_step(batch, 0)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-10, atol=1e-12)
    for (name, param), compiled_param in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(compiled_param.grad, param.grad, rtol=1e-8, atol=1e-12, msg=name)
    # BN running statistics (GSF's own included) and step counts move alike
    for (name, buffer), compiled_buffer in zip(eager.named_buffers(), compiled.buffers()):
        torch.testing.assert_close(compiled_buffer, buffer, rtol=1e-10, atol=1e-12, msg=name)
    calls = []
    compiled.model.compile = lambda *args, **kwargs: calls.append(args)  # instance attribute: this model only
    compiled.configure_model()  # Lightning calls it at every stage start: compiled once
    assert calls == []


@pytest.mark.slow
def test_compile_option_with_inductor_trains_like_eager():
    eager, compiled = _module().double(), _module(compile=True).double()
    torch._dynamo.reset()
    compiled.configure_model()
    batch = {"clip": _clips(2), "labels": {"verb": torch.tensor([0, 2]), "noun": torch.tensor([1, 3])}}
    losses = []
    for model in (eager, compiled):
        model.log = lambda *args, **kwargs: None
        losses.append(model.training_step(batch, 0))
        losses[-1].backward()
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-10, atol=1e-12)
    for (name, param), compiled_param in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(compiled_param.grad, param.grad, rtol=1e-7, atol=1e-10, msg=name)


@pytest.mark.parametrize(("saved_groups", "decay_biases_and_norms", "advice"), [(2, True, "false"), (1, False, "true")])
def test_resuming_an_optimizer_of_other_groups_names_the_setting(saved_groups, decay_biases_and_norms, advice):
    """A checkpoint from before weight decay covered every parameter (two groups) resumes
    with decay_biases_and_norms false; the mismatch is named instead of failing in the load."""
    module = _module(decay_biases_and_norms=decay_biases_and_norms)
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "optimizer_states": [{"state": {}, "param_groups": [{"params": []}] * saved_groups}]}
    module.on_load_checkpoint(checkpoint)  # outside a fit (load_from_checkpoint): no optimiser is loaded
    for fn in (TrainerFn.VALIDATING, TrainerFn.TESTING, TrainerFn.PREDICTING):  # nor to evaluate it
        module._trainer = SimpleNamespace(state=SimpleNamespace(fn=fn), ckpt_path="x.ckpt")
        module.on_load_checkpoint(checkpoint)
    module._trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING), ckpt_path="x.ckpt")
    with pytest.raises(CheckpointMismatchError, match=rf"{saved_groups} parameter groups.*set "
                                                      rf"model.decay_biases_and_norms to {advice} to resume it"):
        module.on_load_checkpoint(checkpoint)
    checkpoint["optimizer_states"][0]["param_groups"] = [{"params": []}] * len(module.parameter_groups())
    module.on_load_checkpoint(checkpoint)  # the same groups: fine


def test_load_from_checkpoint_does_not_read_the_starting_weights_again(tmp_path):
    """The checkpoint holds every weight: the ImageNet file it started from may be gone."""
    module = _module(temporal_module="none")
    hparams = {**module.hparams, "pretrained": str(tmp_path / "gone.pth")}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": pl.__version__}, tmp_path / "run.ckpt")
    loaded = VideoClassificationModule.load_from_checkpoint(tmp_path / "run.ckpt", map_location="cpu")
    assert loaded.hparams.pretrained is None
    for name, tensor in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_effective_hparams_resolve_only_what_none_leaves_to_the_backbone():
    left = {"backbone": "resnet50", "gsf_ratio": None, "normalization": None, "lr": 0.01}
    assert effective_hparams(left) == {"backbone": "resnet50", "gsf_ratio": 0.25, "normalization": "imagenet",
                                       "lr": 0.01}
    explicit = {"backbone": "resnet50", "gsf_ratio": 0.5, "normalization": "bgr255"}
    assert effective_hparams(explicit) == explicit
    assert effective_hparams({"backbone": "bninception", "gsf_ratio": None})["gsf_ratio"] == 1.0


@pytest.mark.parametrize("factor", [-0.1, 1.5])
def test_warmup_start_factor_is_a_fraction(factor):
    with pytest.raises(ValueError, match="warmup_start_factor"):
        _module(warmup_start_factor=factor)


def test_partial_bn_holds_through_a_lightning_fit():
    """Under ``Trainer.fit`` (which never calls ``train()``) the frozen norms normalise with
    their own statistics and keep them, through two epochs with a validation in between;
    the first norm and GSF's learn."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    class Clips(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return {"clip": _clips(1, seed=index)[0], "labels": {"verb": index % 3, "noun": index % 4},
                    "index": index}

    module = _module(freeze_bn=True, lr=0.1)
    frozen_before = [(m.running_mean.clone(), m.running_var.clone()) for m in module.frozen_norms]
    first = next(m for m in module.model.base_model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    first_before = first.running_mean.clone()
    modes: list[bool] = []

    class RecordModes(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append(any(m.training for m in pl_module.frozen_norms))

    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[RecordModes()],
                         num_sanity_val_steps=0)
    loader = DataLoader(Clips(), batch_size=2)
    trainer.fit(module, loader, loader)
    assert modes == [False] * 4
    for (mean, var), norm in zip(frozen_before, module.frozen_norms):
        assert torch.equal(mean, norm.running_mean) and torch.equal(var, norm.running_var)
    assert not torch.equal(first_before, first.running_mean)


@pytest.mark.parametrize(("name", "silenced"), [
    ("val/all_verb_accuracy_at_1", True), ("test/unseen_action_accuracy_at_1", True), ("val/accuracy_at_1", True),
    ("val/all_class_accuracy_at_5", True), ("val/loss", True), ("test/loss", True), ("val/my_extra_metric", False),
    ("train/accuracy_at_1", False), ("train/loss", False), ("val/loss_verb", False),
])
def test_lightnings_sync_dist_advice_is_silenced_for_the_gathered_accuracies_only(name, silenced):
    """They and the evaluation loss are gathered across processes before they are logged; any
    other metric keeps the advice."""
    import re

    from lightning_gsf.module import GATHERED_METRICS_ADVICE

    advice = (f"It is recommended to use `self.log({name!r}, ..., sync_dist=True)` when logging on epoch level in "
              "distributed setting to accumulate the metric across devices.")
    assert bool(re.match(GATHERED_METRICS_ADVICE, advice)) == silenced


class _LabelledClips(torch.utils.data.Dataset):
    """Twenty random clips with labels, for tiny Lightning fits."""

    def __len__(self) -> int:
        return 20

    def __getitem__(self, index: int) -> dict:
        return {"clip": _clips(1, seed=index)[0], "labels": {"verb": index % 3, "noun": index % 4}, "index": index}


class _LearningRates(pl.Callback):
    """Records the learning rate of every optimiser step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])


def _fit(module, *, callbacks=(), ckpt_path=None, **trainer_settings):
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=list(callbacks),
                         **trainer_settings)
    trainer.fit(module, torch.utils.data.DataLoader(_LabelledClips(), batch_size=2), ckpt_path=ckpt_path)
    return trainer


def test_a_run_of_max_steps_alone_schedules_to_them(tmp_path):
    """max_steps without max_epochs (Lightning then leaves the train loader unloaded when it
    estimates the steps): the warm-up takes its epochs of the loader, the cosine ends at
    max_steps; without either length the schedule says what it needs."""
    record = _LearningRates()
    _fit(_module(temporal_module="none", lr=1.0, warmup_epochs=0.2), callbacks=[record], max_steps=7)
    warmup = 2  # 0.2 of 10 steps an epoch
    assert record.lrs == pytest.approx([warmup_cosine_factor(s, warmup, 7) for s in range(7)])
    with pytest.raises(ValueError, match="set trainer.max_epochs or trainer.max_steps"):
        _fit(_module(temporal_module="none"), max_epochs=-1)


def test_a_schedule_to_max_steps_resumes_where_it_was_with_other_steps_per_epoch(tmp_path):
    """Resumed with twice the accumulation (half the optimiser steps an epoch), a run that ends
    at max_steps goes on with the learning rates of the uninterrupted run."""
    class SaveAtStep(pl.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == 10 and not (tmp_path / "step10.ckpt").exists():
                trainer.save_checkpoint(tmp_path / "step10.ckpt")

    uninterrupted = _LearningRates()
    _fit(_module(temporal_module="none", lr=1.0, warmup_epochs=0.5), callbacks=[uninterrupted, SaveAtStep()],
         max_steps=20, max_epochs=100)
    resumed = _LearningRates()
    trainer = _fit(_module(temporal_module="none", lr=1.0, warmup_epochs=0.5), callbacks=[resumed], max_steps=20,
                   max_epochs=100, accumulate_grad_batches=2, ckpt_path=tmp_path / "step10.ckpt")
    assert trainer.global_step == 20
    assert resumed.lrs == pytest.approx(uninterrupted.lrs[10:])



def test_a_resumed_run_trains_at_this_run_s_learning_rates_from_its_first_step(tmp_path):
    """A finished schedule resumed to train on (max_steps raised) takes its first step at the new
    schedule's learning rate, not at the saved one, 0 at the end of the old schedule; and
    ``model.lr`` / ``momentum`` / ``weight_decay`` given to the resumed run are the ones it
    trains with (the checkpoint's were kept, while the run recorded the new ones)."""
    class SaveAtEnd(pl.Callback):
        def on_train_end(self, trainer, *args) -> None:
            trainer.save_checkpoint(tmp_path / "end.ckpt")

    _fit(_module(temporal_module="none", lr=1.0, warmup_epochs=0.2), callbacks=[SaveAtEnd()], max_steps=8)
    for lr, momentum, weight_decay in ((1.0, 0.9, 5e-4), (0.5, 0.8, 1e-3)):
        resumed = _LearningRates()
        trainer = _fit(_module(temporal_module="none", lr=lr, momentum=momentum, weight_decay=weight_decay,
                               warmup_epochs=0.2), callbacks=[resumed], max_steps=12, ckpt_path=tmp_path / "end.ckpt")
        assert trainer.global_step == 12
        assert resumed.lrs == pytest.approx([lr * warmup_cosine_factor(s, 2, 12) for s in range(8, 12)])
        group = trainer.optimizers[0].param_groups[0]
        assert (group["initial_lr"], group["momentum"], group["weight_decay"]) == (lr, momentum, weight_decay)
