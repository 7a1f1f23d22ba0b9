"""HaS and CutMix: the batch transforms against hand-worked cases and plain re-implementations of Choe et al.'s
code (`wsol/method/has.py`, `wsol/method/cutmix.py`, `main.py`), the mixed loss against its formula, their
network against CAM's, one training step of each, exact resume, and extraction of their maps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from acol.config import TrainParams
from acol.inference.predict import ForwardOptions, MapPredictor
from acol.models import ARCHITECTURES, build_model, list_backbones
from acol.models.heads import ModelOutput
from acol.training.batch_methods import (
    MixedTargets,
    cutmix,
    cutmix_box,
    hidden_patches,
    hide_and_seek,
    target_loss,
)
from acol.training.engine import build_optimizer, seed_epoch, train_one_epoch

NEW_METHODS = ("has", "cutmix")
CPU = torch.device("cpu")


# --- HaS ---


def _choe_has(image: torch.Tensor, grid_size: int, drop_rate: float) -> torch.Tensor:
    """Choe et al.'s `has` loop as written (square images), one torch draw per patch for `random.random()`."""
    image = image.clone()
    batch_size, _, height, width = image.size()
    for batch_idx in range(batch_size):
        for x in range(0, width, grid_size):
            for y in range(0, height, grid_size):
                x_end = min(height, x + grid_size)
                y_end = min(height, y + grid_size)
                if float(torch.rand(())) <= drop_rate:
                    image[batch_idx, :, x:x_end, y:y_end] = 0.0
    return image


@pytest.mark.parametrize(("size", "grid", "rate"), [(12, 4, 0.5), (13, 5, 0.3), (9, 9, 0.7), (8, 3, 1.0)])
def test_has_hides_what_choe_et_al_loop_hides(size: int, grid: int, rate: float) -> None:
    images = torch.rand(3, 2, size, size, generator=torch.Generator().manual_seed(size)) + 0.5  # no zeros
    labels = torch.tensor([2, 0, 1])
    torch.manual_seed(11)
    hidden, same_labels = hide_and_seek(images, labels, grid, rate)
    after = torch.rand(())
    torch.manual_seed(11)
    expected = _choe_has(images, grid, rate)
    assert torch.equal(hidden, expected)
    assert same_labels is labels and float(images.min()) >= 0.5  # the input is not changed
    assert torch.equal(after, torch.rand(()))  # one draw per patch, as the loop: the same state after


def test_has_tiny_grid_by_hand() -> None:
    """5x5 image, 3 px patches: a 2x2 grid (3 and 2 px wide); seed 0 draws 0.4963, 0.7682, 0.0885, 0.1320
    in the order top-left, top-right, bottom-left, bottom-right, so at drop rate 0.5 only the top-right
    patch (rows 0-2, columns 3-4) is kept."""
    torch.manual_seed(0)
    torch.testing.assert_close(
        torch.rand(4), torch.tensor([0.4963, 0.7682, 0.0885, 0.1320]), atol=1e-4, rtol=0
    )
    torch.manual_seed(0)
    hidden, _ = hide_and_seek(torch.ones(1, 3, 5, 5), torch.tensor([0]), grid_size=3, drop_rate=0.5)
    expected = torch.zeros(5, 5)
    expected[0:3, 3:5] = 1.0
    for channel in hidden[0]:
        assert torch.equal(channel, expected)


def test_has_edge_cases() -> None:
    images = torch.randn(2, 3, 8, 8)
    assert hide_and_seek(images, torch.tensor([0, 1]), 0, 0.5)[0] is images  # grid 0: nothing (Choe et al.)
    assert hidden_patches(2, 8, 6, 4, 1.0).all()  # rate 1: everything, non-square too
    assert not hidden_patches(2, 8, 6, 4, 0.0).any()  # a draw of exactly 0 aside
    mask = hidden_patches(4, 7, 10, 3, 0.5)  # non-square: each 3x3 block (cut at the border) is one value
    for top in range(0, 7, 3):
        for left in range(0, 10, 3):
            block = mask[:, top : top + 3, left : left + 3]
            assert (block == block[:, :1, :1]).all()


