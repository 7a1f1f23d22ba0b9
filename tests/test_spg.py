"""SPG (Zhang et al. 2018, as Choe et al. build it) against hand-worked seeds and oracles written here.

The loss oracle is the published formula in plain code, the way Choe et al.'s `spg.py` writes it: upsample,
seed masks with loops over the images and boolean indexing, ``BCEWithLogitsLoss`` on the seeded pixels only.
The model oracles drive torchvision's modules (or functional calls) layer by layer on state dicts built here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from acol.models import ModelOutput, build_model, load_backbone_weights
from acol.models.heads import SPGLogits
from acol.models.spg import IGNORE, seed_mask, side_losses
from tests.random_weights import randomize

THRESHOLDS = ((0.7, 0.01), (0.5, 0.05), (0.7, 0.1))  # Choe et al.'s config.py defaults

# --- seeds ---


def test_seeds_of_a_hand_worked_map_with_enough_foreground() -> None:
    """6x6: 31 pixels above 0.7 are foreground, 2 below 0.01 background, the 3 between ignored."""
    attention = torch.full((1, 6, 6), 0.9)
    attention[0, 5, 3:] = torch.tensor([0.3, 0.5, 0.7])  # 0.7 is not above 0.7: ignored
    attention[0, 0, :2] = torch.tensor([0.005, 0.0])
    expected = torch.ones(1, 6, 6)
    expected[0, 5, 3:] = IGNORE
    expected[0, 0, :2] = 0.0
    assert torch.equal(seed_mask(attention, 0.7, 0.01), expected)


def test_seeds_fall_back_to_seventy_percent_of_the_maximum() -> None:
    """Fewer than 30 pixels above `high` (here none): foreground is above 0.7 x 0.6 = 0.42 instead."""
    attention = torch.tensor([[[0.6, 0.5, 0.3], [0.2, 0.005, 0.42]]])
    expected = torch.tensor([[[1.0, 1.0, IGNORE], [IGNORE, 0.0, IGNORE]]])
    assert torch.equal(seed_mask(attention, 0.7, 0.01), expected)
    # per image: the second image has its own maximum (0.06 -> above 0.042)
    both = torch.cat([attention, attention / 10])
    assert torch.equal(
        seed_mask(both, 0.7, 0.01)[1], torch.tensor([[1.0, 1.0, IGNORE], [IGNORE, 0.0, IGNORE]])
    )


# --- losses against the published formula ---


def _oracle_mask(attention: torch.Tensor, high: float, low: float) -> torch.Tensor:
    """Choe et al.'s get_mask: 255, then per image foreground (or > 0.7 max if < 30 pixels), then background."""
    mask = torch.full_like(attention, 255.0)
    for i in range(attention.shape[0]):
        foreground = attention[i] > high
        if int(foreground.sum()) < 30:
            foreground = attention[i] > attention[i].max() * 0.7
        mask[i][foreground] = 1.0
    mask[attention < low] = 0.0
    return mask


def _oracle_bce(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    keep = mask.reshape(-1) < 255.0
    return torch.nn.BCEWithLogitsLoss()(logits.reshape(-1)[keep], mask.reshape(-1)[keep])


def _oracle_losses(output: ModelOutput, labels: torch.Tensor, size: int):
    up = torch.nn.Upsample(size=(size, size), mode="bilinear")
    cam = up(output.maps_a.detach())[torch.arange(len(labels)), labels][:, None]
    flat = cam.flatten(1)
    low, high = flat.min(1).values[:, None, None, None], flat.max(1).values[:, None, None, None]
    attention = (cam - low) / (high - low)
    b1, b2, c = up(output.spg.b1), up(output.spg.b2), up(output.spg.c)
    fused = (torch.sigmoid(b1.detach()) + torch.sigmoid(b2.detach())) / 2
    (h1, l1), (h2, l2), (h3, l3) = THRESHOLDS
    return (
        _oracle_bce(b2, _oracle_mask(attention, h1, l1)),
        _oracle_bce(b1, _oracle_mask(torch.sigmoid(b2), h2, l2)),
        _oracle_bce(c, _oracle_mask(fused, h3, l3)),
    )


def test_losses_equal_the_published_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 4, 5, 5, generator=generator)
    side = SPGLogits(
        *(3 * torch.randn(3, 1, 5, 5, generator=generator) for _ in range(3)), image_size=(20, 20)
    )
    output = ModelOutput(logits=maps.mean((2, 3)), maps_a=maps, spg=side)
    labels = torch.tensor([1, 3, 0])
    ours = side_losses(output, labels, THRESHOLDS)
    expected = _oracle_losses(output, labels, 20)
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    model = build_model("small", 4, "spg", head_channels=8)
    total = F.cross_entropy(output.logits, labels) + sum(expected)
    torch.testing.assert_close(model.loss(output, labels), total, rtol=1e-5, atol=1e-6)


