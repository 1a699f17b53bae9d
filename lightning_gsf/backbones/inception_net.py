"""A Caffe-style Inception network described by a table of named layers.

The BNInception and TensorFlow-converted InceptionV3 weights that TSN, TSM and the original
GSF release use come from Caffe / TensorFlow graphs, and their state dicts are *flat*: every
convolution and BatchNorm is a direct attribute of the network (``inception_3a_1x1``,
``inception_3a_1x1_bn``, ...). :class:`InceptionNet` keeps that layout, so those weights load
without renaming, while the architecture itself is written down as data
(:class:`Conv`, :class:`Pool`, :class:`Block`) that a reader can check against a diagram.

Every convolution is followed by BatchNorm and ReLU (a "unit"); a block runs its branches on
the same input and concatenates their outputs along channels. Caffe pools round their output
size up (``ceil_mode=True``), which the converted weights' feature-map sizes rely on.
A temporal module can be attached to one convolution per block (``Block.temporal_site``),
either on its input (TSM) or on its output before the BatchNorm (GSF); see
:mod:`lightning_gsf.backbones.insertion`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

import torch
from torch import nn

Size = Union[int, tuple[int, int]]
Position = Literal["before_conv", "after_conv"]


@dataclass(frozen=True)
class Conv:
    """A convolution (with bias, as in the converted weights) + BatchNorm + ReLU."""

    name: str
    out_channels: int
    kernel_size: Size
    stride: Size = 1
    padding: Size = 0


@dataclass(frozen=True)
class Pool:
    """Max or average pooling; Caffe semantics (``ceil_mode=True``, padded zeros count)."""

    name: str
    kind: Literal["max", "avg"]
    kernel_size: int
    stride: int
    padding: int = 0


Layer = Union[Conv, Pool]
Branch = tuple[Layer, ...]


@dataclass(frozen=True)
class Block:
    """Parallel branches on one input, concatenated in order.

    Branches that start with the same layers share them: InceptionV3's last blocks fork one
    3x3 tower into a 1x3 and a 3x1 convolution, written as two branches with a common prefix.
    ``temporal_site`` names the convolution that carries the block's temporal module.
    """

    name: str
    branches: tuple[Branch, ...]
    temporal_site: str | None = None


@dataclass(frozen=True)
class LayerNames:
    """How a layout names the parameters of a unit called ``base``."""

    conv_suffix: str  # "" for BNInception ("inception_3a_1x1"), "_Conv2D" for InceptionV3
    bn_suffix: str  # "_bn" for BNInception, "_batchnorm" for InceptionV3

    def conv(self, base: str) -> str:
        return base + self.conv_suffix

    def bn(self, base: str) -> str:
        return base + self.bn_suffix


@dataclass(frozen=True)
class InputSides:
    """The input heights and widths a network takes: runs of ``count`` sides every ``period``
    pixels, the first run starting at ``smallest``. Caffe pools round their output size up and
    stride-2 convolutions round down, so a reduction block's branches come out the same size
    only where the map's side suits both (and the maps must not shrink to nothing); at other
    inputs ``torch.cat`` would fail deep in the network."""

    smallest: int
    count: int
    period: int = 32

    def admits(self, side: int) -> bool:
        return side >= self.smallest and (side - self.smallest) % self.period < self.count

    def check(self, height: int, width: int) -> None:
        """Raise a ValueError naming the nearest sides taken, unless both are taken."""
        for side in (height, width):
            if not self.admits(side):
                below = next((s for s in range(side - 1, self.smallest - 1, -1) if self.admits(s)), None)
                above = next(s for s in range(max(side + 1, self.smallest), side + self.period + self.smallest)
                             if self.admits(s))
                nearest = f"{below} or {above}" if below is not None else str(above)
                runs = ", ".join(f"{start}-{start + self.count - 1}"
                                 for start in range(self.smallest, self.smallest + 3 * self.period, self.period))
                raise ValueError(
                    f"this Inception network takes heights and widths of {runs}, ... pixels (every "
                    f"{self.period}; its pools round sizes up, its strided convolutions down); got "
                    f"{height}x{width}: use {nearest} instead of {side} (the data's input_size)")


# Attribute prefixes of attached temporal modules, after the original release's "gsf_<conv>".
TEMPORAL_PREFIX: dict[Position, str] = {"after_conv": "gsf_", "before_conv": "shift_"}


class InceptionNet(nn.Module):
    """Stem layers, then Inception blocks, then global average pooling: ``(N, 3, H, W) -> (N, D)``."""

    def __init__(self, stem: tuple[Layer, ...], blocks: tuple[Block, ...], names: LayerNames,
                 input_sides: InputSides | None = None) -> None:
        super().__init__()
        self.input_sides = input_sides
        self.stem = stem
        self.blocks = blocks
        self.names = names
        # The temporal module attached to a unit, by (unit name, position) -> attribute name.
        self._attached: dict[tuple[str, Position], str] = {}
        channels = 3
        for layer in stem:
            channels = self._register(layer, channels)
        for block in blocks:
            channels = self._register_block(block, channels)
        self.feature_dim = channels
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self._init_weights()

    # -- construction ---------------------------------------------------------------------
    def _register(self, layer: Layer, in_channels: int) -> int:
        """Create the modules of one layer (if not yet created); return its output channels."""
        if isinstance(layer, Pool):
            return in_channels
        conv_name = self.names.conv(layer.name)
        if not hasattr(self, conv_name):
            conv = nn.Conv2d(in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding)
            self.add_module(conv_name, conv)
            self.add_module(self.names.bn(layer.name), nn.BatchNorm2d(layer.out_channels))
        return layer.out_channels

    def _register_block(self, block: Block, in_channels: int) -> int:
        out_channels = 0
        for branch in block.branches:
            channels = in_channels
            for layer in branch:
                channels = self._register(layer, channels)
            out_channels += channels
        return out_channels

    def _init_weights(self) -> None:
        # Only used when no pretrained weights are loaded: He init for the ReLU network.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def conv_layer(self, unit: str) -> nn.Conv2d:
        return getattr(self, self.names.conv(unit))

    def attach(self, unit: str, position: Position, module: nn.Module) -> str:
        """Attach a temporal module to the input or the output of a unit's convolution.

        It is registered as ``gsf_<conv name>`` (output, as in the original release) or
        ``shift_<conv name>`` (input), beside the unit's own layers, which keep their names.
        A module on the input is a :class:`~lightning_gsf.temporal.TemporalShift` (its
        ``call_with_shifted``, since the block's other branches read the same input).
        """
        name = TEMPORAL_PREFIX[position] + self.names.conv(unit)
        self.add_module(name, module)
        self._attached[(unit, position)] = name
        return name

    # -- forward ------------------------------------------------------------------------------
    def _unit(self, conv: Conv, x: torch.Tensor) -> torch.Tensor:
        before = self._attached.get((conv.name, "before_conv"))
        after = self._attached.get((conv.name, "after_conv"))
        convolution = getattr(self, self.names.conv(conv.name))
        if before is None:
            x = convolution(x)
        else:  # (the block's other branches read x too: restored after the conv)
            x = getattr(self, before).call_with_shifted(x, convolution)
        if after is not None:
            x = getattr(self, after)(x)
        x = getattr(self, self.names.bn(conv.name))(x)
        return nn.functional.relu(x, inplace=True)

    def _layer(self, layer: Layer, x: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, Conv):
            return self._unit(layer, x)
        pool = nn.functional.max_pool2d if layer.kind == "max" else nn.functional.avg_pool2d
        return pool(x, layer.kernel_size, layer.stride, layer.padding, ceil_mode=True)

    def _block(self, block: Block, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        shared: dict[tuple[str, ...], torch.Tensor] = {}  # outputs of branch prefixes
        for branch in block.branches:
            y = x
            for depth, layer in enumerate(branch):
                prefix = tuple(layer.name for layer in branch[: depth + 1])
                if prefix not in shared:
                    shared[prefix] = self._layer(layer, y)
                y = shared[prefix]
            outputs.append(y)
        return torch.cat(outputs, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_sides is not None:
            self.input_sides.check(x.shape[-2], x.shape[-1])
        for layer in self.stem:
            x = self._layer(layer, x)
        for block in self.blocks:
            x = self._block(block, x)
        return self.global_pool(x).flatten(1)
