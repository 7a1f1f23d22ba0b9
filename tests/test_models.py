"""Every registered model runs forward and backward on the CPU; ACoL's erasing and fusion do what the paper says."""

from __future__ import annotations

import pytest
import torch
import torchvision

from acol.models import (
    ARCHITECTURES,
    WeightsError,
    build_model,
    list_backbones,
    load_backbone_weights,
    load_model_weights,
    normalize_maps,
    param_groups,
)
from acol.models.heads import ACoLHead

# input size per backbone; the map sizes at 224 of every variant are checked in test_architectures.py
SIZES = {"small": 64, "vgg16": 224, "resnet50": 224, "inception_v3": 224, "googlenet": 224}


# HaS and CutMix build CAM's network (tests/test_batch_methods.py checks the layers equal): CAM's rows run it
# on the large backbones, the small one runs for each
NETWORKS = sorted((b, m) for b, m in ARCHITECTURES if b == "small" or m not in ("has", "cutmix"))


@pytest.mark.parametrize(("backbone", "method"), NETWORKS)
def test_forward_backward_every_model(backbone: str, method: str) -> None:
    assert set(SIZES) == set(list_backbones())
    size = SIZES[backbone]
    model = build_model(backbone, 5, method, head_channels=16)
    map_size = model(torch.zeros(1, 3, size, size)).maps_a.shape[-1]
    images, labels = torch.randn(2, 3, size, size), torch.tensor([0, 3])
    output = model(images, labels)
    assert output.logits.shape == (2, 5)
    assert output.maps_a.shape == (2, 5, map_size, map_size)
    assert (output.maps_b is not None) == (method == "acol")
    assert output.maps_a.shape[-2] == map_size
    model.loss(output, labels).backward()
    assert all(p.grad is not None for p in model.head.parameters())
    model.eval()
    with torch.no_grad():
        maps = model.localization_maps(model(images), torch.tensor([1, 2]))
    assert maps.shape == (2, map_size, map_size)
    assert float(maps.min()) >= 0.0 and float(maps.max()) == pytest.approx(1.0)


def test_logits_are_the_mean_of_the_class_maps() -> None:
    model = build_model("small", 3, "acol", head_channels=8).eval()
    output = model(torch.randn(1, 3, 32, 32))
    torch.testing.assert_close(output.logits, output.maps_a.mean(dim=(2, 3)))
    torch.testing.assert_close(output.logits_b, output.maps_b.mean(dim=(2, 3)))


