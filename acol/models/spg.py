"""SPG (Zhang et al., ECCV 2018): self-produced guidance, as Choe et al. build it (`wsol/method/spg.py` and the
``Spg`` models of `wsol/vgg.py`, `wsol/resnet.py`, `wsol/inception.py`).

The classifier's class map of the true class, upsampled to the image and min-max normalized, gives seeds:
foreground above a high threshold, background below a low one, the rest ignored. Two side branches on
mid-level features (B1 on the earlier, B2 on the later, sharing their last layers) and a branch C on the
classifier's features each predict a one-channel map, trained with a BCE on seeds from a chain of guidance:
B2 on the class map's seeds, B1 on B2's (sigmoid) seeds, C on the seeds of B1 and B2's mean. Loss = CE +
the three BCEs (Choe et al.'s `main.py`). The localization map is the classifier's class map (what Choe et
al. return as the CAM), so extraction treats SPG like CAM. The side branches only shape training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from acol.models.backbones import InceptionV3Backbone, ResNet50Backbone, SmallBackbone, VGG16Backbone
from acol.models.heads import ModelOutput, SPGLogits, _SingleBranchHead, normalize_maps, select_class_maps

__all__ = [
    "IGNORE",
    "SPGFeatures",
    "SPGHead",
    "SPGInceptionV3Backbone",
    "SPGResNet50Backbone",
    "SPGSmallBackbone",
    "SPGVGG16Backbone",
    "seed_mask",
    "side_losses",
]

IGNORE = 255.0  # the seed value of a pixel no loss sees (Choe et al.'s mask fill)
MIN_FOREGROUND = 30  # pixels: fewer foreground seeds than this and the threshold becomes FALLBACK x the max
FALLBACK = 0.7

Thresholds = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]  # (high, low) x 3


@dataclass
class SPGFeatures:
    """What an SPG backbone gives its head: the inputs of B1 and B2, the classifier's input, the image size."""

    side1: torch.Tensor
    side2: torch.Tensor
    final: torch.Tensor
    image_size: tuple[int, int]


def _image_size(images: torch.Tensor) -> tuple[int, int]:
    return int(images.shape[-2]), int(images.shape[-1])


class SPGSmallBackbone(SmallBackbone):
    """The small backbone; B1 on its first 1x1 block, B2 on its last (as VGG16's conv4 and conv5 blocks)."""

    side_channels = (128, 128)

    def __init__(self) -> None:
        super().__init__()

    def forward(self, images: torch.Tensor) -> SPGFeatures:  # type: ignore[override]
        side1 = self.features[:11](images)
        side2 = self.features[11:](side1)
        return SPGFeatures(side1, side2, side2, _image_size(images))


class SPGVGG16Backbone(VGG16Backbone):
    """Choe et al.'s ``VggSpg`` trunk: 2x2 pools 1-3, conv4 block, a 3x3 stride-2 pad-1 pool (none with
    ``large_feature_map``), conv5 block, no pool 5. B1 after that pool, B2 (and the classifier) on conv5_3."""

    side_channels = (512, 512)

    def __init__(self, large_feature_map: bool = False) -> None:
        super().__init__("cam", large_feature_map)
        self.features[23] = nn.Identity() if large_feature_map else nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, images: torch.Tensor) -> SPGFeatures:  # type: ignore[override]
        side1 = self.features[:24](images)
        side2 = self.features[24:](side1)
        return SPGFeatures(side1, side2, side2, _image_size(images))


class SPGResNet50Backbone(ResNet50Backbone):
    """Choe et al.'s ``ResNetSpg`` trunk: B1 on layer3's first block, B2 on layer3, the classifier on layer4."""

    side_channels = (1024, 1024)

    def forward(self, images: torch.Tensor) -> SPGFeatures:  # type: ignore[override]
        body = self.body
        x = body.layer2(body.layer1(body.maxpool(body.relu(body.bn1(body.conv1(images))))))
        side1 = body.layer3[0](x)
        side2 = body.layer3[1:](side1)
        return SPGFeatures(side1, side2, body.layer4(side2), _image_size(images))


class SPGInceptionV3Backbone(InceptionV3Backbone):
    """Choe et al.'s ``InceptionSpg`` trunk: B1 on Mixed_5d (after its pool), B2 on Mixed_6d (their code feeds
    B2 the input of Mixed_6e, not its output), the classifier on Mixed_6e."""

    side_channels = (288, 768)

    def forward(self, images: torch.Tensor) -> SPGFeatures:  # type: ignore[override]
        side1 = self.pool_5d(self.through_5d(images))
        side2 = self.through_6d(side1)
        return SPGFeatures(side1, side2, self.Mixed_6e(side2), _image_size(images))


def _conv_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=False)]


