"""The evaluate stage's library: every WSOL metric of one method from its extracted maps and the manifest
(the stage itself, records, MLflow and the registry, is `acol.stages.evaluate`).

The validation images are split once, by a hash of their id, into a held-out part (where the CAM threshold of
the classic metrics is chosen) and a test part (where every number is reported), so no metric is tuned on the
images it is reported on except the MaxBoxAcc family, whose definition maximizes over thresholds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from acol.config import EvaluateParams
from acol.data.cpus import usable_cpus
from acol.data.manifest import manifest_classes
from acol.inference.mapstore import maps_array
from acol.wsol.boxes import scale_boxes
from acol.wsol.localization_metrics import (
    BoxEvaluator,
    BoxResult,
    ClassicLocEvaluator,
    ClassicResult,
    IouTable,
    MaskEvaluator,
    load_wsol_mask,
    quantized_iou_table,
    quantized_iou_tables,
    topk_correct,
)
from acol.wsol.scoremaps import RESIZE_LENGTH, prepare_quantized, prepare_scoremap

__all__ = [
    "EVALUATED_COLUMNS",
    "NO_BOX_METRICS",
    "EvaluationResult",
    "MaskSet",
    "holdout_mask",
    "evaluate_method",
]

# the map store columns evaluate_method reads: the top-1 maps and boxes stay on disk (at 224 a map column of
# 50,000 images is ~0.3 GB)
EVALUATED_COLUMNS = (
    "error",
    "label",
    "top5_classes",
    "map_height",
    "map_width",
    "map_gt",
    "map_a_gt",
    "map_b_gt",
)

CHUNK = 256  # images per task of the thread pool: bounds memory (256 x 224 x 224 float32 = 51 MB per thread)


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


def _coverage(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """[sum, count] of the map inside the foreground, then outside (ignore pixels left out), in float64: sums
    add up over chunks to the exact mean whatever the chunking."""
    inside, outside = maps[masks == 1], maps[masks == 0]
    return np.array([inside.sum(dtype=np.float64), inside.size, outside.sum(dtype=np.float64), outside.size])


def _rows_of_maps(
    maps_table: pa.Table, manifest: pa.Table, what: str, masks_only: bool = False
) -> tuple[pa.Table, pa.Table, int]:
    """(maps without errors sorted by id, their manifest rows in that order, failed count); checks boxes
    (``masks_only``: that there are none, and every image has a mask)."""
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
    if masks_only:
        if rows.column("mask_path").null_count:
            raise ValueError(f"{what} images have no GT box and some no GT mask: nothing to localize against")
        return ok, rows, failed
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
    gt = _gt_boxes_224(rows)
    tables = (  # chunk by chunk: ILSVRC's 10,000 maps at once were ~4 GB of float maps
        quantized_iou_table(
            prepare_quantized(maps_array(ok.slice(part.start, part.stop - part.start), "map_gt")),
            gt[part],
            multi_contour=False,
        )
        for part in _chunks(ok.num_rows)
    )
    return _best_threshold(tables, interval)


def _best_threshold(tables: Iterable[IouTable], interval: float) -> float:
    """The CAM threshold maximizing GT-known loc (IoU 50, largest contour) over `tables`, as
    select_cam_threshold: the held-out split's and the train-fullsup split's choice."""
    chooser = BoxEvaluator((50,), interval, multi_contour=False)
    for table in tables:
        chooser.accumulate_table(table)
    return chooser.compute().best_threshold[50]


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
    with ExitStack() as closing:  # the stage's threads end with the call
        return _evaluate_method(maps_table, manifest, root, params, fullsup, closing)


def _evaluate_method(
    maps_table: pa.Table,
    manifest: pa.Table,
    root: str | Path,
    params: EvaluateParams,
    fullsup: tuple[pa.Table, pa.Table] | None,
    closing: ExitStack,
) -> EvaluationResult:
    if _masks_only(manifest):
        return _evaluate_masks_only(maps_table, manifest, root, params, closing)
    ok, rows, failed = _rows_of_maps(maps_table, manifest, "validation")
    ids = rows.column("image_id").to_pylist()
    use_fullsup = params.threshold_split == "fullsup"
    held = np.zeros(len(ids), dtype=bool) if use_fullsup else holdout_mask(ids, params.holdout_fraction)
    test_idx, hold_idx = np.flatnonzero(~held), np.flatnonzero(held)
    if not use_fullsup:
        _check_holdout(params, hold_idx, len(ids))
    mask_paths = _mask_paths(rows)
    v2 = BoxEvaluator(params.iou_thresholds, params.interval, multi_contour=True)
    pxap = MaskEvaluator(params.interval) if mask_paths is not None else None
    sweep = _Sweep(ok, mask_paths, _gt_boxes_224(rows), held, v2, pxap, root)
    workers = usable_cpus()  # a CPU-limited pod's share, not the host's cores: more threads only contend
    closing.enter_context(_opencv_threads(0))  # the chunks run in parallel; OpenCV's own threads only contend
    pool = closing.enter_context(ThreadPoolExecutor(workers, thread_name_prefix="evaluate"))
    chunks = list(_chunks(len(ids)))
    parts = list(
        tqdm(pool.map(sweep.chunk, chunks), total=len(chunks), desc="evaluate", unit="chunk", mininterval=5)
    )
    largest = IouTable.concat([table for table, _ in parts])  # every image's largest-contour IoU per cut
    if use_fullsup:
        threshold = _fullsup_threshold(fullsup, params.interval)
    else:
        threshold = _best_threshold([largest.take(hold_idx)], params.interval)
    v1 = BoxEvaluator((50,), params.interval, multi_contour=False)
    v1.accumulate_table(largest.take(test_idx))
    classic = ClassicLocEvaluator(cam_threshold=threshold)
    labels, top5 = _labels_and_top5(ok)
    n_classes = len(manifest_classes(manifest))
    for part in _chunks(len(test_idx)):
        index = test_idx[part]
        classic.accumulate_table(_rank_scores(top5[index], n_classes), labels[index], largest.take(index))
    metrics, curves = _box_and_classic_metrics(
        v2.compute(), v1.compute(), classic.compute(), threshold, len(test_idx), len(hold_idx), failed
    )
    coverage = _merge_coverage([cov for _, cov in parts])
    pr = _mask_metrics(pxap, coverage, metrics) if pxap is not None else None
    return EvaluationResult(metrics=metrics, box_curves=curves, pr_curve=pr)


def _masks_only(manifest: pa.Table) -> bool:
    """A dataset annotated with masks and no box at all (OpenImages): PxAP, and no box metric to measure."""
    no_boxes = pc.sum(pc.list_value_length(manifest.column("boxes"))).as_py() in (0, None)
    return manifest.num_rows > 0 and no_boxes and manifest.column("mask_path").null_count < manifest.num_rows


NO_BOX_METRICS = "not measured: the dataset has masks and no boxes; its localization metric is pxap"


def _evaluate_masks_only(
    maps_table: pa.Table, manifest: pa.Table, root: str | Path, params: EvaluateParams, closing: ExitStack
) -> EvaluationResult:
    """PxAP, the branch coverage and the classification errors over every image; the box metrics (MaxBoxAcc,
    GT-known, top-k loc, the CAM threshold) are not computed and the record says so (``box_metrics``)."""
    ok, rows, failed = _rows_of_maps(maps_table, manifest, "validation", masks_only=True)
    pxap = MaskEvaluator(params.interval)
    sweep = _Sweep(ok, _mask_paths(rows), [], np.zeros(ok.num_rows, bool), None, pxap, root)
    closing.enter_context(_opencv_threads(0))
    pool = closing.enter_context(ThreadPoolExecutor(usable_cpus(), thread_name_prefix="evaluate"))
    chunks = list(_chunks(ok.num_rows))
    coverage = _merge_coverage(list(tqdm(pool.map(sweep.mask_chunk, chunks), total=len(chunks), desc="evaluate",
                                         unit="chunk", mininterval=5)))  # fmt: skip
    labels, top5 = _labels_and_top5(ok)
    n_classes = len(manifest_classes(manifest))
    correct = [topk_correct(_rank_scores(top5[part], n_classes), labels[part], k) for part in _chunks(len(labels))
               for k in (1, min(5, top5.shape[1]))]  # fmt: skip
    top1, top5_hits = np.concatenate(correct[0::2]), np.concatenate(correct[1::2])
    metrics: dict[str, Any] = {
        "num_images": ok.num_rows,
        "num_holdout_images": 0,
        "failed_images": int(failed),
        "top1_cls_error": 100.0 * (1 - top1.mean()),
        "top5_cls_error": 100.0 * (1 - top5_hits.mean()),
        "box_metrics": NO_BOX_METRICS,
    }
    pr = _mask_metrics(pxap, coverage, metrics)
    return EvaluationResult(metrics=metrics, box_curves={"threshold": np.empty(0)}, pr_curve=pr)


def _mask_paths(rows: pa.Table) -> list[MaskSet] | None:
    """Every row's masks (instances and ignore), read once for all chunks (each chunk reading the columns
    was quadratic), or None when some image has no mask (no PxAP)."""
    if rows.column("mask_path").null_count:
        return None
    firsts, mores = rows.column("mask_path").to_pylist(), rows.column("more_mask_paths").to_pylist()
    ignores = rows.column("ignore_path").to_pylist()
    return [
        MaskSet((first, *more), ignore or "")
        for first, more, ignore in zip(firsts, mores, ignores, strict=True)
    ]


@dataclass(frozen=True)
class MaskSet:
    """One image's ground truth for PxAP: its instance masks (the foreground is their union) and its ignore
    mask ("" for none), as Choe et al.'s ``get_mask`` reads them."""

    instances: tuple[str, ...]
    ignore: str


