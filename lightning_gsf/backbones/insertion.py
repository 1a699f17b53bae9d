"""The one place that inserts a temporal module (GSF or TSM) into a built 2D backbone.

Where each module goes (``shared/spec/gsf.md``):

=================  =========================================  ===============================
backbone           GSF (on a conv's output, before its BN)    TSM (on a conv's input)
=================  =========================================  ===============================
ResNet Bottleneck  after ``conv3``                            before ``conv1``
ResNet BasicBlock  after ``conv2``                            before ``conv1``
Inception blocks   after the block's ``temporal_site`` conv   before that same conv
=================  =========================================  ===============================

In ResNets the identity path keeps the unshifted input (TSM's "residual shift"). TSM in the
Inception backbones is our choice (TSM was defined for residual networks): it
shifts the input of the convolution that carries GSF in each block (the 1x1 branch, or the
first convolution of a reduction block), so the block's other branches still see the
unshifted input and play the part of TSM's identity path, and TSM and GSF sit in the same
blocks. Insertion never renames a backbone's own parameters: GSF modules become
``<block>.gsf`` in torchvision networks (``layer1.0.gsf.conv3D.weight``) and
``gsf_<conv>`` in the Caffe-named ones (``gsf_inception_3a_1x1``), as in the original
release; TSM has no parameters.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.inception import BasicConv2d, Inception3
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from lightning_gsf.backbones.inception_net import InceptionNet
from lightning_gsf.backbones.inception_v3 import TORCHVISION_TEMPORAL_SITES
from lightning_gsf.gsf import GSF
from lightning_gsf.temporal import TemporalShift

TEMPORAL_MODULES = ("gsf", "tsm", "none")


class _TemporalResidualBlock(nn.Module):
    """A built torchvision residual block (same layers, same names) with TSM and/or GSF.

    TSM shifts the block's input on the residual path only (the identity path keeps the
    unshifted input); GSF sits on the output of the block's last conv, before its BN.
    Each subclass spells out its block's residual path as ``residual(x)``.
    """

    def __init__(self, block: nn.Module, shift: nn.Module | None = None, gsf: nn.Module | None = None) -> None:
        super().__init__()
        for name, child in block.named_children():
            self.add_module(name, child)
        self.downsample = block.downsample
        self.shift = shift
        self.gsf = gsf

    def temporal(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.gsf is None else self.gsf(x)

    def first_conv(self, x: torch.Tensor) -> torch.Tensor:
        """``conv1`` of ``x``, shifted first with TSM (on the CPU ``x`` itself, shifted in
        place and restored after: the identity path reads it too)."""
        return self.conv1(x) if self.shift is None else self.shift.call_with_shifted(x, self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.residual(x)
        out += identity  # in place, as torchvision does: one pass less over the feature map
        return self.relu(out)


class TemporalBottleneck(_TemporalResidualBlock):
    """A torchvision ``Bottleneck`` with TSM before ``conv1`` and/or GSF after ``conv3``."""

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.first_conv(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.temporal(self.conv3(out)))


class TemporalBasicBlock(_TemporalResidualBlock):
    """A torchvision ``BasicBlock`` with TSM before ``conv1`` and/or GSF after ``conv2``."""

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.first_conv(x)))
        return self.bn2(self.temporal(self.conv2(out)))


class TemporalBasicConv2d(nn.Module):
    """A built torchvision Inception ``BasicConv2d`` (conv, BN, ReLU) with TSM and/or GSF."""

    def __init__(self, unit: BasicConv2d, shift: nn.Module | None = None, gsf: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = unit.conv
        self.bn = unit.bn
        self.shift = shift
        self.gsf = gsf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shift is None:
            x = self.conv(x)
        else:  # (the block's other branches read x too: restored after the conv)
            x = self.shift.call_with_shifted(x, self.conv)
        if self.gsf is not None:
            x = self.gsf(x)
        return nn.functional.relu(self.bn(x), inplace=True)


def _temporal_pair(
    kind: str, channels: int, num_segments: int, gsf_ratio: float, site: str, fusion_init: str
) -> tuple[nn.Module | None, nn.Module | None]:
    """``(shift, gsf)`` modules for one site; the GSF acts on ``channels`` output channels."""
    if kind == "tsm":
        return TemporalShift(num_segments), None
    try:
        # Every GSF site is a convolution's output that only GSF reads, so in inference GSF
        # may overwrite it (see GSF's ``inplace``).
        return None, GSF(channels, num_segments, gsf_ratio, inplace=True, fusion_init=fusion_init)
    except ValueError as err:
        raise ValueError(f"cannot insert GSF after {site}: {err}") from err


def insert_temporal_modules(backbone: nn.Module, kind: str, *, num_segments: int, gsf_ratio: float) -> nn.Module:
    """Insert ``kind`` (``"gsf"``, ``"tsm"`` or ``"none"``) into ``backbone`` in place; return it."""
    if kind not in TEMPORAL_MODULES:
        raise ValueError(f"unknown temporal module {kind!r}; expected one of {TEMPORAL_MODULES}")
    if kind == "none":
        return backbone

    # The fusion convs start as the authors' networks start them: Kaiming normal in their
    # ResNet (which initialises every Conv2d so), PyTorch's default in their Inceptions.
    fusion_init = "kaiming" if isinstance(backbone, ResNet) else "default"

    def pair(channels: int, site: str) -> tuple[nn.Module | None, nn.Module | None]:
        return _temporal_pair(kind, channels, num_segments, gsf_ratio, site, fusion_init)

    if isinstance(backbone, ResNet):
        for layer_name in ("layer1", "layer2", "layer3", "layer4"):
            layer: nn.Sequential = getattr(backbone, layer_name)
            for index, block in enumerate(layer):
                site = f"{layer_name}.{index}"
                if isinstance(block, Bottleneck):
                    layer[index] = TemporalBottleneck(block, *pair(block.conv3.out_channels, site + ".conv3"))
                elif isinstance(block, BasicBlock):
                    layer[index] = TemporalBasicBlock(block, *pair(block.conv2.out_channels, site + ".conv2"))
                else:
                    raise TypeError(f"{site}: no temporal insertion rule for {type(block).__name__}")
    elif isinstance(backbone, Inception3):
        for site in TORCHVISION_TEMPORAL_SITES:
            parent_name, child_name = site.rsplit(".", 1)
            parent = backbone.get_submodule(parent_name)
            unit: BasicConv2d = getattr(parent, child_name)
            setattr(parent, child_name, TemporalBasicConv2d(unit, *pair(unit.conv.out_channels, site + ".conv")))
    elif isinstance(backbone, InceptionNet):
        for block in backbone.blocks:
            if block.temporal_site is None:
                continue
            conv = backbone.conv_layer(block.temporal_site)
            shift, gsf = pair(conv.out_channels, block.temporal_site)
            if shift is not None:
                backbone.attach(block.temporal_site, "before_conv", shift)
            if gsf is not None:
                backbone.attach(block.temporal_site, "after_conv", gsf)
    else:
        raise TypeError(f"no temporal insertion rule for a {type(backbone).__name__} backbone")
    return backbone
