"""Image transforms shared by training, extraction and evaluation, one per published protocol.

Training (``protocol``):
- ``"acol"``: the official ACoL code (xiaomengyc/ACoL `utils/LoadData.py`): resize the shorter side to 256
  (size * 8/7), random crop 224, random horizontal flip.
- ``"choe"``: Choe et al. 2020 (clovaai/wsolevaluation `data_loaders.py`): resize to 256x256 (aspect not
  kept), random crop 224, random horizontal flip.
Evaluation and maps resize the whole image to (size, size), as Choe et al. do for val and test, so boxes map
to the map grid by a plain scale. (The official ACoL val loader centre-crops instead; this project keeps the
whole image for every protocol so that no box falls outside the map.)
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PROTOCOLS",
    "train_transform",
    "eval_transform",
    "normalize",
    "to_float_tensor",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROTOCOLS = ("acol", "choe")


def to_float_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) uint8 tensor view, ready for the v2 transforms."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def _normalize_steps() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def normalize() -> v2.Compose:
    """uint8 (..., 3, H, W) -> float ImageNet-normalized: the last steps of both transforms, apart so that a
    pipeline can ship uint8 images (4x less than float) and normalize them where they are used."""
    return v2.Compose(_normalize_steps())


def train_transform(size: int, protocol: str = "acol", *, normalized: bool = True) -> v2.Compose:
    """Resize to size*8/7 (256 for 224; the shorter side for "acol", both sides for "choe"), random crop
    `size`, random flip, normalize (``normalized=False``: uint8 out, `normalize` left to the caller)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown transform protocol {protocol!r}; choose one of {list(PROTOCOLS)}")
    resize = round(size * 8 / 7)
    return v2.Compose(
        [
            v2.Resize(resize if protocol == "acol" else (resize, resize), antialias=True),
            v2.RandomCrop(size),
            v2.RandomHorizontalFlip(),
            *(_normalize_steps() if normalized else []),
        ]
    )


def eval_transform(size: int, *, normalized: bool = True) -> v2.Compose:
    """Resize the whole image to (size, size), normalize: the map grid then covers the image exactly."""
    steps = _normalize_steps() if normalized else []
    return v2.Compose([v2.Resize((size, size), antialias=True), *steps])
