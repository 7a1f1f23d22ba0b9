"""Evaluate saved score maps against WSOL metadata: MaxBoxAcc / MaxBoxAccV2 (boxes) or PxAP (masks).

Score maps: one float ``.npy`` per image id under ``--scoremaps``. wsolevaluation saves and loads
``<root>/<image_id>.npy`` (``np.save`` appends ``.npy`` to e.g. ``val/x.JPEG``); its docstring mentions the
replaced-extension form ``val/x.npy``; both are accepted, in that order. Each map goes through
``prepare_scoremap`` (bicubic to 224, min-max) in float64, as the protocol's ``t2n`` casts maps to float64.

Metadata (folder): ``image_ids.txt``, ``image_sizes.txt`` (``id,w,h``; for masks it may be empty, as in
wsolevaluation's OpenImages folders: the sizes are then read from the masks) and ``localization.txt``: for boxes
``id,x0,y0,x1,y1`` (several lines per image allowed); for masks ``id,mask_path,ignore_path`` (ignore path on
the first line of an image only), paths relative to ``--masks``; read by
`acol.data.readers.wsol_metadata.read_wsol_localization`, strictly: a malformed folder is an error naming the
file and line (or image id), not a score over fewer images.

    python -m acol.evaluate --metadata DIR --scoremaps DIR [--multi-contour] [--iou 30 50 70]
        [--interval 0.01] [--masks DIR] [--json OUT] [--workers N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from acol.data.readers.wsol_metadata import read_wsol_localization
from acol.io import write_json_atomic
from acol.wsol.boxes import scale_boxes
from acol.wsol.scoremaps import RESIZE_LENGTH, prepare_scoremap


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
    from acol.wsol.localization_metrics import BoxEvaluator, MaskEvaluator, load_wsol_mask

    # strict; a mask folder without sizes (wsolevaluation's OpenImages) takes them from the masks' headers
    meta, _ = read_wsol_localization(metadata, "masks" if masks is not None else "boxes", size_root=masks)
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
