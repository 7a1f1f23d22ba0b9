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

Fault injection for tests: if ``ACOL_FAIL_AT_EPOCH=N`` is set in the driver's environment, the rank-0 worker
exits the process (``os._exit(1)``) at the start of epoch N (1-based) unless the marker file
``<storage_path>/<run name>/acol_fault_injected`` exists; it writes the marker first, so the retry runs
through.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from acol.config import Params
from acol.data.dataset import ManifestDataset
from acol.data.manifest import manifest_classes, read_manifest
from acol.data.transforms import eval_transform, train_transform
from acol.distributed.session import ensure_ray
from acol.io import atomic_path
from acol.models import build_model, model_kwargs
from acol.training.engine import (
    build_optimizer,
    build_scheduler,
    evaluate_classification,
    seed_epoch,
    seed_everything,
    train_one_epoch,
)

__all__ = [
    "FAIL_AT_EPOCH_ENV",
    "FAULT_MARKER",
    "HISTORY_COLUMNS",
    "TrainOutcome",
    "fit",
    "run_name",
    "train_loop_per_worker",
    "write_history_csv",
]

log = logging.getLogger(__name__)

FAIL_AT_EPOCH_ENV = "ACOL_FAIL_AT_EPOCH"
FAULT_MARKER = "acol_fault_injected"
HISTORY_COLUMNS = ("epoch", "loss", "acc_a", "acc_b", "val_top1", "val_top5", "val_loss", "lr", "seconds")
_MODEL_FILE, _OPTIM_FILE, _STATE_FILE = "model.pt", "optim.pt", "state.json"


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


def _mlflow_client(config: dict[str, Any]) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=config["tracking_uri"])


def _log_epochs(config: dict[str, Any], rows: list[dict[str, float]], restarts: int | None = None) -> None:
    """Rank 0: log history rows (step = epoch) to the driver's MLflow run, skipping epochs logged there."""
    run_id = config.get("run_id")
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


