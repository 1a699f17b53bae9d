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
