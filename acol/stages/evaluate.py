"""The evaluate stage's library: every WSOL metric of one method from its extracted maps and the manifest.

The validation images are split once, by a hash of their id, into a held-out part (where the CAM threshold of
the classic metrics is chosen) and a test part (where every number is reported), so no metric is tuned on the
images it is reported on except the MaxBoxAcc family, whose definition maximizes over thresholds.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from acol.config import EvaluateParams
from acol.data.manifest import manifest_classes
from acol.inference.mapstore import maps_array
from acol.wsol.boxes import scale_boxes
from acol.wsol.metrics import (
    BoxEvaluator,
    BoxResult,
    ClassicLocEvaluator,
    ClassicResult,
    MaskEvaluator,
    load_wsol_mask,
    select_cam_threshold,
)
from acol.wsol.scoremaps import RESIZE_LENGTH, prepare_scoremap

__all__ = ["EvaluationResult", "holdout_mask", "evaluate_method"]

CHUNK = 512  # images per batch: bounds memory (512 x 224 x 224 float32 = 100 MB)


@dataclass
class EvaluationResult:
    metrics: dict[str, Any]  # flat, JSON-ready numbers (percent), what dvc metrics shows
    box_curves: dict[str, np.ndarray]  # column -> values over the threshold grid (box_acc.csv)
    pr_curve: dict[str, np.ndarray] | None  # threshold, precision, recall (pr_curve.csv), when masks exist


def holdout_mask(image_ids: list[str], fraction: float) -> np.ndarray:
    """(N,) bool: a stable pseudo-random `fraction` of ids, the same on every machine and run."""
    buckets = [int.from_bytes(hashlib.sha1(i.encode()).digest()[:4], "big") % 10_000 for i in image_ids]
    return np.asarray(buckets) < round(fraction * 10_000)


def _gt_boxes_224(rows: pa.Table) -> list[np.ndarray]:
    boxes = rows.column("boxes").to_pylist()
    widths, heights = rows.column("width").to_pylist(), rows.column("height").to_pylist()
    return [scale_boxes(np.asarray(b), w, h) for b, w, h in zip(boxes, widths, heights, strict=True)]


def _chunks(n: int):
    for start in range(0, n, CHUNK):
        yield slice(start, min(n, start + CHUNK))


def _coverage(maps: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    """Mean map value inside and outside the foreground (ignore pixels left out)."""
    return float(maps[masks == 1].mean()), float(maps[masks == 0].mean())


def _rows_of_maps(maps_table: pa.Table, manifest: pa.Table, what: str) -> tuple[pa.Table, pa.Table, int]:
    """(maps without errors sorted by id, their manifest rows in that order, failed count); checks boxes."""
    ok = maps_table.filter(pc.is_null(maps_table.column("error")))
    failed = maps_table.num_rows - ok.num_rows
    ok = ok.sort_by("image_id")
    if ok.num_rows == 0:
        raise ValueError(f"no {what} image has a map to evaluate")
    positions = pc.index_in(ok.column("image_id"), value_set=manifest.column("image_id"))
    if positions.null_count:
        raise ValueError(
            f"{ok.num_rows} extracted {what} maps but only {ok.num_rows - positions.null_count} of their ids are "
            "in the manifest: were the maps extracted from another dataset?"
        )
    rows = manifest.take(positions)  # manifest rows in the order of the maps
    missing_boxes = [
        i
        for i, b in zip(rows.column("image_id").to_pylist(), rows.column("boxes").to_pylist(), strict=True)
        if not b
    ]
    if missing_boxes:
        raise ValueError(f"{len(missing_boxes)} {what} images have no GT box, e.g. {missing_boxes[0]}")
    return ok, rows, failed


def _fullsup_threshold(fullsup: tuple[pa.Table, pa.Table] | None, interval: float) -> float:
    """The CAM threshold chosen on the train-fullsup split's GT-class maps (Choe et al. 2020)."""
    if fullsup is None or fullsup[0].num_rows == 0:
        raise ValueError(
            "evaluate.threshold_split is 'fullsup' but there are no train-fullsup maps: set "
            "data.fullsup_metadata (e.g. the shipped ILSVRC/val or CUB/val WSOL metadata)"
        )
    ok, rows, _ = _rows_of_maps(*fullsup, "train-fullsup")
    return select_cam_threshold(prepare_scoremap(maps_array(ok, "map_gt")), _gt_boxes_224(rows), interval)


