"""Ray Train (V2) training: a per-worker loop over `acol.training.engine` and a driver `fit` that writes the outputs.

Each worker builds its own `DataLoader` over `ManifestDataset` (sharded by a `DistributedSampler` seeded with
``train.seed``; per-worker batch = global batch / workers), trains with `train_one_epoch`, and reports every
epoch with a checkpoint written by rank 0:

    <checkpoint>/model.pt        plain state dict of the WSOLModel (unwrapped from DDP, CPU tensors)
    <checkpoint>/optim.pt        {"optimizer": ..., "scheduler": ...} state dicts
    <checkpoint>/state.json      {"epoch": completed epochs, "restarts": n, "history": [row per epoch]}

A restarted worker group (`FailureConfig.max_failures`) or a driver relaunched with the same run name
resumes from the latest checkpoint, history included, and counts one more restart (MLflow metric and tag
``restarts``). The resumed run ends with the same weights and history, bit for bit, as an uninterrupted one on
the same number of workers: every random state of an epoch (Python, NumPy, torch, the loader's worker seeds,
the shuffle) is set from ``(train.seed, rank, epoch)`` at its start (`acol.training.engine.seed_epoch`), so the
completed-epoch count in the checkpoint is all the random state there is to restore.

Input (``train.input``): ``loader`` (default) decodes and augments in the worker (`_loader_batches`); ``ray_data``
streams decoded, augmented images from Ray Data tasks that may run on other (CPU-only) nodes
(`acol.distributed.ingest`). Only ``loader`` resumes bit for bit: Ray Data's split of the rows over workers
is dynamic.

Epoch hook: `fit(epoch_hook=...)` or, when not given, ``ACOL_EPOCH_HOOK=package.module:function`` in the
driver's environment names a function that every worker calls with an `EpochStart` before each epoch (after
the resume, before the epoch's seeding). A string is imported in the worker, so it works for a ``ray job
submit`` as well, as long as the module is in the job's working dir or installed. Uses: profiling, external
stop signals, killing a worker to check the resume (docs/ray-local.md).
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from acol.config import Params
from acol.cpu_isa import pin_cpu_isa
from acol.data.dataset import ManifestDataset
from acol.data.manifest import manifest_classes, read_manifest
from acol.data.transforms import eval_transform, train_transform
from acol.distributed.session import Demand, check_placement, ensure_ray
from acol.io import atomic_path
from acol.models import ModelSpec, build_model
from acol.training.engine import (
    build_optimizer,
    build_scheduler,
    evaluate_classification,
    seed_epoch,
    seed_everything,
    train_one_epoch,
)

__all__ = [
    "EPOCH_HOOK_ENV",
    "HISTORY_COLUMNS",
    "EpochHook",
    "EpochStart",
    "TrainLoopConfig",
    "TrainOutcome",
    "fit",
    "place_and_restore",
    "resolve_epoch_hook",
    "run_name",
    "train_loop_per_worker",
    "write_history_csv",
]

log = logging.getLogger(__name__)

EPOCH_HOOK_ENV = "ACOL_EPOCH_HOOK"
HISTORY_COLUMNS = (
    "epoch", "loss", "acc_a", "acc_b", "val_top1", "val_top5", "val_loss", "lr", "seconds", "samples_per_second"
)  # fmt: skip
_MODEL_FILE, _OPTIM_FILE, _STATE_FILE = "model.pt", "optim.pt", "state.json"
_LOOP_KEY = "loop"  # Ray Train takes a dict: the one key of `train_loop_config`, holding a `TrainLoopConfig`


@dataclass(frozen=True)
class EpochStart:
    """What an epoch hook is told: the 1-based epoch about to start, on which worker, in which run folder."""

    epoch: int
    rank: int
    world_size: int
    run_dir: str  # <train.storage_path>/<run name>: a local folder, or an object store URI


EpochHook = Callable[[EpochStart], None]


@dataclass(frozen=True)
class TrainLoopConfig:
    """What `fit` hands every Ray Train worker, built once on the driver (`_loop_config`).

    Ray pickles it to the workers and shows its ``str`` in its dashboard and job API, so it holds no secret:
    `tracking_uri` is None when the URI has a credential (the worker reads its own environment instead).
    `params` travels as the validated, frozen object: it pickles by reference to `acol.config.Params`, which a
    worker imports anyway, so there is nothing to validate twice.
    """

    params: Params
    method: str
    train_manifest: Path  # absolute: workers may run in another folder or on another node
    val_manifest: Path
    root: Path
    run_dir: str  # <train.storage_path>/<run name>: a local folder, or an object store URI
    run_id: str | None = None  # the driver's MLflow run that rank 0 logs epochs to; None: no logging
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI of the worker's environment
    epoch_hook: str | EpochHook | None = None  # a callable, or "package.module:function" imported per worker


@dataclass(frozen=True)
class TrainOutcome:
    """What `fit` produced: output paths, the final epoch's metrics and the whole history."""

    model_path: Path
    history_path: Path
    metrics: dict[str, float]
    history: list[dict[str, float]]
    restarts: int
    run_name: str
    checkpoint_path: str
    classes: list[str] = field(default_factory=list)


