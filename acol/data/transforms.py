"""Image transforms shared by training, extraction and evaluation.

Evaluation resizes the whole image to a square (as Choe et al. 2020 do), so boxes map to the map grid by a plain
scale; training adds the usual scale-and-crop augmentation and flips.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "train_transform", "eval_transform", "to_float_tensor"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_float_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) uint8 tensor view, ready for the v2 transforms."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def train_transform(size: int) -> v2.Compose:
    """Resize to size*8/7 (256 for 224), random crop `size`, random flip, normalize."""
    return v2.Compose(
        [
            v2.Resize(round(size * 8 / 7), antialias=True),
            v2.RandomCrop(size),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform(size: int) -> v2.Compose:
    """Resize the whole image to (size, size), normalize: the map grid then covers the image exactly."""
    return v2.Compose(
        [
            v2.Resize((size, size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
