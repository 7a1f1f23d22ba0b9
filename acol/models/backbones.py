"""Backbones: each maps images (B, 3, H, W) to a feature map (B, C, h, w) for the WSOL heads.

Each backbone is registered by name (see `acol.models.factory`) and declares how to map a torchvision
state dict onto its own parameters, so that ImageNet weights saved from torchvision load from a local file.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping

import torch
import torchvision
from torch import nn

__all__ = ["Backbone", "SmallBackbone", "VGG16Backbone", "ResNet50Backbone", "InceptionV3Backbone"]


class Backbone(nn.Module):
    """A feature extractor with a known number of output channels and total stride."""

    out_channels: int
    stride: int

    def remap_torchvision_keys(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keep the keys of a torchvision classifier's state dict that this backbone owns, renamed to ours."""
        raise NotImplementedError(f"{type(self).__name__} has no torchvision weights")


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallBackbone(Backbone):
    """A small CNN (stride 4) that trains in minutes on a CPU: the synthetic default and the tests.

    64x64 images give 16x16 feature maps, fine enough for erasing to remove a small object part.
    """

    stride = 4

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.out_channels = 4 * width
        self.features = nn.Sequential(
            *_conv_bn_relu(3, width),
            *_conv_bn_relu(width, width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(width, 2 * width),
            *_conv_bn_relu(2 * width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(2 * width, 4 * width),
            *_conv_bn_relu(4 * width, 4 * width),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


# Indices of the max-pools in torchvision's vgg16().features; the ACoL paper keeps conv5 at 1/8 resolution.
_VGG16_POOL4, _VGG16_POOL5 = 23, 30


class VGG16Backbone(Backbone):
    """VGG16 conv layers as in the ACoL paper: pool4 and pool5 become 3x3 stride-1 pools (28x28 at 224 input).

    Parameter names are torchvision's (`features.<i>.weight`), so its ImageNet state dict loads unchanged.
    """

    out_channels = 512
    stride = 8

    def __init__(self) -> None:
        super().__init__()
        features = torchvision.models.vgg16(weights=None).features
        for index in (_VGG16_POOL4, _VGG16_POOL5):
            features[index] = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.features = features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def remap_torchvision_keys(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value for key, value in state_dict.items() if key.startswith("features.")}


def _children(model: nn.Module, names: tuple[str, ...]) -> nn.Sequential:
    return nn.Sequential(OrderedDict((name, getattr(model, name)) for name in names))


class ResNet50Backbone(Backbone):
    """ResNet-50 trunk as used for WSOL by Choe et al. 2020: layer4 at stride 1 (14x14 maps at 224 input)."""

    out_channels = 2048
    stride = 16
    _names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

    def __init__(self) -> None:
        super().__init__()
        resnet = torchvision.models.resnet50(weights=None)
        first_block = resnet.layer4[0]
        first_block.conv2.stride = (1, 1)
        first_block.downsample[0].stride = (1, 1)
        self.body = _children(resnet, self._names)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def remap_torchvision_keys(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {f"body.{key}": value for key, value in state_dict.items() if key.split(".")[0] in self._names}


class InceptionV3Backbone(Backbone):
    """Inception-v3 trunk up to Mixed_6e (768 channels; 12x12 maps at 224 input, 17x17 at 299).

    Choe et al. 2020 also change strides to reach 28x28; this trunk keeps torchvision's layers unchanged so that
    its weights load as they are.
    """

    out_channels = 768
    stride = 18
    _names = (
        "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
        "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        inception = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
        self.body = _children(inception, self._names)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def remap_torchvision_keys(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {f"body.{key}": value for key, value in state_dict.items() if key.split(".")[0] in self._names}


BACKBONES: dict[str, Callable[[], Backbone]] = {
    "small": SmallBackbone,
    "vgg16": VGG16Backbone,
    "resnet50": ResNet50Backbone,
    "inception_v3": InceptionV3Backbone,
}
