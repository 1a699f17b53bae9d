"""InceptionV3 (Szegedy et al., 2016), in two variants.

``inception_v3``
    torchvision's ``Inception3`` (auxiliary classifier off, its input transform on, classifier
    removed), for training from torchvision's ImageNet weights (normalisation ``"imagenet"``).

``inception_v3_tf``
    the network the original GSF release calls InceptionV3: the TensorFlow InceptionV3 graph
    that TSN converted to PyTorch (``inceptionv3-cuhk-*.pth``), with its layer names
    (``conv_Conv2D``, ``conv_batchnorm``, ``mixed_conv_Conv2D``, ``mixed_1_tower_conv_Conv2D``,
    ...), so the release's InceptionV3 checkpoint loads as it is. It is *not* torchvision's
    network with other names; it differs in ways that change the output:

    - every convolution has a bias, and BatchNorm uses eps 1e-5 (torchvision: no bias, 1e-3);
    - the factorised 7x7 convolutions run 7x1 before 1x7 (torchvision: 1x7 before 7x1), and
      the split 3x3 of the last two blocks lists its 3x1 output before its 1x3 output;
    - the pool branch of the last block (``mixed_10``) takes the maximum, not the average;
    - pools round their output size up (Caffe ``ceil_mode``), so the release's 229-pixel
      crops give 27x27 maps after the stem (torchvision: 26x26).

    Inputs are BGR in [0, 255] minus (104, 117, 128) (normalisation ``"bgr255"``).

Both carry GSF on the same convolutions (``shared/spec/gsf.md``): the 1x1 branch of the
35x35, 17x17 and 8x8 blocks, the stride-2 3x3 of the first reduction block (Mixed_6a /
``mixed_3``) and the 1x1 in front of the stride-2 3x3 of the second (Mixed_7a / ``mixed_8``).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.inception import Inception3

from lightning_gsf.backbones.inception_net import Block, Conv, InceptionNet, InputSides, LayerNames, Pool

# -- torchvision ------------------------------------------------------------------------------

# torchvision module path of the BasicConv2d that carries each block's temporal module.
TORCHVISION_TEMPORAL_SITES = (
    "Mixed_5b.branch1x1", "Mixed_5c.branch1x1", "Mixed_5d.branch1x1",
    "Mixed_6a.branch3x3",
    "Mixed_6b.branch1x1", "Mixed_6c.branch1x1", "Mixed_6d.branch1x1", "Mixed_6e.branch1x1",
    "Mixed_7a.branch3x3_1",
    "Mixed_7b.branch1x1", "Mixed_7c.branch1x1",
)


# torchvision's network takes any height and width from this many pixels up (its pools and
# strided convolutions all round down, so no two branches disagree in size).
TORCHVISION_SMALLEST_SIDE = 75


class TorchvisionInception3(Inception3):
    """torchvision's ``Inception3`` that names the smallest input side it takes, rather than
    failing deep inside with a convolution's kernel larger than its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if min(height, width) < TORCHVISION_SMALLEST_SIDE:
            raise ValueError(f"torchvision's InceptionV3 takes heights and widths of at least "
                             f"{TORCHVISION_SMALLEST_SIDE} pixels; got {height}x{width} (the data's input_size)")
        return super().forward(x)


def torchvision_inception_v3() -> Inception3:
    """torchvision's InceptionV3 as a feature extractor: ``(N, 3, 299, 299) -> (N, 2048)``.

    Built without weights (they are loaded afterwards, see ``backbones.weights``), without the
    auxiliary classifier, and with its dropout and classifier replaced by identities: the video
    model adds its own dropout and heads. Its input transform stays on, as torchvision sets it
    for its ImageNet weights: those were ported from TensorFlow and expect inputs scaled to
    [-1, 1], which the transform computes from ImageNet-normalised inputs (``"imagenet"``).
    """
    net = TorchvisionInception3(aux_logits=False, transform_input=True, init_weights=True, dropout=0.0)
    net.dropout = nn.Identity()
    net.fc = nn.Identity()
    net.feature_dim = 2048
    return net


# -- the original release's TensorFlow-converted InceptionV3 ------------------------------------

TF_NAMES = LayerNames(conv_suffix="_Conv2D", bn_suffix="_batchnorm")
# Sides 69-76, 101-108, ... pixels (229 to 236 around the release's 229, 293 to 300 around 299).
TF_INPUT_SIDES = InputSides(smallest=69, count=8)

TF_STEM = (
    Conv("conv", 32, 3, stride=2),
    Conv("conv_1", 32, 3),
    Conv("conv_2", 64, 3, padding=1),
    Pool("pool", "max", 3, stride=2),
    Conv("conv_3", 80, 1),
    Conv("conv_4", 192, 3),
    Pool("pool_1", "max", 3, stride=2),
)


def _prefix(index: int) -> str:
    return "mixed_" if index == 0 else f"mixed_{index}_"