def evaluate_method(
    maps_table: pa.Table,
    manifest: pa.Table,
    root: str | Path,
    params: EvaluateParams,
    fullsup: tuple[pa.Table, pa.Table] | None = None,
) -> EvaluationResult:
    """All metrics of one method; `maps_table` follows `acol.inference.mapstore`, `manifest` the prepare stage's val.

    The CAM threshold of the classic metrics comes from ``params.threshold_split``: ``holdout`` picks it on a
    held-out part of val (the rest is reported); ``fullsup`` on the train-fullsup split, ``fullsup`` = (its
    maps, its manifest), and every val image is reported, as Choe et al. do. Raises ValueError when the
    held-out part is empty: the classic metrics need a threshold chosen there.
    """
    with ExitStack() as closing:  # the box evaluators' threads end with the call
        return _evaluate_method(maps_table, manifest, root, params, fullsup, closing)


def _evaluate_method(
    maps_table: pa.Table,
    manifest: pa.Table,
    root: str | Path,
    params: EvaluateParams,
    fullsup: tuple[pa.Table, pa.Table] | None,
    closing: ExitStack,
) -> EvaluationResult:
    ok, rows, failed = _rows_of_maps(maps_table, manifest, "validation")
    ids = rows.column("image_id").to_pylist()
    use_fullsup = params.threshold_split == "fullsup"
    held = np.zeros(len(ids), dtype=bool) if use_fullsup else holdout_mask(ids, params.holdout_fraction)
    test_idx, hold_idx = np.flatnonzero(~held), np.flatnonzero(held)
    gt = _gt_boxes_224(rows)
    labels, scores = _rank_scores(ok, len(manifest_classes(manifest)))

    def prepared(column: str, index: np.ndarray) -> np.ndarray:
        return prepare_scoremap(maps_array(ok.take(pa.array(index)), column))

    # both contour modes run the union-find kernels in threads (numba releases the GIL)
    v2 = closing.enter_context(
        BoxEvaluator(
            params.iou_thresholds, params.interval, multi_contour=True, n_workers=os.cpu_count() or 1
        )
    )
    v1 = closing.enter_context(
        BoxEvaluator((50,), params.interval, multi_contour=False, n_workers=os.cpu_count() or 1)
    )
    if use_fullsup:
        threshold = _fullsup_threshold(fullsup, params.interval)
    else:
        threshold = _holdout_threshold(params, prepared, gt, hold_idx, len(ids))
    classic = ClassicLocEvaluator(cam_threshold=threshold)
    has_masks = rows.column("mask_path").null_count == 0
    pxap = MaskEvaluator(params.interval) if has_masks else None
    coverage = _accumulate_test(
        test_idx, prepared, gt, (v2, v1, classic), scores, labels, pxap, ok, rows, root
    )
    metrics, curves = _box_and_classic_metrics(
        v2.compute(), v1.compute(), classic.compute(), threshold, len(test_idx), len(hold_idx), failed
    )
    pr = _mask_metrics(pxap, coverage, metrics) if pxap is not None else None
    return EvaluationResult(metrics=metrics, box_curves=curves, pr_curve=pr)


def _accumulate_test(
    test_idx: np.ndarray,
    prepared: Callable[[str, np.ndarray], np.ndarray],
    gt: list[np.ndarray],
    evaluators: tuple[BoxEvaluator, BoxEvaluator, ClassicLocEvaluator],
    scores: np.ndarray,
    labels: np.ndarray,
    pxap: MaskEvaluator | None,
    ok: pa.Table,
    rows: pa.Table,
    root: str | Path,
) -> dict[str, list[tuple[float, float, int]]]:
    """Feed the test images to every evaluator chunk by chunk (bounded memory); return the branch coverage
    (mean map inside, outside the mask, image count) per chunk, when there are masks."""
    v2, v1, classic = evaluators
    mask_paths = rows.column("mask_path").to_pylist()
    has_b = ok.column("map_b_gt").null_count < ok.num_rows
    coverage: dict[str, list[tuple[float, float, int]]] = {"a": [], "b": [], "fused": []}
    for part in _chunks(len(test_idx)):
        index = test_idx[part]
        maps = prepared("map_gt", index)
        boxes = [gt[i] for i in index]
        v2.accumulate(maps, boxes)
        v1.accumulate(maps, boxes)
        classic.accumulate(scores[index], labels[index], maps, boxes)
        if pxap is not None:
            masks = np.stack([load_wsol_mask(root, [mask_paths[i]], "", RESIZE_LENGTH) for i in index])
            pxap.accumulate(maps, masks)
            branch_maps = {"fused": maps, "a": prepared("map_a_gt", index)}
            if has_b:
                branch_maps["b"] = prepared("map_b_gt", index)
            for name, values in branch_maps.items():
                inside, outside = _coverage(values, masks)
                coverage[name].append((inside, outside, len(index)))
    return coverage


