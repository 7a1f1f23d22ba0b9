"""What a stage takes from the machine: threads sized by the CPUs this process may use (not the host's), the
prepare readers' listing and thread pool bounded, the evaluate stage reading its mask paths once, and the
training dataset keeping its rows out of Python objects (DataLoader workers copy those on read)."""

from __future__ import annotations

import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from acol.config import EvaluateParams
from acol.data import cpus
from acol.data.dataset import ManifestDataset, load_image
from acol.data.manifest import read_manifest
from acol.data.readers import common, ilsvrc
from acol.data.transforms import eval_transform
from acol.inference.mapstore import columns_to_table
from acol.stages import evaluation as stage
from acol.stages.prepare import attach_masks
from tests.test_evaluation import _dataset

# --- CPUs this process may use ---


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    """A fake cgroup mount holding `files` (path relative to the mount -> content)."""
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "50000 100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 3.0),
        ({"cpu.max": "garbage\n"}, None),
        ({}, None),  # no cgroup files (not Linux, or no cpu controller)
    ],
)
def test_cgroup_quota_is_read_from_v2_and_v1_files(
    tmp_path: Path, files: dict[str, str], limit: float | None
) -> None:
    assert cpus.cgroup_cpu_limit(_cgroup(tmp_path, files)) == limit


@pytest.mark.parametrize(
    ("affinity", "cpu_max", "expected"),
    [
        (8, "max 100000", 8),
        (8, "200000 100000", 2),
        (8, "150000 100000", 2),  # 1.5 CPUs keep 2 threads busy
        (2, "400000 100000", 2),
        (8, "10000 100000", 1),  # a tenth of a CPU still runs one thread
    ],
)
def test_usable_cpus_is_the_smaller_of_affinity_and_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, affinity: int, cpu_max: str, expected: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)))
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the host's cores: never the answer here
    assert cpus.usable_cpus(_cgroup(tmp_path, {"cpu.max": cpu_max})) == expected


@pytest.fixture
def three_cpu_pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """A 64-core host, 4 CPUs in the affinity mask, a cgroup quota of 2.5 CPUs: 3 usable."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(cpus, "CGROUP_ROOT", _cgroup(tmp_path / "cgroup", {"cpu.max": "250000 100000\n"}))
    return 3


def test_evaluate_threads_follow_the_usable_cpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, three_cpu_pod: int
) -> None:
    sizes: list[int | None] = []

    class RecordingPool(ThreadPoolExecutor):
        def __init__(self, max_workers: int | None = None, **kwargs: Any) -> None:
            sizes.append(max_workers)
            super().__init__(max_workers, **kwargs)

    monkeypatch.setattr(stage, "ThreadPoolExecutor", RecordingPool)
    manifest, columns, *_ = _dataset(tmp_path, n=12)
    stage.evaluate_method(columns_to_table(columns), manifest, tmp_path, EvaluateParams(interval=0.1))
    assert sizes == [three_cpu_pod]


def test_a_private_ray_gets_the_usable_cpus(monkeypatch: pytest.MonkeyPatch, three_cpu_pod: int) -> None:
    import ray

    from acol.distributed import session

    calls: list[dict[str, Any]] = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(session, "local_temp_dir", lambda: None)
    session.ensure_ray(1)
    session.ensure_ray(5.5)  # a stage that reserves more than the pod has still gets what it reserves
    assert [c["num_cpus"] for c in calls] == [three_cpu_pod, 6]


# --- prepare: listing and the probe pool ---

WNID = "n01440764"


def _train_tree(root: Path, n: int) -> Path:
    """``train/<wnid>/`` with `n` empty image files, plus a text file and a folder named like an image."""
    folder = root / "train" / WNID
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"{WNID}_{i:05d}.JPEG").touch()
    (folder / "notes.txt").touch()
    (folder / "not_an_image.JPEG").mkdir()
    (root / "LOC_synset_mapping.txt").write_text(f"{WNID} tench, Tinca tinca\n")
    return folder


def _count_stats(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real_stat = os.stat

    def counting_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        calls.append(os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    return calls


def test_listing_a_folder_costs_no_stat_per_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _train_tree(tmp_path, 2000)
    expected = sorted(  # the oracle: every regular file with an image suffix, by name
        folder / name
        for name in os.listdir(folder)
        if os.path.splitext(name)[1].lower() in {".jpeg", ".jpg", ".png"} and os.path.isfile(folder / name)
    )
    calls = _count_stats(monkeypatch)
    listed = list(ilsvrc._list_images(folder))
    assert listed == expected and len(listed) == 2000
    assert len(calls) < 10, f"{len(calls)} stat calls to list {len(listed)} files"


class _LiveFutures(ThreadPoolExecutor):
    """Counts the futures alive at once (submitted and still referenced): the memory a pool's queue holds."""

    live = peak = 0
    lock = threading.Lock()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        future = super().submit(fn, *args, **kwargs)
        with self.lock:
            type(self).live += 1
            type(self).peak = max(type(self).peak, type(self).live)
        weakref.finalize(future, self._gone)
        return future

    @classmethod
    def _gone(cls) -> None:
        with cls.lock:
            cls.live -= 1


