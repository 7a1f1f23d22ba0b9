"""Each published architecture against an oracle written here from its published description.

The oracles are functional calls (`F.conv2d`, `F.max_pool2d`...) over a hand-derived layer list, or
torchvision's own modules driven layer by layer with the changes the reference code makes (strides, paddings,
pools): never the module under test. Every test builds its own state dict (torchvision's names for the trunk,
saved to a file and loaded through the backbone's remap function) so the weights in are the same.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from acol.models import ARCHITECTURES, build_model, load_backbone_weights, load_model_weights

THRESHOLD = 0.6


@pytest.fixture(autouse=True)
def _no_grad():
    """Forward passes only; scoped to each test so other modules keep autograd."""
    with torch.no_grad():
        yield


# Map size at a 224 input of every backbone x method x large_feature_map (None = published default),
# from the published descriptions (docs/models.md).
MAP_SIZES = {
    ("small", "acol", None): 56,
    ("small", "cam", None): 56,
    ("small", "acol_a", None): 56,
    ("vgg16", "acol", None): 28,  # official ACoL: pools 4 and 5 at stride 1
    ("vgg16", "acol", False): 14,
    ("vgg16", "cam", None): 14,  # CAM: conv5_3 of VGG16 without pool5
    ("vgg16", "cam", True): 28,
    ("vgg16", "acol_a", None): 28,
    ("resnet50", "acol", None): 14,
    ("resnet50", "acol", True): 28,
    ("resnet50", "cam", None): 14,
    ("resnet50", "cam", True): 28,
    ("inception_v3", "acol", None): 14,
    ("inception_v3", "acol", True): 28,
    ("inception_v3", "cam", None): 14,
    ("inception_v3", "cam", True): 28,
    ("googlenet", "acol", None): 28,
    ("googlenet", "acol", False): 14,
    ("googlenet", "cam", None): 14,
    ("googlenet", "cam", True): 28,
    ("small", "adl", None): 56,
    ("small", "spg", None): 56,
    ("vgg16", "adl", None): 14,  # Choe et al.'s adl configs: the CAM trunk with ADL layers
    ("vgg16", "adl", True): 28,
    ("vgg16", "spg", None): 14,  # VggSpg: a 3x3 s2 pool after conv4_3 (none for 28x28)
    ("vgg16", "spg", True): 28,
    ("resnet50", "adl", None): 14,
    ("resnet50", "adl", True): 28,
    ("resnet50", "spg", None): 14,
    ("resnet50", "spg", True): 28,
    ("inception_v3", "adl", None): 14,
    ("inception_v3", "adl", True): 28,
    ("inception_v3", "spg", None): 14,
    ("inception_v3", "spg", True): 28,
}
# HaS and CutMix train CAM's network (Choe et al. config.py: architecture_type 'cam'): CAM's map sizes
MAP_SIZES.update(
    {
        (b, method, large): size
        for (b, m, large), size in list(MAP_SIZES.items())
        if m == "cam"
        for method in ("has", "cutmix")
    }
)


def test_every_architecture_is_covered_and_has_its_documented_map_size() -> None:
    assert {(b, m) for b, m, _ in MAP_SIZES} == set(ARCHITECTURES)
    for (backbone, method, large), size in MAP_SIZES.items():
        with torch.device("meta"):
            model = build_model(backbone, 3, method, head_channels=8, large_feature_map=large)
        maps = model(torch.zeros(1, 3, 224, 224, device="meta")).maps_a
        assert tuple(maps.shape) == (1, 3, size, size), (backbone, method, large)


# --- weights the tests build ---


def _randomize(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random He-scaled conv/linear weights and non-trivial BN statistics; returns the state dict."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = value
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=generator)
        elif key.endswith("running_mean") or key.endswith("bias"):
            state[key] = 0.1 * torch.randn(value.shape, generator=generator)
        elif value.dim() == 1:  # BN weight
            state[key] = 0.5 + torch.rand(value.shape, generator=generator)
        else:
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=generator) * (2.0 / fan_in) ** 0.5
    module.load_state_dict(state)
    return state


def _model_with(tmp_path: Path, reference: torch.nn.Module, backbone: str, method: str, **kwargs):
    """Our model with `reference`'s trunk weights (through a file and the remap) and a random head."""
    path = tmp_path / "trunk.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(backbone, 5, method, **kwargs)
    load_backbone_weights(model.backbone, path)
    _randomize(model.head, seed=7)
    return model.eval()