@dataclass
class _WorkerState:
    """A worker's training state: what the epochs update and what a checkpoint restores."""

    model: nn.Module
    optimizer: Any
    scheduler: Any
    train_batches: Callable[[int], Iterable]  # epoch -> this rank's batches (images, labels, indices)
    val_loader: DataLoader
    device: torch.device
    epochs: int
    start_epoch: int = 0
    restarts: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_epoch_hook(hook: str | EpochHook | None) -> EpochHook | None:
    """A callable as it is; ``"package.module:function"`` imported (in the worker: Ray pickles the config)."""
    if hook is None or callable(hook):
        return hook
    module, sep, name = hook.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"epoch hook {hook!r}: expected 'package.module:function'")
    function = getattr(importlib.import_module(module), name)
    if not callable(function):
        raise TypeError(f"epoch hook {hook!r} is not callable")
    return function


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _allreduce_epoch(metrics: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sample-weighted means of loss / accuracies over all workers (each saw its own shard)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return metrics
    n = metrics["samples"]
    sums = torch.tensor(
        [metrics["loss"] * n, metrics["acc_a"] * n, metrics.get("acc_b", 0.0) * n, n],
        dtype=torch.float64,
        device=device,  # gloo reduces CPU tensors, nccl CUDA ones: the worker's device suits its backend
    )
    dist.all_reduce(sums)
    total = max(float(sums[3]), 1.0)
    out = dict(metrics, loss=float(sums[0]) / total, acc_a=float(sums[1]) / total, samples=float(sums[3]))
    if "acc_b" in metrics:
        out["acc_b"] = float(sums[2]) / total
    return out


def _mlflow_client(config: TrainLoopConfig) -> Any:
    from mlflow.tracking import MlflowClient

    # None when the URI holds a credential (`_loop_config`): the worker's own environment names the server
    return MlflowClient(tracking_uri=config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))


def _log_epochs(config: TrainLoopConfig, rows: list[dict[str, float]], restarts: int | None = None) -> None:
    """Rank 0: log history rows (step = epoch) to the driver's MLflow run, skipping epochs logged there."""
    run_id = config.run_id
    if not run_id:
        return
    from mlflow.entities import Metric

    client = _mlflow_client(config)
    logged = {m.step for m in client.get_metric_history(run_id, "loss")}
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), now, int(row["epoch"]))
        for row in rows
        if int(row["epoch"]) not in logged
        for key, value in row.items()
        if key != "epoch" and value is not None and not math.isnan(float(value))
    ]
    if restarts is not None:
        metrics.append(Metric("restarts", float(restarts), now, int(rows[-1]["epoch"]) if rows else 0))
        client.set_tag(run_id, "restarts", str(restarts))
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def _loader_batches(
    config: TrainLoopConfig, train_table: Any, world_size: int, rank: int
) -> tuple[Callable[[int], Iterable], int]:
    """``train.input: loader``: this worker's own DataLoader, shuffled and sharded by a seeded sampler.

    Returns ``epoch -> loader`` (which sets the shuffle and every random state of the epoch first) and the
    batches per epoch."""
    import ray.train.torch
    from torch.utils.data import DistributedSampler

    params = config.params
    tp = params.train
    train_set = ManifestDataset(train_table, config.root, train_transform(tp.image_size, tp.transform))
    # Our own sampler (Ray keeps a DistributedSampler it finds): the order follows train.seed and the epoch, on
    # one worker as on several. Train workers are not persistent: each epoch's are seeded from `generator`.
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=tp.seed)
    generator = torch.Generator()  # draws the loader workers' base seed; `seed_epoch` reseeds it
    loader = DataLoader(
        train_set,
        batch_size=_per_worker_batch(params, world_size),
        sampler=sampler,
        drop_last=False,
        generator=generator,
        num_workers=tp.loader_workers,
        pin_memory=tp.use_gpu,  # page-locked batches: the copy to the GPU overlaps the step
    )
    loader = ray.train.torch.prepare_data_loader(loader)

    def batches(epoch: int) -> Iterable:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)  # a new shuffle per epoch across the shards
        seed_epoch(tp.seed, rank, epoch, generator)  # this rank's own stream; resumes exactly
        return loader

    return batches, len(loader)


