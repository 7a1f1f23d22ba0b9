"""A trained model back from its files: the model card (its `ModelSpec`, classes) and the state dict.

Why here: extraction, re-evaluation and the MLflow model all rebuild the model the same way, so the rules
(the card's architecture wins over params, classes must match the manifest) live in one place.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from acol.config import Params
from acol.io import read_json_object
from acol.models import ModelSpec, WSOLModel, build_model, load_model_weights

__all__ = ["check_weights", "load_model_card", "model_from_card", "spec_from_card"]


def load_model_card(card: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    """A model card (path to model_card.json, or the dict itself); errors name the file."""
    if isinstance(card, dict):
        return card
    return read_json_object(card)


def spec_from_card(card: dict[str, Any], params: Params, method: str, classes: list[str]) -> ModelSpec:
    """The spec of the card's weights: its ``"spec"`` when it has one, else (a card written before the spec
    was) its architecture keys with params filling the gaps.

    The card's method and ``classes`` must equal the asked method and the manifest's (the class indices would
    mean other classes otherwise).
    """
    if card.get("method", method) != method:
        raise ValueError(f"model card is for method {card['method']!r}, extraction asked for {method!r}")
    if "classes" in card and list(card["classes"]) != classes:
        raise ValueError("model card classes differ from the manifest classes (another dataset or order?)")
    saved = card.get("spec")
    if isinstance(saved, dict):
        spec = ModelSpec.from_dict(saved)
    else:
        spec = _spec_from_old_card(card, params, method, classes)
    if spec.method != method:
        raise ValueError(f"model card's spec is for method {spec.method!r}, extraction asked for {method!r}")
    if spec.num_classes != len(classes):
        raise ValueError(f"model card has {spec.num_classes} classes, the manifest {len(classes)}")
    return spec


def _spec_from_old_card(card: dict[str, Any], params: Params, method: str, classes: list[str]) -> ModelSpec:
    """A card without ``"spec"``: ``backbone``, ``num_classes``, and the rest of the ``model`` section from
    ``card["model"]`` or ``card["params"]["model"]``, over `params`'s."""
    model_section = card.get("model")
    if not isinstance(model_section, dict):  # {"params": {"model": {...}}} is accepted too
        nested = card.get("params")
        model_section = nested.get("model", {}) if isinstance(nested, dict) else {}
    section = {**params.model.model_dump(), **model_section}
    if "backbone" in card:
        section["backbone"] = card["backbone"]
    return ModelSpec.from_params(section, method, int(card.get("num_classes", len(classes))))


def check_weights(spec: ModelSpec, model_path: str | os.PathLike[str]) -> None:
    """Raise `WeightsError` naming `model_path` unless it holds a state dict of exactly this architecture.

    Run on the driver before Ray starts: in a `MapPredictor` actor the same error would only surface as an
    actor-construction failure after the cluster and the decode tasks are up. The model is built on the meta
    device (no memory, no init), so the check costs one read of the file.
    """
    with torch.device("meta"):
        model = build_model(spec)
    with warnings.catch_warnings():  # copying real tensors into meta ones is a no-op, which is the point
        warnings.simplefilter("ignore", UserWarning)
        load_model_weights(model, model_path)


def model_from_card(
    spec: ModelSpec,
    model_path: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> WSOLModel:
    """Build the model (no backbone weights: the state dict has them all), load weights, eval mode."""
    model = build_model(spec)
    load_model_weights(model, model_path)
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model
