"""`ModelSpec`: one typed description of the network, from params, in the model card, on the built model."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from acol.config import ModelParams, Params
from acol.distributed.train import TrainOutcome
from acol.inference.model_card import spec_from_card
from acol.models import ARCHITECTURES, ModelSpec, build_model
from acol.models.spec import METHOD_KNOBS
from acol.stages.train import model_card

CLASSES = [f"n9000000{i}" for i in range(4)]

# A model card exactly as the code before `ModelSpec` wrote it (outputs/train/acol/model_card.json, its train
# section and metrics cut short): no "spec" key, the architecture in "backbone", "num_classes" and "model".
OLD_CARD: dict[str, Any] = {
    "method": "acol",
    "backbone": "small",
    "num_classes": 4,
    "classes": CLASSES,
    "model": {
        "backbone": "small",
        "head_channels": 128,
        "erase_threshold": 0.6,
        "large_feature_map": None,
        "backbone_weights": None,
    },
    "train": {"epochs": 8, "image_size": 64},
    "data_version": "b7419324d5ba",
    "metrics": {"val_top1": 1.0},
    "epochs": 8,
    "restarts": 0,
    "ray_run": "train_acol",
    "mlflow_run_id": "0123456789abcdef",
}


def _card(params: Params, method: str = "acol") -> dict[str, Any]:
    outcome = TrainOutcome(Path("model.pt"), Path("history.csv"), {}, [], 0, "run", "", CLASSES)
    return model_card(params, method, outcome, "v1", "run-id")


def test_spec_defaults_are_the_params_defaults() -> None:
    """The spec's defaults and `ModelParams`'s (the user's) are the same values: they cannot drift."""
    params = ModelParams()
    spec = ModelSpec(params.backbone, "acol", 3)
    assert (spec.head_channels, spec.erase_threshold) == (params.head_channels, params.erase_threshold)
    assert ModelSpec.from_params({"backbone": params.backbone}, "acol", 3) == spec
    assert ModelSpec.from_params(params.model_dump(), "acol", 3) == spec


@pytest.mark.parametrize(("backbone", "method"), sorted(ARCHITECTURES))
def test_large_feature_map_is_stored_resolved(backbone: str, method: str) -> None:
    """None becomes the architecture's published default; a given value is kept."""
    assert (
        ModelSpec(backbone, method, 3).large_feature_map
        is ARCHITECTURES[(backbone, method)].large_feature_map
    )
    assert ModelSpec(backbone, method, 3, large_feature_map=True).large_feature_map is True


def test_to_dict_from_dict_round_trip_through_json() -> None:
    spec = ModelSpec("vgg16", "cam", 200, head_channels=512, erase_threshold=0.7, large_feature_map=True)
    data = json.loads(json.dumps(spec.to_dict()))
    other_knobs = {name for names in METHOD_KNOBS.values() for name in names}  # CAM has none of its own
    assert sorted(data) == sorted(f.name for f in fields(ModelSpec) if f.name not in other_knobs)
    assert ModelSpec.from_dict(data) == spec
    with pytest.raises(ValueError, match="unknown keys"):
        ModelSpec.from_dict({**data, "dropout": 0.5})


def test_invalid_specs_fail_on_construction() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        ModelSpec("vgg19", "acol", 3)
    with pytest.raises(ValueError, match="num_classes"):
        ModelSpec("small", "acol", 0)


def test_build_model_attaches_its_spec() -> None:
    spec = ModelSpec("small", "cam", 3, head_channels=8)
    assert build_model(spec).spec == spec
    shorthand = build_model("small", 3, "cam", head_channels=8)  # the keyword form builds the same spec
    assert shorthand.spec == spec
    assert shorthand.state_dict().keys() == build_model(spec).state_dict().keys()
    with pytest.raises(TypeError):
        build_model(spec, 3)


def test_the_card_stores_the_spec_and_an_old_card_yields_the_same() -> None:
    params = Params.model_validate({"model": {"backbone": "small", "head_channels": 128}})
    new = _card(params)
    assert new["spec"] == ModelSpec("small", "acol", 4, head_channels=128).to_dict()
    assert {key: new[key] for key in ("method", "backbone", "num_classes", "classes")} == {
        key: OLD_CARD[key] for key in ("method", "backbone", "num_classes", "classes")
    }  # the old keys stay, for older readers
    from_new = spec_from_card(new, Params(), "acol", CLASSES)
    assert from_new == ModelSpec("small", "acol", 4, head_channels=128)
    assert spec_from_card(OLD_CARD, Params(), "acol", CLASSES) == from_new
    today = {key: value for key, value in new.items() if key != "spec"}  # what the old code wrote
    assert spec_from_card(today, Params(), "acol", CLASSES) == from_new


def test_an_old_card_without_architecture_keys_takes_params() -> None:
    """The ``{"params": {"model": ...}}`` shape and bare cards still load; params fill what they lack."""
    nested = {"method": "cam", "classes": CLASSES, "params": {"model": {"head_channels": 16}}}
    params = Params.model_validate({"model": {"backbone": "vgg16", "erase_threshold": 0.5}})
    spec = spec_from_card(nested, params, "cam", CLASSES)
    assert spec == ModelSpec("vgg16", "cam", 4, head_channels=16, erase_threshold=0.5)
    assert spec.large_feature_map is False  # VGG16-CAM's published default, resolved


def test_the_spec_in_the_card_wins_over_params_and_is_checked() -> None:
    card = {**OLD_CARD, "spec": ModelSpec("small", "acol", 4, head_channels=32).to_dict()}
    params = Params.model_validate({"model": {"head_channels": 1024}})
    assert spec_from_card(card, params, "acol", CLASSES).head_channels == 32
    with pytest.raises(ValueError, match="method"):
        spec_from_card({**card, "method": "cam"}, params, "acol", CLASSES)
    with pytest.raises(ValueError, match="method"):
        spec_from_card({**card, "spec": {**card["spec"], "method": "cam"}}, params, "acol", CLASSES)
    with pytest.raises(ValueError, match="classes"):
        spec_from_card(card, params, "acol", CLASSES[:3])


def test_a_method_carries_only_its_own_knobs() -> None:
    """ADL's and SPG's knobs belong to ADL and SPG: an ACoL spec's dict is the one written before they existed
    (hand-written below), whatever was passed for them, and a resume fingerprint of it does not change."""
    acol = ModelSpec("small", "acol", 4, 8, adl_drop_rate=0.5, spg_threshold_1h=0.2)
    assert acol.to_dict() == {"backbone": "small", "method": "acol", "num_classes": 4, "head_channels": 8,
                              "erase_threshold": 0.6, "large_feature_map": False}  # fmt: skip
    assert acol == ModelSpec("small", "acol", 4, 8) == ModelSpec.from_dict(acol.to_dict())
    adl = ModelSpec("small", "adl", 4, 8, adl_drop_rate=0.5, spg_threshold_1h=0.2)
    assert (adl.to_dict()["adl_drop_rate"], adl.spg_threshold_1h) == (0.5, 0.7)
    assert set(adl.to_dict()) - set(acol.to_dict()) == set(METHOD_KNOBS["adl"])
    spg = ModelSpec("small", "spg", 4, 8, spg_threshold_1h=0.2)
    assert set(spg.to_dict()) - set(acol.to_dict()) == set(METHOD_KNOBS["spg"])
    assert ModelSpec.from_dict(spg.to_dict()) == spg and spg.spg_threshold_1h == 0.2