def _per_worker_batch(params: Params, world_size: int) -> int:
    return max(1, params.train.batch_size // world_size)


def _val_loader(config: TrainLoopConfig) -> DataLoader:
    """Validation runs on rank 0 over the whole split: no sampler, no collectives, exact numbers.

    At the global batch (``train.batch_size``), whatever ``world_size``: rank 0 alone does the whole split, so
    the per-worker batch (20 // 8 = 2 on 8 GPUs) only made it slower; no gradients, so memory is not the
    training step's. (Its numbers depend on the batch in the last bits only.) Pinned for a GPU.
    """
    params = config.params
    workers = params.train.loader_workers
    val_set = ManifestDataset(
        read_manifest(config.val_manifest), config.root, eval_transform(params.train.image_size)
    )
    return DataLoader(
        val_set,
        batch_size=params.train.batch_size,
        shuffle=False,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=params.train.use_gpu,
    )


def _configure_cudnn(deterministic: bool) -> None:
    """``train.deterministic``: cuDNN's deterministic kernels, else autotuned ones (`cudnn.benchmark`).

    Why: autotuning picks the fastest kernel per shape, and that pick (and some of the kernels) may differ run
    to run: a resumed or repeated GPU run can only repeat bit for bit with ``deterministic`` (other CUDA ops
    with atomics may still differ: `torch.use_deterministic_algorithms`). The CPU uses no cuDNN: no effect.
    """
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def _build_worker_state(
    config: TrainLoopConfig, world_size: int, rank: int, device: torch.device
) -> _WorkerState:
    """Input, model, optimizer and schedule of one worker, before any checkpoint is restored."""
    params = config.params
    train_table = read_manifest(config.train_manifest)
    num_classes = len(manifest_classes(train_table))
    if params.train.input == "ray_data":
        from acol.distributed.ingest import ray_data_batches

        batches, steps = ray_data_batches(
            params.train, len(train_table), world_size, rank, _per_worker_batch(params, world_size), device
        )
    else:
        batches, steps = _loader_batches(config, train_table, world_size, rank)
    val_loader = _val_loader(config)
    model = build_model(
        ModelSpec.from_params(params.model.model_dump(), config.method, num_classes),
        backbone_weights=params.model.backbone_weights,
    )
    optimizer = build_optimizer(model, params.train)
    scheduler = build_scheduler(optimizer, params.train, steps)
    return _WorkerState(model, optimizer, scheduler, batches, val_loader, device, params.train.epochs)


def _save_checkpoint(folder: Path, model: nn.Module, optimizer: Any, scheduler: Any, state: dict) -> None:
    state_dict = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    torch.save(state_dict, folder / _MODEL_FILE)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, folder / _OPTIM_FILE
    )
    (folder / _STATE_FILE).write_text(json.dumps(state))


def place_and_restore(
    worker: _WorkerState, place: Callable[[nn.Module], nn.Module], checkpoint: Any, world_size: int, rank: int
) -> None:
    """Put the model on its device (`place`), then restore `checkpoint` (if any) into `worker`.

    In this order: the optimizer's state (SGD momentum, Adam moments) is loaded onto the parameters' device
    by `Optimizer.load_state_dict`; restored first, it would stay on the CPU while the parameters move to the
    GPU, and the first step after a resume would fail.
    """
    worker.model = place(worker.model)
    if checkpoint is not None:
        _restore(worker, checkpoint, worker.epochs, world_size, rank)