# --- oracle heads, from the published descriptions ---


def _normalize(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    return (maps - low) / (high - low)


def _conv_stack(x: torch.Tensor, state: dict[str, torch.Tensor], prefix: str, indices: tuple[int, ...]):
    """conv3x3 -> ReLU -> conv3x3 -> ReLU -> conv1x1, weights `prefix.<i>.weight` for i in `indices`."""
    first, second, last = indices
    x = F.relu(F.conv2d(x, state[f"{prefix}.{first}.weight"], state[f"{prefix}.{first}.bias"], padding=1))
    x = F.relu(F.conv2d(x, state[f"{prefix}.{second}.weight"], state[f"{prefix}.{second}.bias"], padding=1))
    return F.conv2d(x, state[f"{prefix}.{last}.weight"], state[f"{prefix}.{last}.bias"])


def _acol_oracle(features: torch.Tensor, state: dict, labels: torch.Tensor, pool: bool):
    """ACoL (paper, official vgg_v1.py): [3x3 avg pool], A; erase A's normalized map of `labels` >= 0.6; B."""
    if pool:
        features = F.avg_pool2d(features, 3, stride=1, padding=1)
    maps_a = _conv_stack(features, state, "classifier_a", (0, 2, 4))
    rows = torch.arange(len(labels))
    keep = (_normalize(maps_a[rows, labels]) < THRESHOLD).float()[:, None]
    maps_b = _conv_stack(features * keep, state, "classifier_b", (0, 2, 4))
    fused = torch.maximum(_normalize(maps_a[rows, labels]), _normalize(maps_b[rows, labels]))
    return maps_a.mean((2, 3)), maps_b.mean((2, 3)), fused


def _cam_oracle(features: torch.Tensor, state: dict, labels: torch.Tensor, conv: bool):
    """CAM (Zhou et al. 2016): [conv3x3 + ReLU], GAP, fc; the CAM of c is fc weight of c . feature."""
    if conv:
        features = F.relu(F.conv2d(features, state["conv.0.weight"], state["conv.0.bias"], padding=1))
    logits = F.linear(features.mean((2, 3)), state["fc.weight"], state["fc.bias"])
    cams = (state["fc.weight"][labels][:, :, None, None] * features).sum(1)
    return logits, _normalize(cams)


def _check_head(model, images: torch.Tensor, features: torch.Tensor, method: str, pool: bool = False) -> None:
    """Our logits and ground-truth-class maps equal the oracle head's on the oracle trunk's features."""
    labels = torch.tensor([3, 1])
    state = model.head.state_dict()
    output = model(images, labels)
    maps = model.localization_maps(output, labels)
    if method == "acol":
        logits_a, logits_b, fused = _acol_oracle(features, state, labels, pool)
        torch.testing.assert_close(output.logits_b, logits_b, rtol=1e-4, atol=1e-4)
    elif method == "cam":
        logits_a, fused = _cam_oracle(features, state, labels, conv="conv.0.weight" in state)
    else:  # Choe et al.'s InceptionCam: the conv classifier (dropout is off in eval mode)
        class_maps = _conv_stack(features, state, "classifier_a", (1, 4, 7))
        logits_a, fused = class_maps.mean((2, 3)), _normalize(class_maps[torch.arange(2), labels])
    torch.testing.assert_close(output.logits, logits_a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(maps, fused, rtol=1e-4, atol=1e-4)


# --- VGG16 ---

VGG16_CONVS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _vgg16_oracle(images: torch.Tensor, trunk: dict, pools: list) -> torch.Tensor:
    """torchvision's VGG16 layer list (conv at index i -> `features.i`), pool k replaced by pools[k]."""
    x, index, pool = images, 0, 0
    for item in VGG16_CONVS:
        if item == "M":
            if pools[pool] is not None:
                kernel, stride, padding = pools[pool]
                x = F.max_pool2d(x, kernel, stride=stride, padding=padding)
            pool, index = pool + 1, index + 1
        else:
            x = F.relu(
                F.conv2d(x, trunk[f"features.{index}.weight"], trunk[f"features.{index}.bias"], padding=1)
            )
            index += 2
    return x


OFFICIAL_ACOL_POOLS = [(3, 2, 1), (3, 2, 1), (3, 2, 1), (3, 1, 1), (3, 1, 1)]  # vgg_v1.py config D1
CAM_POOLS = [(2, 2, 0), (2, 2, 0), (2, 2, 0), (2, 2, 0), None]  # conv5_3 kept at 14x14 (Zhou et al.)


def test_vgg16_acol_equals_the_official_model(tmp_path: Path) -> None:
    reference = torchvision.models.vgg16(weights=None)
    trunk = _randomize(reference, seed=1)
    model = _model_with(tmp_path, reference, "vgg16", "acol", head_channels=1024)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    features = _vgg16_oracle(images, trunk, OFFICIAL_ACOL_POOLS)
    assert features.shape[-1] == 28
    _check_head(model, images, features, "acol", pool=True)
    model.train()  # train mode as well: no dropout or BN, so the same logits (the check)
    labels = torch.tensor([3, 1])
    logits_a, logits_b, _ = _acol_oracle(features, model.head.state_dict(), labels, pool=True)
    output = model(images, labels)
    torch.testing.assert_close(output.logits, logits_a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(output.logits_b, logits_b, rtol=1e-4, atol=1e-4)


def test_vgg16_cam_equals_the_published_cam(tmp_path: Path) -> None:
    reference = torchvision.models.vgg16(weights=None)
    trunk = _randomize(reference, seed=2)
    model = _model_with(tmp_path, reference, "vgg16", "cam", head_channels=1024)
    assert model.head.conv[0].out_channels == 1024
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    features = _vgg16_oracle(images, trunk, CAM_POOLS)
    assert features.shape[-1] == 14
    _check_head(model, images, features, "cam")


# --- ResNet-50 (Choe et al. wsol/resnet.py) ---


def _resnet50_oracle(reference: torch.nn.Module, images: torch.Tensor, large: bool) -> torch.Tensor:
    """torchvision's ResNet-50 with layer4 (and for large maps layer3) at stride 1, as Choe et al."""
    layers = [reference.layer4] + ([reference.layer3] if large else [])
    for layer in layers:
        layer[0].conv2.stride, layer[0].downsample[0].stride = (1, 1), (1, 1)
    x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(images))))
    return reference.layer4(reference.layer3(reference.layer2(reference.layer1(x))))