# --- CutMix ---


def test_cutmix_box_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """10x10, lam 0.64: sides int(10 * 0.6) = 6, half 3; centre (row 1, column 8) gives rows 1-3..1+3 clipped
    to 0..4 and columns 8-3..8+3 clipped to 5..10: a 4x5 box, so the corrected lam is 1 - 20/100 = 0.8."""
    centre = iter([1, 8])
    monkeypatch.setattr(torch, "randint", lambda high, size: torch.tensor(next(centre)))
    assert cutmix_box(10, 10, 0.64) == (0, 5, 4, 10)
    centre = iter([5, 5])
    assert cutmix_box(10, 10, 0.64) == (2, 2, 8, 8)  # inside: 2 * (6 // 2) = 6 px a side


def _choe_cutmix(images: torch.Tensor, labels: torch.Tensor, beta: float, prob: float):
    """Choe et al.'s main.py + cutmix.py, their NumPy draws replaced by torch draws in the same order."""
    if not (prob > float(torch.rand(())) and beta > 0):
        return images, labels, labels, 1.0
    concentration = torch.tensor(beta, dtype=torch.float64)
    lam = float(torch.distributions.Beta(concentration, concentration).sample())
    rand_index = torch.randperm(images.size()[0])
    x = images.clone()
    w, h = x.size()[2], x.size()[3]
    cut_rat = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(w * cut_rat), int(h * cut_rat)
    cx, cy = int(torch.randint(w, ())), int(torch.randint(h, ()))
    bbx1, bby1 = np.clip(cx - cut_w // 2, 0, w), np.clip(cy - cut_h // 2, 0, h)
    bbx2, bby2 = np.clip(cx + cut_w // 2, 0, w), np.clip(cy + cut_h // 2, 0, h)
    x[:, :, bbx1:bbx2, bby1:bby2] = x[rand_index, :, bbx1:bbx2, bby1:bby2]
    lam = 1 - ((bbx2 - bbx1) * (bby2 - bby1) / (x.size()[-1] * x.size()[-2]))
    return x, labels, labels[rand_index], lam


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_mixes_what_choe_et_al_mix(seed: int) -> None:
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(100 + seed))
    labels = torch.tensor([4, 3, 2, 1, 0])
    torch.manual_seed(seed)
    mixed, target = cutmix(images, labels, beta=1.0, prob=1.0)
    torch.manual_seed(seed)
    x, labels_a, labels_b, lam = _choe_cutmix(images, labels, 1.0, 1.0)
    assert isinstance(target, MixedTargets)
    assert torch.equal(mixed, x)
    assert torch.equal(target.labels_a, labels_a) and torch.equal(target.labels_b, labels_b)
    assert target.lam == pytest.approx(lam, abs=1e-12)
    # lam is the fraction of each image that is still its own: count the pixels pasted from another image
    order = 4 - target.labels_b  # label k is image 4 - k's: the permutation the labels carry
    pasted = (mixed != images).any(dim=1)  # (B, H, W); random images: a pasted pixel differs
    own = order == torch.arange(5)
    assert not pasted[own].any()  # an image "pasted" into itself is unchanged
    for k in torch.nonzero(~own).flatten():
        assert 1.0 - float(pasted[k].float().mean()) == pytest.approx(target.lam)
        rows, cols = torch.nonzero(pasted[k], as_tuple=True)
        box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
        assert torch.equal(mixed[k][:, box[0], box[1]], images[order[k]][:, box[0], box[1]])


def test_cutmix_probability_and_zero_beta_leave_the_batch() -> None:
    images, labels = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    assert cutmix(images, labels, beta=1.0, prob=0.0) == (images, labels)
    assert cutmix(images, labels, beta=0.0, prob=1.0) == (images, labels)


def test_mixed_loss_is_the_hand_formula() -> None:
    """logits (0, ln 3): softmax (1/4, 3/4); lam 0.8 of class 0 and 0.2 of class 1 gives
    -(0.8 ln 1/4 + 0.2 ln 3/4) per image; also CE with the mixed one-hot label (loss linear in the labels)."""
    model = build_model("small", 2, "cutmix", head_channels=4)
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    output = ModelOutput(logits=logits, maps_a=logits[:, :, None, None])
    target = MixedTargets(torch.tensor([0, 0]), torch.tensor([1, 1]), 0.8)
    want = -(0.8 * math.log(0.25) + 0.2 * math.log(0.75))
    assert float(target_loss(model.loss, output, target)) == pytest.approx(want, rel=1e-6)
    soft = torch.tensor([[0.8, 0.2], [0.8, 0.2]])
    torch.testing.assert_close(target_loss(model.loss, output, target), F.cross_entropy(logits, soft))
    assert float(target_loss(model.loss, output, torch.tensor([1, 1]))) == pytest.approx(-math.log(0.75))


# --- the network: CAM's, on every backbone ---


@pytest.mark.parametrize("method", NEW_METHODS)
def test_the_network_is_each_backbones_cam(method: str) -> None:
    """Choe et al.'s config.py builds architecture_type 'cam' for has and cutmix: the same layers, same map size."""
    for backbone in list_backbones():
        architecture, cam = ARCHITECTURES[(backbone, method)], ARCHITECTURES[(backbone, "cam")]
        assert architecture.large_feature_map == cam.large_feature_map
        assert f"wsol/method/{method}.py" in architecture.source
        with torch.device("meta"):
            ours, theirs = (build_model(backbone, 7, m, head_channels=8) for m in (method, "cam"))
        assert str(ours) == str(theirs)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in theirs.state_dict().items()
        }