def _block_35(index: int, pool_proj: int) -> Block:
    """35x35 block (Mixed_5b/5c/5d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""
    p = _prefix(index)
    return Block(
        name=p.rstrip("_"),
        branches=(
            (Conv(p + "conv", 64, 1),),
            (Conv(p + "tower_conv", 48, 1), Conv(p + "tower_conv_1", 64, 5, padding=2)),
            (
                Conv(p + "tower_1_conv", 64, 1),
                Conv(p + "tower_1_conv_1", 96, 3, padding=1),
                Conv(p + "tower_1_conv_2", 96, 3, padding=1),
            ),
            (Pool(p + "tower_2_pool", "avg", 3, stride=1, padding=1), Conv(p + "tower_2_conv", pool_proj, 1)),
        ),
        temporal_site=p + "conv",
    )


def _reduction_35() -> Block:
    """Mixed_6a: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2; GSF on the 3x3/2."""
    p = _prefix(3)
    return Block(
        name="mixed_3",
        branches=(
            (Conv(p + "conv", 384, 3, stride=2),),
            (
                Conv(p + "tower_conv", 64, 1),
                Conv(p + "tower_conv_1", 96, 3, padding=1),
                Conv(p + "tower_conv_2", 96, 3, stride=2),
            ),
            (Pool(p + "pool", "max", 3, stride=2),),
        ),
        temporal_site=p + "conv",
    )


def _block_17(index: int, width: int) -> Block:
    """17x17 block (Mixed_6b..6e), factorised 7x7 convolutions, 7x1 first."""
    p = _prefix(index)
    col, row = ((7, 1), (3, 0)), ((1, 7), (0, 3))  # (kernel, padding)
    return Block(
        name=p.rstrip("_"),
        branches=(
            (Conv(p + "conv", 192, 1),),
            (
                Conv(p + "tower_conv", width, 1),
                Conv(p + "tower_conv_1", width, col[0], padding=col[1]),
                Conv(p + "tower_conv_2", 192, row[0], padding=row[1]),
            ),
            (
                Conv(p + "tower_1_conv", width, 1),
                Conv(p + "tower_1_conv_1", width, row[0], padding=row[1]),
                Conv(p + "tower_1_conv_2", width, col[0], padding=col[1]),
                Conv(p + "tower_1_conv_3", width, row[0], padding=row[1]),
                Conv(p + "tower_1_conv_4", 192, col[0], padding=col[1]),
            ),
            (Pool(p + "tower_2_pool", "avg", 3, stride=1, padding=1), Conv(p + "tower_2_conv", 192, 1)),
        ),
        temporal_site=p + "conv",
    )


def _reduction_17() -> Block:
    """Mixed_7a: 1x1-3x3/2 | 1x1-7x1-1x7-3x3/2 | maxpool/2; GSF on the first 1x1."""
    p = _prefix(8)
    return Block(
        name="mixed_8",
        branches=(
            (Conv(p + "tower_conv", 192, 1), Conv(p + "tower_conv_1", 320, 3, stride=2)),
            (
                Conv(p + "tower_1_conv", 192, 1),
                Conv(p + "tower_1_conv_1", 192, (7, 1), padding=(3, 0)),
                Conv(p + "tower_1_conv_2", 192, (1, 7), padding=(0, 3)),
                Conv(p + "tower_1_conv_3", 192, 3, stride=2),
            ),
            (Pool(p + "pool", "max", 3, stride=2),),
        ),
        temporal_site=p + "tower_conv",
    )


def _block_8(index: int, pool: str) -> Block:
    """8x8 block (Mixed_7b/7c): 1x1 | 1x1-(3x1, 1x3) | 1x1-3x3-(3x1, 1x3) | pool-1x1."""
    p = _prefix(index)
    tower = Conv(p + "tower_conv", 384, 1)
    tower_1 = (Conv(p + "tower_1_conv", 448, 1), Conv(p + "tower_1_conv_1", 384, 3, padding=1))
    return Block(
        name=p.rstrip("_"),
        branches=(
            (Conv(p + "conv", 320, 1),),
            (tower, Conv(p + "tower_mixed_conv", 384, (3, 1), padding=(1, 0))),
            (tower, Conv(p + "tower_mixed_conv_1", 384, (1, 3), padding=(0, 1))),
            (*tower_1, Conv(p + "tower_1_mixed_conv", 384, (3, 1), padding=(1, 0))),
            (*tower_1, Conv(p + "tower_1_mixed_conv_1", 384, (1, 3), padding=(0, 1))),
            (Pool(p + "tower_2_pool", pool, 3, stride=1, padding=1), Conv(p + "tower_2_conv", 192, 1)),
        ),
        temporal_site=p + "conv",
    )


TF_BLOCKS = (
    _block_35(0, 32),
    _block_35(1, 64),
    _block_35(2, 64),
    _reduction_35(),
    _block_17(4, 128),
    _block_17(5, 160),
    _block_17(6, 160),
    _block_17(7, 192),
    _reduction_17(),
    _block_8(9, "avg"),
    _block_8(10, "max"),
)


def tf_inception_v3() -> InceptionNet:
    """The original release's InceptionV3: ``(N, 3, 229, 229) -> (N, 2048)``."""
    return InceptionNet(TF_STEM, TF_BLOCKS, TF_NAMES, TF_INPUT_SIDES)
