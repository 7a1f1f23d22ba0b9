"""Build WSOL models by name, load local weights safely, and split parameters for the head learning rate."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from acol.errors import UserError
from acol.models.backbones import (
    Backbone,
    GoogLeNetBackbone,
    InceptionV3Backbone,
    ResNet50Backbone,
    SmallBackbone,
    VGG16Backbone,
)
from acol.models.heads import ACoLHead, BranchAHead, CAMHead, ConvCAMHead, ModelOutput

__all__ = [
    "ARCHITECTURES",
    "METHODS",
    "Architecture",
    "WeightsError",
    "WSOLModel",
    "build_model",
    "list_architectures",
    "list_backbones",
    "register_architecture",
    "load_backbone_weights",
    "load_model_weights",
    "model_kwargs",
    "param_groups",
]

METHODS: tuple[str, ...] = ("acol", "cam", "acol_a")
"""ACoL, the CAM baseline as published, and ACoL's branch A alone (an ablation)."""


class WeightsError(UserError, ValueError):
    """A weights or checkpoint file that cannot be used, with the file named in the message."""


Head = ACoLHead | CAMHead | ConvCAMHead


class WSOLModel(nn.Module):
    """A backbone and a WSOL head; `forward` returns a `ModelOutput`, maps come from `localization_maps`."""

    def __init__(self, backbone: Backbone, head: Head) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        """images (B, 3, H, W); labels (B,), when given, drive ACoL's erasing (A's top-1 otherwise)."""
        return self.head(self.backbone(images), labels)

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        return self.head.loss(output, labels)

    def localization_maps(self, output: ModelOutput, classes: torch.Tensor) -> torch.Tensor:
        """Normalized (B, h, w) maps in [0, 1] of one class per image (ACoL: fused A/B, B erased by it)."""
        return self.head.localization_maps(output, classes)


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


def build_model(
    name: str,
    num_classes: int,
    method: str = "acol",
    *,
    head_channels: int = 1024,
    erase_threshold: float = 0.6,
    large_feature_map: bool | None = None,
    backbone_weights: str | Path | None = None,
) -> WSOLModel:
    """Build `method` on backbone `name` (see `ARCHITECTURES`); optionally load backbone weights from a file.

    ``large_feature_map=None`` takes the published default of that architecture (docs/models.md).
    """
    if (name, method) not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture backbone={name!r} method={method!r}; choose one of {list_architectures()}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    spec = ARCHITECTURES[(name, method)]
    backbone = spec.backbone(spec.large_feature_map if large_feature_map is None else large_feature_map)
    if backbone_weights is not None:
        load_backbone_weights(backbone, backbone_weights)
    head = spec.head(backbone.out_channels, num_classes, head_channels, erase_threshold)
    return WSOLModel(backbone, head)


def model_kwargs(model_section: Mapping[str, Any], method: str, num_classes: int) -> dict[str, Any]:
    """`build_model` arguments from a ``model`` params section (a dict or `ModelParams.model_dump()`).

    The one place that turns params into an architecture, so training, extraction and re-evaluation build
    the same network from the same section. Backbone weights are not included: a trained state dict has them.
    """
    return {
        "name": model_section["backbone"],
        "num_classes": num_classes,
        "method": method,
        "head_channels": int(model_section.get("head_channels", 1024)),
        "erase_threshold": float(model_section.get("erase_threshold", 0.6)),
        "large_feature_map": model_section.get("large_feature_map"),
    }


def _load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict with `weights_only=True`; anything else is a `WeightsError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, pickle of arbitrary objects, not a torch file...
        raise WeightsError(f"cannot read weights file {path}: {type(error).__name__}: {error}") from error
    if isinstance(loaded, Mapping) and "model" in loaded and isinstance(loaded["model"], Mapping):
        loaded = loaded["model"]  # a training checkpoint {"model": ..., "optimizer": ...}
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors (got {type(loaded).__name__})")
    return dict(loaded)


def _load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not match the {what}: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    mismatched = [k for k, v in state_dict.items() if v.shape != own[k].shape]
    if mismatched:
        key = mismatched[0]
        raise WeightsError(
            f"{path} does not match the {what}: {len(mismatched)} tensors of another shape, e.g. {key} is "
            f"{tuple(state_dict[key].shape)} in the file and {tuple(own[key].shape)} in the model"
            " (another class count or architecture?)"
        )
    module.load_state_dict(state_dict)


def load_backbone_weights(backbone: Backbone, path: str | Path) -> None:
    """Load a torchvision classifier state dict (e.g. ImageNet VGG16) into `backbone` from a local file."""
    state_dict = backbone.remap_torchvision_keys(_load_state_dict_file(path))
    _load_strict(backbone, state_dict, Path(path), f"{type(backbone).__name__} backbone")


def load_model_weights(model: WSOLModel, path: str | Path) -> None:
    """Load a whole-model state dict saved by this project (or a checkpoint holding one under "model")."""
    _load_strict(model, _load_state_dict_file(path), Path(path), "model")


def param_groups(
    model: WSOLModel,
    lr: float,
    head_lr_mult: float = 10.0,
    weight_decay: float = 0.0,
    bias_lr_mult: float = 1.0,
) -> list[dict]:
    """Optimizer groups: backbone at `lr`, the freshly initialized head at `lr * head_lr_mult` (paper: 10x);
    biases of each at `bias_lr_mult` times that (the official ACoL code: 2x, so head biases learn at 20x)."""
    groups = []
    for module, mult in ((model.backbone, 1.0), (model.head, head_lr_mult)):
        named = list(module.named_parameters())
        weights = [p for name, p in named if not name.endswith("bias")]
        biases = [p for name, p in named if name.endswith("bias")]
        groups.append({"params": weights, "lr": lr * mult, "weight_decay": weight_decay})
        if biases:
            groups.append({"params": biases, "lr": lr * mult * bias_lr_mult, "weight_decay": weight_decay})
    return [group for group in groups if group["params"]]
