"""Benchmark training: the Ray Train loop (1 worker) vs a plain single-process loop, side by side.

Both run the same `train_one_epoch` on the same model, images, transform and batch size, with the same number
of CPU threads (Ray Train sets OMP_NUM_THREADS to the worker's CPUs; the plain loop calls
`torch.set_num_threads` with that number). Reports training samples/s per epoch (the first epoch is warm-up
and left out of the median), the ratio Ray / plain, and the end-to-end seconds of each (Ray's includes
starting the worker group and writing a checkpoint per epoch). JSON goes to benchmarks/results/train.json.
Images are random-noise JPEGs: speed does not depend on what they show.

    python benchmarks/bench_train.py --images 256 --epochs 4 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import logging
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

from acol.config import Params, load_params
from acol.data.dataset import ManifestDataset
from acol.data.manifest import manifest_from_records, read_manifest, write_manifest
from acol.data.transforms import train_transform
from acol.models import build_model
from acol.training.engine import build_optimizer, build_scheduler, seed_everything, train_one_epoch

log = logging.getLogger("bench_train")
CLASSES = ["n00000000", "n00000001", "n00000002", "n00000003"]


def write_dataset(root: Path, split: str, count: int, size: int, seed: int) -> Path:
    """`count` noise JPEGs of `size` px over 4 classes, and their manifest."""
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        image_id = f"{split}/{i:06d}.JPEG"
        cv2.imwrite(str(root / image_id), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        box = [[size / 4, size / 4, 3 * size / 4, 3 * size / 4]]
        records.append(
            {
                "image_id": image_id,
                "class_index": i % len(CLASSES),
                "width": size,
                "height": size,
                "boxes": box,
            }
        )
    path = root / f"{split}.parquet"
    write_manifest(manifest_from_records(records, CLASSES, "synthetic"), path)
    return path


def plain_loop(params: Params, method: str, manifest: Path, root: Path, threads: int) -> dict[str, Any]:
    """The same work as one Ray worker, in this process: build, then `train_one_epoch` per epoch."""
    start = time.perf_counter()
    torch.set_num_threads(threads)
    seed_everything(params.train.seed)
    dataset = ManifestDataset(read_manifest(manifest), root, train_transform(params.train.image_size))
    loader = DataLoader(dataset, batch_size=params.train.batch_size, shuffle=True)
    model = build_model(params.model.backbone, len(CLASSES), method, head_channels=params.model.head_channels)
    optimizer = build_optimizer(model, params.train)
    scheduler = build_scheduler(optimizer, params.train, len(loader))
    rates = [
        train_one_epoch(model, loader, optimizer, scheduler, torch.device("cpu"))["samples_per_second"]
        for _ in range(params.train.epochs)
    ]
    return {"samples_per_second": rates, "wall_seconds": time.perf_counter() - start}


def ray_loop(params: Params, method: str, train: Path, val: Path, root: Path, out: Path) -> dict[str, Any]:
    from acol.distributed.train import fit

    start = time.perf_counter()
    outcome = fit(params, method, train, val, root, out)
    rates = [row["samples_per_second"] for row in outcome.history]
    return {"samples_per_second": rates, "wall_seconds": time.perf_counter() - start}


def _steady(rates: list[float]) -> float:
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--head-channels", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads of each loop (= Ray cpus_per_worker)"
    )
    parser.add_argument("--method", default="acol", choices=["acol", "cam"])
    parser.add_argument("--out", default="benchmarks/results/train.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import ray

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train = write_dataset(root, "train", args.images, args.image_size, seed=0)
        val = write_dataset(root, "val", len(CLASSES) * 4, args.image_size, seed=1)
        overrides = [
            f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch_size}",
            f"train.image_size={args.image_size}",
            f"model.head_channels={args.head_channels}",
            "train.num_workers=1",
            f"train.cpus_per_worker={args.threads}",
            f"train.storage_path={root / 'ray'}",
            "train.lr_schedule=constant",
        ]
        params = load_params(root / "absent.yaml", overrides)
        os.environ.pop("ACOL_EPOCH_HOOK", None)
        ray.init(num_cpus=max(args.threads, 1) + 1, include_dashboard=False, log_to_driver=False)
        try:
            plain = plain_loop(params, args.method, train, root, args.threads)
            ray_result = ray_loop(params, args.method, train, val, root, root / "out")
        finally:
            ray.shutdown()

    ratio = _steady(ray_result["samples_per_second"]) / _steady(plain["samples_per_second"])
    result = {
        "benchmark": "train",
        "config": vars(args),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "plain": plain,
        "ray": ray_result,
        "steady_samples_per_second": {
            "plain": _steady(plain["samples_per_second"]),
            "ray": _steady(ray_result["samples_per_second"]),
        },
        "ratio_ray_over_plain": ratio,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(
        f"samples/s plain {result['steady_samples_per_second']['plain']:.1f}, "
        f"ray {result['steady_samples_per_second']['ray']:.1f}, ratio ray/plain {ratio:.3f}; "
        f"wall s plain {plain['wall_seconds']:.1f}, ray {ray_result['wall_seconds']:.1f} -> {out}"
    )


if __name__ == "__main__":
    main()
