"""ADL (Choe and Shim 2019) against hand-worked maps and against oracles written here from its description.

The oracle ADL is the published rule in plain code: attention = channel mean; drop mask = attention <
threshold x the image's maximum; importance map = sigmoid(attention); in training one of the two multiplies
the input (the drop mask with probability ``drop_rate``: ``floor(u + rate)`` of a uniform u); identity in
evaluation. The trunks are torchvision's modules (or functional calls) driven layer by layer, never the
module under test; every state dict is built here and the trunk's goes through the torchvision remap.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from acol.models import ModelSpec, build_model, load_backbone_weights
from acol.models.adl import ADL
from tests.random_weights import randomize

# --- the layer on a hand-worked feature ---

# Two channels of a 2x2 map: attention (their mean) = [[2, 4], [1, 4]]; the maximum is 4, so with threshold
# 0.9 the drop mask is 0 where attention >= 3.6: [[1, 0], [1, 0]].
FEATURE = torch.tensor([[[[1.0, 3.0], [2.0, 6.0]], [[3.0, 5.0], [0.0, 2.0]]]])
DROP_MASK = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
IMPORTANCE = torch.tensor([[[[1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-4))],
                             [1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-4))]]]])  # fmt: skip


def test_drop_mask_and_importance_map_of_a_hand_worked_feature() -> None:
    layer = ADL(drop_rate=0.75, threshold=0.9)
    attention = layer.attention(FEATURE)
    torch.testing.assert_close(attention, torch.tensor([[[[2.0, 4.0], [1.0, 4.0]]]]))
    assert torch.equal(layer.drop_mask(attention), DROP_MASK)
    torch.testing.assert_close(layer.importance_map(attention), IMPORTANCE)
    layer.train()
    always_drop, never_drop = ADL(1.0, 0.9).train(), ADL(0.0, 0.9).train()
    assert torch.equal(always_drop(FEATURE), FEATURE * DROP_MASK)
    torch.testing.assert_close(never_drop(FEATURE), FEATURE * IMPORTANCE)


def test_the_threshold_is_per_image() -> None:
    """Each image's own maximum: image 2 (values / 8) has image 1's mask; the batch's maximum (4) would drop
    nothing of it."""
    layer = ADL(1.0, 0.9).train()
    features = torch.cat([FEATURE, FEATURE / 8])  # attention maxima 4 and 0.5: drop >= 3.6 and >= 0.45
    assert torch.equal(layer.drop_mask(layer.attention(features)), DROP_MASK.repeat(2, 1, 1, 1))


def test_identity_in_eval_mode() -> None:
    layer = ADL(1.0, 0.9).eval()
    assert layer(FEATURE) is FEATURE
    model = build_model("small", 3, "adl", head_channels=8).eval()
    cam = build_model("small", 3, "cam", head_channels=8).eval()
    cam.load_state_dict(model.state_dict())  # the same keys: ADL layers hold no parameters
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(images).maps_a, cam(images).maps_a, rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(12))
def test_the_choice_for_a_fixed_seed_is_the_published_draw(seed: int) -> None:
    """One uniform u from torch's global generator per call: the drop mask iff floor(u + rate) == 1."""
    rate = 0.75
    torch.manual_seed(seed)
    u = float(torch.rand(()))
    expected = FEATURE * (DROP_MASK if math.floor(u + rate) == 1 else IMPORTANCE)
    torch.manual_seed(seed)
    torch.testing.assert_close(ADL(rate, 0.9).train()(FEATURE), expected)


def test_both_choices_occur_over_seeds_at_about_the_rate() -> None:
    layer = ADL(0.75, 0.9).train()
    drops = 0
    for seed in range(400):
        torch.manual_seed(seed)
        drops += int(torch.equal(layer(FEATURE), FEATURE * DROP_MASK))
    assert 0.68 < drops / 400 < 0.82  # binomial(400, 0.75): sd 0.022


# --- models against oracles ---


