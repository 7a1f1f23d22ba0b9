"""``train.input: ray_data``: Ray Data tasks decode and augment the training images; Ray Train workers consume them.

Why: with ``train.input: loader`` each worker decodes its own JPEGs on the CPUs of its own node, so a GPU node
needs enough cores for its GPUs (benchmarks/README.md, "Training input"). Here the decode + augment runs as
Ray Data `map_batches` tasks (1 CPU each) anywhere in the cluster, CPU-only nodes included, and streams to the
workers through ``TorchTrainer(datasets=...)`` and `ray.train.get_dataset_shard`.

- One dataset per epoch (``train_0001``, ...): each is a `ray.data.range` of chunks of `ROWS_PER_TASK` rows
  of that epoch's order (a permutation seeded by ``(train.seed, epoch)``). Ray Train V2 splits a dataset
  among the workers (``streaming_split(equal=True)``: the same number of rows, so the same number of steps on
  every rank) at its first `get_dataset_shard`, so epochs a resumed run skips are never read. Each split
  keeps a coordinator actor (no CPU) until the run ends: one per epoch run.
- Augmentation is seeded per image and epoch: image i in epoch e draws its crop and flip from the torch
  generator seeded by ``SeedSequence([train.seed, e, i])``, whatever task decodes it. It cannot match the
  DataLoader path's random stream bit for bit (that one draws from one stream per rank, in sampler order),
  and which rows reach which worker in which batch depends on how fast the tasks finish: a resumed run is
  close to, not bit-identical with, an uninterrupted one. Without augmentation (the eval transform) both
  inputs give identical images per index (tests/test_train_input.py).
- Images travel as uint8 crops (a quarter of float32) and are normalized on the worker's device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acol.config import TrainParams
from acol.data.dataset import decode_rows
from acol.data.manifest import read_manifest
from acol.data.transforms import eval_transform, normalize, train_transform
from acol.training.engine import seed_epoch

__all__ = ["ROWS_PER_TASK", "epoch_dataset", "epoch_dataset_name", "ray_data_batches", "train_datasets"]

ROWS_PER_TASK = 32  # images per decode task: enough work at ILSVRC sizes to dwarf Ray's per-task overhead
_ORDER_STREAM = 0x5EED  # keeps the epoch order's seed apart from the per-image augmentation seeds


def epoch_dataset_name(epoch: int) -> str:
    return f"train_{epoch:04d}"


@functools.lru_cache(maxsize=4)
def _manifest_columns(manifest: str) -> tuple[list[str], np.ndarray]:
    """(image ids, class indices) of a manifest, read once per Ray worker process."""
    table = read_manifest(manifest)
    return table.column("image_id").to_pylist(), np.asarray(table.column("class_index").to_pylist(), np.int64)


@functools.lru_cache(maxsize=2)
def _epoch_order(num_rows: int, seed: int, epoch: int | None) -> np.ndarray:
    if epoch is None:
        return np.arange(num_rows)
    return np.random.default_rng([seed, epoch, _ORDER_STREAM]).permutation(num_rows)


def _image_seeds(seed: int, epoch: int, indices: np.ndarray) -> list[int]:
    return [int(np.random.SeedSequence([seed, epoch, int(i)]).generate_state(1)[0]) for i in indices]


def _decode_chunks(
    batch: dict[str, np.ndarray],
    *,
    manifest: str,
    root: str,
    image_size: int,
    protocol: str | None,
    seed: int,
    epoch: int | None,
    rows: int,
) -> dict[str, np.ndarray]:
    """Ray Data `map_batches` function: chunk numbers -> {"image" (n, 3, S, S) uint8, "label", "index"}."""
    image_ids, labels = _manifest_columns(manifest)
    order = _epoch_order(len(image_ids), seed, epoch if protocol else None)
    indices = np.concatenate([order[int(c) * rows : (int(c) + 1) * rows] for c in batch["id"]])
    if protocol is None:  # the eval transform: nothing random
        transform, seeds = eval_transform(image_size, normalized=False), None
    else:
        transform = train_transform(image_size, protocol, normalized=False)
        seeds = _image_seeds(seed, int(epoch or 0), indices)
    images = decode_rows(root, [image_ids[i] for i in indices], transform, seeds)
    return {"image": images, "label": labels[indices], "index": indices.astype(np.int64)}


def epoch_dataset(
    manifest: str | Path,
    root: str | Path,
    image_size: int,
    *,
    protocol: str | None,
    seed: int,
    epoch: int | None,
    num_rows: int | None = None,
    rows_per_task: int = ROWS_PER_TASK,
) -> Any:
    """A lazy Ray Dataset of one epoch's decoded images: `protocol` ("acol" / "choe") augments, None takes the
    eval transform in manifest order. `manifest` and `root` must be paths every node sees."""
    import ray.data

    if num_rows is None:
        num_rows = read_manifest(manifest).num_rows
    chunks = max(1, math.ceil(num_rows / rows_per_task))
    fn_kwargs = {"manifest": str(manifest), "root": str(root), "image_size": image_size,
                 "protocol": protocol, "seed": seed, "epoch": epoch, "rows": rows_per_task}  # fmt: skip
    return ray.data.range(chunks, override_num_blocks=chunks).map_batches(
        _decode_chunks, batch_size=1, fn_kwargs=fn_kwargs, num_cpus=1
    )


def train_datasets(params: TrainParams, manifest: str | Path, root: str | Path) -> dict[str, Any]:
    """The ``TorchTrainer(datasets=...)`` of a run: one augmented dataset per epoch, by `epoch_dataset_name`."""
    num_rows = read_manifest(manifest).num_rows
    kwargs = {"protocol": params.transform, "seed": params.seed, "num_rows": num_rows}
    return {
        epoch_dataset_name(epoch): epoch_dataset(manifest, root, params.image_size, epoch=epoch, **kwargs)
        for epoch in range(1, params.epochs + 1)
    }


def ray_data_batches(
    params: TrainParams, num_rows: int, world_size: int, rank: int, batch_size: int, device: torch.device
) -> tuple[Callable[[int], Iterable], int]:
    """In a Ray Train worker: ``epoch -> batches (images, labels, indices)`` from this rank's shard of the
    epoch's dataset, normalized on `device`; and the batches per epoch (each rank gets ``num_rows //
    world_size`` rows)."""
    import ray.train

    norm = normalize()

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        seed_epoch(params.seed, rank, epoch)  # the model's own random draws (ACoL erasing ties, dropout)
        shard = ray.train.get_dataset_shard(epoch_dataset_name(epoch))
        return (
            (norm(batch["image"]), batch["label"], batch["index"])
            for batch in shard.iter_torch_batches(batch_size=batch_size, device=device)
        )

    return batches, max(1, math.ceil((num_rows // world_size) / batch_size))