def _box_and_classic_metrics(
    box: BoxResult,
    single: BoxResult,
    loc: ClassicResult,
    threshold: float,
    n_test: int,
    n_hold: int,
    failed: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The flat metrics (MaxBoxAcc family, classic errors, counts) and the box-accuracy curves."""
    metrics: dict[str, Any] = {
        "num_images": n_test,
        "num_holdout_images": n_hold,
        "failed_images": int(failed),
        "top1_cls_error": loc.top1_cls_error,
        "top5_cls_error": loc.top5_cls_error,
        "top1_loc_error": loc.top1_loc_error,
        "top5_loc_error": loc.top5_loc_error,
        "gt_known_loc": loc.gt_known_loc_acc,
        "best_threshold": threshold,
        "maxboxacc": single.max_box_acc[50],
        "maxboxacc_v2": box.mean_max_box_acc,
        **{f"maxboxacc_v2_iou{k}": v for k, v in box.max_box_acc.items()},
    }
    curves = {"threshold": box.thresholds, **{f"iou{k}": v for k, v in box.curves.items()}}
    curves["single_iou50"] = single.curves[50]
    return metrics, curves


def _rank_scores(ok: pa.Table, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (N,) and (N, C) class scores from the stored top-5: the classic metrics only need their order."""
    labels = np.asarray(ok.column("label"), dtype=np.int64)
    top5 = np.asarray(ok.column("top5_classes").to_pylist(), dtype=np.int64)
    scores = np.full((len(labels), n_classes), -1.0)
    np.put_along_axis(scores, top5, np.arange(top5.shape[1], 0, -1, dtype=np.float64)[None, :], axis=1)
    return labels, scores


def _holdout_threshold(
    params: EvaluateParams,
    prepared: Callable[[str, np.ndarray], np.ndarray],
    gt: list[np.ndarray],
    hold_idx: np.ndarray,
    n_images: int,
) -> float:
    """The CAM threshold of the classic metrics, chosen on the held-out images; none held out is an error."""
    if not len(hold_idx):
        # No silent default threshold: the classic metrics (top-1 loc, GT-known) would be reported at a guess.
        raise ValueError(
            f"evaluate.holdout_fraction={params.holdout_fraction} leaves no held-out image among the {n_images} "
            "validation images, so the CAM threshold of the classic metrics cannot be chosen: raise "
            "evaluate.holdout_fraction, evaluate more images, or use evaluate.threshold_split: fullsup"
        )
    return select_cam_threshold(prepared("map_gt", hold_idx), [gt[i] for i in hold_idx], params.interval)


def _mask_metrics(
    pxap: MaskEvaluator, coverage: dict[str, list[tuple[float, float, int]]], metrics: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Add PxAP and the per-branch mean map inside / outside the masks to ``metrics``; return the PR curve."""
    mask_result = pxap.compute()
    metrics["pxap"] = mask_result.pxap
    edges = np.append(mask_result.thresholds, [1.0, 2.0])[::-1]  # right-edged bins, high to low
    for name, parts in coverage.items():
        if parts:
            weights = np.array([n for _, _, n in parts], dtype=np.float64)
            metrics[f"map_{name}_in_mask"] = float(np.average([p[0] for p in parts], weights=weights))
            metrics[f"map_{name}_out_mask"] = float(np.average([p[1] for p in parts], weights=weights))
    return {"threshold": edges, "precision": mask_result.precision, "recall": mask_result.recall}
