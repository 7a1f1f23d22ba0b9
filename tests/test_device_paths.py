"""The device paths on the CPU: bf16 autocast (extraction and training), channels-last, host syncs, validation batch.

Why on the CPU: these paths exist for GPUs, but no test ran them (no test used ``amp=True``, channels-last or
bfloat16), and what they must keep (batch independence, the params reaching the model, one host sync per epoch)
does not depend on the device. The default path (CPU, float32, amp off) must stay bit for bit what it was.
"""

from __future__ import annotations

import json
import runpy
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import acol.distributed.extract as extract_module
import acol.inference.predict as predict_module
from acol.config import Params, TrainParams, load_params
from acol.data.dataset import ManifestDataset
from acol.data.manifest import manifest_classes, read_manifest
from acol.data.transforms import eval_transform
from acol.distributed.extract import ExtractionJob, extract, extract_plain
from acol.distributed.train import TrainLoopConfig, _val_loader
from acol.inference.mapstore import maps_array, ok_rows, read_maps
from acol.inference.model_card import spec_from_card
from acol.inference.predict import predict_batch
from acol.models import WSOLModel, build_model
from acol.training import engine
from acol.training.engine import build_optimizer, evaluate_classification, seed_everything, train_one_epoch

REPO = Path(__file__).resolve().parents[1]
MAP_COLUMNS = ("map_gt", "map_top1", "map_a_gt", "map_b_gt")
CPU = torch.device("cpu")


def _acol(seed: int = 0, head_channels: int = 16) -> WSOLModel:
    torch.manual_seed(seed)
    return build_model("small", 4, "acol", head_channels=head_channels).eval()


def _predict(model: WSOLModel, images: torch.Tensor, labels: np.ndarray, amp: bool) -> dict[str, Any]:
    n = len(labels)
    return predict_batch(model, images, labels, np.full(n, 48), np.full(n, 48), 0.2, amp=amp)


