"""Build WSOL models from a `ModelSpec`, load local weights safely, and split parameters for the head learning rate."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from acol.errors import UserError
from acol.models.architectures import (
    ARCHITECTURES,
    Architecture,
    Head,
    list_architectures,
    list_backbones,
    register_architecture,
)
from acol.models.backbones import Backbone
from acol.models.heads import ModelOutput
from acol.models.spec import ModelSpec

__all__ = [
    "ARCHITECTURES",
    "METHODS",
    "Architecture",
    "ModelSpec",
    "WeightsError",
    "WSOLModel",
    "build_model",
    "list_architectures",
    "list_backbones",
    "register_architecture",
    "load_backbone_weights",
    "load_model_weights",
    "param_groups",
]

METHODS: tuple[str, ...] = ("acol", "cam", "acol_a", "has", "cutmix", "adl", "spg")
"""ACoL, the CAM baseline as published, ACoL's branch A alone (an ablation), HaS and CutMix (CAM's network,
trained on hidden or mixed images: acol.training.batch_methods), ADL and SPG (acol.models.adl, acol.models.spg)."""


class WeightsError(UserError, ValueError):
    """A weights or checkpoint file that cannot be used, with the file named in the message."""


class WSOLModel(nn.Module):
    """A backbone and a WSOL head; `forward` returns a `ModelOutput`, maps come from `localization_maps`.

    ``spec`` (from `build_model`) describes the network, so whoever saves its weights can save how to rebuild it.
    """

    def __init__(self, backbone: Backbone, head: Head, spec: ModelSpec | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spec = spec  # what `build_model` built (None for a hand-assembled model): saved with the weights

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        """images (B, 3, H, W); labels (B,), when given, drive ACoL's erasing (A's top-1 otherwise)."""
        return self.head(self.backbone(images), labels)

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        return self.head.loss(output, labels)

    def localization_maps(self, output: ModelOutput, classes: torch.Tensor) -> torch.Tensor:
        """Normalized (B, h, w) maps in [0, 1] of one class per image (ACoL: fused A/B, B erased by it)."""
        return self.head.localization_maps(output, classes)


def build_model(
    spec: ModelSpec | str,
    num_classes: int | None = None,
    method: str = "acol",
    *,
    backbone_weights: str | Path | None = None,
    **spec_fields: Any,
) -> WSOLModel:
    """The network `spec` describes (see `ARCHITECTURES`), carrying it as ``model.spec``; optionally load
    backbone weights from a file.

    ``build_model("small", 4, "acol", head_channels=8)`` is shorthand for
    ``build_model(ModelSpec("small", "acol", 4, head_channels=8))`` (tests and benchmarks build many).
    """
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec(spec, method, num_classes, **spec_fields)  # type: ignore[arg-type]
    elif num_classes is not None or spec_fields:
        raise TypeError("build_model(spec) takes no other architecture arguments: the spec has them all")
    architecture = ARCHITECTURES[(spec.backbone, spec.method)]
    backbone = architecture.backbone(
        bool(spec.large_feature_map), **{knob: getattr(spec, knob) for knob in architecture.backbone_knobs}
    )
    if backbone_weights is not None:
        load_backbone_weights(backbone, backbone_weights)
    head = architecture.head(
        backbone.out_channels,
        spec.num_classes,
        spec.head_channels,
        spec.erase_threshold,
        **{knob: getattr(spec, knob) for knob in architecture.head_knobs},
    )
    return WSOLModel(backbone, head, spec)


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