@pytest.mark.parametrize(("method", "large"), [("cam", False), ("acol", False), ("cam", True)])
def test_resnet50_equals_choe_et_al(tmp_path: Path, method: str, large: bool) -> None:
    reference = torchvision.models.resnet50(weights=None)
    _randomize(reference, seed=3)
    model = _model_with(tmp_path, reference, "resnet50", method, head_channels=64, large_feature_map=large)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    features = _resnet50_oracle(reference.eval(), images, large)
    assert features.shape[-1] == (28 if large else 14)
    _check_head(model, images, features, method)


# --- Inception-v3 (Choe et al. wsol/inception.py) ---


def _basic(block, x: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """torchvision's BasicConv2d (conv, BN eps 0.001, ReLU) with another stride and padding."""
    return F.relu(block.bn(F.conv2d(x, block.conv.weight, stride=stride, padding=padding)))


def _inception_oracle(net: torch.nn.Module, images: torch.Tensor, large: bool) -> torch.Tensor:
    x = _basic(net.Conv2d_1a_3x3, images, stride=2, padding=1)  # torchvision: padding 0
    x = net.Conv2d_2b_3x3(net.Conv2d_2a_3x3(x))
    x = F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True)
    x = net.Conv2d_4a_3x3(net.Conv2d_3b_1x1(x))
    x = F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True)
    x = net.Mixed_5d(net.Mixed_5c(net.Mixed_5b(x)))
    if not large:
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
    block = net.Mixed_6a  # InceptionB(288, kernel_size=3, stride=1, padding=1)
    double = _basic(block.branch3x3dbl_3, block.branch3x3dbl_2(block.branch3x3dbl_1(x)), 1, 1)
    x = torch.cat([_basic(block.branch3x3, x, 1, 1), double, F.max_pool2d(x, 3, stride=1, padding=1)], 1)
    return net.Mixed_6e(net.Mixed_6d(net.Mixed_6c(net.Mixed_6b(x))))


@pytest.mark.parametrize(("method", "large"), [("cam", False), ("acol", True)])
def test_inception_v3_equals_choe_et_al(tmp_path: Path, method: str, large: bool) -> None:
    reference = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    _randomize(reference, seed=4)
    model = _model_with(
        tmp_path, reference, "inception_v3", method, head_channels=64, large_feature_map=large
    )
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    features = _inception_oracle(reference.eval(), images, large)
    assert features.shape[-1] == (28 if large else 14)
    _check_head(model, images, features, "conv_cam" if method == "cam" else method)


