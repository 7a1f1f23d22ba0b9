"""`ModelSpec`: the one typed description of a network, built from params, saved in the model card, rebuilt.

Why: training, extraction, re-evaluation, registration and serving must build the same network as the one
whose weights they load. A frozen value that travels with the weights (the card's ``"spec"``, `WSOLModel.spec`)
says so in one place, with its defaults in one place (equal to `acol.config.ModelParams`'s; a test keeps them so).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from acol.models.architectures import ARCHITECTURES, list_architectures

__all__ = ["DEFAULT_ERASE_THRESHOLD", "DEFAULT_HEAD_CHANNELS", "ModelSpec"]

DEFAULT_HEAD_CHANNELS = 1024  # paper: 1024
DEFAULT_ERASE_THRESHOLD = 0.6  # paper: 0.6
# ADL and SPG: the defaults of Choe et al.'s config.py (clovaai/wsolevaluation)
DEFAULT_ADL_DROP_RATE = 0.75  # --adl_drop_rate
DEFAULT_ADL_THRESHOLD = 0.9  # --adl_threshold
DEFAULT_SPG_THRESHOLDS = ((0.7, 0.01), (0.5, 0.05), (0.7, 0.1))  # --spg_threshold_{1,2,3}{h,l}
# Each method's own knobs: another method's spec holds their defaults and leaves them out of its dict, so an
# ACoL or CAM card (and an extraction's resume fingerprint) reads as before these methods existed.
METHOD_KNOBS: dict[str, tuple[str, ...]] = {
    "adl": ("adl_drop_rate", "adl_threshold"),
    "spg": tuple(f"spg_threshold_{i}{level}" for i in (1, 2, 3) for level in ("h", "l")),
}
_FRACTIONS = tuple(name for names in METHOD_KNOBS.values() for name in names)  # each knob is in [0, 1]


@dataclass(frozen=True)
class ModelSpec:
    """Everything that fixes a network's layers and forward pass (not its weights).

    ``large_feature_map`` is stored resolved: given as None, it becomes the architecture's published default
    (`acol.models.ARCHITECTURES`), so the spec alone says which map size the saved weights were trained at,
    even if that default changes later. Backbone weights are not part of it: a trained state dict has them.
    The ADL and SPG fields are in every spec; a method that does not use them holds their defaults (whatever
    was given) and `to_dict` leaves them out, so a card written before they existed loads equal.
    """

    backbone: str
    method: str
    num_classes: int
    head_channels: int = DEFAULT_HEAD_CHANNELS
    erase_threshold: float = DEFAULT_ERASE_THRESHOLD
    large_feature_map: bool | None = None  # None: resolved on construction (the field is then a bool)
    adl_drop_rate: float = DEFAULT_ADL_DROP_RATE  # ADL: probability of the drop mask (else importance map)
    adl_threshold: float = DEFAULT_ADL_THRESHOLD  # ADL: drop where attention >= this x its maximum
    spg_threshold_1h: float = DEFAULT_SPG_THRESHOLDS[0][0]  # SPG: B2's seeds from the class map
    spg_threshold_1l: float = DEFAULT_SPG_THRESHOLDS[0][1]
    spg_threshold_2h: float = DEFAULT_SPG_THRESHOLDS[1][0]  # SPG: B1's seeds from B2
    spg_threshold_2l: float = DEFAULT_SPG_THRESHOLDS[1][1]
    spg_threshold_3h: float = DEFAULT_SPG_THRESHOLDS[2][0]  # SPG: C's seeds from B1 and B2's mean
    spg_threshold_3l: float = DEFAULT_SPG_THRESHOLDS[2][1]

    def __post_init__(self) -> None:
        architecture = ARCHITECTURES.get((self.backbone, self.method))
        if architecture is None:
            raise ValueError(
                f"unknown architecture backbone={self.backbone!r} method={self.method!r}; "
                f"choose one of {list_architectures()}"
            )
        if int(self.num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        large = architecture.large_feature_map if self.large_feature_map is None else self.large_feature_map
        object.__setattr__(self, "num_classes", int(self.num_classes))  # JSON and YAML give other types
        object.__setattr__(self, "head_channels", int(self.head_channels))
        object.__setattr__(self, "erase_threshold", float(self.erase_threshold))
        object.__setattr__(self, "large_feature_map", bool(large))
        for name in _FRACTIONS:
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
            object.__setattr__(self, name, value)
        defaults = {f.name: f.default for f in fields(self)}
        for name in _other_methods_knobs(self.method):
            object.__setattr__(self, name, defaults[name])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (the model card's ``"spec"``) but other methods' knobs; `from_dict` reads it back
        equal."""
        unused = set(_other_methods_knobs(self.method))
        return {key: value for key, value in asdict(self).items() if key not in unused}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """The spec `to_dict` wrote; an unknown key is an error (a card from a newer version, not guessed)."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"model spec has unknown keys {unknown}")
        return cls(**data)

    @classmethod
    def from_params(cls, model_section: Mapping[str, Any], method: str, num_classes: int) -> ModelSpec:
        """The spec of a ``model`` params section (a dict or `ModelParams.model_dump()`); absent keys: defaults.

        The one place that turns params into an architecture, so training, extraction and re-evaluation build
        the same network from the same section.
        """
        optional = [f.name for f in fields(cls) if f.name not in ("backbone", "method", "num_classes")]
        given = {key: model_section[key] for key in optional if key in model_section}
        return cls(model_section["backbone"], method, num_classes, **given)


def _other_methods_knobs(method: str) -> tuple[str, ...]:
    return tuple(name for owner, names in METHOD_KNOBS.items() if owner != method for name in names)