def _adl(x: torch.Tensor, drop: bool, threshold: float = 0.9) -> torch.Tensor:
    """The oracle layer in training mode, its choice given."""
    attention = x.mean(1, keepdim=True)
    if drop:
        return x * (attention < threshold * attention.amax(dim=(1, 2, 3), keepdim=True)).float()
    return x * torch.sigmoid(attention)


def _cam_head(x: torch.Tensor, head: dict, labels: torch.Tensor, conv: bool):
    """[conv3x3 + ReLU], GAP, fc; the normalized CAM of `labels`."""
    if conv:
        x = F.relu(F.conv2d(x, head["conv.0.weight"], head["conv.0.bias"], padding=1))
    cams = (head["fc.weight"][labels][:, :, None, None] * x).sum(1)
    flat = cams.flatten(1)
    low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    return F.linear(x.mean((2, 3)), head["fc.weight"], head["fc.bias"]), (cams - low) / (high - low)


def _check(model, images: torch.Tensor, features: torch.Tensor, conv: bool) -> None:
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        output = model(images, labels)
        maps = model.localization_maps(output, labels)
    logits, cams = _cam_head(features, model.head.state_dict(), labels, conv)
    torch.testing.assert_close(output.logits, logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(maps, cams, rtol=1e-4, atol=1e-4)


def _bn(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    """Batch norm in training mode: the batch's statistics."""
    return F.batch_norm(x, None, None, state[f"{prefix}.weight"], state[f"{prefix}.bias"], training=True)


@pytest.mark.parametrize("drop", [True, False])
def test_small_adl_in_training_equals_the_oracle(drop: bool) -> None:
    """conv3x3 BN ReLU, pool, conv3x3 BN ReLU, pool, ADL, [conv1x1 BN ReLU ADL] x 2; the CAM head."""
    model = build_model("small", 3, "adl", head_channels=8, adl_drop_rate=1.0 if drop else 0.0)
    state = randomize(model, seed=1)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    x = F.max_pool2d(F.relu(_bn(F.conv2d(images, state["backbone.features.0.weight"], padding=1), state,
                                "backbone.features.1")), 2)  # fmt: skip
    x = F.max_pool2d(F.relu(_bn(F.conv2d(x, state["backbone.features.4.weight"], padding=1), state,
                                "backbone.features.5")), 2)  # fmt: skip
    x = _adl(x, drop)
    for conv, bn in ((8, 9), (11, 12)):
        x = _adl(F.relu(_bn(F.conv2d(x, state[f"backbone.features.{conv}.weight"]), state,
                            f"backbone.features.{bn}")), drop)  # fmt: skip
    _check(model.train(), images, x, conv=True)


def _vgg16_trunk() -> torch.nn.Module:
    """torchvision's VGG16 conv layers under ``features.`` (its fc layers, which the remap drops, skipped)."""
    module = torch.nn.Module()
    module.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    return module


def _trunk_file(tmp_path: Path, reference: torch.nn.Module, seed: int) -> Path:
    randomize(reference, seed)
    path = tmp_path / "trunk.pth"
    torch.save(reference.state_dict(), path)
    return path


def test_vgg16_adl_in_training_equals_choe_et_al(tmp_path: Path) -> None:
    """Choe et al.'s 14x14 adl config: 2x2 pools 1-4, ADL after pool 3, conv4_3 and conv5_3; VggCam head."""
    reference = _vgg16_trunk()
    path = _trunk_file(tmp_path, reference, seed=2)
    model = build_model("vgg16", 3, "adl", head_channels=16, adl_drop_rate=1.0)
    load_backbone_weights(model.backbone, path)
    randomize(model.head, seed=3)
    trunk = reference.features
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    x = images
    for index, layer in enumerate(trunk):
        if isinstance(layer, torch.nn.MaxPool2d):
            if index == 30:
                x = _adl(x, True)  # after conv5_3; no pool 5
                break
            if index == 23:
                x = _adl(x, True)  # conv4_3, then pool 4
            x = F.max_pool2d(x, 2)
            if index == 16:
                x = _adl(x, True)
        else:
            x = layer(x)
    assert x.shape[-1] == 4
    _check(model.train(), images, x, conv=True)


def test_resnet50_adl_equals_choe_et_al(tmp_path: Path) -> None:
    """ResNetAdl: ADL after layer3 block 0 and layer4 blocks 0 and 2; layer4 at stride 1; fc on layer4."""
    reference = torchvision.models.resnet50(weights=None)
    path = _trunk_file(tmp_path, reference, seed=4)
    model = build_model("resnet50", 3, "adl", adl_drop_rate=1.0)
    load_backbone_weights(model.backbone, path)
    randomize(model.head, seed=5)
    reference.layer4[0].conv2.stride, reference.layer4[0].downsample[0].stride = (1, 1), (1, 1)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    for train in (True, False):
        net = reference.train(train)
        with torch.no_grad():
            x = net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(images))))))
            for name, after in (("layer3", {0}), ("layer4", {0, 2})):
                for index, block in enumerate(getattr(net, name)):
                    x = block(x)
                    x = _adl(x, True) if train and index in after else x
        _check(model.train(train), images, x, conv=False)


