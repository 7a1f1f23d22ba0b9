"""Shadow OpenImages30k: synthetic images and masks in wsolevaluation's OpenImages layout, from its metadata.

Why: the OpenImages path of the pipeline (``data.source: openimages``, the reader, masks with several
instances and an ignore region, PxAP) can be rehearsed and tested without the OpenImages download. The class
and file structure comes from the real metadata (``tests/assets/openimages-metadata.tar.xz``,
``OpenImages/{train,val,test}``): for each kept class the first ``per_class[split]`` images of each split, at
their ids, with one made-up instance per real instance mask line and, where the metadata names an ignore mask,
one more object of the class whose box is the ignore region (an object with a box but no mask, what Choe et
al.'s ignore masks cover). Images are drawn by the shadow ILSVRC renderer inside those boxes; an instance
mask is the object's body (`acol.data.shadow_ilsvrc.body_mask`), the ignore mask its box, both PNG 0/255.

Written under ``root`` (``dataset/OpenImages``, ``data.root``)::

    {train,val,test}/<class>/<id>.jpg            the images
    {val,test}/<class>/<id>_m<class>_<n>.png     instance masks, at the metadata's mask paths
    {val,test}/<class>/<id>_ignore.png           ignore masks, at the metadata's ignore paths
    shadow_openimages.json                       arguments and counts, written last

and at ``metadata_out`` the metadata of the written images in the real format (``image_sizes.txt`` empty).
Sizes are drawn per image in ``size_range``; every image by ``np.random.default_rng([seed, split code, row,
3])`` (row = its metadata line): byte-identical for the same arguments.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from acol.config import SyntheticConfig
from acol.data.readers.openimages import SPLITS, openimages_classes
from acol.data.shadow_ilsvrc import ShadowImage, body_mask, write_shadow_images
from acol.data.synthetic_base import SPLIT_CODE, Split, encode
from acol.io import write_bytes_atomic, write_text_atomic

__all__ = ["ShadowOpenImages", "generate_shadow_openimages", "main"]

_STREAM = 3  # the 4th seed word: never the shadow ILSVRC (1) or CUB (2) streams
_MARKER = "shadow_openimages.json"
_RENDER_SPLIT: dict[str, Split] = {"train": "train", "test": "val", "val": "holdout"}  # seed words as CUB's


@dataclass(frozen=True)
class _Row:
    """One image of the metadata: id, label, instance mask paths and ignore path ("" for none)."""

    image_id: str
    label: int
    masks: tuple[str, ...]
    ignore: str


@dataclass(frozen=True)
class ShadowOpenImages:
    """What was written: class folder names (index order) and the written rows of each split."""

    root: Path
    classes: list[str]
    images: dict[str, list[str]]  # split -> image ids
    masks: dict[str, int]  # split -> instance masks written
    ignores: dict[str, int]  # split -> ignore masks written


def _lines(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _rows(folder: Path) -> list[_Row]:
    """The metadata's images in ``image_ids.txt`` order with their labels, masks and ignore mask."""
    labels = {image_id: int(label) for image_id, label in _lines(folder / "class_labels.txt")}
    masks: dict[str, list[str]] = {}
    ignores: dict[str, str] = {}
    loc = folder / "localization.txt"
    for image_id, mask, ignore in _lines(loc) if loc.is_file() else []:
        masks.setdefault(image_id, []).append(mask)
        ignores.setdefault(image_id, ignore)
    ids = [fields[0] for fields in _lines(folder / "image_ids.txt")]
    return [_Row(i, labels[i], tuple(masks.get(i, ())), ignores.get(i, "")) for i in ids]


def _box(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
    """A box of 25-60% of each side at a random place inside the image (inclusive x0, y0, x1, y1)."""
    bw, bh = (int(rng.integers(round(0.25 * s), round(0.6 * s) + 1)) for s in (width, height))
    x0, y0 = int(rng.integers(0, width - bw + 1)), int(rng.integers(0, height - bh + 1))
    return x0, y0, x0 + bw - 1, y0 + bh - 1


def _geometry(row: _Row, index: int, split: str, seed: int, size_range: tuple[int, int]) -> ShadowImage:
    """Size and boxes of one image: one per instance mask, then the ignore box where there is one."""
    rng = np.random.default_rng([seed, SPLIT_CODE[_RENDER_SPLIT[split]], index, _STREAM])
    width, height = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    boxes = tuple(_box(rng, width, height) for _ in range(len(row.masks) + bool(row.ignore)))
    return ShadowImage(row.image_id, width, height, row.label, boxes)


def _png(mask: np.ndarray, what: str) -> bytes:
    return encode(mask.astype(np.uint8) * 255, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 9], what)


