"""A PyTorch dataset over a manifest: decodes images from the dataset root and applies a transform."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import torch
from torch.utils.data import Dataset

from acol.data.images import read_image
from acol.data.transforms import to_float_tensor
from acol.data.paths import resolve_inside

__all__ = ["ManifestDataset"]


class ManifestDataset(Dataset):
    """Items are (image (3, S, S) float, class index, row index); paths are resolved inside `root`."""

    def __init__(
        self, manifest: pa.Table, root: str | Path, transform: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        self.root = Path(root)
        self.image_ids: list[str] = manifest.column("image_id").to_pylist()
        self.labels: list[int] = manifest.column("class_index").to_pylist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = read_image(resolve_inside(self.root, self.image_ids[index]))
        return self.transform(to_float_tensor(image)), self.labels[index], index
