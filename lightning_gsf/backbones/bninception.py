"""BN-Inception (Ioffe and Szegedy, 2015) with the Caffe-converted layer names.

The ImageNet weights shared by TSN, TSM and the original GSF release
(``bn_inception-9f5701afb96c8044.pth``; also Cadene's ``pretrainedmodels``) name their layers
``conv1_7x7_s2``, ``conv1_7x7_s2_bn``, ``inception_3a_1x1``, ``inception_3a_1x1_bn``, ...;
this layout uses the same names, so those weights and the original GSF checkpoints load as
they are. Facts the weights depend on: every convolution has a bias; all pools use
``ceil_mode``; the pool branch averages (3x3, stride 1, pad 1) in every block but 5b, which
takes the maximum; the two reduction blocks 3c and 4e have no 1x1 branch and a stride-2
max-pool branch without projection. Inputs are BGR in [0, 255] minus (104, 117, 128)
(normalisation ``"bgr255"``); output features have 1024 channels.
"""

from __future__ import annotations

from lightning_gsf.backbones.inception_net import Block, Conv, InceptionNet, InputSides, LayerNames, Pool

NAMES = LayerNames(conv_suffix="", bn_suffix="_bn")
# Sides 31-38, 63-70, ... pixels (223 to 230 around the usual 224).
INPUT_SIDES = InputSides(smallest=31, count=8)

STEM = (
    Conv("conv1_7x7_s2", 64, 7, stride=2, padding=3),
    Pool("pool1_3x3_s2", "max", 3, stride=2),
    Conv("conv2_3x3_reduce", 64, 1),
    Conv("conv2_3x3", 192, 3, padding=1),
    Pool("pool2_3x3_s2", "max", 3, stride=2),
)


def _inception(
    name: str, c1x1: int, c3x3_reduce: int, c3x3: int, double_reduce: int, double: int,
    pool: str, pool_proj: int,
) -> Block:
    """A standard block: 1x1 | 1x1-3x3 | 1x1-3x3-3x3 | pool-1x1; GSF on the 1x1 branch."""
    p = f"inception_{name}_"
    return Block(
        name=f"inception_{name}",
        branches=(
            (Conv(p + "1x1", c1x1, 1),),
            (Conv(p + "3x3_reduce", c3x3_reduce, 1), Conv(p + "3x3", c3x3, 3, padding=1)),
            (
                Conv(p + "double_3x3_reduce", double_reduce, 1),
                Conv(p + "double_3x3_1", double, 3, padding=1),
                Conv(p + "double_3x3_2", double, 3, padding=1),
            ),
            (Pool(p + "pool", pool, 3, stride=1, padding=1), Conv(p + "pool_proj", pool_proj, 1)),
        ),
        temporal_site=p + "1x1",
    )


def _reduction(name: str, c3x3_reduce: int, c3x3: int, double_reduce: int, double: int) -> Block:
    """A stride-2 block: 1x1-3x3/2 | 1x1-3x3-3x3/2 | maxpool/2; GSF on the first 1x1."""
    p = f"inception_{name}_"
    return Block(
        name=f"inception_{name}",
        branches=(
            (Conv(p + "3x3_reduce", c3x3_reduce, 1), Conv(p + "3x3", c3x3, 3, stride=2, padding=1)),
            (
                Conv(p + "double_3x3_reduce", double_reduce, 1),
                Conv(p + "double_3x3_1", double, 3, padding=1),
                Conv(p + "double_3x3_2", double, 3, stride=2, padding=1),
            ),
            (Pool(p + "pool", "max", 3, stride=2),),
        ),
        temporal_site=p + "3x3_reduce",
    )


BLOCKS = (
    _inception("3a", 64, 64, 64, 64, 96, "avg", 32),
    _inception("3b", 64, 64, 96, 64, 96, "avg", 64),
    _reduction("3c", 128, 160, 64, 96),
    _inception("4a", 224, 64, 96, 96, 128, "avg", 128),
    _inception("4b", 192, 96, 128, 96, 128, "avg", 128),
    _inception("4c", 160, 128, 160, 128, 160, "avg", 128),
    _inception("4d", 96, 128, 192, 160, 192, "avg", 128),
    _reduction("4e", 128, 192, 192, 256),
    _inception("5a", 352, 192, 320, 160, 224, "avg", 128),
    _inception("5b", 352, 192, 320, 192, 224, "max", 128),
)


def bninception() -> InceptionNet:
    """BN-Inception without classifier: ``(N, 3, 224, 224) -> (N, 1024)``."""
    return InceptionNet(STEM, BLOCKS, NAMES, INPUT_SIDES)
