"""Benchmark the training input: images/s per CPU core of the DataLoader path vs the Ray Data path, side by side.

Both decode the same JPEGs (500x375, quality 90, about 100 KB each like an average ILSVRC file: blurred
noise made with OpenCV) with the training transform of ``train.transform`` at ``--image-size`` (resize the
shorter side to 8/7 of it, random crop, flip, normalize) and count the images that come out:

- ``loader``: `ManifestDataset` + `DataLoader(num_workers=0)` in this process with one torch thread: what each
  Ray Train worker does with ``train.input: loader`` and ``train.loader_workers: 0``. Decode and transform
  are also timed apart.
- ``ray_data``: `acol.distributed.ingest.epoch_dataset` on a local Ray with ``--cores`` CPUs (one decode task
  per CPU), consumed here with `iter_torch_batches` and normalized, as a worker would on its device. One epoch
  warms the task workers up; the next ones are timed. Per core = images/s / ``--cores`` (this consuming
  process runs on top of those cores).

Each path also reports images per CPU second: CPU time (user + system) of this process and, for Ray Data, of
every process under it (raylet, GCS, task workers): the cost per image whatever the machine's load, which on a
shared machine is the fairer "per core" figure (wall-clock rates there fall with the other users' load).

    python benchmarks/bench_input.py --images 512 --cores 1

JSON goes to benchmarks/results/input.json. On a shared machine the figures move with its load: the JSON
records the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from acol.data.dataset import ManifestDataset, load_image
from acol.data.manifest import manifest_from_records, read_manifest, write_manifest
from acol.data.transforms import normalize, train_transform

CLASSES = ["n00000000", "n00000001", "n00000002", "n00000003"]
WIDTH, HEIGHT, QUALITY = 500, 375, 90
H100_IMAGES_PER_SECOND = 1600  # the VGG16-ACoL training rate on one H100 (assumed, not measured)


def write_jpegs(root: Path, count: int, seed: int = 0) -> tuple[Path, float]:
    """`count` 500x375 q90 JPEGs and their manifest; returns the manifest and the mean file size (bytes)."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True, exist_ok=True)
    records, sizes = [], []
    for i in range(count):
        image_id = f"train/{i:06d}.JPEG"
        noise = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        ok, data = cv2.imencode(
            ".jpg", cv2.GaussianBlur(noise, (0, 0), 0.8), [cv2.IMWRITE_JPEG_QUALITY, QUALITY]
        )
        assert ok
        (root / image_id).write_bytes(data.tobytes())
        sizes.append(len(data))
        records.append({"image_id": image_id, "class_index": i % len(CLASSES), "width": WIDTH,
                        "height": HEIGHT, "boxes": [[100.0, 80.0, 400.0, 300.0]]})  # fmt: skip
    path = root / "train.parquet"
    write_manifest(manifest_from_records(records, CLASSES, "synthetic"), path)
    return path, float(np.mean(sizes))


def _cpu_seconds(with_children: bool = False) -> float:
    """User + system CPU seconds of this process (and of every live process under it)."""
    import psutil

    me = psutil.Process()
    processes = [me, *me.children(recursive=True)] if with_children else [me]
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def loader_path(
    manifest: Path, root: Path, size: int, protocol: str, batch: int, rounds: int
) -> dict[str, Any]:
    """Today's input in one process and one thread: DataLoader rate, and decode / transform apart."""
    torch.set_num_threads(1)
    table = read_manifest(manifest)
    dataset = ManifestDataset(table, root, train_transform(size, protocol))
    rates, cpu_start, total = [], _cpu_seconds(), 0
    for _ in range(rounds):
        start, count = time.perf_counter(), 0
        for images, _, _ in DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0):
            count += images.shape[0]
        rates.append(count / (time.perf_counter() - start))
        total += count
    cpu = _cpu_seconds() - cpu_start
    ids = dataset.image_ids
    start = time.perf_counter()
    decoded = [load_image(root, i) for i in ids]
    decode_s = time.perf_counter() - start
    transform = train_transform(size, protocol)
    start = time.perf_counter()
    for image in decoded:
        transform(image)
    transform_s = time.perf_counter() - start
    return {
        "images_per_second_per_core": statistics.median(rates),
        "rounds": rates,
        "images_per_cpu_second": total / cpu,
        "decode_ms_per_image": 1000 * decode_s / len(ids),
        "transform_ms_per_image": 1000 * transform_s / len(ids),
    }


def ray_data_path(
    manifest: Path, root: Path, size: int, protocol: str, batch: int, cores: int, rounds: int
) -> dict:
    """The Ray Data input on `cores` CPUs: one warm-up epoch, then `rounds` timed epochs."""
    import ray
    from ray.data import DataContext

    from acol.distributed.ingest import epoch_dataset

    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    norm = normalize()
    rates, total, cpu_start = [], 0, 0.0
    try:
        for epoch in range(rounds + 1):
            dataset = epoch_dataset(manifest, root, size, protocol=protocol, seed=0, epoch=epoch + 1)
            if epoch == 1:
                cpu_start = _cpu_seconds(with_children=True)
            start, count = time.perf_counter(), 0
            for rows in dataset.iter_torch_batches(batch_size=batch, device="cpu"):
                count += norm(rows["image"]).shape[0]
            if epoch:  # the first epoch starts the task workers
                rates.append(count / (time.perf_counter() - start))
                total += count
        cpu = _cpu_seconds(with_children=True) - cpu_start
    finally:
        ray.shutdown()
    return {
        "images_per_second": statistics.median(rates),
        "images_per_second_per_core": statistics.median(rates) / cores,
        "rounds": rates,
        "images_per_cpu_second": total / cpu,
        "cores": cores,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=224, help="training crop (224 for VGG16-ACoL)")
    parser.add_argument("--transform", default="acol", choices=["acol", "choe"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cores", type=int, default=1, help="CPUs of the Ray Data path's local Ray")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the images per path")
    parser.add_argument("--out", default="benchmarks/results/input.json")
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest, mean_bytes = write_jpegs(root, args.images)
        common = (manifest, root, args.image_size, args.transform, args.batch_size)
        loader = loader_path(*common, args.rounds)
        ray_data = ray_data_path(*common, args.cores, args.rounds)
    per_core = loader["images_per_second_per_core"]
    result = {
        "benchmark": "input",
        "config": vars(args),
        "images": {
            "width": WIDTH,
            "height": HEIGHT,
            "jpeg_quality": QUALITY,
            "mean_bytes": round(mean_bytes),
        },
        "loader": loader,
        "ray_data": ray_data,
        "ray_data_over_loader_per_core": ray_data["images_per_second_per_core"] / per_core,
        # arithmetic from the measured loader rate, not a measurement on an H100
        "cores_to_feed_one_h100_at_1600_images_per_s": H100_IMAGES_PER_SECOND / per_core,
        "cores_by_cpu_seconds": {
            "loader": H100_IMAGES_PER_SECOND / loader["images_per_cpu_second"],
            "ray_data": H100_IMAGES_PER_SECOND / ray_data["images_per_cpu_second"],
        },
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "opencv": cv2.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    keys = ("loader", "ray_data", "cores_to_feed_one_h100_at_1600_images_per_s", "cores_by_cpu_seconds")
    print(json.dumps({k: result[k] for k in keys}, indent=2))


if __name__ == "__main__":
    main()