def test_losses_train_each_branch_only_and_only_on_seeded_pixels() -> None:
    """Gradients reach B1, B2 and C but not the class maps (their seeds are detached); an ignored pixel of
    B2's upsampled map gets none."""
    generator = torch.Generator().manual_seed(1)
    maps = torch.randn(2, 3, 4, 4, generator=generator, requires_grad=True)
    raw = [torch.randn(2, 1, 4, 4, generator=generator, requires_grad=True) for _ in range(3)]
    output = ModelOutput(
        logits=maps.mean((2, 3)).detach(), maps_a=maps, spg=SPGLogits(*raw, image_size=(4, 4))
    )
    labels = torch.tensor([0, 2])
    loss_b2, _, _ = side_losses(output, labels, THRESHOLDS)
    loss_b2.backward()
    assert maps.grad is None and raw[0].grad is None
    cam = maps.detach()[torch.arange(2), labels]
    flat = cam.flatten(1)
    attention = (cam - flat.min(1).values[:, None, None]) / (flat.max(1).values - flat.min(1).values)[
        :, None, None
    ]
    ignored = seed_mask(attention, *THRESHOLDS[0]) == IGNORE
    assert ignored.any() and not raw[1].grad[:, 0][ignored].any() and raw[1].grad[:, 0][~ignored].all()


# --- models against oracles ---


def _conv(x: torch.Tensor, head: dict, key: str, relu: bool = True) -> torch.Tensor:
    kernel = head[f"{key}.weight"]
    x = F.conv2d(x, kernel, head[f"{key}.bias"], padding=kernel.shape[-1] // 2)
    return F.relu(x) if relu else x


def _head_oracle(side1, side2, final, head: dict, trunk: tuple[str, ...]):
    """B1 = shared(b1(side1)), B2 = shared(b2(side2)); x = trunk convs(final); maps = 1x1(x); C = c(x)."""

    def shared(x):
        return _conv(_conv(x, head, "branch_shared.0"), head, "branch_shared.2", relu=False)

    b1 = shared(_conv(side1, head, "branch_b1.0"))
    b2 = shared(_conv(side2, head, "branch_b2.0"))
    x = final
    for key in trunk:
        x = _conv(x, head, key)
    c = _conv(_conv(x, head, "branch_c.0"), head, "branch_c.2", relu=False)
    return _conv(x, head, "classifier", relu=False), b1, b2, c


def _check(model, images: torch.Tensor, expected) -> None:
    maps, b1, b2, c = expected
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        output = model.eval()(images, labels)
        located = model.localization_maps(output, labels)
    for ours, theirs in ((output.maps_a, maps), (output.spg.b1, b1), (output.spg.b2, b2), (output.spg.c, c)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(output.logits, maps.mean((2, 3)), rtol=1e-4, atol=1e-4)
    cams = maps[torch.arange(2), labels]  # what Choe et al. return as the CAM of SPG, normalized
    flat = cams.flatten(1)
    low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    torch.testing.assert_close(located, (cams - low) / (high - low), rtol=1e-4, atol=1e-4)
    assert output.spg.image_size == tuple(images.shape[-2:])


def test_small_spg_equals_the_oracle() -> None:
    """B1 on the first 1x1 block, B2 and the classifier (two 3x3 convs, 1x1) on the last, as VggSpg."""
    model = build_model("small", 3, "spg", head_channels=8)
    state = randomize(model, seed=1)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    backbone = model.backbone.features.eval()
    with torch.no_grad():
        side1 = backbone[:11](images)
        side2 = backbone[11:](side1)
        head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
        expected = _head_oracle(side1, side2, side2, head, ("trunk.0", "trunk.2"))
    _check(model, images, expected)


def _vgg16_trunk() -> torch.nn.Module:
    module = torch.nn.Module()
    module.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    return module


def test_vgg16_spg_equals_choe_et_al(tmp_path: Path) -> None:
    """VggSpg: 2x2 pools 1-3; conv4 block; 3x3 s2 p1 pool -> B1; conv5 block -> B2 and SPG_A_3 (two 512
    convs) -> SPG_A_4 and C."""
    reference = _vgg16_trunk()
    randomize(reference, seed=2)
    path = tmp_path / "vgg16.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("vgg16", 3, "spg")
    load_backbone_weights(model.backbone, path)
    head = randomize(model.head, seed=3)
    assert head["trunk.0.weight"].shape[0] == 512 and head["branch_b1.0.weight"].shape[0] == 512
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    layers = reference.features
    with torch.no_grad():
        x = F.max_pool2d(layers[10:16](F.max_pool2d(layers[5:9](F.max_pool2d(layers[0:4](images), 2)), 2)), 2)
        side1 = F.max_pool2d(layers[17:23](x), 3, stride=2, padding=1)
        side2 = layers[24:30](side1)
        expected = _head_oracle(side1, side2, side2, head, ("trunk.0", "trunk.2"))
    assert side2.shape[-1] == 4
    _check(model, images, expected)


def test_resnet50_spg_equals_choe_et_al(tmp_path: Path) -> None:
    """ResNetSpg: B1 on layer3 block 0, B2 on layer3, SPG_A4 (1x1) and C on layer4 (stride 1)."""
    reference = torchvision.models.resnet50(weights=None)
    randomize(reference, seed=4)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("resnet50", 3, "spg")
    load_backbone_weights(model.backbone, path)
    head = randomize(model.head, seed=5)
    reference.layer4[0].conv2.stride, reference.layer4[0].downsample[0].stride = (1, 1), (1, 1)
    net = reference.eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        x = net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(images))))))
        side1 = net.layer3[0](x)
        side2 = net.layer3[1:](side1)
        expected = _head_oracle(side1, side2, net.layer4(side2), head, ())
    _check(model, images, expected)


