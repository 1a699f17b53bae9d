"""Input normalisations of the backbones, applied inside the model to uint8 RGB clips.

Keeping normalisation in the model (rather than in the data pipeline) means clips travel to
the accelerator as uint8 (4x less host-to-device traffic) and a checkpoint carries the
normalisation its weights expect.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Normalization:
    """``out = (in * scale - mean) / std`` per channel, after an optional RGB -> BGR flip.

    ``mean`` and ``std`` are given in the channel order the weights expect (BGR when ``bgr``).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float  # 1/255 for inputs in [0, 1], 1 for inputs in [0, 255]
    bgr: bool  # channel order the weights expect


NORMALIZATIONS: dict[str, Normalization] = {
    # torchvision ResNet / InceptionV3 ImageNet weights: RGB in [0, 1].
    "imagenet": Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1 / 255, bgr=False),
    # Caffe-converted BNInception and the original release's InceptionV3: BGR in [0, 255].
    "bgr255": Normalization((104.0, 117.0, 128.0), (1.0, 1.0, 1.0), 1.0, bgr=True),
}


def get_normalization(name: str) -> Normalization:
    try:
        return NORMALIZATIONS[name]
    except KeyError:
        raise ValueError(f"unknown normalization {name!r}; expected one of {sorted(NORMALIZATIONS)}") from None


def normalize(clip: torch.Tensor, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalise a uint8 RGB clip ``(..., 3, H, W)`` into the float input a backbone expects."""
    if clip.shape[-3] != 3:
        raise ValueError(f"expected RGB clips (..., 3, H, W), got {tuple(clip.shape)}")
    norm = get_normalization(name)
    x = clip.to(dtype)
    if norm.bgr:
        x = x.flip(-3)  # RGB -> BGR; mean and std are already in BGR order
    shape = (3, 1, 1)
    mean_t = torch.tensor(norm.mean, dtype=dtype, device=x.device).view(shape) / norm.scale
    std_t = torch.tensor(norm.std, dtype=dtype, device=x.device).view(shape) / norm.scale
    return (x - mean_t) / std_t
