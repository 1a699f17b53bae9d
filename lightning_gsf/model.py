"""VideoClassifier: TSN-style video network around a 2D backbone with a temporal module.

``clip (B, T, 3, H, W) -> normalise -> frames (B*T, 3, H, W) -> backbone (+ GSF / TSM)
-> pooled features (B*T, D) -> dropout -> one linear head per label -> logits (B, T, K)
-> average over T`` (the "avg consensus" of TSN, taken on logits as in the original release).

Normalisation happens here, not in the data pipeline: clips travel as uint8 (four times less
host-to-device traffic than float32) and the model, hence its checkpoint, knows which
normalisation its weights expect.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from lightning_gsf.backbones import DEFAULT_NORMALIZATION, build_backbone, check_backbone_name
from lightning_gsf.data.errors import ConfigurationError
from lightning_gsf.gsf_fast import autocast_enabled
from lightning_gsf.normalization import get_normalization, normalize


class VideoClassifier(nn.Module):
    """A 2D backbone with a temporal module, dropout and one linear head per label.

    Args:
        backbone: ``resnet18|34|50|101|152``, ``bninception``, ``inception_v3`` or
            ``inception_v3_tf`` (see ``lightning_gsf.backbones``).
        temporal_module: ``"gsf"``, ``"tsm"`` or ``"none"`` (TSN).
        num_segments: frames per clip ``T``; every input must have exactly this many.
        num_classes: classes per head, e.g. ``{"verb": 97, "noun": 300}``; an ``int`` K
            means ``{"class": K}``.
        gsf_ratio: fraction of channels GSF processes; ``None``: the paper's value for the
            backbone (0.25 for ResNets, 1.0 for the Inceptions).
        dropout: dropout probability on the pooled features (the paper uses 0.5).
        pretrained: ImageNet weights of the backbone: a torchvision weights name
            (``"IMAGENET1K_V1"``, ``"DEFAULT"``) or a state-dict file; ``None``: random.
        normalization: input normalisation of uint8 clips (``"imagenet"``, ``"bgr255"``);
            ``None``: what the backbone's weights expect.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        temporal_module: str = "gsf",
        num_segments: int = 8,
        num_classes: Mapping[str, int] | int = 1000,
        gsf_ratio: float | None = None,
        dropout: float = 0.5,
        pretrained: str | Path | None = None,
        normalization: str | None = None,
    ) -> None:
        super().__init__()
        check_backbone_name(backbone)
        heads = {"class": num_classes} if isinstance(num_classes, int) else dict(num_classes)
        if not heads or any(not isinstance(k, int) or k < 1 for k in heads.values()):
            raise ConfigurationError(f"num_classes must map head names to positive class counts, got {num_classes!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigurationError(f"dropout must be in [0, 1), got {dropout}")
        self.normalization = normalization or DEFAULT_NORMALIZATION[backbone]
        get_normalization(self.normalization)  # fail now, not at the first batch
        self.num_segments = num_segments
        self.base_model = build_backbone(
            backbone,
            temporal_module=temporal_module,
            num_segments=num_segments,
            gsf_ratio=gsf_ratio,
            weights=pretrained,
        )
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(self.base_model.feature_dim, k) for name, k in heads.items()})
        for head in self.heads.values():
            # New heads start near zero so early training does not disturb the backbone.
            nn.init.normal_(head.weight, 0.0, 0.001)
            nn.init.zeros_(head.bias)

    @property
    def num_classes(self) -> dict[str, int]:
        return {name: head.out_features for name, head in self.heads.items()}

    def _check_clip(self, clip: torch.Tensor) -> None:
        if clip.dim() != 5 or clip.shape[2] != 3:
            raise ValueError(f"expected clips (B, T, 3, H, W), got shape {tuple(clip.shape)}")
        if clip.shape[1] != self.num_segments:
            raise ValueError(
                f"expected clips of num_segments={self.num_segments} frames, got {clip.shape[1]} "
                f"(shape {tuple(clip.shape)}); the temporal modules are built for a fixed T"
            )
        if clip.dtype != torch.uint8 and not clip.is_floating_point():
            raise ValueError(f"expected uint8 (raw) or float (normalised) clips, got {clip.dtype}")

    def forward(self, clip: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits ``{head: (B, K)}`` of clips ``(B, T, 3, H, W)``.

        uint8 clips are RGB in [0, 255] and are normalised with ``self.normalization``;
        float clips are taken as already normalised. Under autocast (``bf16-mixed``,
        ``16-mixed``) the heads and the average over frames run in the heads' own dtype
        (float32): bf16 logits keep 8 bits of mantissa, so the best two classes of a sample
        would tie about once in a hundred samples, and the tie would decide its ranking.
        """
        self._check_clip(clip)
        if clip.dtype == torch.uint8:
            # Match the weights' dtype, so "16-true"/"bf16-true" precision works too.
            clip = normalize(clip, self.normalization, dtype=next(self.heads.parameters()).dtype)
        b, t = clip.shape[:2]
        features = self.dropout(self.base_model(clip.flatten(0, 1)))
        if autocast_enabled(features.device.type):
            with torch.autocast(features.device.type, enabled=False):
                return self._logits(features.to(next(self.heads.parameters()).dtype), b, t)
        return self._logits(features, b, t)

    def _logits(self, features: torch.Tensor, clips: int, frames: int) -> dict[str, torch.Tensor]:
        """Each head's logits of the frames' features, averaged over the frames of a clip."""
        return {name: head(features).view(clips, frames, -1).mean(dim=1) for name, head in self.heads.items()}
