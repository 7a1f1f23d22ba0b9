"""Shadow ILSVRC val: synthetic images with the real ILSVRC 2012 val set's sizes, boxes and labels.

Why: the pipeline's cost at the real scale (50,000 val images of ~500x375 px, 1.6 boxes each, 1,000 classes)
can be measured, and every stage run end to end, without the ImageNet images. The geometry comes from a WSOL
metadata folder (``SyntheticConfig.shadow_metadata``, e.g. ``ILSVRC/test`` of the shipped
``tests/assets/wsol-metadata.tar.xz``), read with ``acol.data.readers.wsol_metadata.read_wsol_metadata``.

Layout written under ``root`` (the real release's):

    val/ILSVRC2012_val_%08d.JPEG       the metadata's ids, sizes and labels (the first ``num_val_images``)
    LOC_val_solution.csv                ImageId,PredictionString "wnid x0 y0 x1 y1 ..." (the metadata's boxes)
    LOC_synset_mapping.txt              1,000 wnids (``class_wnids``; their sorted order = class index)
    train/<wnid>/<wnid>_<n>.JPEG        ``train_per_class`` per class, geometry of val images (cycled)
    val2/<class>/<n>.jpeg               only with ``shadow_fullsup_metadata`` (ImageNetV2, ILSVRC/val): the
                                        first ``holdout_per_class`` per class, at the metadata's ids
    fullsup_metadata/                   their WSOL metadata folder (``data.fullsup_metadata``; ids relative
                                        to ``root``, which is ``data.root``)
    synthetic.json                      config + summary, written last: marks a complete dataset

``shadow_classes = N`` keeps classes 0..N-1 (the first N sorted wnids): the synset file lists N wnids, val
holds the first ``val_per_class`` metadata images of each (then the first ``num_val_images``), train
``train_per_class`` per kept class. Every image keeps the render index it has in the full dataset (val and
fullsup: its metadata row; train: its class-major position), so a subset's files are the full set's files.

Each object is drawn inside its real box: an ellipse body inscribed in the box, textured, with a saturated
square part at one end of its long axis, as in the toy layout. 1,000 classes need more cues than 180 hues:
class k has part hue ``k % 20`` (of 20) and body texture ``k // 20`` (5 patterns x 10 periods), so each class
is still a unique (part, texture) pair. No masks, holdout or XML: the real val release has none of them.
Every image is drawn by ``np.random.default_rng([seed, split, index, stream])`` (stream 1; shadow CUB uses
2): byte-identical whatever the order or number of workers. ``acol.data.shadow_cub`` reuses the renderer
and the helpers here for the CUB-200-2011 layout.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from acol.config import TEXTURE_PATTERNS, SyntheticConfig
from acol.data.manifest import manifest_from_records
from acol.data.readers.wsol_metadata import read_wsol_metadata, write_wsol_metadata
from acol.data.synthetic_base import (
    SPLIT_CODE,
    Split,
    SyntheticSummary,
    background,
    class_wnids,
    encode,
    hsv_to_bgr,
    texture_wave,
    write_marker,
)
from acol.io import write_bytes_atomic

__all__ = [
    "FULLSUP_METADATA",
    "ShadowImage",
    "body_mask",
    "first_per_class",
    "generate_shadow_ilsvrc",
    "metadata_geometry",
    "render_shadow_image",
    "shadow_geometry",
    "write_geometry_metadata",
    "write_shadow_images",
]

SHADOW_CLASSES = 1000
FULLSUP_METADATA = "fullsup_metadata"  # under root: the WSOL metadata folder of the fullsup images written
_PART_HUES = 20  # hues 9 * (k % 20): 9 OpenCV hue steps apart
_PERIODS_PX = tuple(3.0 * 1.25**i for i in range(10))  # 3 to 22 px, 1.25 apart (> the 8/7 training upscale)
_STREAM = 1  # the 4th seed word: shadow images never share a stream with toy images


@dataclass(frozen=True)
class ShadowImage:
    """Geometry of one image: relative path, size, class index and boxes (x0, y0, x1, y1) inclusive."""

    name: str
    width: int
    height: int
    label: int
    boxes: tuple[tuple[int, int, int, int], ...]


def shadow_geometry(config: SyntheticConfig) -> list[ShadowImage]:
    """All images of ``config.shadow_metadata`` in ``image_ids.txt`` order; raises if it has problems."""
    return metadata_geometry(str(config.shadow_metadata))


def metadata_geometry(folder: str | os.PathLike[str]) -> list[ShadowImage]:
    """All images of a WSOL metadata folder in ``image_ids.txt`` order, names = its ids; raises on problems."""
    table, problems = read_wsol_metadata(folder, strict=True)
    if problems:  # strict raises first; kept as a guard
        raise ValueError(f"{folder}: {len(problems)} metadata problems")
    rows = table.select(["image_id", "width", "height", "class_index", "boxes"]).to_pydict()
    labels = rows["class_index"]
    if max(labels) >= SHADOW_CLASSES:
        raise ValueError(f"{folder}: labels beyond {SHADOW_CLASSES} classes")
    return [
        ShadowImage(name, int(w), int(h), int(k), tuple(tuple(int(v) for v in b) for b in boxes))  # type: ignore[misc]
        for name, w, h, k, boxes in zip(
            rows["image_id"], rows["width"], rows["height"], labels, rows["boxes"], strict=True
        )
    ]


def first_per_class(
    images: list[ShadowImage], classes: int, per_class: int | None
) -> list[tuple[int, ShadowImage]]:
    """(row, image) of the first ``per_class`` images (None: all) of each class below ``classes``, in row
    order; the row is the image's render index, so a subset draws the same pixels as the full set."""
    taken = [0] * classes
    out = []
    for row, image in enumerate(images):
        if image.label < classes and (per_class is None or taken[image.label] < per_class):
            taken[image.label] += 1
            out.append((row, image))
    return out