# --- 1. an image's maps depend on that image only (bf16 included) ---


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bf16"])
def test_an_images_maps_do_not_depend_on_another_images_label(amp: bool) -> None:
    """Image 3's label changes from its top-1 class to another: image 0's columns must not move.

    Before: any top-1 != label made `localization_maps` run B again for the whole batch, outside autocast (in
    float32), so under bf16 image 0's `map_top1` changed with image 3's label (0.014 here)."""
    model = _acol()
    images = torch.randn(4, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    top1 = _predict(model, images, np.zeros(4, dtype=np.int64), amp)["top5_classes"][:, 0].astype(np.int64)
    agree = _predict(model, images, top1, amp)  # every label is its image's top-1: B's pass is shared
    other = top1.copy()
    other[3] = (top1[3] + 1) % 4  # image 3's top-1 now differs from its label
    differ = _predict(model, images, other, amp)
    for name, values in agree.items():
        if values is not None:
            np.testing.assert_array_equal(values[:3], differ[name][:3], err_msg=name)
    assert not np.array_equal(agree["map_gt"][3], differ["map_gt"][3])  # image 3 itself did change
    # and its top-1 map is the one of the forward erased by its top-1 class, in the forward's precision
    np.testing.assert_array_equal(differ["map_top1"][3], agree["map_gt"][3])


def _fused_oracle(model: WSOLModel, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The fused map of `classes` from the method's description, by hand: A's map; B on the features zeroed
    where A's normalized map of that class is >= the threshold; element-wise max of the normalized maps."""
    head = model.head
    with torch.inference_mode():
        features = model.backbone(images)
        maps_a = head.classifier_a(features)[torch.arange(len(classes)), classes]

        def norm(m: torch.Tensor) -> torch.Tensor:
            low = m.amin(dim=(1, 2), keepdim=True)
            return (m - low) / (m.amax(dim=(1, 2), keepdim=True) - low).clamp_min(1e-8)

        keep = (norm(maps_a) < head.erase_threshold).unsqueeze(1).float()
        maps_b = head.classifier_b(features * keep)[torch.arange(len(classes)), classes]
        return torch.maximum(norm(maps_a), norm(maps_b))


def test_float32_top1_maps_equal_the_hand_computed_oracle() -> None:
    """Float32: the stored top-1 and GT maps are those of a pass erased by that class, for mixed batches."""
    model = _acol()
    images = torch.randn(6, 3, 48, 48, generator=torch.Generator().manual_seed(4))
    labels = np.array([0, 1, 2, 3, 0, 1])
    cols = _predict(model, images, labels, amp=False)
    top1 = torch.as_tensor(cols["top5_classes"][:, 0], dtype=torch.long)
    assert (top1.numpy() != labels).any() and (top1.numpy() == labels).any()  # a mixed batch
    for name, classes in (("map_top1", top1), ("map_gt", torch.as_tensor(labels))):
        want = _fused_oracle(model, images, classes).flatten(1).numpy()
        assert cols[name].dtype == np.float32, name
        np.testing.assert_allclose(cols[name], want, rtol=0, atol=1e-6)


def test_bf16_maps_are_close_to_float32() -> None:
    model = _acol()
    images = torch.randn(6, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    labels = np.array([0, 1, 2, 3, 0, 1])
    full, half = _predict(model, images, labels, amp=False), _predict(model, images, labels, amp=True)
    for name in ("map_gt", "map_a_gt"):
        gap = np.abs(full[name].astype(np.float32) - half[name].astype(np.float32))
        assert gap.max() > 0 and gap.mean() < 0.03, (name, gap.max(), gap.mean())


# --- 2. extract.amp and extract.channels_last reach the model ---


@pytest.fixture(scope="module")
def extract_setup(tiny_dataset: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("device_extract")
    classes = manifest_classes(read_manifest(tiny_dataset["val"]))
    torch.save(_acol().state_dict(), work / "model.pt")
    card = {"method": "acol", "backbone": "small", "num_classes": 4, "classes": classes}
    card["model"] = {"head_channels": 16, "erase_threshold": 0.6}
    return {"work": work, "card": card, "data": tiny_dataset}


def _extract_params(work: Path, *overrides: str) -> Params:
    base = ["train.image_size=48", "extract.batch_size=4", "extract.rows_per_file=7"]
    return load_params(work / "none.yaml", [*base, *overrides])


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What each `predict_batch` call of the predictor got: amp, the images' and the weights' memory format."""
    calls: list[dict[str, Any]] = []
    original = predict_module.predict_batch

    def spy(model: WSOLModel, images: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        weight = next(p for p in model.parameters() if p.ndim == 4)  # the first conv's
        calls.append(
            {
                "amp": kwargs.get("amp", False),
                "images_cl": images.is_contiguous(memory_format=torch.channels_last),
                "weights_cl": weight.is_contiguous(memory_format=torch.channels_last),
            }
        )
        return original(model, images, *args, **kwargs)

    monkeypatch.setattr(predict_module, "predict_batch", spy)
    return calls


def _run_extract(
    engine_fn: Callable[..., Any], s: dict[str, Any], params: Params, name: str, **kwargs: Any
) -> tuple[Any, Any, dict[str, Any]]:
    out = s["work"] / name
    job = ExtractionJob(
        params, "acol", s["data"]["val"], s["data"]["root"], s["work"] / "model.pt", s["card"], out
    )
    summary = engine_fn(job, **kwargs)
    return summary, ok_rows(read_maps(out / "maps")), json.loads((out / "summary.json").read_text())


def _no_ray(params: Params) -> Params:
    """`extract` with driver batches covering every row: the Ray engine's in-process path, no Ray started."""
    return params.model_copy(update={"extract": params.extract.model_copy(update={"driver_batches": 100})})


@pytest.mark.parametrize("engine_fn", [extract_plain, extract], ids=["plain", "ray-driver"])
def test_extract_amp_param_runs_bf16_and_is_recorded(
    extract_setup: dict[str, Any], seen: list[dict[str, Any]], engine_fn: Callable[..., Any]
) -> None:
    s = extract_setup
    _, full, full_json = _run_extract(engine_fn, s, _no_ray(_extract_params(s["work"])), "f32")
    assert seen and not any(c["amp"] or c["images_cl"] or c["weights_cl"] for c in seen)
    assert full_json["amp"] is False and full_json["channels_last"] is False
    seen.clear()
    params = _no_ray(_extract_params(s["work"], "extract.amp=true"))
    summary, half, half_json = _run_extract(engine_fn, s, params, "bf16")
    assert seen and all(c["amp"] for c in seen)
    assert summary.amp is True and half_json["amp"] is True and half_json["channels_last"] is False
    for column in ("map_gt", "map_a_gt"):
        gap = np.abs(maps_array(full, column) - maps_array(half, column))
        assert gap.max() > 0 and gap.mean() < 0.03, (column, gap.max(), gap.mean())
    # an explicit argument wins over the params (the benchmark's --bf16)
    seen.clear()
    _run_extract(engine_fn, s, params, "explicit", amp=False)
    assert seen and not any(c["amp"] for c in seen)


def test_extract_channels_last_param_reaches_the_model(
    extract_setup: dict[str, Any], seen: list[dict[str, Any]]
) -> None:
    s = extract_setup
    _, full, _ = _run_extract(extract_plain, s, _extract_params(s["work"]), "default")
    seen.clear()
    summary, last, on_disk = _run_extract(
        extract_plain, s, _extract_params(s["work"], "extract.channels_last=true"), "channels_last"
    )
    assert seen and all(c["images_cl"] and c["weights_cl"] and not c["amp"] for c in seen)
    assert summary.channels_last is True and on_disk["channels_last"] is True
    for column in MAP_COLUMNS:  # float32 in another memory layout: the same maps up to rounding
        np.testing.assert_allclose(maps_array(full, column), maps_array(last, column), atol=2e-3)


def test_the_plain_loader_batch_is_pinnable_and_predicts_as_a_numpy_one(
    extract_setup: dict[str, Any],
) -> None:
    """``pin_memory`` pins tensors only: the plain engine's collate hands the images as a tensor (before: NumPy,
    so pinning did nothing), which the predictor takes as it is, with the same columns as from NumPy."""
    s = extract_setup
    table = read_manifest(s["data"]["val"]).slice(0, 4)
    dataset = extract_module._DecodeDataset(table, str(s["data"]["root"]), 48)
    batch = extract_module._collate([dataset[i] for i in range(4)])
    assert isinstance(batch["image"], torch.Tensor) and batch["image"].dtype == torch.uint8
    assert predict_module._ok_images(batch["image"], np.ones(4, dtype=bool)) is batch["image"]  # no copy
    spec = spec_from_card(s["card"], Params(), "acol", s["card"]["classes"])
    options = predict_module.ForwardOptions(size=48, box_threshold=0.2)
    predictor = predict_module.MapPredictor(spec, str(s["work"] / "model.pt"), options)
    for failed in (None, 1):
        tensor_batch = dict(batch, error=batch["error"].copy())
        if failed is not None:
            tensor_batch["error"][failed] = "missing image: test"
        numpy_batch = dict(tensor_batch, image=tensor_batch["image"].numpy())
        a, b = predictor(tensor_batch), predictor(numpy_batch)
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_the_extract_stage_passes_the_params(
    extract_setup: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pipelines/extract.py --set extract.amp=true --set extract.channels_last=true`` hands both on."""
    got: list[dict[str, Any]] = []

    class Stop(Exception):
        pass

    def fake(job: ExtractionJob, **kwargs: Any) -> None:
        got.append(
            {"amp": job.params.extract.amp, "channels_last": job.params.extract.channels_last, **kwargs}
        )
        raise Stop

    monkeypatch.setattr(extract_module, "extract_plain", fake)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    work = extract_setup["work"]
    argv = ["--method", "acol", "--engine", "plain", "--params", str(tmp_path / "none.yaml"),
            "--manifest", str(extract_setup["data"]["val"]), "--model", str(work / "model.pt"),
            "--model-card", str(work / "model_card.json"), "--out", str(tmp_path / "extract"),
            "--set", "extract.amp=true", "--set", "extract.channels_last=true"]  # fmt: skip
    main = runpy.run_path(str(REPO / "pipelines" / "extract.py"), run_name="pipelines_extract")["main"]
    with pytest.raises(Stop):
        main(argv)
    assert got == [{"amp": True, "channels_last": True}]


def test_extract_params_default_off() -> None:
    defaults = Params().extract
    from_yaml = load_params(REPO / "params.yaml").extract
    assert (
        (defaults.amp, defaults.channels_last) == (from_yaml.amp, from_yaml.channels_last) == (False, False)
    )
    assert load_params(REPO / "params.yaml").train.deterministic is TrainParams().deterministic is False


# --- 3. training: bf16 on the CPU, the epoch's numbers, one host sync per epoch ---


def _train_loader(tiny_dataset: dict[str, Path], batch: int = 6) -> DataLoader:
    table = read_manifest(tiny_dataset["train"]).take(list(range(0, 32, 2)))  # 16 images, 4 per class
    return DataLoader(ManifestDataset(table, tiny_dataset["root"], eval_transform(32)), batch_size=batch)


def _recording_loss(model: WSOLModel) -> list[tuple[float, int, int, int]]:
    """Wrap the model's loss: each step's (loss, batch, A correct, B correct), computed here independently."""
    steps: list[tuple[float, int, int, int]] = []
    original = model.loss

    def loss(output: Any, labels: torch.Tensor) -> torch.Tensor:
        value = original(output, labels)
        steps.append(
            (
                value.item(),
                len(labels),
                int((output.logits.argmax(1) == labels).sum().item()),
                int((output.logits_b.argmax(1) == labels).sum().item()),
            )
        )
        return value

    model.loss = loss  # type: ignore[method-assign]
    return steps


def test_epoch_metrics_are_the_sample_weighted_means_of_the_steps(tiny_dataset: dict[str, Path]) -> None:
    """16 images in batches of 6, 6, 4: the epoch's loss is exactly sum(loss * batch) / 16 in float64."""
    seed_everything(0)
    model = build_model("small", 4, "acol", head_channels=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = _recording_loss(model)
    metrics = train_one_epoch(model, _train_loader(tiny_dataset), optimizer, None, CPU)
    assert [b for _, b, _, _ in steps] == [6, 6, 4]
    want = 0.0
    for value, batch, _, _ in steps:
        want += value * batch
    assert metrics["loss"] == want / 16  # to the last bit
    assert metrics["acc_a"] == sum(a for *_, a, _ in steps) / 16
    assert metrics["acc_b"] == sum(b for *_, b in steps) / 16
    assert metrics["samples"] == 16


_SYNCS = ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy")


@pytest.fixture
def engine_syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    """Count tensor -> host reads (`.item()`, `float(t)`, `.tolist()`...) made by `acol/training/engine.py`."""
    counts: Counter = Counter()
    for name in _SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(
            self: torch.Tensor, *args: Any, _original: Any = original, _name: str = name, **kwargs: Any
        ) -> Any:
            if sys._getframe(1).f_code.co_filename == engine.__file__:
                counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    yield counts


@pytest.mark.parametrize("method", ["acol", "cam", "has", "cutmix"])
def test_one_host_sync_per_epoch_not_per_step(
    tiny_dataset: dict[str, Path], engine_syncs: Counter, method: str
) -> None:
    """Before: `float(loss)` and two `float(correct)` every step (9 reads for 3 steps of ACoL); now one."""
    seed_everything(0)
    model = build_model("small", 4, method, head_channels=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = _train_loader(tiny_dataset)
    for _ in range(2):
        engine_syncs.clear()
        train_one_epoch(model, loader, optimizer, None, CPU)
        assert sum(engine_syncs.values()) == 1, dict(engine_syncs)
    engine_syncs.clear()
    evaluate_classification(model, _train_loader(tiny_dataset, batch=5), CPU)  # 4 batches
    assert sum(engine_syncs.values()) == 1, dict(engine_syncs)


def test_evaluation_numbers_are_the_per_image_counts(tiny_dataset: dict[str, Path]) -> None:
    """Validation accumulated on the device: the same loss sum (float64 of float32 batch sums) and counts."""
    seed_everything(0)
    model = build_model("small", 4, "acol", head_channels=16).eval()
    loader = _train_loader(tiny_dataset, batch=5)
    loss = 0.0
    top1 = top5 = 0
    with torch.inference_mode():
        for images, labels, _ in loader:
            logits = model(images).logits
            loss += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            ranked = logits.argsort(dim=1, descending=True)
            top1 += int((ranked[:, 0] == labels).sum())
            top5 += int((ranked[:, :4] == labels[:, None]).any(1).sum())
    got = evaluate_classification(model, loader, CPU)
    assert got == {"val_loss": loss / 16, "val_top1": top1 / 16, "val_top5": top5 / 16}


@pytest.mark.parametrize("method", ["acol", "cam"])
def test_bf16_training_step_on_the_cpu_is_finite_and_close_to_float32(
    tiny_dataset: dict[str, Path], method: str
) -> None:
    """``train.amp``: one step under bf16 autocast (the forward in bfloat16) against the same step in float32."""
    loader = _train_loader(tiny_dataset, batch=16)
    results = {}
    for amp in (False, True):
        seed_everything(0)
        model = build_model("small", 4, method, head_channels=16)
        dtypes: list[torch.dtype] = []
        original = model.loss

        def loss(output: Any, labels: torch.Tensor, _original: Any = original, _dtypes: list = dtypes) -> Any:
            _dtypes.append(output.logits.dtype)
            return _original(output, labels)

        model.loss = loss  # type: ignore[method-assign]
        optimizer = build_optimizer(model, TrainParams(optimizer="sgd", lr=0.01, head_lr_mult=1.0))
        metrics = train_one_epoch(model, loader, optimizer, None, CPU, amp=amp)
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        results[amp] = (metrics["loss"], weights, dtypes)
    (loss32, w32, d32), (loss16, w16, d16) = results[False], results[True]
    assert d32 == [torch.float32] and d16 == [torch.bfloat16]  # autocast really ran
    assert np.isfinite(loss16) and loss16 == pytest.approx(loss32, rel=2e-2)
    assert torch.isfinite(w16).all() and (w16 - w32).abs().max() < 1e-2


# --- 4. validation batch; cuDNN settings ---


@pytest.mark.parametrize("workers", [1, 8])
def test_validation_runs_at_the_global_batch_on_rank_0(tiny_dataset: dict[str, Path], workers: int) -> None:
    """Rank 0 alone validates the whole split: at the global batch (20), not 20 // 8 = 2."""
    sets = ["train.batch_size=20", "train.image_size=32", f"train.num_workers={workers}"]
    params = load_params(Path("none.yaml"), sets)
    manifest, root = tiny_dataset["val"], tiny_dataset["root"]
    config = TrainLoopConfig(params, "acol", manifest, manifest, root, run_dir="/r")
    loader = _val_loader(config)
    assert loader.batch_size == 20
    assert loader.pin_memory is False  # CPU run
    gpu = params.model_copy(update={"train": params.train.model_copy(update={"use_gpu": True})})
    assert _val_loader(replace(config, params=gpu)).pin_memory is True


@pytest.fixture
def cudnn_state() -> Iterator[None]:
    before = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before


@pytest.mark.usefixtures("cudnn_state")
@pytest.mark.parametrize("deterministic", [False, True])
def test_cudnn_settings_follow_train_deterministic(deterministic: bool) -> None:
    from acol.distributed.train import _configure_cudnn

    _configure_cudnn(deterministic)
    assert torch.backends.cudnn.benchmark is (not deterministic)
    assert torch.backends.cudnn.deterministic is deterministic
