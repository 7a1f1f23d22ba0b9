"""ADL and SPG in the pipeline: torchvision weights load, a training step, extraction's batch, the spec."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from acol.config import ModelParams
from acol.inference.predict import predict_batch
from acol.models import ModelSpec, build_model, load_backbone_weights, normalize_maps
from acol.training.engine import train_one_epoch

NEW = ("adl", "spg")


def _vgg16_trunk() -> torch.nn.Module:
    """torchvision's VGG16 conv layers under ``features.`` (the fc layers, which the remap drops, skipped)."""
    module = torch.nn.Module()
    module.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    return module


FACTORIES = {
    "vgg16": _vgg16_trunk,
    "resnet50": lambda: torchvision.models.resnet50(weights=None),
    "inception_v3": lambda: torchvision.models.inception_v3(weights=None, init_weights=False),
}


@pytest.mark.parametrize("method", NEW)
@pytest.mark.parametrize("backbone", sorted(FACTORIES))
def test_torchvision_weights_load_strictly_into_every_trunk(
    tmp_path: Path, backbone: str, method: str
) -> None:
    """A torchvision file (ResNet-50's and Inception-v3's whole, fc and aux heads included) loads strictly
    through the backbone's remap; every trunk tensor arrives under its torchvision name."""
    reference = FACTORIES[backbone]()
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(backbone, 5, method, head_channels=8)
    load_backbone_weights(model.backbone, path)
    theirs = reference.state_dict()
    ours = model.backbone.state_dict()
    with torch.device("meta"):
        cam = build_model(backbone, 5, "cam", head_channels=8)
    assert ours.keys() == cam.backbone.state_dict().keys()  # ADL and SPG move no trunk key
    for key, value in ours.items():
        torch.testing.assert_close(value, theirs[key.removeprefix("body.")], msg=key)


@pytest.mark.parametrize("method", NEW)
def test_one_training_step_on_the_small_backbone(method: str) -> None:
    """`train_one_epoch` on one batch: a finite loss, and every parameter that the loss reaches changes."""
    torch.manual_seed(0)
    model = build_model("small", 4, method, head_channels=8)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    images = torch.randn(6, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    loader = [(images, labels, list(range(6)))]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    metrics = train_one_epoch(model, loader, optimizer, None, torch.device("cpu"))  # type: ignore[arg-type]
    assert np.isfinite(metrics["loss"]) and metrics["samples"] == 6 and "acc_b" not in metrics
    changed = [name for name, p in model.named_parameters() if not torch.equal(before[name], p)]
    assert changed == list(before), sorted(set(before) - set(changed))


@pytest.mark.parametrize("method", NEW)
def test_extraction_stores_the_class_map_of_each_new_method(method: str) -> None:
    """`predict_batch` (MapPredictor's body) unchanged: the GT map is the normalized class map, no B map."""
    torch.manual_seed(1)
    model = build_model("small", 4, method, head_channels=8).eval()
    images = torch.randn(2, 3, 32, 32)
    labels = np.array([2, 0])
    columns = predict_batch(model, images, labels, np.array([32, 32]), np.array([32, 32]), 0.2)
    assert columns["map_b_gt"] is None and tuple(columns["map_height"]) == (8, 8)
    with torch.no_grad():
        maps = model(images).maps_a[torch.arange(2), torch.as_tensor(labels)]
    expected = normalize_maps(maps).flatten(1).numpy()
    np.testing.assert_allclose(columns["map_gt"].astype(np.float32), expected, atol=2e-3)
    assert columns["pred_box"].shape == (2, 4)


def test_spec_and_params_defaults_are_equal() -> None:
    """Every architecture field that both have: the same default (ADL's and SPG's knobs included)."""
    params = ModelParams()
    shared = [f for f in fields(ModelSpec) if f.name in ModelParams.model_fields and f.name != "backbone"]
    assert {f.name for f in shared} >= {"adl_drop_rate", "adl_threshold", "spg_threshold_3l"}
    for spec_field in shared:
        assert spec_field.default == getattr(params, spec_field.name), spec_field.name
    assert ModelSpec.from_params(params.model_dump(), "spg", 3) == ModelSpec("small", "spg", 3)


def test_a_card_spec_without_the_new_keys_loads_with_the_defaults() -> None:
    spec = ModelSpec("small", "adl", 4, head_channels=16, adl_drop_rate=0.5)
    data = spec.to_dict()
    assert ModelSpec.from_dict(data) == spec
    old = {key: value for key, value in data.items() if not key.startswith(("adl_", "spg_"))}
    assert ModelSpec.from_dict(old) == ModelSpec("small", "adl", 4, head_channels=16)
    with pytest.raises(ValueError, match="spg_threshold_1h"):
        ModelSpec("small", "spg", 4, spg_threshold_1h=2.0)