def _loaders(
    config: dict[str, Any], world_size: int, rank: int
) -> tuple[DataLoader, DataLoader, int, torch.Generator]:
    """Train loader (shuffled and sharded by a seeded sampler), the full val loader, the class count, and the
    train loader's generator (`seed_epoch` reseeds it; it draws the loader workers' base seed)."""
    import ray.train.torch
    from torch.utils.data import DistributedSampler

    params = Params.model_validate(config["params"])
    train_table = read_manifest(config["train_manifest"])
    val_table = read_manifest(config["val_manifest"])
    num_classes = len(manifest_classes(train_table))
    size = params.train.image_size
    per_worker_batch = max(1, params.train.batch_size // world_size)
    train_set = ManifestDataset(train_table, config["root"], train_transform(size, params.train.transform))
    val_set = ManifestDataset(val_table, config["root"], eval_transform(size))
    loader_args = {
        "num_workers": params.train.loader_workers,
        "persistent_workers": params.train.loader_workers > 0,
    }
    # Our own sampler (Ray keeps a DistributedSampler it finds): the order follows train.seed and the epoch, on
    # one worker as on several. Train workers are not persistent: each epoch's are seeded from `generator`.
    sampler = DistributedSampler(
        train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=params.train.seed
    )
    generator = torch.Generator()
    train_loader = DataLoader(
        train_set,
        batch_size=per_worker_batch,
        sampler=sampler,
        drop_last=False,
        generator=generator,
        num_workers=params.train.loader_workers,
    )
    train_loader = ray.train.torch.prepare_data_loader(train_loader)
    # Validation runs on rank 0 over the whole split: no sampler, no collectives, exact numbers.
    val_loader = DataLoader(val_set, batch_size=per_worker_batch, shuffle=False, **loader_args)
    return train_loader, val_loader, num_classes, generator


def _save_checkpoint(folder: Path, model: nn.Module, optimizer: Any, scheduler: Any, state: dict) -> None:
    state_dict = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    torch.save(state_dict, folder / _MODEL_FILE)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, folder / _OPTIM_FILE
    )
    (folder / _STATE_FILE).write_text(json.dumps(state))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function; `config` is built by `fit` (params as a dict, paths, MLflow run id)."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    params = Params.model_validate(config["params"])
    # the same initial weights on every rank (DDP also broadcasts rank 0's); epochs reseed per rank below
    seed_everything(params.train.seed)
    device = ray.train.torch.get_device()

    train_loader, val_loader, num_classes, generator = _loaders(config, world_size, rank)
    model = build_model(
        **model_kwargs(params.model.model_dump(), config["method"], num_classes),
        backbone_weights=params.model.backbone_weights,
    )
    optimizer = build_optimizer(model, params.train)
    scheduler = build_scheduler(optimizer, params.train, len(train_loader))

    start_epoch, restarts, history = 0, 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            model.load_state_dict(
                torch.load(Path(folder) / _MODEL_FILE, map_location="cpu", weights_only=True)
            )
            optim = torch.load(Path(folder) / _OPTIM_FILE, map_location="cpu", weights_only=True)
            state = json.loads((Path(folder) / _STATE_FILE).read_text())
        optimizer.load_state_dict(optim["optimizer"])
        scheduler.load_state_dict(optim["scheduler"])
        start_epoch, restarts, history = state["epoch"], state["restarts"], state["history"]
        if state.get("world_size", world_size) != world_size and rank == 0:
            log.warning("resuming a %s-worker run on %d workers: the result will differ from an uninterrupted "
                        "run (shards and per-rank seeds change)", state["world_size"], world_size)  # fmt: skip
        if start_epoch < params.train.epochs:  # a finished run relaunched only hands its checkpoint back
            restarts += 1
        if rank == 0:
            log.info("resuming from epoch %d (restart %d)", start_epoch, restarts)
    if rank == 0:  # the history so far (missing after a driver relaunch) and the restart count
        _log_epochs(config, history, restarts=restarts)
    model = ray.train.torch.prepare_model(model)  # moves to the device; DDP when world_size > 1

    fault_marker = Path(config["run_dir"] or ".") / FAULT_MARKER
    for epoch in range(start_epoch + 1, params.train.epochs + 1):
        if (
            rank == 0
            and config["run_dir"]
            and config.get("fail_at_epoch") == epoch
            and not fault_marker.exists()
        ):
            fault_marker.parent.mkdir(parents=True, exist_ok=True)
            fault_marker.write_text(f"fault injected at epoch {epoch}\n")
            # Reports reach the controller by polling: wait until the last checkpoint is registered, so the
            # retry resumes from it (a real crash may lose the last report and resume one epoch earlier).
            ray.train.get_all_reported_checkpoints(timeout_s=60)
            log.warning("%s=%d: killing rank 0 to test fault tolerance", FAIL_AT_EPOCH_ENV, epoch)
            os._exit(1)
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)  # a new shuffle per epoch across the shards
        seed_epoch(params.train.seed, rank, epoch, generator)  # this rank's own stream; resumes exactly
        start = time.perf_counter()
        train_metrics = train_one_epoch(
            model, train_loader, optimizer, scheduler, device, amp=params.train.amp
        )
        train_metrics = _allreduce_epoch(train_metrics, device)
        row: dict[str, float] = {
            "epoch": epoch,
            "loss": train_metrics["loss"],
            "acc_a": train_metrics["acc_a"],
            "lr": optimizer.param_groups[0]["lr"],
        }
        if "acc_b" in train_metrics:  # ACoL only: accuracy of the erased branch B
            row["acc_b"] = train_metrics["acc_b"]
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                row.update(evaluate_classification(_unwrap(model), val_loader, device))
                row["seconds"] = time.perf_counter() - start
                # training throughput of all workers together (validation excluded)
                row["samples_per_second"] = train_metrics["samples"] / max(train_metrics["seconds"], 1e-9)
                history.append(row)
                _save_checkpoint(
                    Path(tmp),
                    model,
                    optimizer,
                    scheduler,
                    {"epoch": epoch, "restarts": restarts, "history": history, "world_size": world_size},
                )
                _log_epochs(config, [row])
                log.info(
                    "epoch %d/%d %s", epoch, params.train.epochs, {k: round(v, 4) for k, v in row.items()}
                )
            # Rank 0 alone hands over the checkpoint (its files hold the whole state); all ranks must report.
            ray.train.report(
                {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
                | {"restarts": restarts},
                checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None,
                checkpoint_dir_name=f"epoch-{epoch:04d}",
            )


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
) -> TrainOutcome:
    """Train `method` with Ray Train; write ``out_dir/model.pt`` (state dict) and ``out_dir/history.csv``.

    `run_id` is the MLflow run that rank 0 logs per-epoch metrics to (the tracking URI is this process's
    `acol.tracking.runs.tracking_uri()`). Checkpoints live under ``params.train.storage_path/<run_name>``.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from acol.tracking.runs import data_version, tracking_uri

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
    fail_at = os.environ.get(FAIL_AT_EPOCH_ENV, "").strip()
    config = {
        "params": params.model_dump(mode="json"),
        "method": method,
        "train_manifest": str(train_manifest),
        "val_manifest": str(val_manifest),
        "root": str(Path(root).resolve()),
        "run_id": run_id,
        "tracking_uri": tracking_uri(),
        "run_dir": None if remote else run_dir,  # fault injection (tests) needs a local folder
        "fail_at_epoch": int(fail_at) if fail_at else None,
    }
    if not remote and _finished_epochs(Path(run_dir)) >= tp.epochs:
        # The same name means the same params and data. A finished run asked for again (dvc repro -f, or changed
        # code) is trained afresh; only an unfinished one (a crashed driver relaunched) is resumed.
        log.info("Ray Train run %s already finished: training it again from scratch", name)
        shutil.rmtree(run_dir)
    # A bad backbone weights file fails here, named, instead of in every worker after Ray has started.
    if params.model.backbone_weights:
        with torch.device("meta"), warnings.catch_warnings():  # meta: no memory; copies into it are no-ops
            warnings.simplefilter("ignore", UserWarning)
            build_model(
                **model_kwargs(params.model.model_dump(), method, len(classes)),
                backbone_weights=params.model.backbone_weights,
            )
    gpus = tp.num_workers if tp.use_gpu else 0  # one GPU per worker
    ensure_ray(tp.num_workers * tp.cpus_per_worker, gpus, params.ray.join_local)
    log.info("Ray Train run %s: %d worker(s), checkpoints in %s", name, tp.num_workers, run_dir)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
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
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name} ended without a checkpoint (see {run_dir})")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as folder:
        state = json.loads((Path(folder) / _STATE_FILE).read_text())
        with atomic_path(out_dir / _MODEL_FILE) as tmp:
            shutil.copyfile(Path(folder) / _MODEL_FILE, tmp)
    history = state["history"]
    history_path = write_history_csv(history, out_dir / "history.csv")
    return TrainOutcome(
        model_path=out_dir / _MODEL_FILE,
        history_path=history_path,
        metrics={k: v for k, v in history[-1].items() if k != "epoch"},
        history=history,
        restarts=state["restarts"],
        run_name=name,
        checkpoint_path=result.checkpoint.path,
        classes=classes,
    )
