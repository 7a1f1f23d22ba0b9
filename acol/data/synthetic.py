"""A synthetic dataset in the real ILSVRC 2012 on-disk layout, designed to test the ACoL mechanism.

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

import json
import os
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from acol.io import write_bytes_atomic

__all__ = [
    "SPLITS",
    "TEXTURE_PATTERNS",
    "SyntheticConfig",
    "SyntheticObject",
    "RenderedImage",
    "SyntheticSummary",
    "class_wnids",
    "image_name",
    "render_image",
    "texture_of_class",
    "split_labels",
    "generate_synthetic",
]

Split = Literal["train", "val", "holdout"]
SPLITS: tuple[str, ...] = ("train", "val", "holdout")
_SPLIT_CODE = {"train": 0, "val": 1, "holdout": 2}
_MARKER = "synthetic.json"
_WNID_BASE = 90_000_000  # made-up wnids n90000000, n90000001, ... (no clash with real ImageNet synsets)
# Texture mode: 5 stripe patterns, each the same distribution under a horizontal flip (training flips images,
# so a pattern and its mirror image must be one class): horizontal stripes, vertical stripes, diagonal stripes
# (+-45 degrees, sign drawn per image), a checkerboard and a 45-degree checkerboard.
TEXTURE_PATTERNS: tuple[str, ...] = ("stripes-0", "stripes-90", "stripes-45", "checker", "checker-45")
_TEXTURE_PATTERNS = len(TEXTURE_PATTERNS)
_SHADOW_ONLY = ("shadow_metadata", "num_val_images", "shadow_classes", "shadow_fullsup_metadata")
# Fields added after shadow datasets were first made: left out of the marker while None, so that an older
# dataset's synthetic.json stays byte-identical.
_SHADOW_OPTIONAL = ("shadow_classes", "shadow_fullsup_metadata")


class SyntheticConfig(BaseModel):
    """Everything that determines the dataset; the same config gives byte-identical files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # "toy" (default): the small square dataset below. "shadow_ilsvrc": the real ILSVRC val set's shape, the
    # image sizes, boxes and labels of `shadow_metadata` (a WSOL metadata folder such as ILSVRC/test), 1,000
    # classes; see acol/data/shadow_ilsvrc.py and docs/synthetic.md.
    layout: Literal["toy", "shadow_ilsvrc"] = "toy"
    shadow_metadata: str | None = None  # shadow_ilsvrc: the WSOL metadata folder (image_ids.txt, ...)
    num_val_images: int | None = Field(None, ge=1)  # shadow_ilsvrc: only the first N val images; None = all
    # shadow_ilsvrc: keep only classes 0..N-1 (wnids, train and val of those; val capped at val_per_class per
    # class); None = all 1,000 (val_per_class not applied: the real val set has 50 per class).
    shadow_classes: int | None = Field(None, ge=2, le=1000)
    # shadow_ilsvrc: a WSOL metadata folder of ImageNetV2 "train-fullsup" (ILSVRC/val); when set, the first
    # holdout_per_class of its images per kept class are drawn at their ids (val2/<class>/<n>.jpeg) and a
    # metadata folder of them is written (acol.data.shadow_ilsvrc.FULLSUP_METADATA).
    shadow_fullsup_metadata: str | None = None
    num_classes: int = Field(10, ge=2, le=1000)  # toy: <= 36, even pairs every class; shadow_ilsvrc: 1000
    train_per_class: int = Field(125, ge=0)  # trains both methods in a few minutes on 2 CPU cores
    val_per_class: int = Field(50, ge=1)  # evaluation split (boxes + masks)
    holdout_per_class: int = Field(10, ge=0)  # Choe's "train-fullsup": threshold/HP selection; 0 = skip
    image_size: int = Field(64, ge=32, le=512)  # square images; 64 px = 16x16 maps for the stride-4 backbone
    seed: int = Field(0, ge=0)
    # Objects per image: probabilities of 1, 2, 3 same-class objects (real ILSVRC val: 77% / 12% / 4% ...,
    # mean 1.6). Capped at 3: a 64 px image holds few objects whose part survives erasing, and placements that
    # do not fit are dropped, so realized counts are lower (about 87% / 13% / 0.3%, see docs/synthetic.md).
    object_count_probs: tuple[float, ...] = (0.8, 0.14, 0.06)
    # Body ellipse semi-axes as fractions of the image side for a single object (several objects are scaled by
    # `multi_object_scale`): long axis 0.26-0.40 gives boxes of ~15-45% of the image (real val median 21%).
    body_long_range: tuple[float, float] = (0.26, 0.40)
    body_short_range: tuple[float, float] = (0.16, 0.26)
    multi_object_scale: float = Field(0.6, gt=0.0, le=1.0)
    # Part side as a fraction of the image side (0.22 = 14 px at 64 px, 3.5 feature cells at stride 4): large
    # enough that erasing the top cells of A's map removes it rather than leaking it into neighbouring cells,
    # small enough (about 10-20% of the box) that a box around the part alone has IoU < 0.5.
    part_size: float = Field(0.22, gt=0.0, lt=0.5)
    # "texture" (default): every body has ONE neutral colour (hue/saturation/value below, the same for all
    # classes) and a class-specific texture: one of 5 flip-invariant stripe patterns x one of
    # `texture_periods_px` (10 classes = 5 x 2). The part is the easy cue; the body's cue is hard but fully
    # class-specific (what branch B must learn once the part is erased; see docs/synthetic.md).
    # "pair": body hue shared by classes 2p, 2p+1 with random-orientation stripes (the body narrows 10 classes
    # to 2); "class": one body hue per class (the body alone suffices: a control where CAM has every reason
    # to use it).
    body_mode: Literal["texture", "pair", "class"] = "texture"
    body_saturation: int = Field(110, ge=0, le=255)  # pair/class: muted next to the parts (255)
    stripe_period_px: int = Field(6, ge=2)  # pair/class body texture (value stripes, random orientation)
    stripe_contrast: int = Field(40, ge=0, le=120)  # pair/class: peak-to-peak value; 0 disables the stripes
    # texture mode: the shared body colour (OpenCV HSV, hue in [0, 180)): a muted brown, no class hue.
    texture_body_hsv: tuple[int, int, int] = (15, 70, 140)
    texture_periods_px: tuple[float, ...] = (4.0, 8.0)  # > 8/7 apart: training upscales images by 8/7
    texture_contrast: int = Field(60, ge=0, le=120)  # texture mode: peak-to-peak value of the pattern
    clutter_count: tuple[int, int] = (2, 6)  # grey (saturation 0) rectangles/ellipses: no class signal
    noise_std: float = Field(6.0, ge=0.0)  # per-pixel Gaussian noise, so no region is a flat colour
    object_gap_px: int = Field(2, ge=0)  # minimum gap between the boxes of two objects of one image
    jpeg_quality: int = Field(95, ge=50, le=100)

    @model_validator(mode="after")
    def _check(self) -> SyntheticConfig:
        if self.layout == "shadow_ilsvrc":
            if self.num_classes != 1000 or self.shadow_metadata is None:
                raise ValueError(
                    "layout='shadow_ilsvrc' needs num_classes=1000 and shadow_metadata (a folder)"
                )
            if self.shadow_fullsup_metadata is not None and self.holdout_per_class < 1:
                raise ValueError(
                    "shadow_fullsup_metadata needs holdout_per_class >= 1 (fullsup images per class)"
                )
            return self
        if self.num_classes > 36 or any(getattr(self, name) is not None for name in _SHADOW_ONLY):
            raise ValueError(f"layout='toy' takes num_classes <= 36 and none of {', '.join(_SHADOW_ONLY)}")
        if self.train_per_class < 1:
            raise ValueError("layout='toy' needs train_per_class >= 1 (0 is for shadow_ilsvrc val-only runs)")
        probs = self.object_count_probs
        if not probs or any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError(f"object_count_probs must be non-negative and sum to 1, got {probs}")
        for name in ("body_long_range", "body_short_range"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high < 0.5:
                raise ValueError(f"{name} must satisfy 0 < low <= high < 0.5, got {(low, high)}")
        if self.body_mode == "texture":
            periods = self.texture_periods_px
            if not periods or any(p < 2 for p in periods):
                raise ValueError(f"texture_periods_px must be non-empty, each >= 2 px, got {periods}")
            if self.num_classes > _TEXTURE_PATTERNS * len(periods):
                raise ValueError(
                    f"body_mode='texture' gives {_TEXTURE_PATTERNS} patterns x {len(periods)} periods = "
                    f"{_TEXTURE_PATTERNS * len(periods)} distinct textures < num_classes={self.num_classes}; "
                    "add texture_periods_px"
                )
            hue, sat, val = self.texture_body_hsv
            if not (0 <= hue < 180 and 0 <= sat <= 255 and 0 <= val <= 255):
                raise ValueError(
                    f"texture_body_hsv must be (hue < 180, sat, val <= 255), got {(hue, sat, val)}"
                )
        if self.clutter_count[0] < 0 or self.clutter_count[0] > self.clutter_count[1]:
            raise ValueError(f"clutter_count must be 0 <= low <= high, got {self.clutter_count}")
        return self


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
        labels = np.random.default_rng([config.seed, _SPLIT_CODE[split], 1_000_003]).permutation(labels)
    return labels


def _hsv_to_bgr(hue: float, saturation: float, value: float) -> np.ndarray:
    """OpenCV HSV (hue in [0, 180)) to a BGR float triple."""
    pixel = np.array([[[hue % 180, saturation, value]]], dtype=np.uint8)
    return cv2.cvtColor(pixel, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _part_colour(config: SyntheticConfig, label: int) -> np.ndarray:
    # Evenly spaced saturated hues: the one cue that separates all classes at a glance.
    return _hsv_to_bgr(180.0 * label / config.num_classes, 255, 255)


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


def _texture_wave(
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


def _background(
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
        wave = _texture_wave(rng, *texture_of_class(config, label), size)
        contrast = config.texture_contrast
    else:
        # Stripes across the body (one random orientation per image): a texture, not a class cue.
        hue, saturation, value = _body_hue(config, label), config.body_saturation, 165
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        theta = rng.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / config.stripe_period_px)
        contrast = config.stripe_contrast
    dark, bright = (_hsv_to_bgr(hue, saturation, value + sign * contrast / 2) for sign in (-1, 1))
    return dark + (bright - dark) * ((wave + 1) / 2)[..., None]


def render_image(config: SyntheticConfig, split: Split, index: int) -> RenderedImage:
    """Draw image `index` of `split` (deterministic in (seed, split, index)); nothing is written."""
    label = int(split_labels(config, split)[index])
    rng = np.random.default_rng([config.seed, _SPLIT_CODE[split], index])
    size = config.image_size
    canvas = _background(rng, config)
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


def _encode(array: np.ndarray, ext: str, params: list[int], what: str) -> bytes:
    ok, buffer = cv2.imencode(ext, array, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {what}")
    return buffer.tobytes()


def _generate_one(root: str, config: SyntheticConfig, split: Split, index: int) -> tuple[int, list, float]:
    """Render and write one image (plus XML and mask if annotated); return (label, boxes, part/box area)."""
    rendered = render_image(config, split, index)
    wnid = class_wnids(config.num_classes)[rendered.label]
    name = image_name(config, split, index, rendered.label)
    base = Path(root)
    jpeg = _encode(rendered.image, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality], name)
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
        png = _encode(rendered.mask.astype(np.uint8) * 255, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 3], stem)
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


def generate_synthetic(
    root: str | os.PathLike, config: SyntheticConfig | None = None, *, workers: int = 1, progress: bool = True
) -> SyntheticSummary:
    """Write the dataset under `root`; a complete dataset with the same config there is kept as it is.

    `synthetic.json` (config + summary) is written last, so its presence means complete. A complete dataset
    made with another config raises `FileExistsError` rather than mixing two datasets in one folder.
    """
    from tqdm import tqdm  # imported here: the module does no work at import time

    config = config or SyntheticConfig()
    root = Path(root)
    existing = existing_dataset(root, config)
    if existing is not None:
        return existing
    if config.layout == "shadow_ilsvrc":
        from acol.data.shadow_ilsvrc import generate_shadow_ilsvrc

        return generate_shadow_ilsvrc(root, config, workers=workers, progress=progress)
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
        left_out = {"layout", *_SHADOW_ONLY}
    else:
        left_out = {name for name in _SHADOW_OPTIONAL if getattr(config, name) is None}
    payload = {"config": json.loads(config.model_dump_json(exclude=left_out)), "summary": asdict(summary)}
    payload["summary"].pop("created")
    payload["summary"].pop("root")
    write_bytes_atomic(root / _MARKER, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())
