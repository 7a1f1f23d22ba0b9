"""Decoding a manifest's images from the dataset root, with a transform: as a PyTorch dataset (the DataLoader
input) and as whole arrays of rows (the Ray Data input, `acol.distributed.ingest`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from acol.data.images import read_image
from acol.data.paths import resolve_inside
from acol.data.transforms import to_float_tensor

__all__ = ["ManifestDataset", "decode_rows", "load_image"]


def load_image(root: str | Path, image_id: str) -> torch.Tensor:
    """The (3, H, W) uint8 image of `image_id`, its path resolved inside `root`."""
    return to_float_tensor(read_image(resolve_inside(Path(root), image_id)))


def decode_rows(
    root: str | Path,
    image_ids: Sequence[str],
    transform: Callable[[torch.Tensor], torch.Tensor],
    seeds: Sequence[int] | None = None,
) -> np.ndarray:
    """Transformed images stacked into one (n, 3, S, S) array.

    With `seeds`, image i's random draws (crop, flip) come from the torch generator seeded with ``seeds[i]``
    (the global state is restored after): the same image whatever process decodes it, in whatever order.
    """
    images = []
    for i, image_id in enumerate(image_ids):
        image = load_image(root, image_id)
        if seeds is None:
            images.append(transform(image))
            continue
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seeds[i]))
            images.append(transform(image))
    return torch.stack(images).numpy()


class ManifestDataset(Dataset):
    """Items are (image (3, S, S) float, class index, row index); paths are resolved inside `root`.

    The rows live in an Arrow array (ids) and a NumPy array (labels), not Python lists: a forked DataLoader
    worker that reads a list's objects writes their reference counts, which copies the pages holding them
    into every worker, slowly, until each holds its own copy of the manifest (1.28 M ids for ILSVRC train).
    """

    def __init__(
        self, manifest: pa.Table, root: str | Path, transform: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        self.root = Path(root)
        self._ids: pa.Array = manifest.column("image_id").combine_chunks()
        self._labels: np.ndarray = manifest.column("class_index").to_numpy()
        self.transform = transform

    @property
    def image_ids(self) -> list[str]:
        """Every row's image id, as a new list (for callers that want them all; items read one at a time)."""
        return self._ids.to_pylist()

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = load_image(self.root, self._ids[index].as_py())
        return self.transform(image), int(self._labels[index]), index
