"""What the synthetic generator's two layouts (toy: `acol.data.synthetic_toy`, shadow ILSVRC:
`acol.data.shadow_ilsvrc`) share: split codes, wnids, the grey background, the body textures, colours,
encoding and the ``synthetic.json`` marker.

Why a module of its own: both layouts draw with these, and `acol.data.synthetic` (the entry point that picks
the layout) imports both, so neither layout imports the other.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from acol.config import SHADOW_ONLY_FIELDS, SyntheticConfig
from acol.io import write_bytes_atomic

__all__ = [
    "SPLITS",
    "SPLIT_CODE",
    "Split",
    "SyntheticSummary",
    "background",
    "class_wnids",
    "encode",
    "existing_dataset",
    "hsv_to_bgr",
    "texture_wave",
    "write_marker",
]

Split = Literal["train", "val", "holdout"]
SPLITS: tuple[str, ...] = ("train", "val", "holdout")
SPLIT_CODE = {"train": 0, "val": 1, "holdout": 2}  # the 2nd seed word of every image's generator
_MARKER = "synthetic.json"
_WNID_BASE = 90_000_000  # made-up wnids n90000000, n90000001, ... (no clash with real ImageNet synsets)
# Fields added after shadow datasets were first made: left out of the marker while None, so that an older
# dataset's synthetic.json stays byte-identical.
_SHADOW_OPTIONAL = ("shadow_classes", "shadow_fullsup_metadata")


@dataclass
class SyntheticSummary:
    """Counts per split and box statistics of the annotated splits (val + holdout)."""

    root: str
    num_classes: int
    images: dict[str, int]
    boxes: int
    boxes_per_image: dict[int, float]  # number of objects -> fraction of annotated images
    box_area_fraction_quantiles: dict[str, float]  # q10/q25/q50/q75/q90 of box area / image area
    part_area_fraction_of_box_median: float
    created: bool = field(default=True)  # False when an identical complete dataset was already there


def class_wnids(num_classes: int) -> list[str]:
    """Made-up wnids in class-index order (their sorted order is the class index, as in ILSVRC)."""
    return [f"n{_WNID_BASE + k:08d}" for k in range(num_classes)]


def hsv_to_bgr(hue: float, saturation: float, value: float) -> np.ndarray:
    """OpenCV HSV (hue in [0, 180)) to a BGR float triple."""
    pixel = np.array([[[hue % 180, saturation, value]]], dtype=np.uint8)
    return cv2.cvtColor(pixel, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def texture_wave(
    rng: np.random.Generator, pattern: str, period: float, size: int, width: int | None = None
) -> np.ndarray:
    """(size, width or size) float32 in [-1, 1]: the class pattern at a random phase (and diagonal sign)."""
    yy, xx = np.mgrid[0:size, 0 : size if width is None else width].astype(np.float32)
    phase_u, phase_v = rng.uniform(0, 2 * np.pi, size=2)
    if pattern in ("stripes-45", "checker-45"):
        sign = 1.0 if (pattern == "checker-45" or rng.random() < 0.5) else -1.0
        u, v = (xx + sign * yy) / np.sqrt(2), (xx - sign * yy) / np.sqrt(2)
    else:
        u, v = xx, yy
    wave_u = np.sin(2 * np.pi * u / period + phase_u)
    wave_v = np.sin(2 * np.pi * v / period + phase_v)
    if pattern == "stripes-0":  # horizontal stripes: the value varies along y
        return wave_v
    if pattern in ("stripes-90", "stripes-45"):
        return wave_u
    return np.sign(wave_u * wave_v).astype(np.float32)  # checkerboards: square cells


def background(
    rng: np.random.Generator, config: SyntheticConfig, width: int | None = None, height: int | None = None
) -> np.ndarray:
    """(H, W, 3) float32 grey: smooth low-frequency brightness noise plus grey clutter shapes (no hue).

    Square ``image_size`` images by default (the toy layout); the shadow layout passes each real size.
    """
    width = width or config.image_size
    height = height or config.image_size
    side = min(width, height)
    coarse = rng.uniform(70, 190, size=(4, 4)).astype(np.float32)
    grey = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(config.clutter_count[0], config.clutter_count[1] + 1))):
        shade = float(rng.uniform(40, 220))
        x, y = (int(v) for v in rng.integers(0, (width, height)))  # = integers(0, size, size=2) when square
        w, h = (int(v) for v in rng.integers(side // 16 + 1, side // 5 + 2, size=2))
        if rng.random() < 0.5:
            cv2.rectangle(grey, (x, y), (x + w, y + h), shade, thickness=-1)
        else:
            cv2.ellipse(grey, (x, y), (w, h), float(rng.uniform(0, 180)), 0, 360, shade, thickness=-1)
    return np.repeat(grey[:, :, None], 3, axis=2)


def encode(array: np.ndarray, ext: str, params: list[int], what: str) -> bytes:
    ok, buffer = cv2.imencode(ext, array, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {what}")
    return buffer.tobytes()


def existing_dataset(root: Path, config: SyntheticConfig) -> SyntheticSummary | None:
    """The summary of the complete dataset made with ``config`` at ``root``, None if there is none;
    ``FileExistsError`` if one made with another config is there (never mix two datasets in one folder)."""
    marker = root / _MARKER
    if not marker.is_file():
        return None
    try:
        existing = json.loads(marker.read_text())
        same = SyntheticConfig.model_validate(existing["config"]) == config
    except (ValueError, KeyError, TypeError) as error:
        raise FileExistsError(f"{marker} is not a valid synthetic dataset marker: {error}") from error
    if not same:
        raise FileExistsError(
            f"{root} holds a synthetic dataset made with another config ({marker}); use an empty folder"
        )
    summary = SyntheticSummary(root=str(root), **existing["summary"])
    summary.boxes_per_image = {int(k): v for k, v in summary.boxes_per_image.items()}
    summary.created = False
    return summary


def write_marker(root: Path, config: SyntheticConfig, summary: SyntheticSummary) -> None:
    """Write ``synthetic.json`` last (config + summary); toy configs leave the shadow fields out, and shadow
    configs their unset later fields, so a marker stays byte-identical to the one written before they existed."""
    if config.layout == "toy":
        left_out = {"layout", *SHADOW_ONLY_FIELDS}
    else:
        left_out = {name for name in _SHADOW_OPTIONAL if getattr(config, name) is None}
    payload = {"config": json.loads(config.model_dump_json(exclude=left_out)), "summary": asdict(summary)}
    payload["summary"].pop("created")
    payload["summary"].pop("root")
    write_bytes_atomic(root / _MARKER, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())