def test_small_model_is_cam_as_published() -> None:
    """The small HaS model on a state dict built here against a functional CAM (Zhou et al. 2016): conv3x3 +
    ReLU, global average pool, fc; the map of class c is fc_c . features, min-max normalized."""
    model = build_model("small", 5, "has", head_channels=8).eval()
    generator = torch.Generator().manual_seed(3)
    state = {k: torch.randn(v.shape, generator=generator) * 0.3 for k, v in model.state_dict().items()}
    state = {k: (v.abs() + 0.5 if "running_var" in k else v) for k, v in state.items()}
    state.update({k: torch.tensor(0) for k in state if k.endswith("num_batches_tracked")})
    model.load_state_dict(state)
    images, labels = torch.randn(2, 3, 32, 32, generator=generator), torch.tensor([4, 1])
    with torch.no_grad():
        features = model.backbone(images)
        head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
        features = F.relu(F.conv2d(features, head["conv.0.weight"], head["conv.0.bias"], padding=1))
        logits = F.linear(features.mean((2, 3)), head["fc.weight"], head["fc.bias"])
        cams = (head["fc.weight"][labels][:, :, None, None] * features).sum(1)
        flat = cams.flatten(1)
        low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
        output = model(images, labels)
        torch.testing.assert_close(output.logits, logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.localization_maps(output, labels), (cams - low) / (high - low))


# --- training ---


