"""Build WSOL models by name, load local weights safely, and split parameters for the head learning rate."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from acol.models.backbones import BACKBONES, Backbone
from acol.models.heads import ACoLHead, CAMHead, ModelOutput

__all__ = [
    "METHODS",
    "WeightsError",
    "WSOLModel",
    "build_model",
    "list_backbones",
    "register_backbone",
    "load_backbone_weights",
    "load_model_weights",
    "param_groups",
]

Method = Literal["acol", "cam"]
METHODS: tuple[str, ...] = ("acol", "cam")


class WeightsError(ValueError):
    """A weights or checkpoint file that cannot be used, with the file named in the message."""


class WSOLModel(nn.Module):
    """A backbone and a CAM or ACoL head; `forward` returns a `ModelOutput`, maps come from `localization_maps`."""

    def __init__(self, backbone: Backbone, head: CAMHead | ACoLHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        """images (B, 3, H, W); labels (B,) drive ACoL's erasing while training (A's top-1 otherwise)."""
        return self.head(self.backbone(images), labels)

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        return self.head.loss(output, labels)

    def localization_maps(self, output: ModelOutput, classes: torch.Tensor) -> torch.Tensor:
        """Normalized (B, h, w) maps in [0, 1] of one class per image (fused A/B for ACoL)."""
        return self.head.localization_maps(output, classes)


def register_backbone(name: str, builder: Callable[[], Backbone]) -> None:
    """Add a backbone builder; registering a name twice replaces it, with a warning."""
    if name in BACKBONES:
        warnings.warn(f"backbone {name!r} registered again; the new builder replaces the old", stacklevel=2)
    BACKBONES[name] = builder


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def build_model(
    name: str,
    num_classes: int,
    method: Method = "acol",
    *,
    head_channels: int = 1024,
    erase_threshold: float = 0.6,
    backbone_weights: str | Path | None = None,
) -> WSOLModel:
    """Build `method` ("acol" or "cam") on backbone `name`; optionally load backbone weights from a local file."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {list_backbones()}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    backbone = BACKBONES[name]()
    if backbone_weights is not None:
        load_backbone_weights(backbone, backbone_weights)
    head: CAMHead | ACoLHead
    if method == "acol":
        head = ACoLHead(backbone.out_channels, num_classes, head_channels, erase_threshold)
    else:
        head = CAMHead(backbone.out_channels, num_classes, head_channels)
    return WSOLModel(backbone, head)


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
    model: WSOLModel, lr: float, head_lr_mult: float = 10.0, weight_decay: float = 0.0
) -> list[dict]:
    """Optimizer groups: backbone at `lr`, the freshly initialized heads at `lr * head_lr_mult` (paper: 10x)."""
    return [
        {"params": list(model.backbone.parameters()), "lr": lr, "weight_decay": weight_decay},
        {"params": list(model.head.parameters()), "lr": lr * head_lr_mult, "weight_decay": weight_decay},
    ]
