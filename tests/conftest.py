"""Shared fixtures: one local Ray session for the whole run, and a tiny on-disk dataset with manifests.

The CPU kernels are pinned here, before anything imports torch, as every stage pins them (`acol.cpu_isa`):
the test process, its Ray workers and its subprocesses then compute with the same kernels, whatever the order
in which tests call the stages' code.
"""

from __future__ import annotations

import os
from pathlib import Path

from acol.cpu_isa import pin_cpu_isa

pin_cpu_isa()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from acol.data.manifest import manifest_from_records, write_manifest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_CLASSES = ["n90000000", "n90000001", "n90000002", "n90000003"]
TINY_COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 200, 40)]


def _write_tiny_split(root: Path, split: str, per_class: int, size: int, seed: int) -> list[dict]:
    """Images of one coloured rectangle on noise; the rectangle is the box and the mask."""
    rng = np.random.default_rng(seed)
    records = []
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "masks" / split).mkdir(parents=True, exist_ok=True)
    for class_index, colour in enumerate(TINY_COLOURS):
        for n in range(per_class):
            image = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
            x0, y0 = rng.integers(0, size // 2, size=2)
            x1, y1 = x0 + rng.integers(size // 4, size // 2), y0 + rng.integers(size // 4, size // 2)
            image[y0:y1, x0:x1] = colour
            mask = np.zeros((size, size), np.uint8)
            mask[y0:y1, x0:x1] = 255
            name = f"{TINY_CLASSES[class_index]}_{n:04d}"
            image_id = f"{split}/{name}.JPEG"
            cv2.imwrite(str(root / image_id), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(root / "masks" / split / f"{name}.png"), mask)
            records.append(
                {
                    "image_id": image_id,
                    "class_index": class_index,
                    "width": size,
                    "height": size,
                    "boxes": [[float(x0), float(y0), float(x1 - 1), float(y1 - 1)]],
                    "mask_path": f"masks/{split}/{name}.png",
                }
            )
    return records


def tracking_store_entries(root: Path) -> frozenset[str]:
    """What the MLflow store of a folder holds, as names: the run folders under ``mlruns/`` and ``mlflow.db``
    with its modification time (the stages' default store: ``sqlite:///mlflow.db``, artifacts in ./mlruns)."""
    runs = root / "mlruns"
    names = {p.relative_to(root).as_posix() for p in runs.glob("*/*")} if runs.is_dir() else set()
    db = root / "mlflow.db"
    if db.is_file():
        names.add(f"mlflow.db@{db.stat().st_mtime_ns}")
    return frozenset(names)


@pytest.fixture(autouse=True)
def _no_tracking_in_the_repository(request: pytest.FixtureRequest):
    """Fails a test that writes into the repository's own MLflow store: a sqlite store in tmp_path still puts
    its artifacts in ./mlruns of the working folder (the repository), where `dvc repro` keeps its runs."""
    before = tracking_store_entries(REPO)
    yield
    new = sorted(tracking_store_entries(REPO) - before)
    if new:
        pytest.fail(
            f"{request.node.nodeid} wrote into the repository's MLflow store ({', '.join(new[:3])}): give it a "
            "tracking store and a working folder under tmp_path (monkeypatch.chdir)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """4 classes, 8 train and 4 val images per class, 48x48 px; returns root and manifest paths."""
    root = tmp_path_factory.mktemp("tiny_dataset")
    paths = {"root": root}
    for split, per_class, seed in (("train", 8, 0), ("val", 4, 1)):
        records = _write_tiny_split(root, split, per_class, 48, seed)
        path = root / f"{split}.parquet"
        write_manifest(manifest_from_records(records, TINY_CLASSES, "synthetic"), path)
        paths[split] = path
    return paths


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance shared by every test that needs Ray (start-up costs seconds)."""
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if not ray.is_initialized():
        # address="local": a private instance, never a cluster `ray start` recorded on this machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` need a GPU: skipped where there is none (CI), run by benchmarks/gpu_check.sh."""
    cuda_items = [item for item in items if "cuda" in item.keywords]
    if not cuda_items:
        return  # torch is not imported for nothing
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in cuda_items:
        item.add_marker(skip)