def _batches(seed: int, count: int = 2, batch: int = 8, size: int = 32) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, 3, size, size, generator=generator),
            torch.randint(4, (batch,), generator=generator),
            None,
        )
        for _ in range(count)
    ]


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("method", NEW_METHODS)
def test_one_training_step_applies_the_transform(method: str) -> None:
    """Through `train_one_epoch`: the model sees the transformed batch, the loss is finite, the weights move,
    accuracy counts against each image's own label."""
    params = TrainParams(optimizer="sgd", lr=0.05, head_lr_mult=1.0, has_grid_size=8)
    torch.manual_seed(0)
    model = build_model("small", 4, method, head_channels=8)
    optimizer = build_optimizer(model, params)
    seen: list[torch.Tensor] = []
    model.backbone.register_forward_hook(lambda module, inputs, out: seen.append(inputs[0].detach().clone()))
    losses: list[tuple[torch.Tensor, ModelOutput]] = []
    original = model.loss

    def loss(output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        losses.append((labels, output))
        return original(output, labels)

    model.loss = loss  # type: ignore[method-assign]
    batches = _batches(1, count=1)
    before = _weights(model)
    torch.manual_seed(5)
    metrics = train_one_epoch(model, batches, optimizer, None, CPU, params=params)
    torch.manual_seed(5)
    images, labels, _ = batches[0]
    if method == "has":
        expected, target = hide_and_seek(images, labels, 8, params.has_drop_rate)
        assert len(losses) == 1 and torch.equal(losses[0][0], labels)
    else:
        expected, target = cutmix(images, labels, params.cutmix_beta, params.cutmix_prob)
        assert isinstance(target, MixedTargets)
        assert len(losses) == 2
        assert torch.equal(losses[0][0], labels) and torch.equal(losses[1][0], target.labels_b)
    assert torch.equal(seen[0], expected) and not torch.equal(seen[0], images)
    assert math.isfinite(metrics["loss"]) and not torch.equal(before, _weights(model))
    logits = losses[0][1].logits
    assert metrics["acc_a"] == float((logits.argmax(1) == labels).float().mean())


@pytest.mark.parametrize("method", NEW_METHODS)
def test_exact_resume_holds(method: str) -> None:
    """Two epochs straight equal one epoch, a restore into a fresh model and optimizer, and the second."""
    params = TrainParams(optimizer="sgd", lr=0.05, head_lr_mult=1.0)
    batches = _batches(2, batch=4, size=24)

    def fresh():
        torch.manual_seed(0)
        model = build_model("small", 4, method, head_channels=8)
        return model, build_optimizer(model, params)

    model, optimizer = fresh()
    for epoch in range(2):
        seed_epoch(7, 0, epoch)
        train_one_epoch(model, batches, optimizer, None, CPU, params=params)
    first, first_optimizer = fresh()
    seed_epoch(7, 0, 0)
    train_one_epoch(first, batches, first_optimizer, None, CPU, params=params)
    resumed, resumed_optimizer = fresh()
    resumed.load_state_dict(first.state_dict())
    resumed_optimizer.load_state_dict(first_optimizer.state_dict())
    torch.manual_seed(12345)  # whatever the process drew before: the epoch's seed decides
    seed_epoch(7, 0, 1)
    train_one_epoch(resumed, batches, resumed_optimizer, None, CPU, params=params)
    assert torch.equal(_weights(model), _weights(resumed))
    other, other_optimizer = fresh()
    seed_epoch(8, 0, 0)  # another seed hides or mixes other pixels
    train_one_epoch(other, batches, other_optimizer, None, CPU, params=params)
    assert not torch.equal(_weights(first), _weights(other))


# --- extraction ---


@pytest.mark.parametrize("method", NEW_METHODS)
def test_extraction_gives_the_cam_maps(method: str, tmp_path: Path) -> None:
    """`MapPredictor` runs unchanged on the new methods' models: their maps are CAM's on the same weights."""
    torch.manual_seed(1)
    model = build_model("small", 4, method, head_channels=8)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    images = torch.randint(
        0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    batch = {
        "image_id": np.array(["a", "b", "c"]),
        "class_index": np.array([0, 3, 1]),
        "width": np.array([32, 40, 50]),
        "height": np.array([32, 30, 20]),
        "error": np.array(["", "", ""], dtype=object),
        "image": images.numpy(),
    }
    got = MapPredictor(model.spec, str(path), ForwardOptions(32, 0.2))(batch)
    cam = build_model("small", 4, "cam", head_channels=8)
    cam.load_state_dict(model.state_dict())
    cam_path = tmp_path / "cam.pt"
    torch.save(cam.state_dict(), cam_path)
    want = MapPredictor(cam.spec, str(cam_path), ForwardOptions(32, 0.2))(batch)
    assert got.keys() == want.keys() and "map_b_gt" not in got
    for name in got:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    maps = got["map_gt"].astype(np.float32)
    assert maps.min() >= 0.0 and np.allclose(maps.max(axis=1), 1.0)
