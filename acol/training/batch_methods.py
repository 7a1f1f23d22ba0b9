"""Training-time batch transforms of the WSOL methods that change the input, not the network: HaS and CutMix.

Why apart from the engine: each is a pure function of (images, labels) whose only randomness is torch's global
CPU generator, which `acol.training.engine.seed_epoch` seeds per rank and epoch, so a resumed run draws what an
uninterrupted one draws, and a batch on a GPU hides or mixes the same pixels as on the CPU. Both return the
images and a target: the labels, or `MixedTargets` when two images' labels share the loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from acol.config import TrainParams
from acol.models.heads import ModelOutput

__all__ = [
    "BatchTransform",
    "MixedTargets",
    "Target",
    "batch_transform",
    "cutmix",
    "cutmix_box",
    "first_labels",
    "hidden_patches",
    "hide_and_seek",
    "target_loss",
]


@dataclass(frozen=True)
class MixedTargets:
    """CutMix's target: the loss is ``lam * loss(labels_a) + (1 - lam) * loss(labels_b)``.

    labels_a: (B,) the images' own labels; labels_b: (B,) the labels of the images pasted into them;
    lam: the fraction of each image's area still its own (the same for the whole batch).
    """

    labels_a: torch.Tensor
    labels_b: torch.Tensor
    lam: float


Target = torch.Tensor | MixedTargets
BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, Target]]


def hidden_patches(batch: int, height: int, width: int, grid_size: int, drop_rate: float) -> torch.Tensor:
    """(batch, height, width) bool: True on the pixels HaS hides, from one uniform draw per patch.

    As Choe et al.'s ``wsol/method/has.py``: patches of ``grid_size`` x ``grid_size`` pixels from the top-left
    corner (the last row and column of patches cut at the border), each hidden when its draw is
    ``<= drop_rate``; the draws in their loop's order (image, patch row, patch column).
    """
    rows, cols = math.ceil(height / grid_size), math.ceil(width / grid_size)
    hidden = torch.rand(batch, rows, cols) <= drop_rate
    pixels = hidden.repeat_interleave(grid_size, dim=1).repeat_interleave(grid_size, dim=2)
    return pixels[:, :height, :width]


def hide_and_seek(
    images: torch.Tensor, labels: torch.Tensor, grid_size: int, drop_rate: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """HaS (Singh and Lee, ICCV 2017): `images` (B, C, H, W) with random grid patches set to 0 in every channel.

    0 of the normalized image is the dataset's mean pixel, the fill of the paper and of Choe et al.;
    ``grid_size`` 0 hides nothing (their code). The labels are unchanged.
    """
    if grid_size == 0:
        return images, labels
    batch, _, height, width = images.shape
    hidden = hidden_patches(batch, height, width, grid_size, drop_rate).to(images.device)
    return images.masked_fill(hidden[:, None], 0.0), labels


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the box CutMix pastes, for a drawn `lam`; draws its centre row, column.

    As Choe et al.'s ``rand_bbox``: sides ``int(side * sqrt(1 - lam))``, the box ``centre -+ side // 2``
    clipped to the image (so it may be smaller than drawn: the loss weights use its real area).
    """
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    row, col = int(torch.randint(height, ())), int(torch.randint(width, ()))
    top, bottom = min(max(row - cut_h // 2, 0), height), min(max(row + cut_h // 2, 0), height)
    left, right = min(max(col - cut_w // 2, 0), width), min(max(col + cut_w // 2, 0), width)
    return top, left, bottom, right


def cutmix(
    images: torch.Tensor, labels: torch.Tensor, beta: float, prob: float
) -> tuple[torch.Tensor, Target]:
    """CutMix (Yun et al., ICCV 2019), as Choe et al.'s ``main.py`` applies ``wsol/method/cutmix.py``.

    With probability `prob` (and `beta` > 0): lam ~ Beta(beta, beta), a box of area about (1 - lam) of the
    image, filled in every image with the same box of another image of the batch (a random permutation);
    lam then becomes the exact fraction left unpasted. Otherwise the batch and labels as they are.
    """
    if not (prob > float(torch.rand(())) and beta > 0):
        return images, labels
    concentration = torch.tensor(float(beta), dtype=torch.float64)
    lam = float(torch.distributions.Beta(concentration, concentration).sample())
    order = torch.randperm(images.shape[0]).to(images.device)
    height, width = images.shape[-2:]
    top, left, bottom, right = cutmix_box(height, width, lam)
    mixed = images.clone()
    mixed[:, :, top:bottom, left:right] = images[order, :, top:bottom, left:right]
    lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    return mixed, MixedTargets(labels, labels[order], lam)


def batch_transform(method: str, params: TrainParams) -> BatchTransform | None:
    """The batch transform of `method` with its `train` params (None: the method trains on the batch as is)."""
    if method == "has":
        return lambda images, labels: hide_and_seek(
            images, labels, params.has_grid_size, params.has_drop_rate
        )
    if method == "cutmix":
        return lambda images, labels: cutmix(images, labels, params.cutmix_beta, params.cutmix_prob)
    return None


def first_labels(target: Target) -> torch.Tensor:
    """The labels accuracy counts against (CutMix: each image's own, as Choe et al.)."""
    return target.labels_a if isinstance(target, MixedTargets) else target


def target_loss(
    loss: Callable[[ModelOutput, torch.Tensor], torch.Tensor], output: ModelOutput, target: Target
) -> torch.Tensor:
    """`loss` against `target`: a mixed target weighs the two labels' losses by lam (a head's loss is linear
    in its one-hot labels, so this is the loss of the mixed label)."""
    if isinstance(target, MixedTargets):
        return target.lam * loss(output, target.labels_a) + (1.0 - target.lam) * loss(output, target.labels_b)
    return loss(output, target)