def test_inception_v3_spg_equals_choe_et_al(tmp_path: Path) -> None:
    """InceptionSpg: B1 on Mixed_5d after its pool, B2 on Mixed_6d (as their code), SPG_A3 and C on 6e."""
    reference = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    randomize(reference, seed=6)
    path = tmp_path / "inception.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("inception_v3", 3, "spg", head_channels=16)
    load_backbone_weights(model.backbone, path)
    head = randomize(model.head, seed=7)
    net = reference.eval()
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(4))

    def basic(block, x, stride, padding):
        return F.relu(block.bn(F.conv2d(x, block.conv.weight, stride=stride, padding=padding)))

    with torch.no_grad():
        x = basic(net.Conv2d_1a_3x3, images, 2, 1)
        x = F.max_pool2d(net.Conv2d_2b_3x3(net.Conv2d_2a_3x3(x)), 3, stride=2, padding=1, ceil_mode=True)
        x = F.max_pool2d(net.Conv2d_4a_3x3(net.Conv2d_3b_1x1(x)), 3, stride=2, padding=1, ceil_mode=True)
        side1 = F.max_pool2d(net.Mixed_5d(net.Mixed_5c(net.Mixed_5b(x))), 3, stride=2, ceil_mode=True)
        block = net.Mixed_6a
        double = basic(block.branch3x3dbl_3, block.branch3x3dbl_2(block.branch3x3dbl_1(side1)), 1, 1)
        x = torch.cat([basic(block.branch3x3, side1, 1, 1), double, F.max_pool2d(side1, 3, 1, 1)], 1)
        side2 = net.Mixed_6d(net.Mixed_6c(net.Mixed_6b(x)))
        expected = _head_oracle(side1, side2, net.Mixed_6e(side2), head, ("trunk.1", "trunk.4"))
    _check(model, images, expected)


@pytest.mark.parametrize("knob", ["spg_threshold_2h", "spg_threshold_3l"])
def test_the_spec_carries_the_thresholds_to_the_head(knob: str) -> None:
    model = build_model("small", 3, "spg", head_channels=8, **{knob: 0.3})
    index, level = int(knob[-2]) - 1, 0 if knob.endswith("h") else 1
    assert model.head.thresholds[index][level] == 0.3