def _restore(worker: _WorkerState, checkpoint: Any, epochs: int, world_size: int, rank: int) -> None:
    """Load model, optimizer, schedule, history and restart count from a Ray Train checkpoint into `worker`
    (whose model is already on its device: `place_and_restore`)."""
    with checkpoint.as_directory() as folder:
        _unwrap(worker.model).load_state_dict(
            torch.load(Path(folder) / _MODEL_FILE, map_location="cpu", weights_only=True)
        )
        optim = torch.load(Path(folder) / _OPTIM_FILE, map_location="cpu", weights_only=True)
        state = json.loads((Path(folder) / _STATE_FILE).read_text())
    worker.optimizer.load_state_dict(optim["optimizer"])
    worker.scheduler.load_state_dict(optim["scheduler"])
    worker.start_epoch, worker.restarts, worker.history = state["epoch"], state["restarts"], state["history"]
    if state.get("world_size", world_size) != world_size and rank == 0:
        log.warning("resuming a %s-worker run on %d workers: the result will differ from an uninterrupted "
                    "run (shards and per-rank seeds change)", state["world_size"], world_size)  # fmt: skip
    if worker.start_epoch < epochs:  # a finished run relaunched only hands its checkpoint back
        worker.restarts += 1
    if rank == 0:
        log.info("resuming from epoch %d (restart %d)", worker.start_epoch, worker.restarts)


def _train_epoch(worker: _WorkerState, params: Params, epoch: int) -> tuple[dict, dict]:
    """One epoch on this worker's batches; returns the history row (train part) and the all-reduced metrics."""
    train_metrics = train_one_epoch(
        worker.model,
        worker.train_batches(epoch),
        worker.optimizer,
        worker.scheduler,
        worker.device,
        amp=params.train.amp,
        params=params.train,
    )
    train_metrics = _allreduce_epoch(train_metrics, worker.device)
    row: dict[str, float] = {
        "epoch": epoch,
        "loss": train_metrics["loss"],
        "acc_a": train_metrics["acc_a"],
        "lr": worker.optimizer.param_groups[0]["lr"],
    }
    if "acc_b" in train_metrics:  # ACoL only: accuracy of the erased branch B
        row["acc_b"] = train_metrics["acc_b"]
    return row, train_metrics


