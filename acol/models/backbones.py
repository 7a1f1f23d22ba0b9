"""Backbones: each maps images (B, 3, H, W) to a feature map (B, C, h, w) for the WSOL heads.

Each published backbone is built on torchvision's layers, changed only where the paper or the reference code
changes them (pool strides, paddings), so that torchvision's ImageNet state dict loads through one named
key-remapping function per backbone (`remap_vgg16`, `remap_resnet50`, `remap_inception_v3`,
`remap_googlenet`). `large_feature_map` selects the 28x28 variant (at 224 input) where the reference code
has one; docs/models.md tabulates every variant, its source and its map size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

__all__ = [
    "Backbone",
    "SmallBackbone",
    "VGG16Backbone",
    "ResNet50Backbone",
    "InceptionV3Backbone",
    "GoogLeNetBackbone",
    "remap_vgg16",
    "remap_resnet50",
    "remap_inception_v3",
    "remap_googlenet",
]

StateDict = Mapping[str, torch.Tensor]


class Backbone(nn.Module):
    """A feature extractor with a known number of output channels and total stride."""

    out_channels: int
    stride: int
    remap: Callable[[StateDict], dict[str, torch.Tensor]] | None = None  # torchvision keys -> ours

    def remap_torchvision_keys(self, state_dict: StateDict) -> dict[str, torch.Tensor]:
        """Keep the keys of a torchvision classifier's state dict that this backbone owns, renamed to ours."""
        if type(self).remap is None:
            raise NotImplementedError(f"{type(self).__name__} has no torchvision weights")
        return type(self).remap(state_dict)  # type: ignore[misc]


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallBackbone(Backbone):
    """A small CNN (stride 4, receptive field 10 px) that trains in minutes on a CPU: the synthetic default.

    64x64 images give 16x16 feature maps. The receptive field is kept narrow on purpose (two 3x3 convs, then
    1x1 convs): with the earlier 6-conv design (32 px, half the image) every cell next to an erased part still
    saw the part, so ACoL's branch B classified from the part's halo instead of the rest of the object
    (docs/synthetic.md, "The receptive field").
    """

    stride = 4
    receptive_field = 10  # px: 3x3 conv (3) -> pool (4) -> 3x3 conv at stride 2 (8) -> pool (10); 1x1 adds 0

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.out_channels = 4 * width
        self.features = nn.Sequential(
            *_conv_bn_relu(3, width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(2 * width, 4 * width, kernel_size=1),
            *_conv_bn_relu(4 * width, 4 * width, kernel_size=1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


def _keep_prefixed(state_dict: StateDict, names: tuple[str, ...], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{key}": value for key, value in state_dict.items() if key.split(".")[0] in names}


def remap_vgg16(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """torchvision vgg16 -> VGG16Backbone: the conv layers keep their names (`features.<i>`), fc layers go."""
    return {key: value for key, value in state_dict.items() if key.startswith("features.")}


# Indices of the five max-pools in torchvision's vgg16().features.
_VGG16_POOLS = (4, 9, 16, 23, 30)


class VGG16Backbone(Backbone):
    """VGG16's 13 conv layers (torchvision's, so its ImageNet weights load) with the pools of a WSOL variant.

    - ``style="acol"``: the official ACoL model (xiaomengyc/ACoL `vgg_v1.py`, config ``D1``): pools 1-3 are
      3x3 stride 2 padding 1, pools 4 and 5 are 3x3 stride 1 padding 1: 28x28 at 224. With
      ``large_feature_map=False`` pool 4 is stride 2 as well (14x14), Choe et al.'s ACoL ``14x14`` config.
    - ``style="cam"``: CAM (Zhou et al. 2016; Choe et al.'s ``VggCam``): torchvision's 2x2 pools 1-4 and no
      pool 5: 14x14 at 224; ``large_feature_map=True`` also drops pool 4 (28x28), Choe et al.'s ``28x28``.
    A dropped pool becomes `nn.Identity`, so the conv layers keep torchvision's indices.
    """

    out_channels = 512
    remap = staticmethod(remap_vgg16)

    def __init__(self, style: str = "acol", large_feature_map: bool = True) -> None:
        super().__init__()
        features = torchvision.models.vgg16(weights=None).features
        if style == "acol":
            pools: list[nn.Module] = [nn.MaxPool2d(3, stride=2, padding=1) for _ in range(3)]
            pool4 = nn.MaxPool2d(3, stride=1 if large_feature_map else 2, padding=1)
            pools += [pool4, nn.MaxPool2d(3, stride=1, padding=1)]
        elif style == "cam":
            pools = [nn.MaxPool2d(2, stride=2) for _ in range(3)]
            pools += [nn.Identity() if large_feature_map else nn.MaxPool2d(2, stride=2), nn.Identity()]
        else:
            raise ValueError(f"unknown VGG16 style {style!r}; choose 'acol' or 'cam'")
        for index, pool in zip(_VGG16_POOLS, pools, strict=True):
            features[index] = pool
        self.features = features
        self.stride = 8 if large_feature_map else 16

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


_RESNET_NAMES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def remap_resnet50(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """torchvision resnet50 -> ResNet50Backbone: the trunk under ``body.``, the fc layer goes."""
    return _keep_prefixed(state_dict, _RESNET_NAMES, "body.")


def _first_block_stride_one(layer: nn.Sequential) -> None:
    block = layer[0]
    block.conv2.stride = (1, 1)  # torchvision (v1.5) strides in the 3x3 conv, as Choe et al.'s Bottleneck
    block.downsample[0].stride = (1, 1)


class ResNet50Backbone(Backbone):
    """ResNet-50 as Choe et al. 2020 build it (`wsol/resnet.py`): layer4 at stride 1 (14x14 at 224);
    ``large_feature_map=True`` sets layer3 to stride 1 too (28x28)."""

    out_channels = 2048
    remap = staticmethod(remap_resnet50)

    def __init__(self, large_feature_map: bool = False) -> None:
        super().__init__()
        resnet = torchvision.models.resnet50(weights=None)
        _first_block_stride_one(resnet.layer4)
        if large_feature_map:
            _first_block_stride_one(resnet.layer3)
        self.body = nn.Sequential(OrderedDict((name, getattr(resnet, name)) for name in _RESNET_NAMES))
        self.stride = 8 if large_feature_map else 16

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


_INCEPTION_NAMES = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
)  # fmt: skip


def remap_inception_v3(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """torchvision inception_v3 -> InceptionV3Backbone: up to Mixed_6e; Mixed_7*, AuxLogits and fc go."""
    return _keep_prefixed(state_dict, _INCEPTION_NAMES, "")


class _InceptionBStride1(nn.Module):
    """torchvision's InceptionB (Mixed_6a) at stride 1, padding 1, as Choe et al.'s ``InceptionB(288, 3, 1, 1)``.

    It owns torchvision's branch modules under their own names, so Mixed_6a's weights load unchanged.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.branch3x3 = block.branch3x3
        self.branch3x3dbl_1 = block.branch3x3dbl_1
        self.branch3x3dbl_2 = block.branch3x3dbl_2
        self.branch3x3dbl_3 = block.branch3x3dbl_3
        for conv in (self.branch3x3.conv, self.branch3x3dbl_3.conv):
            conv.stride, conv.padding = (1, 1), (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch3x3(x), double, pooled], 1)


class InceptionV3Backbone(Backbone):
    """Inception-v3 up to Mixed_6e (768 channels) as Choe et al. 2020 build it (`wsol/inception.py`).

    Changes to torchvision's layers: Conv2d_1a padding 1; both stem max-pools 3x3 stride 2 padding 1 with
    ceil mode; Mixed_6a at stride 1 padding 1; a 3x3 stride-2 ceil-mode max-pool after Mixed_5d unless
    ``large_feature_map`` (14x14 at 224, or 28x28 without it).
    """

    out_channels = 768
    remap = staticmethod(remap_inception_v3)

    def __init__(self, large_feature_map: bool = False) -> None:
        super().__init__()
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
        net.Conv2d_1a_3x3.conv.padding = (1, 1)
        for name in _INCEPTION_NAMES:
            setattr(self, name, getattr(net, name))
        self.Mixed_6a = _InceptionBStride1(net.Mixed_6a)
        self.large_feature_map = large_feature_map
        self.stride = 8 if large_feature_map else 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.Mixed_6e(self.through_6d(self.pool_5d(self.through_5d(x))))

    # The forward in three stages, so that ADL and SPG (acol/models/adl.py, spg.py) can act between them.
    def through_5d(self, x: torch.Tensor) -> torch.Tensor:
        """The stem and Mixed_5b-5d (288 channels)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
        return self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))

    def pool_5d(self, x: torch.Tensor) -> torch.Tensor:
        """The 3x3 stride-2 pool after Mixed_5d, unless ``large_feature_map``."""
        if self.large_feature_map:
            return x
        return F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)

    def through_6d(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_6a-6d (768 channels); Mixed_6e follows."""
        return self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x))))


_GOOGLENET_NAMES = (
    "conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
    "inception4a", "inception4b", "inception4c", "inception4d", "inception4e",
)  # fmt: skip


def remap_googlenet(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """torchvision googlenet -> GoogLeNetBackbone: up to inception4e; inception5*, aux heads and fc go."""
    return _keep_prefixed(state_dict, _GOOGLENET_NAMES, "body.")


class GoogLeNetBackbone(Backbone):
    """GoogLeNet (Inception-v1, torchvision's) up to inception4e (832 channels), for GoogLeNet-ACoL and -CAM.

    The layers after inception4e are removed (as CAM, Zhou et al. 2016, does for GoogLeNet): 14x14 at 224.
    ``large_feature_map=True`` makes maxpool3 (before inception4a) 3x3 stride 1 padding 1, the same change the
    official ACoL code makes to VGG16's pool4: 28x28 at 224. Inputs are ImageNet-normalized; as torchvision
    does for its ImageNet GoogLeNet weights (``transform_input=True``), they are mapped to the normalization
    those weights were trained with. See docs/models.md for what the ACoL paper leaves open.
    """

    out_channels = 832
    remap = staticmethod(remap_googlenet)

    def __init__(self, large_feature_map: bool = True) -> None:
        super().__init__()
        net = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
        if large_feature_map:
            net.maxpool3 = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)
        self.body = nn.Sequential(OrderedDict((name, getattr(net, name)) for name in _GOOGLENET_NAMES))
        self.stride = 8 if large_feature_map else 16

    @staticmethod
    def transform_input(x: torch.Tensor) -> torch.Tensor:
        """torchvision GoogLeNet's input transform: ImageNet mean/std normalization -> (x - 0.5) / 0.5."""
        mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return (x * std + mean - 0.5) / 0.5

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self.transform_input(images))
