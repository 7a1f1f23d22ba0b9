"""The toy layout of the synthetic dataset: the real ILSVRC 2012 on-disk layout, designed to test ACoL.

Each object is a textured *body* (an ellipse) carrying a small, saturated *part* (a square "head") at one end:
- the part's colour alone tells the class (one saturated hue per class): the easy, most discriminative region;
- body_mode="texture" (default): every body has the same muted colour; its class cue is a texture (one of 5
  flip-invariant stripe/checker patterns x one of 2 periods), fully class-specific but harder to learn than
  the part's hue, so a CAM classifier has little reason to develop it once the part is learnt, while ACoL's
  branch B, with the part erased, must (see docs/synthetic.md for what was measured);
- body_mode="pair": the body's hue is shared by a pair of classes (2p, 2p+1); "class": one body hue per class;
- the background is grey (no hue) low-frequency noise with grey clutter, so nothing outside an object
  carries a class signal (clutter in body colours would send branch B to the background; see docs/synthetic.md).

Layout written under `root` (as the real ILSVRC 2012 CLS-LOC release, plus masks for PxAP):

    train/<wnid>/<wnid>_<n>.JPEG
    val/ILSVRC2012_val_%08d.JPEG                 (classes shuffled over indices, as in the real val set)
    Annotations/CLS-LOC/val/ILSVRC2012_val_%08d.xml   (PASCAL VOC, one <object> per instance)
    LOC_val_solution.csv                          (ImageId,PredictionString "wnid x0 y0 x1 y1 ...")
    LOC_synset_mapping.txt                        ("n90000000 name" per line; sorted order = class index)
    masks/val/ILSVRC2012_val_%08d.png            (uint8 0/255, union of the full object silhouettes)
    holdout/..., Annotations/CLS-LOC/holdout/..., LOC_holdout_solution.csv, masks/holdout/...
                                                  (a small fully annotated split for threshold selection)
    synthetic.json                                (config + summary, written last: marks a complete dataset)

Boxes are integer pixel indices (x0, y0, x1, y1), 0-based and inclusive: the bounding box of the instance's
silhouette, so box area with the "+1" convention equals the silhouette's bounding-box pixel count.
Objects never overlap (their boxes are at least `object_gap_px` apart), so each box is also the bounding box
of the mask inside it. Every image is drawn by a NumPy Generator seeded from (seed, split, index): files are
byte-identical for the same config whatever the order or number of workers.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from acol.config import TEXTURE_PATTERNS, SyntheticConfig
from acol.data.synthetic_base import (
    SPLIT_CODE,
    SPLITS,
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
    "SyntheticObject",
    "RenderedImage",
    "image_name",
    "render_image",
    "texture_of_class",
    "split_labels",
    "generate_toy",
]

_TEXTURE_PATTERNS = len(TEXTURE_PATTERNS)


@dataclass(frozen=True)
class SyntheticObject:
    """One instance: box (x0, y0, x1, y1) 0-based inclusive pixels; part_box likewise (the square part)."""

    box: tuple[int, int, int, int]
    part_box: tuple[int, int, int, int]


@dataclass
class RenderedImage:
    """One image before encoding: image (H, W, 3) uint8 BGR; mask, part_mask (H, W) bool (instance union)."""

    image: np.ndarray
    label: int
    objects: list[SyntheticObject]
    mask: np.ndarray
    part_mask: np.ndarray


def image_name(config: SyntheticConfig, split: Split, index: int, label: int) -> str:
    """Path of image `index` (of class `label`) of `split` relative to the root, in the ILSVRC naming.

    Train images are numbered within their class (`<wnid>_<n>.JPEG`, n = 0 .. train_per_class - 1).
    """
    if split == "train":
        wnid = class_wnids(config.num_classes)[label]
        return f"train/{wnid}/{wnid}_{index - label * config.train_per_class}.JPEG"
    prefix = "ILSVRC2012_val" if split == "val" else "ILSVRC2012_holdout"
    return f"{split}/{prefix}_{index:08d}.JPEG"


def split_labels(config: SyntheticConfig, split: Split) -> np.ndarray:
    """(N,) int64 class of each image of `split`; train is class-major, val/holdout shuffled by the seed."""
    per_class = {
        "train": config.train_per_class,
        "val": config.val_per_class,
        "holdout": config.holdout_per_class,
    }
    labels = np.repeat(np.arange(config.num_classes, dtype=np.int64), per_class[split])
    if split != "train":
        labels = np.random.default_rng([config.seed, SPLIT_CODE[split], 1_000_003]).permutation(labels)
    return labels


def _part_colour(config: SyntheticConfig, label: int) -> np.ndarray:
    # Evenly spaced saturated hues: the one cue that separates all classes at a glance.
    return hsv_to_bgr(180.0 * label / config.num_classes, 255, 255)


def _body_hue(config: SyntheticConfig, label: int) -> float:
    # Half-way between two part hues (parts sit at multiples of 180 / K), so a body never has a part's hue; in
    # "pair" mode classes 2p and 2p+1 share the hue next to class 2p's part.
    first = 2 * (label // 2) if config.body_mode == "pair" else label
    return 180.0 * (first + 0.5) / config.num_classes


def texture_of_class(config: SyntheticConfig, label: int) -> tuple[str, float]:
    """Texture mode: (pattern name, period in px) of class `label`; distinct for every class."""
    return TEXTURE_PATTERNS[label % _TEXTURE_PATTERNS], float(
        config.texture_periods_px[label // _TEXTURE_PATTERNS]
    )


def _object_masks(
    rng: np.random.Generator, config: SyntheticConfig, scale: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """Body and part masks ((H, W) bool each) of one object at a random place, or None if it won't fit."""
    size = config.image_size
    long_axis = rng.uniform(*config.body_long_range) * size * scale
    short_axis = min(rng.uniform(*config.body_short_range) * size * scale, long_axis)
    angle = rng.uniform(0.0, 2 * np.pi)
    part_half = max(2.0, config.part_size * size * max(scale, 0.85) / 2)
    # Part centre on the long axis, 70% of the way to one end: the square sticks out of the body like a head.
    direction = np.array([np.cos(angle), np.sin(angle)])
    reach = 0.7 * long_axis + part_half
    extent = np.abs(direction) * max(reach, long_axis) + np.abs(direction[::-1]) * short_axis + part_half
    margin = np.ceil(extent).astype(int) + 1
    if np.any(2 * margin >= size):
        return None
    cx, cy = (rng.integers(margin[i], size - margin[i]) for i in range(2))
    body = np.zeros((size, size), np.uint8)
    cv2.ellipse(
        body,
        (int(cx), int(cy)),
        (round(long_axis), round(short_axis)),
        float(np.degrees(angle)),
        0,
        360,
        1,
        -1,
    )
    px, py = np.array([cx, cy]) + 0.7 * long_axis * direction
    part = np.zeros((size, size), np.uint8)
    x0, y0 = round(px - part_half), round(py - part_half)
    side = round(2 * part_half)
    cv2.rectangle(part, (x0, y0), (x0 + side - 1, y0 + side - 1), 1, thickness=-1)
    return body.astype(bool), part.astype(bool)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _boxes_apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1]