def test_normalize_maps_min_max_and_constant() -> None:
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]])
    normalized = normalize_maps(maps)
    torch.testing.assert_close(normalized[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    torch.testing.assert_close(normalized[1], torch.zeros(2, 2))


class _FixedClassifier(torch.nn.Module):
    """Returns preset class maps whatever the input, and records what it was given."""

    def __init__(self, maps: torch.Tensor) -> None:
        super().__init__()
        self.maps = maps
        self.seen: torch.Tensor | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self.seen = features
        return self.maps


def test_acol_erases_where_the_ground_truth_map_is_high() -> None:
    head = ACoLHead(in_channels=2, num_classes=2, hidden_channels=4, erase_threshold=0.6)
    maps_a = torch.zeros(1, 2, 2, 2)
    maps_a[0, 1] = torch.tensor([[0.0, 10.0], [5.0, 7.0]])  # normalized: [[0, 1], [0.5, 0.7]]
    maps_a[0, 0] = torch.tensor([[9.0, 0.0], [0.0, 0.0]])  # the other class peaks elsewhere
    head.classifier_a = _FixedClassifier(maps_a)
    head.classifier_b = _FixedClassifier(torch.zeros(1, 2, 2, 2))
    features = torch.ones(1, 2, 2, 2)
    head.train()
    head(features, torch.tensor([1]))
    kept = head.classifier_b.seen[0, 0]
    torch.testing.assert_close(kept, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))  # >= 0.6 erased: 1.0 and 0.7
    # at inference A's top-1 class drives erasing: class 1 (logit 22/4) beats class 0 (9/4)
    head.eval()
    head(features)
    torch.testing.assert_close(head.classifier_b.seen[0, 0], torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    maps_a[0, 0] = torch.tensor([[90.0, 0.0], [0.0, 0.0]])  # now class 0 is top-1: its peak is erased
    head(features)
    torch.testing.assert_close(head.classifier_b.seen[0, 0], torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    # at inference a given class drives the erasing, as in the official code: class 1, although 0 is top-1
    head(features, torch.tensor([1]))
    torch.testing.assert_close(head.classifier_b.seen[0, 0], torch.tensor([[1.0, 0.0], [1.0, 0.0]]))


def test_localization_map_of_another_class_reruns_b_erased_by_that_class() -> None:
    model = build_model("small", 4, "acol", head_channels=8).eval()
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    with torch.no_grad():
        by_label = model(images, labels)
        top1 = by_label.logits.argmax(1)
        others = (top1 + 1) % 4  # surely not the erasing class of by_label
        expected = model.localization_maps(model(images, others), others)
        torch.testing.assert_close(model.localization_maps(by_label, others), expected)
        assert not torch.equal(model(images, others).maps_b, by_label.maps_b)


def test_acol_loss_is_the_sum_of_both_branches() -> None:
    model = build_model("small", 4, "acol", head_channels=8)
    labels = torch.tensor([0, 1, 2])
    output = model(torch.randn(3, 3, 32, 32), labels)
    ce = torch.nn.functional.cross_entropy
    expected = ce(output.logits, labels) + ce(output.logits_b, labels)
    torch.testing.assert_close(model.loss(output, labels), expected)


def test_fused_map_is_the_max_of_normalized_branch_maps() -> None:
    model = build_model("small", 3, "acol", head_channels=8).eval()
    classes = torch.tensor([2, 0])
    output = model(torch.randn(2, 3, 32, 32), classes)  # B erased by the classes whose maps are wanted
    a = normalize_maps(output.maps_a[torch.arange(2), classes])
    b = normalize_maps(output.maps_b[torch.arange(2), classes])
    torch.testing.assert_close(model.localization_maps(output, classes), torch.maximum(a, b))


def test_param_groups_give_heads_ten_times_the_lr_and_biases_their_multiplier() -> None:
    model = build_model("small", 3, "cam", head_channels=8)
    groups = param_groups(model, lr=0.01, head_lr_mult=10.0, bias_lr_mult=2.0)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len(lr_of) == len(list(model.parameters()))  # every parameter in exactly one group
    for name, parameter in model.named_parameters():
        expected = (
            0.01 * (10.0 if name.startswith("head.") else 1.0) * (2.0 if name.endswith("bias") else 1.0)
        )
        assert lr_of[id(parameter)] == pytest.approx(expected), name


def test_unknown_names_list_the_choices() -> None:
    with pytest.raises(ValueError, match="vgg16"):
        build_model("vgg19", 3)
    with pytest.raises(ValueError, match="acol"):
        build_model("small", 3, "gradcam")
    with pytest.raises(ValueError, match=r"resnet50-acol.*resnet50-cam"):  # a combination that does not exist
        build_model("resnet50", 3, "acol_a")


def test_vgg16_loads_torchvision_weights_from_a_local_file(tmp_path) -> None:
    reference = torchvision.models.vgg16(weights=None)
    path = tmp_path / "vgg16.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("vgg16", 10, backbone_weights=path)
    torch.testing.assert_close(model.backbone.features[28].weight, reference.features[28].weight)
    assert (
        isinstance(model.backbone.features[23], torch.nn.MaxPool2d)
        and model.backbone.features[23].stride == 1
    )


def test_resnet50_weights_remap_onto_the_stride_one_trunk(tmp_path) -> None:
    reference = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_model("resnet50", 10, head_channels=8).backbone
    load_backbone_weights(backbone, path)
    torch.testing.assert_close(backbone.body.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)


def test_bad_weight_files_fail_with_the_file_named(tmp_path) -> None:
    model = build_model("small", 4, "cam", head_channels=8)
    good = tmp_path / "model.pt"
    torch.save(model.state_dict(), good)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(WeightsError, match=r"truncated\.pt"):
        load_model_weights(model, truncated)

    not_a_state_dict = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(WeightsError, match=r"list\.pt.*state dict"):
        load_model_weights(model, not_a_state_dict)

    with pytest.raises(WeightsError, match="missing keys"):  # another architecture
        load_model_weights(build_model("small", 4, "acol", head_channels=8), good)

    with pytest.raises(WeightsError, match="class count"):  # another class count
        load_model_weights(build_model("small", 7, "cam", head_channels=8), good)

    with pytest.raises(WeightsError, match="not found"):
        load_model_weights(model, tmp_path / "absent.pt")

    fresh = build_model("small", 4, "cam", head_channels=8)
    load_model_weights(fresh, good)
    torch.testing.assert_close(fresh.state_dict(), model.state_dict())