class SPGHead(_SingleBranchHead):
    """The classifier (optional two 3x3 convs, then a 1x1 conv to class maps; logits their spatial mean) and
    SPG's branches B1, B2 (a 3x3 conv each, then shared 3x3 and 1x1 convs) and C (3x3, 1x1 on the
    classifier's features). ``dropout`` > 0 puts a dropout before each of the classifier's convs and after
    the last, as Choe et al.'s Inception-v3 SPG; ``hidden_channels=None`` omits the 3x3 convs (ResNet-50).
    """

    def __init__(
        self,
        in_channels: int,
        side_channels: tuple[int, int],
        num_classes: int,
        hidden_channels: int | None,
        branch_channels: int,
        c_channels: int,
        thresholds: Thresholds,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        trunk: list[nn.Module] = []
        if hidden_channels is not None:
            trunk = [*_conv_relu(in_channels, hidden_channels), *_conv_relu(hidden_channels, hidden_channels)]
            in_channels = hidden_channels
            if dropout > 0:
                for index in (4, 2, 0):
                    trunk.insert(index, nn.Dropout(dropout))
        if dropout > 0:
            trunk.append(nn.Dropout(dropout))
        self.trunk = nn.Sequential(*trunk)
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)
        self.branch_b1 = nn.Sequential(*_conv_relu(side_channels[0], branch_channels))
        self.branch_b2 = nn.Sequential(*_conv_relu(side_channels[1], branch_channels))
        self.branch_shared = nn.Sequential(
            *_conv_relu(branch_channels, branch_channels), nn.Conv2d(branch_channels, 1, 1)
        )
        self.branch_c = nn.Sequential(*_conv_relu(in_channels, c_channels), nn.Conv2d(c_channels, 1, 1))
        self.thresholds = thresholds

    def forward(self, features: SPGFeatures, erase_classes: torch.Tensor | None = None) -> ModelOutput:
        b1 = self.branch_shared(self.branch_b1(features.side1))
        b2 = self.branch_shared(self.branch_b2(features.side2))
        x = self.trunk(features.final)
        maps = self.classifier(x)  # (B, K, h, w)
        side = SPGLogits(b1=b1, b2=b2, c=self.branch_c(x), image_size=features.image_size)
        return ModelOutput(logits=maps.mean(dim=(2, 3)), maps_a=maps, features=x, spg=side)

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        """CE + the three SPG losses, summed as Choe et al.'s `spg.get_loss`."""
        return F.cross_entropy(output.logits, labels) + sum(side_losses(output, labels, self.thresholds))


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, H, W), bilinear as Choe et al.'s ``nn.Upsample`` (align_corners False)."""
    return F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)


def seed_mask(attention: torch.Tensor, high: float, low: float) -> torch.Tensor:
    """Seeds (B, H, W) of attention maps (B, H, W): 1 above `high`, 0 below `low`, else `IGNORE`.

    An image with fewer than 30 pixels above `high` takes those above 0.7 x its maximum instead (Choe et
    al.'s ``mask_fg``); background wins where both hold (``mask_bg`` runs last).
    """
    foreground = attention > high
    few = foreground.flatten(1).sum(dim=1) < MIN_FOREGROUND
    peak = attention.flatten(1).amax(dim=1)
    fallback = attention > (FALLBACK * peak)[:, None, None]
    foreground = torch.where(few[:, None, None], fallback, foreground)
    seeds = torch.full_like(attention, IGNORE)
    seeds = torch.where(foreground, torch.ones_like(seeds), seeds)
    return torch.where(attention < low, torch.zeros_like(seeds), seeds)


def _seeded_bce(logits: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits of upsampled one-channel `logits` (B, H, W) over the seeds that are not ignored.

    A weighted mean rather than indexing, so no host sync; 0 if every pixel is ignored.
    """
    keep = (seeds != IGNORE).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, seeds.clamp(max=1.0), reduction="none")
    return (loss * keep).sum() / keep.sum().clamp_min(1.0)


def side_losses(
    output: ModelOutput, labels: torch.Tensor, thresholds: Thresholds
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The losses of B2 (seeds of the class map of `labels`), B1 (seeds of B2) and C (seeds of B1 and B2's
    mean), with `thresholds` ((high, low) of each, in that order); every seed comes from detached maps."""
    assert output.spg is not None, "SPG output must carry its side branches"
    side, size = output.spg, output.spg.image_size
    (high1, low1), (high2, low2), (high3, low3) = thresholds
    class_map = _upsample(select_class_maps(output.maps_a.detach(), labels)[:, None], size)[:, 0]
    attention = normalize_maps(class_map)
    logits_b1, logits_b2, logits_c = (_upsample(x, size)[:, 0] for x in (side.b1, side.b2, side.c))
    prob_b1, prob_b2 = torch.sigmoid(logits_b1.detach()), torch.sigmoid(logits_b2.detach())
    return (
        _seeded_bce(logits_b2, seed_mask(attention, high1, low1)),
        _seeded_bce(logits_b1, seed_mask(prob_b2, high2, low2)),
        _seeded_bce(logits_c, seed_mask((prob_b1 + prob_b2) / 2, high3, low3)),
    )