def _kept_classes(config: SyntheticConfig) -> int:
    return config.shadow_classes or SHADOW_CLASSES


def _val_jobs(config: SyntheticConfig, every: list[ShadowImage]) -> list[tuple[int, ShadowImage]]:
    """Val images with their render index: the first ``num_val_images`` rows, or with ``shadow_classes`` the
    first ``val_per_class`` rows of each kept class, then the first ``num_val_images`` of those."""
    if config.shadow_classes is None:  # the original selection, unchanged
        return list(enumerate(every[: config.num_val_images]))
    return first_per_class(every, config.shadow_classes, config.val_per_class)[: config.num_val_images]


def _train_images(config: SyntheticConfig, val: list[ShadowImage]) -> list[ShadowImage]:
    """``train_per_class`` images per class, class-major; image i takes the size and boxes of val image i."""
    wnids = class_wnids(_kept_classes(config))
    out = []
    for k, wnid in enumerate(wnids):
        for n in range(config.train_per_class):
            g = val[(k * config.train_per_class + n) % len(val)]
            out.append(ShadowImage(f"train/{wnid}/{wnid}_{n}.JPEG", g.width, g.height, k, g.boxes))
    return out


def _object_masks(
    rng: np.random.Generator, config: SyntheticConfig, box: tuple[int, int, int, int], width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Body (ellipse inscribed in the box) and part (a square at one end of the long axis) masks, (H, W)."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    body = body_mask(box, width, height)
    side = int(min(max(2, round(config.part_size * (bw + bh) / 2)), bw, bh))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    px, py = (x0 + x1) / 2, (y0 + y1) / 2
    if bw >= bh:
        px += sign * 0.35 * (bw - side)  # 70% of the way to one end, inside the box
    else:
        py += sign * 0.35 * (bh - side)
    left = int(np.clip(round(px - side / 2), x0, x1 - side + 1))
    top = int(np.clip(round(py - side / 2), y0, y1 - side + 1))
    part = np.zeros((height, width), np.uint8)
    part[top : top + side, left : left + side] = 1
    return body, part.astype(bool)


def body_mask(box: tuple[int, int, int, int], width: int, height: int) -> np.ndarray:
    """(H, W) bool: the object's body, the ellipse inscribed in ``box``; the shadow OpenImages' instance mask
    (the part square lies inside it)."""
    x0, y0, x1, y1 = box
    body = np.zeros((height, width), np.uint8)
    centre = (round((x0 + x1) * 8), round((y0 + y1) * 8))  # 4 fractional bits (shift=4)
    cv2.ellipse(body, centre, (round((x1 - x0) * 8), round((y1 - y0) * 8)), 0, 0, 360, 1, -1, cv2.LINE_8, 4)
    return body.astype(bool)


def shadow_texture(label: int) -> tuple[str, float]:
    """(pattern, period px) of the body texture of class ``label``: 5 patterns x 10 periods, by ``label // 20``."""
    code = label // _PART_HUES
    return TEXTURE_PATTERNS[code % len(TEXTURE_PATTERNS)], _PERIODS_PX[code // len(TEXTURE_PATTERNS)]


def render_shadow_image(
    config: SyntheticConfig, split: Split, index: int, image: ShadowImage, stream: int = _STREAM
) -> np.ndarray:
    """(H, W, 3) uint8 BGR image ``index`` of ``split`` (deterministic in (seed, split, index, stream));
    ``config`` gives the style (seed, colours, contrast, part size, noise), ``image`` the geometry."""
    rng = np.random.default_rng([config.seed, SPLIT_CODE[split], index, stream])
    w, h = image.width, image.height
    canvas = background(rng, config, w, h)
    wave = texture_wave(rng, *shadow_texture(image.label), h, w)
    hue, saturation, value = config.texture_body_hsv
    dark, bright = (hsv_to_bgr(hue, saturation, value + s * config.texture_contrast / 2) for s in (-1, 1))
    texture = dark + (bright - dark) * ((wave + 1) / 2)[..., None]
    part_colour = hsv_to_bgr(180.0 * (image.label % _PART_HUES) / _PART_HUES, 255, 255)
    parts = []
    for box in image.boxes:  # real boxes overlap: bodies first, then every part on top, so none is hidden
        body, part = _object_masks(rng, config, box, w, h)
        canvas[body] = texture[body]
        parts.append(part)
    for part in parts:
        canvas[part] = part_colour
    if config.noise_std > 0:
        canvas += rng.normal(0.0, config.noise_std, size=canvas.shape).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _write_chunk(
    root: str,
    config: SyntheticConfig,
    split: Split,
    jobs: list[tuple[int, ShadowImage]],
    stream: int = _STREAM,
) -> int:
    """Worker: render, encode and atomically write a chunk of images (at ``root/name``); returns how many."""
    for index, image in jobs:
        array = render_shadow_image(config, split, index, image, stream)
        jpeg = encode(array, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality], image.name)
        write_bytes_atomic(Path(root) / image.name, jpeg, durable=False)
    return len(jobs)


def _solution_csv(images: list[ShadowImage]) -> str:
    wnids = class_wnids(SHADOW_CLASSES)
    lines = ["ImageId,PredictionString"]
    for g in images:
        boxes = " ".join(f"{wnids[g.label]} {x0} {y0} {x1} {y1}" for x0, y0, x1, y1 in g.boxes)
        lines.append(f"{Path(g.name).stem},{boxes}")
    return "\n".join(lines) + "\n"


def _summary(
    root: Path, classes: int, train: list[ShadowImage], val: list[ShadowImage], fullsup: list[ShadowImage]
) -> SyntheticSummary:
    per_image = np.array([len(g.boxes) for g in val])
    areas = np.array(
        [(b[2] - b[0] + 1) * (b[3] - b[1] + 1) / (g.width * g.height) for g in val for b in g.boxes]
    )
    quantiles = np.quantile(areas, [0.1, 0.25, 0.5, 0.75, 0.9])
    return SyntheticSummary(
        root=str(root),
        num_classes=classes,
        images={"train": len(train), "val": len(val), "holdout": len(fullsup)},
        boxes=int(per_image.sum()),
        boxes_per_image={int(k): float(np.mean(per_image == k)) for k in np.unique(per_image)},
        box_area_fraction_quantiles={
            f"q{q}": round(float(v), 4) for q, v in zip((10, 25, 50, 75, 90), quantiles, strict=True)
        },
        part_area_fraction_of_box_median=0.0,  # not tracked: parts are sized from the box, see the docstring
    )


def write_shadow_images(
    root: Path,
    config: SyntheticConfig,
    split: Split,
    jobs: list[tuple[int, ShadowImage]],
    *,
    executor: ProcessPoolExecutor | None = None,
    stream: int = _STREAM,
    desc: str = "shadow",
    progress: bool = False,
) -> None:
    """Render and write each (render index, image) at ``root/image.name``, in chunks of 32 (on ``executor``'s
    processes when given); the bytes depend on the jobs only, never on the chunking or the workers."""
    from tqdm import tqdm  # imported here: the module does no work at import time

    chunks = [jobs[i : i + 32] for i in range(0, len(jobs), 32)]
    bar = tqdm(total=len(jobs), desc=f"{desc} {split}", disable=not progress, unit="img")
    if executor is None:
        done = (_write_chunk(str(root), config, split, c, stream) for c in chunks)
    else:
        n = len(chunks)
        done = executor.map(_write_chunk, [str(root)] * n, [config] * n, [split] * n, chunks, [stream] * n)
    for count in done:
        bar.update(count)
    bar.close()


def write_geometry_metadata(folder: Path, images: list[ShadowImage], classes: list[str], source: str) -> None:
    """The WSOL metadata folder (image_ids, class_labels, image_sizes, localization) of ``images``, whose
    names are the ids; through the project's own writer, so it is what the metadata reader expects."""
    records = [
        {
            "image_id": g.name,
            "class_index": g.label,
            "width": g.width,
            "height": g.height,
            "boxes": list(g.boxes),
        }
        for g in images
    ]
    write_wsol_metadata(manifest_from_records(records, classes, source), folder)


def _fullsup_jobs(config: SyntheticConfig) -> list[tuple[int, ShadowImage]]:
    """ImageNetV2 fullsup images of the kept classes (the first ``holdout_per_class`` each); none if unset."""
    if config.shadow_fullsup_metadata is None:
        return []
    every = metadata_geometry(config.shadow_fullsup_metadata)
    return first_per_class(every, _kept_classes(config), config.holdout_per_class)


def generate_shadow_ilsvrc(
    root: str | os.PathLike[str], config: SyntheticConfig, *, workers: int = 1, progress: bool = True
) -> SyntheticSummary:
    """Write the shadow ILSVRC dataset under ``root`` (called by `acol.data.synthetic.generate_synthetic`, which first keeps
    a complete dataset of the same config); a process pool of ``workers`` renders chunks of 32 images."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = Path(root)
    every = shadow_geometry(config)
    val_jobs = _val_jobs(config, every)
    train = _train_images(config, every)
    fullsup_jobs = _fullsup_jobs(config)
    root.mkdir(parents=True, exist_ok=True)
    wnids = class_wnids(_kept_classes(config))
    write_bytes_atomic(
        root / "LOC_synset_mapping.txt",
        "".join(f"{w} synthetic class {k}\n" for k, w in enumerate(wnids)).encode(),
    )
    splits: list[tuple[Split, list[tuple[int, ShadowImage]]]] = [
        ("train", list(enumerate(train))),
        ("val", val_jobs),
        ("holdout", fullsup_jobs),
    ]
    executor = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for split, jobs in splits:
            if jobs:
                write_shadow_images(
                    root, config, split, jobs, executor=executor, desc="shadow ILSVRC", progress=progress
                )
    finally:
        if executor is not None:
            executor.shutdown()
    val = [g for _, g in val_jobs]
    fullsup = [g for _, g in fullsup_jobs]
    if fullsup:
        write_geometry_metadata(root / FULLSUP_METADATA, fullsup, wnids, "ilsvrc")
    write_bytes_atomic(root / "LOC_val_solution.csv", _solution_csv(val).encode())
    summary = _summary(root, len(wnids), train, val, fullsup)
    write_marker(root, config, summary)
    return summary
