"""The registry of buildable backbone x method pairs: how each is built and its published defaults.

Why apart from the factory: `ModelSpec` resolves ``large_feature_map`` from here, and the factory builds from a
spec, so the registry sits below both (no import circle).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

from acol.models.backbones import (
    Backbone,
    GoogLeNetBackbone,
    InceptionV3Backbone,
    ResNet50Backbone,
    SmallBackbone,
    VGG16Backbone,
)
from acol.models.heads import ACoLHead, BranchAHead, CAMHead, ConvCAMHead

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "Head",
    "list_architectures",
    "list_backbones",
    "register_architecture",
]

Head = ACoLHead | CAMHead | ConvCAMHead


@dataclass(frozen=True)
class Architecture:
    """How one backbone x method is built: its backbone, head and published defaults (docs/models.md)."""

    backbone: Callable[[bool], Backbone]  # large_feature_map -> backbone
    head: Callable[..., Head]  # (in_channels, num_classes, head_channels, erase_threshold) -> head
    large_feature_map: bool  # the published default
    source: str


def _acol(feature_pool: bool = False) -> Callable[..., Head]:
    def build(channels: int, classes: int, hidden: int, erase_threshold: float) -> Head:
        return ACoLHead(channels, classes, hidden, erase_threshold, feature_pool=feature_pool)

    return build


def _cam(with_conv: bool = True) -> Callable[..., Head]:
    def build(channels: int, classes: int, hidden: int, erase_threshold: float) -> Head:
        return CAMHead(channels, classes, hidden if with_conv else None)

    return build


def _conv_cam(dropout: float) -> Callable[..., Head]:
    def build(channels: int, classes: int, hidden: int, erase_threshold: float) -> Head:
        return ConvCAMHead(channels, classes, hidden, dropout)

    return build


def _branch_a(channels: int, classes: int, hidden: int, erase_threshold: float) -> Head:
    return BranchAHead(channels, classes, hidden)


def _small(large: bool) -> Backbone:
    return SmallBackbone()


_OFFICIAL = "xiaomengyc/ACoL models/vgg/vgg_v1.py (config D1)"
ARCHITECTURES: dict[tuple[str, str], Architecture] = {
    ("small", "acol"): Architecture(_small, _acol(), False, "this project (CPU default)"),
    ("small", "cam"): Architecture(_small, _cam(), False, "this project; head as Zhou et al. 2016"),
    ("small", "acol_a"): Architecture(_small, _branch_a, False, "this project (ablation)"),
    ("vgg16", "acol"): Architecture(
        lambda large: VGG16Backbone("acol", large), _acol(feature_pool=True), True, _OFFICIAL
    ),
    ("vgg16", "cam"): Architecture(
        lambda large: VGG16Backbone("cam", large), _cam(), False, "Zhou et al. 2016; Choe et al. VggCam"
    ),
    ("vgg16", "acol_a"): Architecture(
        lambda large: VGG16Backbone("acol", large), _branch_a, True, f"{_OFFICIAL}, branch A only"
    ),
    ("resnet50", "acol"): Architecture(
        ResNet50Backbone, _acol(), False, "Choe et al. wsol/resnet.py ResNetAcol"
    ),
    ("resnet50", "cam"): Architecture(
        ResNet50Backbone, _cam(with_conv=False), False, "Choe et al. wsol/resnet.py ResNetCam"
    ),
    ("inception_v3", "acol"): Architecture(
        InceptionV3Backbone, _acol(), False, "Choe et al. wsol/inception.py InceptionAcol"
    ),
    ("inception_v3", "cam"): Architecture(
        InceptionV3Backbone, _conv_cam(dropout=0.5), False, "Choe et al. wsol/inception.py InceptionCam"
    ),
    ("googlenet", "acol"): Architecture(GoogLeNetBackbone, _acol(), True, "ACoL paper (GoogLeNet-ACoL)"),
    ("googlenet", "cam"): Architecture(GoogLeNetBackbone, _cam(), False, "Zhou et al. 2016 (GoogLeNet-GAP)"),
}


def _cam_trained_by(method: str, file: str) -> None:
    """HaS and CutMix change the training images, not the network: each backbone's CAM architecture, as Choe et
    al.'s ``config.py`` builds ``architecture_type = 'cam'`` for them (`file`: their method's source)."""
    for (backbone, name), cam in list(ARCHITECTURES.items()):
        if name == "cam":
            source = f"Choe et al. wsol/method/{file} on the CAM network ({cam.source})"
            ARCHITECTURES[(backbone, method)] = Architecture(
                cam.backbone, cam.head, cam.large_feature_map, source
            )


_cam_trained_by("has", "has.py")
_cam_trained_by("cutmix", "cutmix.py")


def list_backbones() -> list[str]:
    return sorted({backbone for backbone, _ in ARCHITECTURES})


def list_architectures() -> list[str]:
    """Every buildable ``backbone-method`` pair."""
    return sorted(f"{backbone}-{method}" for backbone, method in ARCHITECTURES)


def register_architecture(backbone: str, method: str, architecture: Architecture) -> None:
    """Add a backbone x method; registering a pair twice replaces it, with a warning."""
    if (backbone, method) in ARCHITECTURES:
        warnings.warn(
            f"architecture {backbone}-{method} registered again; the new one replaces it", stacklevel=2
        )
    ARCHITECTURES[(backbone, method)] = architecture