def test_inception_v3_adl_equals_choe_et_al(tmp_path: Path) -> None:
    """InceptionAdl: ADL after Mixed_5d (before its pool), after Mixed_6e and in the head before the 1x1."""
    reference = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    path = _trunk_file(tmp_path, reference, seed=6)
    model = build_model("inception_v3", 3, "adl", head_channels=16, adl_drop_rate=1.0)
    load_backbone_weights(model.backbone, path)
    head = randomize(model.head, seed=7)
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    net = reference.train()

    def basic(block, x, stride, padding):
        return F.relu(block.bn(F.conv2d(x, block.conv.weight, stride=stride, padding=padding)))

    with torch.no_grad():
        x = basic(net.Conv2d_1a_3x3, images, 2, 1)
        x = F.max_pool2d(net.Conv2d_2b_3x3(net.Conv2d_2a_3x3(x)), 3, stride=2, padding=1, ceil_mode=True)
        x = F.max_pool2d(net.Conv2d_4a_3x3(net.Conv2d_3b_1x1(x)), 3, stride=2, padding=1, ceil_mode=True)
        x = _adl(net.Mixed_5d(net.Mixed_5c(net.Mixed_5b(x))), True)
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        block = net.Mixed_6a
        double = basic(block.branch3x3dbl_3, block.branch3x3dbl_2(block.branch3x3dbl_1(x)), 1, 1)
        x = torch.cat([basic(block.branch3x3, x, 1, 1), double, F.max_pool2d(x, 3, stride=1, padding=1)], 1)
        x = _adl(net.Mixed_6e(net.Mixed_6d(net.Mixed_6c(net.Mixed_6b(x)))), True)
        for key in ("classifier_a.0", "classifier_a.2"):
            x = F.relu(F.conv2d(x, head[f"{key}.weight"], head[f"{key}.bias"], padding=1))
        maps = F.conv2d(_adl(x, True), head["classifier_a.5.weight"], head["classifier_a.5.bias"])
        output = model.train()(images, torch.tensor([2, 0]))
    torch.testing.assert_close(output.maps_a, maps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(output.logits, maps.mean((2, 3)), rtol=1e-4, atol=1e-4)


def test_the_spec_carries_the_knobs_to_every_layer() -> None:
    spec = ModelSpec("resnet50", "adl", 3, adl_drop_rate=0.5, adl_threshold=0.8)
    with torch.device("meta"):
        layers = [m for m in build_model(spec).modules() if isinstance(m, ADL)]
    assert len(layers) == 3 and {(m.drop_rate, m.threshold) for m in layers} == {(0.5, 0.8)}
    with pytest.raises(ValueError, match="adl_drop_rate"):
        ModelSpec("small", "adl", 3, adl_drop_rate=1.5)
