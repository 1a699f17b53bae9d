"""The switch that lets CUDA backwards write over their output's gradient (on by default)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lightning_gsf import gradient_reuse


@pytest.mark.parametrize("value,expected", [(None, "True"), ("0", "False"), ("1", "True"), ("off", "False"),
                                            (" False", "False"), ("no", "False"), ("yes", "True")])
def test_cuda_reuse_is_on_unless_the_environment_turns_it_off(value, expected):
    env = {key: val for key, val in os.environ.items() if key != "LIGHTNING_GSF_CUDA_GRADIENT_REUSE"}
    if value is not None:
        env["LIGHTNING_GSF_CUDA_GRADIENT_REUSE"] = value
    result = subprocess.run([sys.executable, "-c", "from lightning_gsf import gradient_reuse as g; print(g.ON_CUDA)"],
                            env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == expected


@pytest.mark.parametrize("on_cuda", [False, True])
def test_only_cpu_and_switched_on_cuda_gradients_count(monkeypatch, on_cuda):
    """A gradient on another device (here the meta device) is never written over; a CPU one
    that nothing else holds is (the probe's own counts)."""
    monkeypatch.setattr(gradient_reuse, "ON_CUDA", on_cuda)
    assert gradient_reuse.counts_on_entry(torch.empty(4, device="meta")) is None
    assert not gradient_reuse.writable(torch.empty(2, 3, 4, 4, device="meta"), gradient_reuse.unshared_counts())
    assert gradient_reuse.writable(torch.empty(2, 3, 4, 4), gradient_reuse.unshared_counts())


def test_the_probe_is_measured_in_the_forward_where_reuse_applies(monkeypatch):
    """GSF's and TSM's forwards measure the probe before any backward runs (a nested backward
    of the probe inside another would be measured in the middle of it): wherever
    ``applies_to`` holds, so on CUDA too once switched on."""
    from lightning_gsf import temporal
    from lightning_gsf.gsf import GSF

    prepared = []
    monkeypatch.setattr(gradient_reuse, "prepare", lambda: prepared.append(True))
    x = torch.randn(4, 16, 3, 3, requires_grad=True)
    temporal.temporal_shift(x, 2)
    GSF(16, 2, 0.5).train().forward_triton(x * 1.0)
    assert len(prepared) == 2
    monkeypatch.setattr(gradient_reuse, "applies_to", lambda tensor: False)
    temporal.temporal_shift(x, 2)
    GSF(16, 2, 0.5).train().forward_triton(x * 1.0)
    assert len(prepared) == 2


def test_the_probe_is_measured_again_where_the_interpreter_counts_differently(monkeypatch):
    """The probe's counts hold for one interpreter state (after a failed ``torch.compile``
    CPython 3.11 counts one more reference in every call): a backward in a state that no
    forward measured writes over nothing; the next forward measures the probe for it."""
    monkeypatch.setattr(gradient_reuse, "_PROBES", dict(gradient_reuse._PROBES))
    gradient_reuse.prepare()
    probe = gradient_reuse.unshared_counts()
    grad = torch.empty(2, 3, 4, 4)
    assert gradient_reuse.writable(grad, probe)
    state = gradient_reuse._call_references()
    monkeypatch.setattr(gradient_reuse, "_call_references", lambda: state + 1)
    assert not gradient_reuse.writable(grad, probe)
    gradient_reuse.prepare()
    assert gradient_reuse._PROBES[state + 1] == probe  # (measured for the new state, here the same counts)
    assert gradient_reuse.writable(grad, probe)


def test_reuse_holds_after_a_failed_compile():
    """In a process where a ``torch.compile`` failed (which leaves CPython 3.11 counting one
    more reference in every call), TSM's CPU backward still writes its adjoint over the output's
    gradient once a forward has run, with the right gradient (in a subprocess: the state
    lasts as long as the process)."""
    code = (
        "import torch\n"
        "from lightning_gsf import gradient_reuse, temporal\n"
        "decisions = []\n"
        "writable = gradient_reuse.writable\n"
        "gradient_reuse.writable = lambda *args: decisions.append(writable(*args)) or decisions[-1]\n"
        "def step():\n"
        "    x = torch.randn(6, 16, 4, 5, requires_grad=True)\n"
        "    weights = torch.randn(6, 16, 4, 5)\n"
        "    (temporal.temporal_shift(x * 1.0, 3) * weights).sum().backward()  # (a new gradient, unheld)\n"
        "    expected = temporal._shift_copy(weights, 3, 2, backwards_first=False)\n"
        "    assert torch.equal(x.grad, expected)\n"
        "step()\n"
        "try:\n"
        "    torch.compile(lambda t: t + torch.zeros(3), fullgraph=True, backend='eager')(torch.zeros(2))\n"
        "except Exception:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('the compile was meant to fail')\n"
        "step()\n"
        "print(decisions)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    decisions = result.stdout.strip().splitlines()[-1]
    assert decisions == "[True, True]", decisions


def test_a_gradient_whose_memory_a_hook_keeps_is_not_written_over():
    from lightning_gsf import temporal

    x = torch.randn(8, 16, 3, 5, requires_grad=True)
    weights = torch.randn(x.shape)
    kept = []
    y = temporal.temporal_shift(x * 1.0, 4)
    y.register_hook(lambda grad: kept.append(grad.detach()))
    (y * weights).sum().backward()
    assert torch.equal(kept[0], weights)


def test_the_probe_is_measured_with_autograd_off_too(monkeypatch):
    monkeypatch.setattr(gradient_reuse, "_PROBES", {})
    with torch.no_grad():
        gradient_reuse.prepare()
    assert gradient_reuse._PROBES[gradient_reuse._call_references()] is not None


def test_without_the_use_counts_nothing_is_written_over(monkeypatch):
    from lightning_gsf import temporal

    monkeypatch.setattr(gradient_reuse, "COUNTS_USABLE", False)
    monkeypatch.setattr(gradient_reuse, "_PROBES", {})
    x = torch.randn(8, 16, 3, 5, requires_grad=True)
    kept = []
    y = temporal.temporal_shift(x * 1.0, 4)
    y.register_hook(lambda grad: kept.append((grad, grad.clone())))
    (y * torch.randn(x.shape)).sum().backward()
    held, value = kept[0]
    assert torch.equal(held, value)


@pytest.mark.parametrize("on_cuda", [False, True])
def test_cuda_gradients_apply_only_when_switched_on(monkeypatch, on_cuda):
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setattr(gradient_reuse, "ON_CUDA", on_cuda)
    with FakeTensorMode():  # (a CUDA tensor's metadata, without a GPU)
        grad = torch.empty(2, 3, 4, 4, device="cuda")
    assert gradient_reuse.applies_to(grad) == on_cuda
    assert (gradient_reuse.counts_on_entry(grad) is not None) == on_cuda
