"""Classifier heads: ACoL (two adversarial complementary branches A and B), CAM, and ACoL's branch A alone.

Every head returns a `ModelOutput` whose ``maps_a`` holds one map per class, with ``logits`` their spatial
mean (plus the fc bias for CAM), so the class map of a class is exactly what its logit averages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ModelOutput",
    "SPGLogits",
    "ACoLHead",
    "BranchAHead",
    "CAMHead",
    "ConvCAMHead",
    "make_classifier",
    "normalize_maps",
    "select_class_maps",
]


@dataclass
class SPGLogits:
    """SPG's side outputs (acol/models/spg.py): one-channel logit maps (B, 1, h, w) of the branches B1 and B2
    and of C, and the (height, width) of the input images, to which the SPG losses upsample every map."""

    b1: torch.Tensor
    b2: torch.Tensor
    c: torch.Tensor
    image_size: tuple[int, int]


@dataclass
class ModelOutput:
    """What a WSOL model returns; `logits` (of branch A) is the prediction.

    logits: (B, K); maps_a: (B, K, h, w) class maps of A. For ACoL also logits_b (B, K) and maps_b
    (B, K, h, w), computed on ``features`` (the head's input, (B, C, h, w)) erased where A's map of
    ``erase_classes`` (B,) was above the erase threshold. For SPG also ``spg``, its side branches.
    """

    logits: torch.Tensor
    maps_a: torch.Tensor
    logits_b: torch.Tensor | None = None
    maps_b: torch.Tensor | None = None
    features: torch.Tensor | None = None
    erase_classes: torch.Tensor | None = None
    spg: SPGLogits | None = None


def make_classifier(
    in_channels: int, hidden_channels: int, num_classes: int, dropout: float = 0.0
) -> nn.Sequential:
    """conv3x3 -> ReLU -> conv3x3 -> ReLU -> conv1x1 to class maps (ACoL paper: hidden 1024).

    ``dropout`` > 0 puts a dropout before each conv, as Choe et al.'s Inception-v3 CAM head does.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
        nn.ReLU(inplace=False),
        nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
        nn.ReLU(inplace=False),
        nn.Conv2d(hidden_channels, num_classes, 1),
    ]
    if dropout > 0:
        for index in (4, 2, 0):
            layers.insert(index, nn.Dropout(dropout))
    return nn.Sequential(*layers)


def normalize_maps(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min-max normalize each map over its last two dims to [0, 1]; a constant map becomes zeros."""
    flat = maps.flatten(-2)
    low = flat.min(dim=-1, keepdim=True).values.unsqueeze(-1)
    high = flat.max(dim=-1, keepdim=True).values.unsqueeze(-1)
    return (maps - low) / (high - low).clamp_min(eps)


def select_class_maps(maps: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Pick one class map per image: maps (B, K, h, w), classes (B,) -> (B, h, w)."""
    return maps[torch.arange(maps.shape[0], device=maps.device), classes]


class _SingleBranchHead(nn.Module):
    """Shared by the one-branch heads: CE loss on the logits; the map of a class is its normalized class map."""

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.logits, labels)

    def localization_maps(self, output: ModelOutput, classes: torch.Tensor) -> torch.Tensor:
        """Normalized in float32 (under bf16 autocast the class maps are bfloat16)."""
        return normalize_maps(select_class_maps(output.maps_a, classes).float())


class CAMHead(_SingleBranchHead):
    """CAM as published (Zhou et al. 2016): [conv3x3 + ReLU] -> global average pool -> fully connected.

    The class activation map of class c is the fc weights of c applied to the feature map at each position
    (plus the bias, which min-max normalization removes). ``hidden_channels=None`` omits the conv, as
    Choe et al.'s ResNet-50 CAM does (fc straight on layer4).
    """

    def __init__(self, in_channels: int, num_classes: int, hidden_channels: int | None = 1024) -> None:
        super().__init__()
        self.conv = None
        if hidden_channels is not None:
            self.conv = nn.Sequential(nn.Conv2d(in_channels, hidden_channels, 3, padding=1), nn.ReLU())
            in_channels = hidden_channels
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, features: torch.Tensor, erase_classes: torch.Tensor | None = None) -> ModelOutput:
        if self.conv is not None:
            features = self.conv(features)  # (B, C, h, w)
        logits = self.fc(features.mean(dim=(2, 3)))  # (B, K)
        maps = torch.einsum("kc,bchw->bkhw", self.fc.weight, features) + self.fc.bias[None, :, None, None]
        return ModelOutput(logits=logits, maps_a=maps, features=features)


