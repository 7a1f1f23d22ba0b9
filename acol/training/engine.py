"""One training-step path for every runner (plain loop, Ray Train worker, benchmarks).

`train_one_epoch` and `evaluate_classification` know nothing of Ray or MLflow: they take a model, a loader, an
optimizer and a device, so the distributed loop and the tests share exactly this code.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from acol.config import TrainParams
from acol.models import WSOLModel, param_groups
from acol.training.batch_methods import BatchTransform, batch_transform, first_labels, target_loss

__all__ = [
    "derived_seed",
    "seed_epoch",
    "seed_everything",
    "build_optimizer",
    "build_scheduler",
    "train_one_epoch",
    "evaluate_classification",
]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (NumPy takes the seed modulo 2**32)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(seed: int, *keys: int) -> int:
    """A seed for one stream of `seed`, e.g. ``derived_seed(seed, rank, epoch)``; 63 bits, for torch and Python.

    Why: NumPy's `SeedSequence` mixes the keys, so ranks and epochs get independent streams (not the same seed on
    every rank, nor ``seed + rank`` overlaps), and the value is the same on every machine and run.
    """
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def seed_epoch(seed: int, rank: int, epoch: int, generator: torch.Generator | None = None) -> int:
    """Set every random state an epoch uses from ``(seed, rank, epoch)``; returns the derived seed.

    Why (exact resume): the global Python/NumPy/torch generators (augmentations, dropout) and the data loader's
    `generator` (the base seed of its worker processes, re-drawn at each epoch's iterator) then depend on the
    epoch alone, so a run resumed from the checkpoint after epoch k draws exactly what an uninterrupted run
    draws in epoch k + 1. The shuffle order comes from the `DistributedSampler` (``seed`` and ``set_epoch``).
    """
    value = derived_seed(seed, rank, epoch)
    seed_everything(value)
    if generator is not None:
        generator.manual_seed(value)
    return value


def _unwrap(model: nn.Module) -> WSOLModel:
    """The WSOLModel inside a DistributedDataParallel wrapper (for `loss` and the parameter groups)."""
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def build_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    """SGD (optionally Nesterov, as the official ACoL code) or Adam over `param_groups`."""
    groups = param_groups(
        _unwrap(model), params.lr, params.head_lr_mult, params.weight_decay, params.bias_lr_mult
    )
    if params.optimizer == "adam":
        return torch.optim.Adam(groups)
    return torch.optim.SGD(groups, momentum=params.momentum, nesterov=params.nesterov)


def build_scheduler(
    optimizer: torch.optim.Optimizer, params: TrainParams, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: cosine to zero over all epochs; step (x lr_decay_factor every lr_decay_epochs
    epochs, Choe et al.'s ``lr_decay_frequency``); or constant."""
    total = max(1, params.epochs * steps_per_epoch)
    if params.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if params.lr_schedule == "step":
        every = params.lr_decay_epochs * max(1, steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: params.lr_decay_factor ** (step // every)
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total))
    )


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def _batch_transform(model: WSOLModel, params: TrainParams | None) -> BatchTransform | None:
    """The transform of the model's method (none for a hand-assembled model, which has no spec)."""
    if model.spec is None:
        return None
    return batch_transform(model.spec.method, params if params is not None else TrainParams())


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
    *,
    amp: bool = False,
    params: TrainParams | None = None,
) -> dict[str, float]:
    """One pass over `loader`; returns mean loss, accuracy of A (and B for ACoL), samples and seconds.

    The model's method picks its batch transform (HaS, CutMix: `acol.training.batch_methods`) with the
    ``train`` `params` (None: their defaults); accuracy counts against each image's own label.

    The sums stay on the device and are read once at the end: a read per step (``float(loss)``) made the host
    wait for every step's kernels, so it could not queue the next step's. They are float64 sums of each step's
    ``loss * batch``, in step order: the same numbers as the Python float sums they replace.
    """
    model.train()
    # [loss * samples, correct of A, correct of B], float64 (exact for counts below 2**53)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    samples = 0.0
    has_branch_b = False
    transform = _batch_transform(_unwrap(model), params)
    start = time.perf_counter()
    for images, labels, _ in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        target = labels
        if transform is not None:
            images, target = transform(images, labels)
        with _autocast(device, amp):
            output = model(images, first_labels(target))
            loss = target_loss(_unwrap(model).loss, output, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        batch = labels.shape[0]
        samples += batch
        with torch.no_grad():
            sums[0] += loss.detach().double() * batch
            sums[1] += (output.logits.argmax(1) == labels).sum()
            if output.logits_b is not None:
                has_branch_b = True
                sums[2] += (output.logits_b.argmax(1) == labels).sum()
    total_loss, correct_a, correct_b = sums.tolist()  # the epoch's one host sync
    seconds = time.perf_counter() - start
    metrics = {
        "loss": total_loss / max(samples, 1),
        "acc_a": correct_a / max(samples, 1),
        "samples": samples,
        "seconds": seconds,
        "samples_per_second": samples / max(seconds, 1e-9),
    }
    if has_branch_b:
        metrics["acc_b"] = correct_b / max(samples, 1)
    return metrics


@torch.inference_mode()
def evaluate_classification(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Top-1 / top-5 accuracy and loss of the prediction (branch A) on `loader`.

    Sums on the device, read once (as in `train_one_epoch`): float64 of each batch's float32 loss sum.
    """
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # [loss sum, top-1 hits, top-5 hits]
    samples = 0.0
    for images, labels, _ in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        output = model(images)
        sums[0] += nn.functional.cross_entropy(output.logits, labels, reduction="sum").double()
        k = min(5, output.logits.shape[1])
        topk = output.logits.topk(k, dim=1).indices
        sums[1] += (topk[:, 0] == labels).sum()
        sums[2] += (topk == labels[:, None]).any(dim=1).sum()
        samples += labels.shape[0]
    total_loss, top1, top5 = sums.tolist()
    return {
        "val_loss": total_loss / max(samples, 1),
        "val_top1": top1 / max(samples, 1),
        "val_top5": top5 / max(samples, 1),
    }
