"""torchvision's ResNets as frame feature extractors: ``(N, 3, H, W) -> (N, 512 or 2048)``.

The network is torchvision's own, built without weights; temporal modules are inserted
afterwards (``backbones.insertion``) without renaming any of its layers, so torchvision's
ImageNet weights, and the original GSF release's ResNet checkpoints, load unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models import resnet
from torchvision.models.resnet import ResNet

RESNETS: dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "resnet101": resnet.resnet101,
    "resnet152": resnet.resnet152,
}


def torchvision_resnet(name: str) -> ResNet:
    """ResNet ``name`` with its classifier replaced by the identity (``fc`` has no weights)."""
    net = RESNETS[name](weights=None)
    net.feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net