def _body_texture(rng: np.random.Generator, config: SyntheticConfig, label: int) -> np.ndarray:
    """(H, W, 3) float32 BGR body appearance over the whole canvas (masked by the caller)."""
    size = config.image_size
    if config.body_mode == "texture":
        # One colour for every class: the class is in the pattern only, never in hue or mean brightness.
        hue, saturation, value = config.texture_body_hsv
        wave = texture_wave(rng, *texture_of_class(config, label), size)
        contrast = config.texture_contrast
    else:
        # Stripes across the body (one random orientation per image): a texture, not a class cue.
        hue, saturation, value = _body_hue(config, label), config.body_saturation, 165
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        theta = rng.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / config.stripe_period_px)
        contrast = config.stripe_contrast
    dark, bright = (hsv_to_bgr(hue, saturation, value + sign * contrast / 2) for sign in (-1, 1))
    return dark + (bright - dark) * ((wave + 1) / 2)[..., None]


def render_image(config: SyntheticConfig, split: Split, index: int) -> RenderedImage:
    """Draw image `index` of `split` (deterministic in (seed, split, index)); nothing is written."""
    label = int(split_labels(config, split)[index])
    rng = np.random.default_rng([config.seed, SPLIT_CODE[split], index])
    size = config.image_size
    canvas = background(rng, config)
    wanted = int(rng.choice(len(config.object_count_probs), p=np.asarray(config.object_count_probs))) + 1
    scale = 1.0 if wanted == 1 else config.multi_object_scale
    objects: list[SyntheticObject] = []
    mask = np.zeros((size, size), bool)
    part_mask = np.zeros((size, size), bool)
    part_colour = _part_colour(config, label)
    body_texture = _body_texture(rng, config, label)  # (H, W, 3) float32
    for _ in range(150 * wanted):  # rejection sampling of non-overlapping placements
        if len(objects) == wanted:
            break
        drawn = _object_masks(rng, config, scale)
        if drawn is None:
            continue
        body, part = drawn
        silhouette = body | part
        box = _bbox(silhouette)
        if any(not _boxes_apart(box, other.box, config.object_gap_px) for other in objects):
            continue
        canvas[body & ~part] = body_texture[body & ~part]
        canvas[part] = part_colour
        mask |= silhouette
        part_mask |= part
        objects.append(SyntheticObject(box=box, part_box=_bbox(part)))
    if not objects:
        raise RuntimeError(f"could not place an object in {split} image {index}; image_size too small?")
    if config.noise_std > 0:
        canvas += rng.normal(0.0, config.noise_std, size=canvas.shape).astype(np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return RenderedImage(image=image, label=label, objects=objects, mask=mask, part_mask=part_mask)


def _voc_xml(filename: str, size: int, wnid: str, objects: list[SyntheticObject], folder: str) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = filename
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "ILSVRC_2012 (synthetic)"
    size_el = ET.SubElement(root, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(size_el, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        obj_el = ET.SubElement(root, "object")
        ET.SubElement(obj_el, "name").text = wnid
        ET.SubElement(obj_el, "pose").text = "Unspecified"
        ET.SubElement(obj_el, "truncated").text = "0"
        ET.SubElement(obj_el, "difficult").text = "0"
        box_el = ET.SubElement(obj_el, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box, strict=True):
            ET.SubElement(box_el, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


def _generate_one(root: str, config: SyntheticConfig, split: Split, index: int) -> tuple[int, list, float]:
    """Render and write one image (plus XML and mask if annotated); return (label, boxes, part/box area)."""
    rendered = render_image(config, split, index)
    wnid = class_wnids(config.num_classes)[rendered.label]
    name = image_name(config, split, index, rendered.label)
    base = Path(root)
    jpeg = encode(rendered.image, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality], name)
    write_bytes_atomic(base / name, jpeg, durable=False)
    boxes = [list(obj.box) for obj in rendered.objects]
    part_ratio = float(
        np.median(
            [
                ((o.part_box[2] - o.part_box[0] + 1) * (o.part_box[3] - o.part_box[1] + 1))
                / ((o.box[2] - o.box[0] + 1) * (o.box[3] - o.box[1] + 1))
                for o in rendered.objects
            ]
        )
    )
    if split != "train":
        stem = Path(name).stem
        xml = _voc_xml(Path(name).name, config.image_size, wnid, rendered.objects, split)
        write_bytes_atomic(base / "Annotations" / "CLS-LOC" / split / f"{stem}.xml", xml, durable=False)
        png = encode(rendered.mask.astype(np.uint8) * 255, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 3], stem)
        write_bytes_atomic(base / "masks" / split / f"{stem}.png", png, durable=False)
    return rendered.label, boxes, part_ratio


def _generate_chunk(root: str, config: SyntheticConfig, split: Split, indices: list[int]) -> list:
    return [_generate_one(root, config, split, index) for index in indices]


def _summary(
    root: Path, config: SyntheticConfig, counts: dict[str, int], annotated: list[tuple[int, list, float]]
) -> SyntheticSummary:
    per_image = np.array([len(boxes) for _, boxes, _ in annotated])
    areas = np.array(
        [(b[2] - b[0] + 1) * (b[3] - b[1] + 1) for _, boxes, _ in annotated for b in boxes], dtype=np.float64
    ) / float(config.image_size**2)
    quantiles = np.quantile(areas, [0.1, 0.25, 0.5, 0.75, 0.9]) if areas.size else np.zeros(5)
    return SyntheticSummary(
        root=str(root),
        num_classes=config.num_classes,
        images=counts,
        boxes=int(per_image.sum()),
        boxes_per_image={int(k): float(np.mean(per_image == k)) for k in np.unique(per_image)},
        box_area_fraction_quantiles={
            f"q{q}": round(float(v), 4) for q, v in zip((10, 25, 50, 75, 90), quantiles, strict=True)
        },
        part_area_fraction_of_box_median=round(float(np.median([r for *_, r in annotated])), 4)
        if annotated
        else 0.0,
    )


def _solution_csv(config: SyntheticConfig, split: Split, results: list[tuple[int, list, float]]) -> bytes:
    wnids = class_wnids(config.num_classes)
    lines = ["ImageId,PredictionString"]
    for index, (label, boxes, _) in enumerate(results):
        stem = Path(image_name(config, split, index, label)).stem
        lines.append(stem + "," + " ".join(f"{wnids[label]} {x0} {y0} {x1} {y1}" for x0, y0, x1, y1 in boxes))
    return ("\n".join(lines) + "\n").encode()


def generate_toy(
    root: str | os.PathLike, config: SyntheticConfig, *, workers: int = 1, progress: bool = True
) -> SyntheticSummary:
    """Write the toy dataset under `root` (called by `acol.data.synthetic.generate_synthetic`, which first
    keeps a complete dataset of the same config); `synthetic.json` is written last, so it means complete."""
    from tqdm import tqdm  # imported here: the module does no work at import time

    root = Path(root)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    wnids = class_wnids(config.num_classes)
    root.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(
        root / "LOC_synset_mapping.txt",
        "".join(f"{wnid} synthetic class {k}\n" for k, wnid in enumerate(wnids)).encode(),
    )
    counts: dict[str, int] = {}
    annotated: list[tuple[int, list, float]] = []
    executor = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for split in SPLITS:
            total = len(split_labels(config, split))  # type: ignore[arg-type]
            counts[split] = total
            if total == 0:
                continue
            chunk = 64
            chunks = [list(range(i, min(i + chunk, total))) for i in range(0, total, chunk)]
            bar = tqdm(total=total, desc=f"synthetic {split}", disable=not progress, unit="img")
            results: list[tuple[int, list, float]] = []
            if executor is None:
                parts = (_generate_chunk(str(root), config, split, c) for c in chunks)  # type: ignore[arg-type]
            else:
                parts = executor.map(_generate_chunk, [str(root)] * len(chunks), [config] * len(chunks),
                                     [split] * len(chunks), chunks)  # fmt: skip
            for part in parts:  # executor.map keeps the submission order
                results.extend(part)
                bar.update(len(part))
            bar.close()
            if split != "train":
                write_bytes_atomic(root / f"LOC_{split}_solution.csv", _solution_csv(config, split, results))  # type: ignore[arg-type]
                annotated.extend(results)
    finally:
        if executor is not None:
            executor.shutdown()
    summary = _summary(root, config, counts, annotated)
    write_marker(root, config, summary)
    return summary
