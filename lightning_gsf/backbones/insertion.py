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

import functools
from collections.abc import Callable

import torch
from torch import nn
from torchvision.models.inception import BasicConv2d, Inception3
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from lightning_gsf.backbones.inception_net import InceptionNet
from lightning_gsf.backbones.inception_v3 import TORCHVISION_TEMPORAL_SITES
from lightning_gsf.data.errors import ConfigurationError
from lightning_gsf.gsf import GSF, gsf_channels
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


# Installs a (shift, gsf) pair, either of them None, at one site.
_Install = Callable[[nn.Module | None, nn.Module | None], None]


def _wrap_residual_block(layer: nn.Sequential, index: int, wrapper: type[_TemporalResidualBlock],
                         shift: nn.Module | None, gsf: nn.Module | None) -> None:
    layer[index] = wrapper(layer[index], shift, gsf)


def _wrap_basic_conv(parent: nn.Module, name: str, shift: nn.Module | None, gsf: nn.Module | None) -> None:
    setattr(parent, name, TemporalBasicConv2d(getattr(parent, name), shift, gsf))


def _attach_to_conv(backbone: InceptionNet, site: str, shift: nn.Module | None, gsf: nn.Module | None) -> None:
    if shift is not None:
        backbone.attach(site, "before_conv", shift)
    if gsf is not None:
        backbone.attach(site, "after_conv", gsf)


def _temporal_sites(backbone: nn.Module) -> list[tuple[str, int, _Install]]:
    """``(site, channels, install)`` for every place of ``backbone`` that takes a temporal
    module: the conv GSF follows, its output channels, and a function that installs a
    ``(shift, gsf)`` pair there."""
    sites: list[tuple[str, int, _Install]] = []
    if isinstance(backbone, ResNet):
        for layer_name in ("layer1", "layer2", "layer3", "layer4"):
            layer: nn.Sequential = getattr(backbone, layer_name)
            for index, block in enumerate(layer):
                if isinstance(block, Bottleneck):
                    wrapper, conv = TemporalBottleneck, "conv3"
                elif isinstance(block, BasicBlock):
                    wrapper, conv = TemporalBasicBlock, "conv2"
                else:
                    raise TypeError(f"{layer_name}.{index}: no temporal insertion rule for {type(block).__name__}")
                install = functools.partial(_wrap_residual_block, layer, index, wrapper)
                sites.append((f"{layer_name}.{index}.{conv}", getattr(block, conv).out_channels, install))
    elif isinstance(backbone, Inception3):
        for site in TORCHVISION_TEMPORAL_SITES:
            parent_name, name = site.rsplit(".", 1)
            parent = backbone.get_submodule(parent_name)
            unit: BasicConv2d = getattr(parent, name)
            sites.append((f"{site}.conv", unit.conv.out_channels, functools.partial(_wrap_basic_conv, parent, name)))
    elif isinstance(backbone, InceptionNet):
        for block in backbone.blocks:
            if block.temporal_site is not None:
                channels = backbone.conv_layer(block.temporal_site).out_channels
                sites.append((block.temporal_site, channels,
                              functools.partial(_attach_to_conv, backbone, block.temporal_site)))
    else:
        raise TypeError(f"no temporal insertion rule for a {type(backbone).__name__} backbone")
    return sites


def _percent_ratios_that_fit(channel_counts: list[int]) -> list[int]:
    """The ratios, in whole percent, at which GSF can split every one of ``channel_counts``."""
    fitting = []
    for percent in range(1, 101):
        try:
            for channels in channel_counts:
                gsf_channels(channels, percent / 100)
        except ValueError:
            continue
        fitting.append(percent)
    return fitting


def _check_gsf_ratio(sites: list[tuple[str, int, _Install]], gsf_ratio: float) -> None:
    """Raise, naming the first site GSF cannot split at ``gsf_ratio`` and the ratios that fit them all."""
    for site, channels, _ in sites:
        try:
            gsf_channels(channels, gsf_ratio)
        except ValueError as err:
            fitting = _percent_ratios_that_fit([channels for _, channels, _ in sites])
            listed = ", ".join(f"{percent / 100:g}" for percent in fitting) or "none"
            raise ConfigurationError(f"cannot insert GSF after {site}: {err}. The ratios of whole percent that "
                                     f"fit every site of this backbone: {listed}") from err


def insert_temporal_modules(backbone: nn.Module, kind: str, *, num_segments: int, gsf_ratio: float) -> nn.Module:
    """Insert ``kind`` (``"gsf"``, ``"tsm"`` or ``"none"``) into ``backbone`` in place; return it."""
    if kind not in TEMPORAL_MODULES:
        raise ConfigurationError(f"unknown temporal module {kind!r}; expected one of {TEMPORAL_MODULES}")
    if kind == "none":
        return backbone
    sites = _temporal_sites(backbone)
    if kind == "tsm":
        for _, _, install in sites:
            install(TemporalShift(num_segments), None)
        return backbone

    _check_gsf_ratio(sites, gsf_ratio)
    # The fusion convs start as the authors' networks start them: Kaiming normal in their
    # ResNet (which initialises every Conv2d so), PyTorch's default in their Inceptions.
    fusion_init = "kaiming" if isinstance(backbone, ResNet) else "default"
    for _, channels, install in sites:
        # Every GSF site is a convolution's output that only GSF reads, so in inference GSF
        # may overwrite it (see GSF's ``inplace``).
        install(None, GSF(channels, num_segments, gsf_ratio, inplace=True, fusion_init=fusion_init))
    return backbone