def _finish_epoch(
    config: TrainLoopConfig,
    worker: _WorkerState,
    row: dict,
    train_metrics: dict,
    started: float,
    context: EpochStart,
) -> None:
    """Rank 0 validates, logs and checkpoints; every rank reports (Ray Train waits for all of them)."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        if context.rank == 0:
            row.update(evaluate_classification(_unwrap(worker.model), worker.val_loader, worker.device))
            row["seconds"] = time.perf_counter() - started
            # training throughput of all workers together (validation excluded)
            row["samples_per_second"] = train_metrics["samples"] / max(train_metrics["seconds"], 1e-9)
            worker.history.append(row)
            state = {"epoch": context.epoch, "restarts": worker.restarts, "history": worker.history,
                     "world_size": context.world_size}  # fmt: skip
            _save_checkpoint(Path(tmp), worker.model, worker.optimizer, worker.scheduler, state)
            _log_epochs(config, [row])
            log.info("epoch %d/%d %s", context.epoch, worker.epochs, {k: round(v, 4) for k, v in row.items()})
        # Rank 0 alone hands over the checkpoint (its files hold the whole state); all ranks must report.
        ray.train.report(
            {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
            | {"restarts": worker.restarts},
            checkpoint=ray.train.Checkpoint.from_directory(tmp) if context.rank == 0 else None,
            checkpoint_dir_name=f"epoch-{context.epoch:04d}",
        )


def train_loop_per_worker(loop: dict[str, TrainLoopConfig]) -> None:
    """The Ray Train worker function; `loop` is the `train_loop_config` of `_trainer`: ``{"loop": config}``."""
    import ray.train
    import ray.train.torch

    pin_cpu_isa()  # before this worker's first kernel (a cluster's workers may lack the driver's environment)
    config = loop[_LOOP_KEY]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    params = config.params
    _configure_cudnn(params.train.deterministic)
    # the same initial weights on every rank (DDP also broadcasts rank 0's); epochs reseed per rank
    seed_everything(params.train.seed)
    device = ray.train.torch.get_device()
    worker = _build_worker_state(config, world_size, rank, device)
    # prepare_model moves to the device (DDP when world_size > 1)
    place_and_restore(worker, ray.train.torch.prepare_model, ray.train.get_checkpoint(), world_size, rank)
    if rank == 0:  # the history so far (missing after a driver relaunch) and the restart count
        _log_epochs(config, worker.history, restarts=worker.restarts)

    hook = resolve_epoch_hook(config.epoch_hook)
    for epoch in range(worker.start_epoch + 1, params.train.epochs + 1):
        start = EpochStart(epoch=epoch, rank=rank, world_size=world_size, run_dir=config.run_dir)
        if hook is not None:
            hook(start)
        started = time.perf_counter()
        row, train_metrics = _train_epoch(worker, params, epoch)
        _finish_epoch(config, worker, row, train_metrics, started, start)


def run_name(params: Params, method: str, data: str) -> str:
    """Deterministic Ray run name: a relaunch with the same inputs resumes that run's checkpoints."""
    key = json.dumps(
        {
            "method": method,
            "model": params.model.model_dump(mode="json"),
            "train": params.train.model_dump(mode="json"),
            "data": data,
        },
        sort_keys=True,
    )
    return f"train-{method}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def write_history_csv(history: list[dict[str, float]], path: str | os.PathLike[str]) -> Path:
    """One row per epoch with `HISTORY_COLUMNS` (acc_b empty for CAM), written to a temp file and renamed."""
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, restval="", extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
    return path


def _finished_epochs(run_dir: Path) -> int:
    """The last epoch checkpointed under a Ray Train run folder (0 when there is none)."""
    epochs = [json.loads(p.read_text())["epoch"] for p in run_dir.glob(f"*/{_STATE_FILE}")]
    return max(epochs, default=0)


def fit(
    params: Params,
    method: str,
    train_manifest: str | os.PathLike[str],
    val_manifest: str | os.PathLike[str],
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    run_id: str | None = None,
    epoch_hook: str | EpochHook | None = None,
) -> TrainOutcome:
    """Train `method` with Ray Train; write ``out_dir/model.pt`` (state dict) and ``out_dir/history.csv``.

    `run_id` is the MLflow run that rank 0 logs per-epoch metrics to (the tracking URI is this process's
    `acol.tracking.stage_runs.tracking_uri()`). Checkpoints live under ``params.train.storage_path/<run_name>``.
    `epoch_hook` (default: ``$ACOL_EPOCH_HOOK``) runs on every worker before each epoch (module docstring).
    """
    from acol.tracking.stage_runs import data_version

    tp = params.train
    train_manifest, val_manifest = Path(train_manifest).resolve(), Path(val_manifest).resolve()
    classes = manifest_classes(
        read_manifest(train_manifest)
    )  # fails here, naming the file, before Ray starts
    read_manifest(val_manifest)
    name = run_name(params, method, data_version([train_manifest, val_manifest]))
    # A shared folder (made absolute: workers run elsewhere) or an object store URI such as s3://bucket/ray.
    remote = "://" in tp.storage_path
    storage = tp.storage_path.rstrip("/") if remote else str(Path(tp.storage_path).resolve())
    run_dir = f"{storage}/{name}"
    if epoch_hook is None:
        epoch_hook = os.environ.get(EPOCH_HOOK_ENV, "").strip() or None
    config = _loop_config(params, method, train_manifest, val_manifest, root, run_id, run_dir, epoch_hook)
    if not remote and _finished_epochs(Path(run_dir)) >= tp.epochs:
        # The same name means the same params and data. A finished run asked for again (dvc repro -f, or changed
        # code) is trained afresh; only an unfinished one (a crashed driver relaunched) is resumed.
        log.info("Ray Train run %s already finished: training it again from scratch", name)
        shutil.rmtree(run_dir)
    _check_backbone_weights(params, method, len(classes))
    gpus = tp.num_workers if tp.use_gpu else 0  # one GPU per worker
    ensure_ray(tp.num_workers * tp.cpus_per_worker, gpus, params.ray.join_local)
    worker = {"CPU": tp.cpus_per_worker, "GPU": 1.0 if tp.use_gpu else 0.0}
    demand = Demand("train.num_workers x train.cpus_per_worker, use_gpu", worker, tp.num_workers,
                    tp.placement_strategy)  # fmt: skip
    check_placement([demand], params.ray.autoscaling)
    log.info("Ray Train run %s: %d worker(s), checkpoints in %s", name, tp.num_workers, run_dir)
    result = _trainer(config, name, storage).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name} ended without a checkpoint (see {run_dir})")
    return _outcome(result.checkpoint, Path(out_dir), name, classes)