@contextmanager
def _opencv_threads(n: int) -> Iterator[None]:
    before = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


@dataclass
class _Sweep:
    """One pass over the validation maps, a chunk per call (calls run in threads): each image's map of its
    GT class is prepared once and swept once per contour mode; the multi-contour boxes of test images feed
    MaxBoxAccV2, the largest contour's IoUs of every image are returned for the threshold, MaxBoxAcc and
    GT-known, and with masks the test images feed PxAP and the branch coverage."""

    ok: pa.Table
    mask_paths: list[MaskSet] | None  # per row, None without masks
    gt: list[np.ndarray]
    held: np.ndarray
    v2: BoxEvaluator | None  # None: no boxes, masks only (mask_chunk)
    pxap: MaskEvaluator | None
    root: str | Path

    def mask_chunk(self, part: slice) -> dict[str, np.ndarray]:
        """A chunk of a dataset without boxes: PxAP and the coverage of every image."""
        maps_table = self.ok.slice(part.start, part.stop - part.start)
        maps = prepare_scoremap(maps_array(maps_table, "map_gt"))
        return self._masks(maps_table, maps, np.arange(part.start, part.stop))

    def chunk(self, part: slice) -> tuple[IouTable, dict[str, np.ndarray]]:
        assert self.v2 is not None
        maps_table = self.ok.slice(part.start, part.stop - part.start)
        raw = maps_array(maps_table, "map_gt")
        qmaps = prepare_quantized(raw)  # what the box metrics read; float maps only for the mask metrics
        multi, largest = quantized_iou_tables(qmaps, self.gt[part], multi_rows=~self.held[part])
        test = np.flatnonzero(~self.held[part])
        if len(test):
            self.v2.accumulate_table(multi)
        coverage = {}
        if self.pxap is not None and len(test):
            maps = prepare_scoremap(raw[test])
            coverage = self._masks(maps_table.take(pa.array(test)), maps, part.start + test)
        return largest, coverage

    def _masks(self, maps_table: pa.Table, maps: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
        """PxAP histograms and the mean map inside / outside the masks per branch, for test images."""
        assert self.pxap is not None and self.mask_paths is not None
        sets = [self.mask_paths[i] for i in index]
        masks = np.stack([load_wsol_mask(self.root, m.instances, m.ignore, RESIZE_LENGTH) for m in sets])
        self.pxap.accumulate(maps, masks)
        branch_maps = {"fused": maps, "a": prepare_scoremap(maps_array(maps_table, "map_a_gt"))}
        if maps_table.column("map_b_gt").null_count == 0:
            branch_maps["b"] = prepare_scoremap(maps_array(maps_table, "map_b_gt"))
        return {name: _coverage(values, masks) for name, values in branch_maps.items()}


def _merge_coverage(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The chunks' [sum, count, sum, count] per branch, added up (chunk order: the same sums on every run)."""
    merged: dict[str, np.ndarray] = {}
    for part in parts:
        for name, value in part.items():
            merged[name] = merged.get(name, 0) + value
    return merged


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


def _labels_and_top5(ok: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Labels (N,) and the stored top-5 classes (N, 5) of the maps."""
    labels = np.asarray(ok.column("label"), dtype=np.int64)
    return labels, np.asarray(ok.column("top5_classes").to_pylist(), dtype=np.int64)


def _rank_scores(top5: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, C) class scores that rank the stored top-5 first: the classic metrics only need their order."""
    scores = np.full((len(top5), n_classes), -1.0)
    np.put_along_axis(scores, top5, np.arange(top5.shape[1], 0, -1, dtype=np.float64)[None, :], axis=1)
    return scores


def _check_holdout(params: EvaluateParams, hold_idx: np.ndarray, n_images: int) -> None:
    """The classic metrics' CAM threshold is chosen on the held-out images: none held out is an error."""
    if not len(hold_idx):
        # No silent default threshold: the classic metrics (top-1 loc, GT-known) would be reported at a guess.
        raise ValueError(
            f"evaluate.holdout_fraction={params.holdout_fraction} leaves no held-out image among the {n_images} "
            "validation images, so the CAM threshold of the classic metrics cannot be chosen: raise "
            "evaluate.holdout_fraction, evaluate more images, or use evaluate.threshold_split: fullsup"
        )


def _mask_metrics(
    pxap: MaskEvaluator, coverage: dict[str, np.ndarray], metrics: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Add PxAP and the per-branch mean map inside / outside the masks to ``metrics``; return the PR curve."""
    mask_result = pxap.compute()
    metrics["pxap"] = mask_result.pxap
    edges = np.append(mask_result.thresholds, [1.0, 2.0])[::-1]  # right-edged bins, high to low
    for name, (in_sum, in_count, out_sum, out_count) in coverage.items():
        metrics[f"map_{name}_in_mask"] = float(in_sum / in_count)
        metrics[f"map_{name}_out_mask"] = float(out_sum / out_count)
    return {"threshold": edges, "precision": mask_result.precision, "recall": mask_result.recall}
