"""WSOL models: backbones, CAM and ACoL heads, and the factory that builds them by name."""

from acol.models.factory import (
    METHODS,
    WeightsError,
    WSOLModel,
    build_model,
    list_backbones,
    load_backbone_weights,
    load_model_weights,
    param_groups,
    register_backbone,
)
from acol.models.heads import ModelOutput, normalize_maps, select_class_maps

__all__ = [
    "METHODS",
    "ModelOutput",
    "WeightsError",
    "WSOLModel",
    "build_model",
    "list_backbones",
    "load_backbone_weights",
    "load_model_weights",
    "normalize_maps",
    "param_groups",
    "register_backbone",
    "select_class_maps",
]