def test_probing_keeps_few_futures_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 3000
    _train_tree(tmp_path, n)
    monkeypatch.setattr(common, "ThreadPoolExecutor", _LiveFutures)  # the readers' shared prober
    monkeypatch.setattr(common, "image_size", lambda path: (40 + int(Path(path).stem[-1]), 30))
    table, problems = ilsvrc.read_ilsvrc_train(tmp_path, tmp_path / "LOC_synset_mapping.txt", num_threads=4)
    assert problems == []
    ids = [f"train/{WNID}/{WNID}_{i:05d}.JPEG" for i in range(n)]
    assert table.column("image_id").to_pylist() == ids
    assert table.column("width").to_pylist() == [40 + i % 10 for i in range(n)]  # each result to its image
    assert _LiveFutures.peak <= 200, f"peak {_LiveFutures.peak} futures alive"


def test_attaching_masks_lists_the_mask_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 500
    (tmp_path / "masks").mkdir()
    for i in range(0, n, 2):  # every other image has a mask
        (tmp_path / "masks" / f"img{i:04d}.png").touch()
    (tmp_path / "masks" / "img0001.png").mkdir()  # a folder is not a mask
    ids = pa.array([f"val/img{i:04d}.JPEG" for i in range(n)])
    table = pa.table({"image_id": ids, "mask_path": pa.nulls(n, pa.string())})
    expected = [
        f"masks/img{i:04d}.png" if os.path.isfile(tmp_path / f"masks/img{i:04d}.png") else None
        for i in range(n)
    ]
    calls = _count_stats(monkeypatch)
    out = attach_masks(table, tmp_path, "masks/")
    assert out.column("mask_path").to_pylist() == expected
    assert len(calls) < 10, f"{len(calls)} stat calls for {n} images"
    assert attach_masks(table, tmp_path, "no_such_folder").column("mask_path").null_count == n


# --- evaluate: mask paths read once ---


class _CountingTable:
    """A manifest table that counts the columns read from it (everything else goes to the table)."""

    def __init__(self, table: pa.Table, reads: dict[str, int]) -> None:
        self._table, self._reads = table, reads

    def column(self, name: str) -> pa.ChunkedArray:
        self._reads[name] = self._reads.get(name, 0) + 1
        return self._table.column(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


def _mask_path_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> tuple[int, dict]:
    reads: dict[str, int] = {}
    rows_of_maps = stage._rows_of_maps

    def counting(*args: Any) -> tuple[Any, Any, int]:
        ok, rows, failed = rows_of_maps(*args)
        return ok, _CountingTable(rows, reads), failed

    monkeypatch.setattr(stage, "_rows_of_maps", counting)
    monkeypatch.setattr(stage, "CHUNK", chunk)
    manifest, columns, *_ = _dataset(tmp_path / f"chunk{chunk}", n=60)
    params = EvaluateParams(interval=0.05, holdout_fraction=0.3)
    result = stage.evaluate_method(columns_to_table(columns), manifest, tmp_path / f"chunk{chunk}", params)
    return reads.get("mask_path", 0), result.metrics


def test_mask_paths_are_read_once_whatever_the_chunking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "chunk60").mkdir()
    (tmp_path / "chunk3").mkdir()
    one_chunk, metrics_one = _mask_path_reads(tmp_path, monkeypatch, 60)
    twenty_chunks, metrics_twenty = _mask_path_reads(tmp_path, monkeypatch, 3)
    assert 0 < one_chunk == twenty_chunks
    assert metrics_twenty["pxap"] == metrics_one["pxap"]


# --- the training dataset: rows in arrays, not Python lists ---


def test_dataset_rows_live_in_arrays_and_items_are_unchanged(tiny_dataset: dict) -> None:
    table = read_manifest(tiny_dataset["val"])
    dataset = ManifestDataset(table, tiny_dataset["root"], eval_transform(32))
    for name, value in vars(dataset).items():
        assert not isinstance(value, list | tuple | dict), f"{name} is a Python {type(value).__name__}"
        if isinstance(value, np.ndarray):
            assert value.dtype != object, f"{name} holds Python objects"
    ids, labels = table.column("image_id").to_pylist(), table.column("class_index").to_pylist()
    assert len(dataset) == len(ids) == 16
    for index in (0, 5, 15):  # the oracle: the image decoded and transformed by hand
        image, label, row = dataset[index]
        expected = eval_transform(32)(load_image(tiny_dataset["root"], ids[index]))
        assert torch.equal(image, expected)
        assert (type(label), label, type(row), row) == (int, labels[index], int, index)
    assert dataset.image_ids == ids