def _write_masks(root: Path, row: _Row, image: ShadowImage) -> None:
    """The row's instance masks (the bodies of its first boxes) and ignore mask (its last box)."""
    for path, box in zip(row.masks, image.boxes, strict=False):
        write_bytes_atomic(root / path, _png(body_mask(box, image.width, image.height), path), durable=False)
    if row.ignore:
        x0, y0, x1, y1 = image.boxes[-1]
        ignore = np.zeros((image.height, image.width), bool)
        ignore[y0 : y1 + 1, x0 : x1 + 1] = True
        write_bytes_atomic(root / row.ignore, _png(ignore, row.ignore), durable=False)


def _write_metadata(folder: Path, rows: list[_Row]) -> None:
    """The written rows in wsolevaluation's format: ids, labels, an empty sizes file, mask lines."""
    folder.mkdir(parents=True, exist_ok=True)
    loc = [f"{r.image_id},{m},{r.ignore if n == 0 else ''}\n" for r in rows for n, m in enumerate(r.masks)]
    write_text_atomic(folder / "image_ids.txt", "".join(f"{r.image_id}\n" for r in rows))
    write_text_atomic(folder / "class_labels.txt", "".join(f"{r.image_id},{r.label}\n" for r in rows))
    write_text_atomic(folder / "image_sizes.txt", "")
    write_text_atomic(folder / "localization.txt", "".join(loc))


def generate_shadow_openimages(
    root: str | os.PathLike[str],
    metadata_dir: str | os.PathLike[str],
    metadata_out: str | os.PathLike[str],
    *,
    classes: int,
    per_class: dict[str, int],
    seed: int = 0,
    size_range: tuple[int, int] = (96, 160),
    style: SyntheticConfig | None = None,
) -> ShadowOpenImages:
    """Write a shadow ``dataset/OpenImages`` at ``root`` from ``metadata_dir`` (the WSOL ``OpenImages``
    folder) for its classes 0..classes-1, ``per_class[split]`` images each (splits train, val, test; a
    missing split writes none), and their metadata at ``metadata_out``; see the module docstring."""
    root, metadata_dir, metadata_out = Path(root), Path(metadata_dir), Path(metadata_out)
    names = openimages_classes(metadata_dir)
    if not 1 <= classes <= len(names):
        raise ValueError(f"classes must be in 1..{len(names)}, got {classes}")
    if unknown := set(per_class) - set(SPLITS):
        raise ValueError(f"per_class: unknown splits {sorted(unknown)}; allowed {SPLITS}")
    if not 8 <= size_range[0] <= size_range[1]:
        raise ValueError(f"size_range must be 8 <= low <= high, got {size_range}")
    config = (style or SyntheticConfig()).model_copy(update={"seed": seed})
    arguments = {"classes": classes, "per_class": per_class, "size_range": list(size_range),
                 "style": config.model_dump(mode="json")}  # fmt: skip
    marker = root / _MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("arguments") != arguments:
        raise FileExistsError(f"{root} holds a shadow OpenImages made with other arguments ({marker})")
    written: dict[str, list[_Row]] = {}
    for split, count in per_class.items():
        taken = [0] * classes
        jobs, rows = [], []
        for index, row in enumerate(_rows(metadata_dir / split)):
            if row.label < classes and taken[row.label] < count:
                taken[row.label] += 1
                image = _geometry(row, index, split, seed, size_range)
                jobs.append((index, image))
                rows.append(row)
                _write_masks(root, row, image)
        write_shadow_images(root, config, _RENDER_SPLIT[split], jobs, stream=_STREAM)
        _write_metadata(metadata_out / split, rows)
        written[split] = rows
    result = ShadowOpenImages(
        root,
        names[:classes],
        {s: [r.image_id for r in rows] for s, rows in written.items()},
        {s: sum(len(r.masks) for r in rows) for s, rows in written.items()},
        {s: sum(bool(r.ignore) for r in rows) for s, rows in written.items()},
    )
    counts = {"images": {s: len(v) for s, v in result.images.items()}, "masks": result.masks,
              "ignores": result.ignores}  # fmt: skip
    write_text_atomic(marker, json.dumps({"arguments": arguments, **counts}, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m acol.data.shadow_openimages ROOT METADATA_DIR METADATA_OUT --classes 4 ...``."""
    import argparse

    parser = argparse.ArgumentParser(description="Write a shadow OpenImages30k (see the module docstring).")
    parser.add_argument("root", help="the dataset/OpenImages folder to write")
    parser.add_argument("metadata_dir", help="the WSOL metadata OpenImages folder (train/, val/, test/)")
    parser.add_argument("metadata_out", help="where to write the metadata of the images written")
    parser.add_argument("--classes", type=int, default=100)
    for split in SPLITS:
        parser.add_argument(f"--{split}-per-class", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    per_class = {s: getattr(args, f"{s}_per_class") for s in SPLITS}
    out = generate_shadow_openimages(args.root, args.metadata_dir, args.metadata_out, classes=args.classes,
                                     per_class=per_class, seed=args.seed)  # fmt: skip
    print(f"{out.root}: {len(out.classes)} classes, images {({s: len(v) for s, v in out.images.items()})}, "
          f"instance masks {out.masks}, ignore masks {out.ignores}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
