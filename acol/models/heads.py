"""Classifier heads: CAM (one branch) and ACoL (two adversarial complementary branches A and B).

Both heads compute class maps with convolutions and take logits as their spatial mean, so the class map of a
class is exactly what its logit is the average of (the CAM identity, without a separate fc layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ModelOutput", "CAMHead", "ACoLHead", "make_classifier", "normalize_maps", "select_class_maps"]


@dataclass
class ModelOutput:
    """What a WSOL model returns; `logits` (of branch A) is the prediction.

    logits: (B, K); maps_a: (B, K, h, w) class maps of A; for ACoL also logits_b (B, K) and maps_b (B, K, h, w)
    computed on the features erased where A's map was above the erase threshold.
    """

    logits: torch.Tensor
    maps_a: torch.Tensor
    logits_b: torch.Tensor | None = None
    maps_b: torch.Tensor | None = None


def make_classifier(in_channels: int, hidden_channels: int, num_classes: int) -> nn.Sequential:
    """conv3x3 -> ReLU -> conv3x3 -> ReLU -> conv1x1 to class maps, as in the ACoL paper (hidden = 1024)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden_channels, num_classes, 1),
    )


def normalize_maps(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min-max normalize each map over its last two dims to [0, 1]; a constant map becomes zeros."""
    flat = maps.flatten(-2)
    low = flat.min(dim=-1, keepdim=True).values.unsqueeze(-1)
    high = flat.max(dim=-1, keepdim=True).values.unsqueeze(-1)
    return (maps - low) / (high - low).clamp_min(eps)


def select_class_maps(maps: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Pick one class map per image: maps (B, K, h, w), classes (B,) -> (B, h, w)."""
    return maps[torch.arange(maps.shape[0], device=maps.device), classes]


class CAMHead(nn.Module):
    """One classifier; the localization map is its normalized class map (the CAM baseline)."""

    def __init__(self, in_channels: int, num_classes: int, hidden_channels: int = 1024) -> None:
        super().__init__()
        self.classifier_a = make_classifier(in_channels, hidden_channels, num_classes)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        maps_a = self.classifier_a(features)  # (B, K, h, w)
        return ModelOutput(logits=maps_a.mean(dim=(2, 3)), maps_a=maps_a)

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.logits, labels)

    def localization_maps(self, output: ModelOutput, classes: torch.Tensor) -> torch.Tensor:
        return normalize_maps(select_class_maps(output.maps_a, classes))


class ACoLHead(nn.Module):
    """Two parallel classifiers A and B; B sees the features with A's most discriminative region erased.

    While training, A's map of the ground-truth class (min-max normalized per image) marks the positions
    >= erase_threshold, which are zeroed in the shared feature map before B; at inference A's top-1 class is
    used instead. Loss = CE(A) + CE(B). The localization map of a class is the element-wise max of the
    normalized maps of A and B, so B's map adds the object regions that A's map misses.
    """

    def __init__(
        self, in_channels: int, num_classes: int, hidden_channels: int = 1024, erase_threshold: float = 0.6
    ) -> None:
        super().__init__()
        if not 0.0 < erase_threshold <= 1.0:
            raise ValueError(f"erase_threshold must be in (0, 1], got {erase_threshold}")
        self.erase_threshold = erase_threshold
        self.classifier_a = make_classifier(in_channels, hidden_channels, num_classes)
        self.classifier_b = make_classifier(in_channels, hidden_channels, num_classes)

    def erase_mask(self, maps_a: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) float mask: 0 where A's normalized map of `classes` is >= the threshold, else 1."""
        attention = normalize_maps(select_class_maps(maps_a.detach(), classes))
        return (attention < self.erase_threshold).unsqueeze(1).to(maps_a.dtype)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        maps_a = self.classifier_a(features)  # (B, K, h, w)
        logits_a = maps_a.mean(dim=(2, 3))
        erase_classes = labels if self.training and labels is not None else logits_a.argmax(dim=1)
        erased = features * self.erase_mask(maps_a, erase_classes)
        maps_b = self.classifier_b(erased)
        return ModelOutput(logits=logits_a, maps_a=maps_a, logits_b=maps_b.mean(dim=(2, 3)), maps_b=maps_b)

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        assert output.logits_b is not None, "ACoL output must carry branch B"
        return F.cross_entropy(output.logits, labels) + F.cross_entropy(output.logits_b, labels)

    def localization_maps(self, output: ModelOutput, classes: torch.Tensor) -> torch.Tensor:
        assert output.maps_b is not None, "ACoL output must carry branch B"
        map_a = normalize_maps(select_class_maps(output.maps_a, classes))
        map_b = normalize_maps(select_class_maps(output.maps_b, classes))
        return torch.maximum(map_a, map_b)
