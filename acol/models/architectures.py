"""The registry of buildable backbone x method pairs: how each is built and its published defaults.

Why apart from the factory: `ModelSpec` resolves ``large_feature_map`` from here, and the factory builds from a
spec, so the registry sits below both (no import circle).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

from acol.models.adl import (
    ADLInceptionHead,
    ADLInceptionV3Backbone,
    ADLResNet50Backbone,
    ADLSmallBackbone,
    ADLVGG16Backbone,
)
from acol.models.backbones import (
    Backbone,
    GoogLeNetBackbone,
    InceptionV3Backbone,
    ResNet50Backbone,
    SmallBackbone,
    VGG16Backbone,
)
from acol.models.heads import ACoLHead, BranchAHead, CAMHead, ConvCAMHead
from acol.models.spg import (
    SPGHead,
    SPGInceptionV3Backbone,
    SPGResNet50Backbone,
    SPGSmallBackbone,
    SPGVGG16Backbone,
)

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "Head",
    "list_architectures",
    "list_backbones",
    "register_architecture",
]

Head = ACoLHead | CAMHead | ConvCAMHead | SPGHead


@dataclass(frozen=True)
class Architecture:
    """How one backbone x method is built: its backbone, head and published defaults (docs/models.md)."""

    backbone: Callable[..., Backbone]  # (large_feature_map, **backbone_knobs) -> backbone
    head: Callable[
        ..., Head
    ]  # (in_channels, num_classes, head_channels, erase_threshold, **head_knobs) -> head
    large_feature_map: bool  # the published default
    source: str
    backbone_knobs: tuple[str, ...] = ()  # `ModelSpec` fields passed to `backbone` by name
    head_knobs: tuple[str, ...] = ()  # `ModelSpec` fields passed to `head` by name


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


_ADL_KNOBS = ("adl_drop_rate", "adl_threshold")
_SPG_KNOBS = tuple(f"spg_threshold_{i}{level}" for i in (1, 2, 3) for level in ("h", "l"))


def _adl(backbone: Callable[..., Backbone]) -> Callable[..., Backbone]:
    def build(large: bool, adl_drop_rate: float, adl_threshold: float) -> Backbone:
        return backbone(adl_drop_rate, adl_threshold, large)

    return build


def _small_adl(large: bool, adl_drop_rate: float, adl_threshold: float) -> Backbone:
    return ADLSmallBackbone(adl_drop_rate, adl_threshold)


def _adl_inception_head(
    channels: int,
    classes: int,
    hidden: int,
    erase_threshold: float,
    adl_drop_rate: float,
    adl_threshold: float,
) -> Head:
    return ADLInceptionHead(channels, classes, hidden, adl_drop_rate, adl_threshold)


def _spg(
    backbone: type[Backbone],
    hidden: int | str | None = "head_channels",
    branch: int | str = "head_channels",
    c_channels: int | str = "head_channels",
    dropout: float = 0.0,
) -> Callable[..., Head]:
    """SPG's head for `backbone` (its ``side_channels``); widths are numbers, or "head_channels" for the
    spec's ``head_channels`` (Choe et al. fix VGG16's at 512 and Inception-v3's branches at 512)."""

    def build(
        channels: int, classes: int, head_channels: int, erase_threshold: float, **knobs: float
    ) -> Head:
        def width(value):
            return head_channels if value == "head_channels" else value

        thresholds = tuple((knobs[f"spg_threshold_{i}h"], knobs[f"spg_threshold_{i}l"]) for i in (1, 2, 3))
        return SPGHead(
            channels,
            backbone.side_channels,  # type: ignore[attr-defined]
            classes,
            width(hidden),
            width(branch),
            width(c_channels),
            thresholds,  # type: ignore[arg-type]
            dropout,
        )

    return build


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
    # ADL (Choe and Shim 2019): ADL layers in the trunk (acol/models/adl.py), each backbone's CAM head
    ("small", "adl"): Architecture(
        _small_adl, _cam(), False, "this project; ADL placed as in Choe et al. wsol/vgg.py", _ADL_KNOBS
    ),
    ("vgg16", "adl"): Architecture(
        _adl(ADLVGG16Backbone), _cam(), False, "Choe et al. wsol/vgg.py (adl config, VggCam)", _ADL_KNOBS
    ),
    ("resnet50", "adl"): Architecture(
        _adl(ADLResNet50Backbone),
        _cam(with_conv=False),
        False,
        "Choe et al. wsol/resnet.py ResNetAdl",
        _ADL_KNOBS,
    ),
    ("inception_v3", "adl"): Architecture(
        _adl(ADLInceptionV3Backbone),
        _adl_inception_head,
        False,
        "Choe et al. wsol/inception.py InceptionAdl",
        _ADL_KNOBS,
        _ADL_KNOBS,
    ),
    # SPG (Zhang et al. 2018): side branches on mid-level features and their losses (acol/models/spg.py)
    ("small", "spg"): Architecture(
        lambda large: SPGSmallBackbone(),
        _spg(SPGSmallBackbone),
        False,
        "this project; branches as Choe et al. wsol/vgg.py VggSpg",
        head_knobs=_SPG_KNOBS,
    ),
    ("vgg16", "spg"): Architecture(
        SPGVGG16Backbone,
        _spg(SPGVGG16Backbone, 512, 512, 512),
        False,
        "Choe et al. wsol/vgg.py VggSpg",
        head_knobs=_SPG_KNOBS,
    ),
    ("resnet50", "spg"): Architecture(
        SPGResNet50Backbone,
        _spg(SPGResNet50Backbone, None, 1024, 512),
        False,
        "Choe et al. wsol/resnet.py ResNetSpg",
        head_knobs=_SPG_KNOBS,
    ),
    ("inception_v3", "spg"): Architecture(
        SPGInceptionV3Backbone,
        _spg(SPGInceptionV3Backbone, "head_channels", 512, 512, dropout=0.5),
        False,
        "Choe et al. wsol/inception.py InceptionSpg",
        head_knobs=_SPG_KNOBS,
    ),
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
