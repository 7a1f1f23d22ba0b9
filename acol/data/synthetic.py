"""The synthetic dataset: `generate_synthetic` writes the layout its config names, in the real ILSVRC 2012
on-disk layout.

Layouts: ``toy`` (`acol.data.synthetic_toy`: small square images designed to test the ACoL mechanism; its
docstring lists the files) and ``shadow_ilsvrc`` (`acol.data.shadow_ilsvrc`: the real val set's sizes, boxes
and labels). What both draw with is in `acol.data.synthetic_base`; the config is a params section
(`acol.config.SyntheticConfig`). This module is the one place that picks the layout, so it imports both and
neither imports it. The names below are re-exported: they are the generator's public API.
"""

from __future__ import annotations

import os
from pathlib import Path

from acol.config import TEXTURE_PATTERNS, SyntheticConfig
from acol.data.synthetic_base import (
    SPLITS,
    Split,
    SyntheticSummary,
    class_wnids,
    existing_dataset,
    write_marker,
)
from acol.data.synthetic_toy import (
    RenderedImage,
    SyntheticObject,
    generate_toy,
    image_name,
    render_image,
    split_labels,
    texture_of_class,
)

__all__ = [
    "SPLITS",
    "TEXTURE_PATTERNS",
    "Split",
    "SyntheticConfig",
    "SyntheticObject",
    "RenderedImage",
    "SyntheticSummary",
    "class_wnids",
    "existing_dataset",
    "image_name",
    "render_image",
    "texture_of_class",
    "split_labels",
    "generate_synthetic",
    "write_marker",
]


def generate_synthetic(
    root: str | os.PathLike, config: SyntheticConfig | None = None, *, workers: int = 1, progress: bool = True
) -> SyntheticSummary:
    """Write the dataset under `root`; a complete dataset with the same config there is kept as it is.

    `synthetic.json` (config + summary) is written last, so its presence means complete. A complete dataset
    made with another config raises `FileExistsError` rather than mixing two datasets in one folder.
    """
    config = config or SyntheticConfig()
    root = Path(root)
    existing = existing_dataset(root, config)
    if existing is not None:
        return existing
    if config.layout == "shadow_ilsvrc":
        from acol.data.shadow_ilsvrc import generate_shadow_ilsvrc  # here: the toy layout needs no pyarrow

        return generate_shadow_ilsvrc(root, config, workers=workers, progress=progress)
    return generate_toy(root, config, workers=workers, progress=progress)
