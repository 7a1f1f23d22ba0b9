"""WSOL models: backbones, ACoL / CAM / branch-A heads, and the factory that builds each backbone x method."""

from acol.models.factory import (
    ARCHITECTURES,
    METHODS,
    WeightsError,
    WSOLModel,
    build_model,
    list_architectures,
    list_backbones,
    load_backbone_weights,
    load_model_weights,
    param_groups,
    register_architecture,
)
from acol.models.heads import ModelOutput, normalize_maps, select_class_maps
from acol.models.spec import ModelSpec

__all__ = [
    "ARCHITECTURES",
    "METHODS",
    "ModelOutput",
    "ModelSpec",
    "WeightsError",
    "WSOLModel",
    "build_model",
    "list_architectures",
    "list_backbones",
    "load_backbone_weights",
    "load_model_weights",
    "normalize_maps",
    "param_groups",
    "register_architecture",
    "select_class_maps",
]