def _loop_config(
    params: Params,
    method: str,
    train_manifest: Path,
    val_manifest: Path,
    root: str | os.PathLike[str],
    run_id: str | None,
    run_dir: str,
    epoch_hook: str | EpochHook | None,
) -> TrainLoopConfig:
    """The `TrainLoopConfig` of a run, without the tracking URI when it holds a credential."""
    from acol.tracking.redact import loop_tracking_uri
    from acol.tracking.stage_runs import tracking_uri

    if isinstance(epoch_hook, str):
        resolve_epoch_hook(epoch_hook)  # a wrong path fails here, before Ray starts, not in every worker
    return TrainLoopConfig(
        params=params,
        method=method,
        train_manifest=Path(train_manifest).resolve(),
        val_manifest=Path(val_manifest).resolve(),
        root=Path(root).resolve(),
        run_dir=run_dir,
        run_id=run_id,
        tracking_uri=loop_tracking_uri(tracking_uri()),  # None if it has a password: workers use their env
        epoch_hook=epoch_hook,
    )


def _ray_loop_config(config: TrainLoopConfig) -> dict[str, TrainLoopConfig]:
    """What Ray Train is given as ``train_loop_config`` (a dict, which its run state also exports)."""
    return {_LOOP_KEY: config}


def _check_backbone_weights(params: Params, method: str, num_classes: int) -> None:
    """A bad backbone weights file fails here, named, instead of in every worker after Ray has started."""
    if not params.model.backbone_weights:
        return
    with torch.device("meta"), warnings.catch_warnings():  # meta: no memory; copies into it are no-ops
        warnings.simplefilter("ignore", UserWarning)
        build_model(
            ModelSpec.from_params(params.model.model_dump(), method, num_classes),
            backbone_weights=params.model.backbone_weights,
        )


def _trainer(config: TrainLoopConfig, name: str, storage: str) -> Any:
    """The `TorchTrainer` of a run: scaling and failure policy from ``train``; with ``train.input: ray_data``,
    one Ray Data dataset per epoch for the workers' `get_dataset_shard`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tp = config.params.train
    datasets = None
    if tp.input == "ray_data":
        from acol.distributed.ingest import train_datasets

        datasets = train_datasets(tp, config.train_manifest, config.root)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=_ray_loop_config(config),
        scaling_config=ScalingConfig(
            num_workers=tp.num_workers,
            use_gpu=tp.use_gpu,
            resources_per_worker={"CPU": tp.cpus_per_worker},
            placement_strategy=tp.placement_strategy,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=tp.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=tp.checkpoints_to_keep),
        ),
        datasets=datasets,
    )


def _outcome(checkpoint: Any, out_dir: Path, name: str, classes: list[str]) -> TrainOutcome:
    """Copy the final checkpoint's weights to ``out_dir/model.pt`` and write its history as CSV."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as folder:
        state = json.loads((Path(folder) / _STATE_FILE).read_text())
        with atomic_path(out_dir / _MODEL_FILE) as tmp:
            shutil.copyfile(Path(folder) / _MODEL_FILE, tmp)
    history = state["history"]
    return TrainOutcome(
        model_path=out_dir / _MODEL_FILE,
        history_path=write_history_csv(history, out_dir / "history.csv"),
        metrics={k: v for k, v in history[-1].items() if k != "epoch"},
        history=history,
        restarts=state["restarts"],
        run_name=name,
        checkpoint_path=checkpoint.path,
        classes=classes,
    )
