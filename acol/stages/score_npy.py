"""Evaluate saved score maps against WSOL metadata: MaxBoxAcc / MaxBoxAccV2 (boxes) or PxAP (masks).

Score maps: one float ``.npy`` per image id under ``--scoremaps``. wsolevaluation saves and loads
``<root>/<image_id>.npy`` (``np.save`` appends ``.npy`` to e.g. ``val/x.JPEG``); its docstring mentions the
replaced-extension form ``val/x.npy``; both are accepted, in that order. Each map goes through
``prepare_scoremap`` (bicubic to 224, min-max) in float64, as the protocol's ``t2n`` casts maps to float64.

Metadata (folder): ``image_ids.txt``, ``image_sizes.txt`` (``id,w,h``) and ``localization.txt``: for boxes
``id,x0,y0,x1,y1`` (several lines per image allowed); for masks ``id,mask_path,ignore_path`` (ignore path on
the first line of an image only), paths relative to ``--masks``.

    python -m acol.evaluate --metadata DIR --scoremaps DIR [--multi-contour] [--iou 30 50 70]
        [--interval 0.01] [--masks DIR] [--json OUT] [--workers N]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acol.io import write_json_atomic
from acol.wsol.boxes import scale_boxes
from acol.wsol.scoremaps import RESIZE_LENGTH, prepare_scoremap


@dataclass(frozen=True)
class WsolMetadata:
    """What the evaluator needs from a WSOL metadata folder; boxes in original image pixels."""

    image_ids: list[str]
    sizes: dict[str, tuple[int, int]]  # id -> (width, height)
    boxes: dict[str, np.ndarray]  # id -> (k, 4) int64 x0y0x1y1
    mask_paths: dict[str, list[str]]
    ignore_paths: dict[str, str]


def _lines(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"metadata file missing: {path}")
    return [line.strip().split(",") for line in path.read_text().splitlines() if line.strip()]


def read_wsol_metadata(folder: str | Path, masks: bool = False) -> WsolMetadata:
    """Parse a WSOL metadata folder; malformed lines raise ValueError naming the file and line number."""
    root = Path(folder)
    ids = [row[0] for row in _lines(root / "image_ids.txt")]
    sizes: dict[str, tuple[int, int]] = {}
    boxes: dict[str, list] = {}
    mask_paths: dict[str, list[str]] = {}
    ignore_paths: dict[str, str] = {}
    for n, row in enumerate(_lines(root / "image_sizes.txt"), 1):
        if len(row) != 3:
            raise ValueError(f"{root / 'image_sizes.txt'}:{n}: expected 'id,width,height', got {row}")
        sizes[row[0]] = (int(row[1]), int(row[2]))
    loc = root / "localization.txt"
    for n, row in enumerate(_lines(loc), 1):
        if masks:
            if len(row) != 3:
                raise ValueError(f"{loc}:{n}: expected 'id,mask_path,ignore_path', got {row}")
            if row[0] in mask_paths:
                mask_paths[row[0]].append(row[1])
            else:
                mask_paths[row[0]] = [row[1]]
                ignore_paths[row[0]] = row[2]
        else:
            if len(row) != 5:
                raise ValueError(f"{loc}:{n}: expected 'id,x0,y0,x1,y1', got {row}")
            boxes.setdefault(row[0], []).append([int(v) for v in row[1:]])
    for image_id in ids:
        if image_id not in sizes:
            raise ValueError(f"{root / 'image_sizes.txt'}: no size for image id {image_id!r}")
        if (image_id not in mask_paths) if masks else (image_id not in boxes):
            raise ValueError(f"{loc}: no annotation for image id {image_id!r}")
    return WsolMetadata(
        image_ids=ids,
        sizes=sizes,
        boxes={k: np.asarray(v, dtype=np.int64) for k, v in boxes.items()},
        mask_paths=mask_paths,
        ignore_paths=ignore_paths,
    )


def scoremap_path(root: str | Path, image_id: str) -> Path:
    """The score map file of an image id: ``<id>.npy`` if present, else ``<id with .npy extension>``."""
    appended = Path(root) / (image_id + ".npy")
    if appended.is_file():
        return appended
    replaced = (Path(root) / image_id).with_suffix(".npy")
    if replaced.is_file():
        return replaced
    raise FileNotFoundError(f"score map for image id {image_id!r} not found: tried {appended} and {replaced}")


def load_scoremap(root: str | Path, image_id: str) -> np.ndarray:
    """Load, check and prepare (224x224, [0, 1], float64) the score map of one image."""
    path = scoremap_path(root, image_id)
    raw = np.load(path)
    if raw.ndim != 2 or not np.issubdtype(raw.dtype, np.number):
        raise ValueError(
            f"{path}: score map of {image_id!r} must be a 2-D numeric array; got {raw.dtype} {raw.shape}"
        )
    return prepare_scoremap(raw.astype(np.float64))


def evaluate(
    metadata: str | Path,
    scoremaps: str | Path,
    multi_contour: bool = False,
    iou_thresholds: tuple[int, ...] = (30, 50, 70),
    interval: float = 0.01,
    masks: str | Path | None = None,
    workers: int = 1,
    batch_size: int = 256,
) -> dict:
    """Evaluate a score-map folder; returns the JSON-ready result dict (boxes or masks)."""
    from acol.wsol.metrics import BoxEvaluator, MaskEvaluator, load_wsol_mask

    meta = read_wsol_metadata(metadata, masks=masks is not None)
    ids = meta.image_ids
    if masks is not None:
        mask_eval = MaskEvaluator(interval=interval)
        for image_id in ids:
            gt = load_wsol_mask(masks, meta.mask_paths[image_id], meta.ignore_paths[image_id])
            mask_eval.accumulate(load_scoremap(scoremaps, image_id), gt)
        return {
            "metric": "PxAP",
            "num_images": len(ids),
            "interval": interval,
            **mask_eval.compute().to_dict(),
        }
    with BoxEvaluator(iou_thresholds, interval, multi_contour, n_workers=workers) as box_eval:
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size]
            maps = np.stack([load_scoremap(scoremaps, i) for i in batch])
            gts = [scale_boxes(meta.boxes[i], *meta.sizes[i], size=RESIZE_LENGTH) for i in batch]
            box_eval.accumulate(maps, gts)
        result = box_eval.compute()
    name = "MaxBoxAccV2" if multi_contour else "MaxBoxAcc"
    return {"metric": name, "interval": interval, **result.to_dict()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metadata", required=True, help="WSOL metadata folder (image_ids.txt, ...)")
    parser.add_argument("--scoremaps", required=True, help="folder of per-image .npy score maps")
    parser.add_argument("--multi-contour", action="store_true", help="all contours (MaxBoxAccV2)")
    parser.add_argument("--iou", type=int, nargs="+", default=[30, 50, 70], help="IoU thresholds in percent")
    parser.add_argument(
        "--interval", type=float, default=0.01, help="CAM threshold step (0.001: full protocol)"
    )
    parser.add_argument("--masks", default=None, help="mask root folder: evaluate PxAP instead of boxes")
    parser.add_argument("--workers", type=int, default=1, help="processes for box evaluation")
    parser.add_argument("--json", default=None, help="write the result here (atomically)")
    args = parser.parse_args(argv)
    result = evaluate(
        args.metadata,
        args.scoremaps,
        args.multi_contour,
        tuple(args.iou),
        args.interval,
        args.masks,
        args.workers,
    )
    if result["metric"] == "PxAP":
        print(f"PxAP: {result['pxap']:.4f} over {result['num_images']} images")
    else:
        for k, v in result["max_box_acc"].items():
            print(
                f"{result['metric']} IoU {k}: {v:.4f} (best CAM threshold {result['best_threshold'][k]:.3f})"
            )
        print(
            f"{result['metric']} mean over IoU {result['iou_thresholds']}: {result['mean_max_box_acc']:.4f}"
        )
    if args.json:
        write_json_atomic(args.json, result)
    return result


if __name__ == "__main__":
    main()