class ConvCAMHead(_SingleBranchHead):
    """A convolutional classifier whose logits are the spatial mean of its class maps.

    Choe et al.'s Inception-v3 CAM (`InceptionCam`: two 3x3 convs of 1024 and a 1x1 conv, each after a
    dropout of 0.5) and, without dropout, ACoL's branch A alone (`BranchAHead`, an ablation).
    """

    def __init__(
        self, in_channels: int, num_classes: int, hidden_channels: int = 1024, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.classifier_a = make_classifier(in_channels, hidden_channels, num_classes, dropout)

    def forward(self, features: torch.Tensor, erase_classes: torch.Tensor | None = None) -> ModelOutput:
        maps_a = self.classifier_a(features)  # (B, K, h, w)
        return ModelOutput(logits=maps_a.mean(dim=(2, 3)), maps_a=maps_a, features=features)


class BranchAHead(ConvCAMHead):
    """ACoL without branch B (method ``acol_a``): the ablation that shows what B adds."""

    def __init__(self, in_channels: int, num_classes: int, hidden_channels: int = 1024) -> None:
        super().__init__(in_channels, num_classes, hidden_channels, dropout=0.0)


class ACoLHead(nn.Module):
    """Two parallel classifiers A and B; B sees the features with A's most discriminative region erased.

    A's map of the erasing class (min-max normalized per image) marks the positions >= erase_threshold,
    which are zeroed in the feature map before B. The erasing class is the one given (the ground truth while
    training; at inference the class whose map is wanted), else A's top-1, as in the official code
    (xiaomengyc/ACoL) and Choe et al.'s `AcolBase`. Loss = CE(A) + CE(B). The localization map of a class is
    the element-wise max of the normalized maps of A and B, B erased with that class. ``feature_pool`` adds
    the official VGG16-ACoL's 3x3 stride-1 average pool on the features before both classifiers.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden_channels: int = 1024,
        erase_threshold: float = 0.6,
        feature_pool: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 < erase_threshold <= 1.0:
            raise ValueError(f"erase_threshold must be in (0, 1], got {erase_threshold}")
        self.erase_threshold = erase_threshold
        self.feature_pool = feature_pool
        self.classifier_a = make_classifier(in_channels, hidden_channels, num_classes)
        self.classifier_b = make_classifier(in_channels, hidden_channels, num_classes)

    def erase_mask(self, maps_a: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) float mask: 0 where A's normalized map of `classes` is >= the threshold, else 1."""
        attention = normalize_maps(select_class_maps(maps_a.detach(), classes))
        return (attention < self.erase_threshold).unsqueeze(1).to(maps_a.dtype)

    def branch_b(self, features: torch.Tensor, maps_a: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """B's class maps (B, K, h, w) on `features` erased by A's map of `classes`."""
        return self.classifier_b(features * self.erase_mask(maps_a, classes))

    def forward(self, features: torch.Tensor, erase_classes: torch.Tensor | None = None) -> ModelOutput:
        if self.feature_pool:
            features = F.avg_pool2d(features, kernel_size=3, stride=1, padding=1)
        maps_a = self.classifier_a(features)  # (B, K, h, w)
        logits_a = maps_a.mean(dim=(2, 3))
        if erase_classes is None:
            erase_classes = logits_a.argmax(dim=1)
        maps_b = self.branch_b(features, maps_a, erase_classes)
        return ModelOutput(
            logits=logits_a,
            maps_a=maps_a,
            logits_b=maps_b.mean(dim=(2, 3)),
            maps_b=maps_b,
            features=features,
            erase_classes=erase_classes,
        )

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        assert output.logits_b is not None, "ACoL output must carry branch B"
        return F.cross_entropy(output.logits, labels) + F.cross_entropy(output.logits_b, labels)

    def localization_maps(self, output: ModelOutput, classes: torch.Tensor) -> torch.Tensor:
        """Fused (B, h, w) float32 maps of `classes`; B is run again, erased by `classes`, for the images it
        was not already erased by.

        Per image, so an image's map never depends on the other images' classes: call it under the
        forward's autocast, and the pass run again is the forward's B, in the same precision. (A decision for
        the whole batch ran every image again once one differed: under bf16 autocast, called outside it, that
        was a float32 B, and image 0's map changed with image 3's label.) Normalized in float32.
        """
        assert output.maps_b is not None and output.features is not None, "ACoL output must carry branch B"
        maps_b = output.maps_b
        if output.erase_classes is None or not torch.equal(output.erase_classes, classes):
            again = self.branch_b(output.features, output.maps_a, classes)
            if output.erase_classes is not None:
                same = (output.erase_classes == classes)[:, None, None, None]
                again = torch.where(same, maps_b.to(again.dtype), again)
            maps_b = again
        map_a = normalize_maps(select_class_maps(output.maps_a, classes).float())
        map_b = normalize_maps(select_class_maps(maps_b, classes).float())
        return torch.maximum(map_a, map_b)