# --- GoogLeNet (torchvision's trunk to inception4e) ---


@pytest.mark.parametrize(("method", "large"), [("acol", True), ("cam", False)])
def test_googlenet_trunk_is_torchvision_to_inception4e(tmp_path: Path, method: str, large: bool) -> None:
    reference = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    reference.transform_input = True  # as torchvision sets it for its ImageNet weights
    _randomize(reference, seed=5)
    model = _model_with(tmp_path, reference, "googlenet", method, head_channels=64, large_feature_map=large)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    net = reference.eval()
    x = net.maxpool2(net.conv3(net.conv2(net.maxpool1(net.conv1(net._transform_input(images))))))
    x = net.inception3b(net.inception3a(x))
    x = F.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True) if large else net.maxpool3(x)
    for name in ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e"):
        x = getattr(net, name)(x)
    assert x.shape[1:] == (832, 28 if large else 14, 28 if large else 14)
    _check_head(model, images, x, method)


# --- weights ---


@pytest.mark.parametrize(
    ("backbone", "method", "factory"),
    [
        ("vgg16", "acol", lambda: torchvision.models.vgg16(weights=None)),
        ("vgg16", "cam", lambda: torchvision.models.vgg16(weights=None)),
        ("resnet50", "acol", lambda: torchvision.models.resnet50(weights=None)),
        ("inception_v3", "cam", lambda: torchvision.models.inception_v3(weights=None, init_weights=False)),
        ("googlenet", "acol", lambda: torchvision.models.googlenet(weights=None, init_weights=False)),
    ],
)
def test_every_remap_loads_a_full_torchvision_state_dict(tmp_path: Path, backbone, method, factory) -> None:
    """The whole torchvision file (fc and aux heads included) loads strictly; every trunk tensor arrives."""
    reference = factory()
    path = tmp_path / f"{backbone}.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(backbone, 5, method, head_channels=8)
    load_backbone_weights(model.backbone, path)
    ours = model.backbone.state_dict()
    theirs = reference.state_dict()
    for key, value in ours.items():
        source = key.removeprefix("body.")
        torch.testing.assert_close(value, theirs[source], msg=key)


def test_a_trained_state_dict_round_trips(tmp_path: Path) -> None:
    model = build_model("googlenet", 5, "acol", head_channels=8)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    again = build_model("googlenet", 5, "acol", head_channels=8)
    load_model_weights(again, path)
    torch.testing.assert_close(again.state_dict(), model.state_dict())


def test_small_backbone_sees_exactly_its_documented_receptive_field() -> None:
    """Feature cell r of the small backbone depends on input pixels 4r-3 .. 4r+6 and no others (10 px).

    Hand-derived: 3x3 conv -> [y-1, y+1]; 2x2 pool; 3x3 conv on pooled cells -> [2q-3, 2q+4]; 2x2 pool ->
    [4r-3, 4r+6]; the 1x1 convs add nothing. With positive weights, raising one pixel by a lot raises every
    max it reaches, so the cell changes exactly when the pixel lies in its field (checked along a row and a
    column through the field).
    """
    from acol.models.backbones import SmallBackbone

    torch.manual_seed(0)
    backbone = SmallBackbone().double().eval()
    with torch.no_grad():
        for parameter in backbone.parameters():
            parameter.abs_()
    row, col = 7, 5
    base = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    probes = base.repeat(128, 1, 1, 1)
    for k in range(64):
        probes[k, :, k, 4 * col] += 100.0  # pixel (k, 4c): inside the field's columns
        probes[64 + k, :, 4 * row, k] += 100.0  # pixel (4r, k): inside the field's rows
    with torch.no_grad():
        cells = backbone(torch.cat([base, probes]))[:, :, row, col]
    changed = (cells[1:] - cells[0]).abs().amax(dim=1) > 1e-9
    field = torch.zeros(64, dtype=torch.bool)
    field[4 * row - 3 : 4 * row + 7] = True
    assert torch.equal(changed[:64], field)
    field = torch.zeros(64, dtype=torch.bool)
    field[4 * col - 3 : 4 * col + 7] = True
    assert torch.equal(changed[64:], field)
    assert SmallBackbone.receptive_field == 10
