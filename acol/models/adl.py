"""ADL (Choe and Shim, CVPR 2019): attention-based dropout layers inserted into the backbone.

Each layer takes the channel mean of its input as a self-attention map and, while training, multiplies the
input by one of two maps, chosen per batch: with probability ``drop_rate`` the drop mask (0 where the
attention is at least ``threshold`` times the image's maximum, so the most discriminative part is hidden),
else the importance map (the attention's sigmoid, which rewards it). At evaluation it is the identity.
Positions and heads follow Choe et al. `wsol/vgg.py`, `wsol/resnet.py`, `wsol/inception.py` (``adl``); the
layers have no parameters, so the backbones keep the state-dict keys (and torchvision remaps) of their base.
"""

from __future__ import annotations

import torch
from torch import nn

from acol.models.backbones import InceptionV3Backbone, ResNet50Backbone, SmallBackbone, VGG16Backbone
from acol.models.heads import ConvCAMHead

__all__ = [
    "ADL",
    "ADLInceptionHead",
    "ADLInceptionV3Backbone",
    "ADLResNet50Backbone",
    "ADLSmallBackbone",
    "ADLVGG16Backbone",
]


class ADL(nn.Module):
    """The attention-based dropout layer (Choe et al. `wsol/method/adl.py`); identity in eval mode."""

    def __init__(self, drop_rate: float, threshold: float) -> None:
        super().__init__()
        if not 0.0 <= drop_rate <= 1.0:
            raise ValueError(f"adl_drop_rate must be in [0, 1], got {drop_rate}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"adl_threshold must be in [0, 1], got {threshold}")
        self.drop_rate = drop_rate
        self.threshold = threshold

    @staticmethod
    def attention(x: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) channel mean of `x`."""
        return x.mean(dim=1, keepdim=True)

    def drop_mask(self, attention: torch.Tensor) -> torch.Tensor:
        """1 where the attention is below ``threshold`` x its per-image maximum, else 0."""
        peak = attention.flatten(1).amax(dim=1)[:, None, None, None]
        return (attention < self.threshold * peak).to(attention.dtype)

    @staticmethod
    def importance_map(attention: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(attention)

    def drops(self) -> bool:
        """One draw from torch's global generator: the drop mask with probability ``drop_rate``.

        As the published layer: floor(u + rate) with u uniform in [0, 1) is 1 exactly when u >= 1 - rate.
        """
        return bool(torch.rand(()) + self.drop_rate >= 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        attention = self.attention(x)
        if self.drops():
            return x * self.drop_mask(attention)
        return x * self.importance_map(attention)

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, threshold={self.threshold}"


class ADLSmallBackbone(SmallBackbone):
    """The small backbone with ADL where VGG16-ADL has it, transposed: after the last pool (VGG16: pool 3),
    after the first 1x1 block (conv4_3) and after the last (conv5_3). Each replaces a parameter-free layer by
    that layer and an ADL, so the keys do not move."""

    def __init__(self, drop_rate: float, threshold: float, width: int = 32) -> None:
        super().__init__(width)
        for index in (7, 10, 13):  # pool 2, the ReLUs of the two 1x1 blocks
            self.features[index] = nn.Sequential(self.features[index], ADL(drop_rate, threshold))


class ADLVGG16Backbone(VGG16Backbone):
    """VGG16-CAM's trunk (2x2 pools 1-4, no pool 5; no pool 4 with ``large_feature_map``) with ADL after
    pool 3, after conv4_3 (before pool 4) and after conv5_3: Choe et al.'s ``adl`` configs of `wsol/vgg.py`."""

    def __init__(self, drop_rate: float, threshold: float, large_feature_map: bool = False) -> None:
        super().__init__("cam", large_feature_map)
        features = self.features
        features[16] = nn.Sequential(features[16], ADL(drop_rate, threshold))  # after pool 3
        features[23] = nn.Sequential(
            ADL(drop_rate, threshold), features[23]
        )  # conv4_3, then pool 4 (or none)
        features[30] = ADL(drop_rate, threshold)  # after conv5_3 (pool 5 is dropped)


# Choe et al.'s _ADL_POSITION: an ADL after these blocks of layer3 and layer4.
_RESNET_ADL_AFTER: dict[str, tuple[int, ...]] = {"layer3": (0,), "layer4": (0, 2)}


class ADLResNet50Backbone(ResNet50Backbone):
    """Choe et al.'s ``ResNetAdl``: ADL after block 0 of layer3 and blocks 0 and 2 of layer4. The layers sit
    in ``adl`` (no parameters), applied between the blocks, so the keys stay torchvision's."""

    def __init__(self, drop_rate: float, threshold: float, large_feature_map: bool = False) -> None:
        super().__init__(large_feature_map)
        self.adl = nn.ModuleDict(
            {f"{layer}_{block}": ADL(drop_rate, threshold) for layer, blocks in _RESNET_ADL_AFTER.items()
             for block in blocks}
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for name, module in self.body.named_children():
            after = _RESNET_ADL_AFTER.get(name)
            if after is None:
                x = module(x)
                continue
            for index, block in enumerate(module):
                x = block(x)
                if index in after:
                    x = self.adl[f"{name}_{index}"](x)
        return x


class ADLInceptionV3Backbone(InceptionV3Backbone):
    """Choe et al.'s ``InceptionAdl`` trunk: ADL after Mixed_5d (before its pool) and after Mixed_6e."""

    def __init__(self, drop_rate: float, threshold: float, large_feature_map: bool = False) -> None:
        super().__init__(large_feature_map)
        self.adl_5d = ADL(drop_rate, threshold)
        self.adl_6e = ADL(drop_rate, threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool_5d(self.adl_5d(self.through_5d(x)))
        return self.adl_6e(self.Mixed_6e(self.through_6d(x)))


class ADLInceptionHead(ConvCAMHead):
    """Choe et al.'s ``InceptionAdl`` head: conv3x3, ReLU, conv3x3, ReLU, ADL, conv1x1 to class maps; no
    dropout (their Inception CAM head has it, their ADL head does not)."""

    def __init__(
        self, in_channels: int, num_classes: int, hidden_channels: int, drop_rate: float, threshold: float
    ) -> None:
        super().__init__(in_channels, num_classes, hidden_channels, dropout=0.0)
        self.classifier_a.insert(4, ADL(drop_rate, threshold))
