"""WSOL localization metrics: MaxBoxAcc / MaxBoxAccV2, PxAP (Choe et al. 2020) and the classic ACoL/CAM metrics.

Evaluators follow one contract: ``accumulate(...)`` takes a batch (call it as often as needed), ``compute()``
returns a result dataclass over everything accumulated so far. Score maps are (N, 224, 224) float in [0, 1],
already prepared (``acol.wsol.scoremaps.prepare_scoremap``); boxes are int x0y0x1y1 inclusive in the 224x224 frame.
Numbers are identical to the per-threshold protocol loop (``acol.wsol.reference``; checked in tests).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from acol.data.paths import resolve_inside
from acol.wsol.boxes import best_iou_per_threshold, check_boxes, threshold_cuts
from acol.wsol.contours import box_hits, box_iou_table, box_iou_tables
from acol.wsol.scoremaps import RESIZE_LENGTH, quantize


def iou_percent(value: float, name: str = "iou_threshold") -> int:
    """An IoU threshold as this module takes it: an integer percentage in [1, 100] (50 means IoU >= 0.5).

    Why: one convention for every evaluator here and for ``evaluate.iou_thresholds``; a fraction such as 0.5
    (the other common convention) is refused with a message instead of silently meaning IoU >= 0.005.
    """
    number = float(value)
    if not (1 <= number <= 100 and number.is_integer()):
        hint = f" (a fraction? IoU {number} is {round(number * 100)} here)" if 0 < number < 1 else ""
        raise ValueError(f"{name} must be an integer percentage in [1, 100]; got {value!r}{hint}")
    return int(number)


def threshold_grid(interval: float) -> np.ndarray:
    """The protocol's CAM threshold grid ``np.arange(0, 1, interval)`` (0.01 default, 0.001 full protocol)."""
    if not 0 < interval < 1:
        raise ValueError(f"interval must be in (0, 1); got {interval}")
    return np.arange(0, 1, interval)


def _check_batch(scoremaps: np.ndarray) -> np.ndarray:
    arr = np.asarray(scoremaps)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"scoremaps must be float (N, H, W); got {arr.dtype} {arr.shape}")
    return arr


def _chunk_hits(
    maps: np.ndarray,
    gt_flat: np.ndarray,
    offsets: np.ndarray,
    thresholds: np.ndarray,
    iou_fracs: np.ndarray,
    multi_contour: bool,
) -> np.ndarray:
    """Thread worker: quantize a chunk of maps and count hits with the GIL-free union-find kernel."""
    return box_hits(quantize(maps), gt_flat, offsets - offsets[0], thresholds, iou_fracs, multi_contour)


def _flat_boxes(gt_boxes: Sequence[np.ndarray], n_maps: int) -> tuple[np.ndarray, np.ndarray]:
    """Checked GT boxes of a batch as (flat (G, 4) int64, offsets (N + 1,)): the kernels' layout."""
    if len(gt_boxes) != n_maps:
        raise ValueError(f"got {n_maps} score maps but {len(gt_boxes)} GT box arrays")
    gts = [check_boxes(g, f"gt_boxes[{i}]") for i, g in enumerate(gt_boxes)]
    for i, g in enumerate(gts):
        if len(g) == 0:
            raise ValueError(f"gt_boxes[{i}] is empty: every image needs at least one GT box")
    offsets = np.concatenate(([0], np.cumsum([len(g) for g in gts]))).astype(np.int64)
    flat = np.concatenate(gts).astype(np.int64) if gts else np.zeros((0, 4), np.int64)
    return flat, offsets


@dataclass(frozen=True)
class IouTable:
    """Each map's best box IoU at every cut of its quantized form, and the map's maximum (the cut rule's scale).

    Why: the stage asks three things of the same largest-contour boxes (the threshold chosen on held-out
    images, MaxBoxAcc on the others, each image's GT-known hit at that threshold); one sweep per map answers
    all of them. Build with ``iou_table``.
    """

    ious: np.ndarray  # (N, 256) float64: best IoU at cut c; cuts >= qmax hold the empty box's IoU
    qmax: np.ndarray  # (N,) int64: max of each quantized map
    multi_contour: bool

    def take(self, index: np.ndarray) -> IouTable:
        """The rows ``index`` (positions or a bool mask)."""
        return IouTable(self.ious[index], self.qmax[index], self.multi_contour)

    def at(self, thresholds: np.ndarray) -> np.ndarray:
        """(N, T) IoU of each map at each CAM threshold: cut ``floor(t * qmax)``, as the protocol's loop."""
        return np.take_along_axis(self.ious, threshold_cuts(self.qmax, thresholds), axis=1)

    @staticmethod
    def concat(tables: Sequence[IouTable]) -> IouTable:
        """One table of the rows of ``tables``, in order (all built with the same contour mode)."""
        modes = {t.multi_contour for t in tables}
        if len(modes) != 1:
            raise ValueError(f"cannot join tables of different contour modes: {sorted(modes)}")
        return IouTable(
            np.concatenate([t.ious for t in tables]), np.concatenate([t.qmax for t in tables]), modes.pop()
        )


def iou_table(scoremaps: np.ndarray, gt_boxes: Sequence[np.ndarray], multi_contour: bool) -> IouTable:
    """The ``IouTable`` of prepared maps (N, 224, 224) in [0, 1] and their N GT box arrays (GIL-free kernel)."""
    return quantized_iou_table(quantize(_check_batch(scoremaps)), gt_boxes, multi_contour)


def quantized_iou_table(qmaps: np.ndarray, gt_boxes: Sequence[np.ndarray], multi_contour: bool) -> IouTable:
    """``iou_table`` of maps already quantized (N, 224, 224) uint8 (``acol.wsol.scoremaps.prepare_quantized``):
    one quantized batch serves both contour modes."""
    flat, offsets = _flat_boxes(gt_boxes, len(qmaps))
    ious = box_iou_table(qmaps, flat, offsets, multi_contour)
    return IouTable(ious, qmaps.max(axis=(1, 2)).astype(np.int64), bool(multi_contour))


def quantized_iou_tables(
    qmaps: np.ndarray, gt_boxes: Sequence[np.ndarray], multi_rows: np.ndarray
) -> tuple[IouTable, IouTable]:
    """(multi-contour table of the rows ``multi_rows``, largest-contour table of every row) of quantized
    maps, in one pass: a map swept in both modes has its holes filled once (``box_iou_tables``)."""
    flat, offsets = _flat_boxes(gt_boxes, len(qmaps))
    rows = np.asarray(multi_rows, dtype=bool)
    multi, largest = box_iou_tables(qmaps, flat, offsets, rows)
    qmax = qmaps.max(axis=(1, 2)).astype(np.int64)
    return IouTable(multi[rows], qmax[rows], True), IouTable(largest, qmax, False)


@dataclass(frozen=True)
class BoxResult:
    """MaxBoxAcc per IoU threshold, their mean, accuracy curves (%) over the grid and best thresholds."""

    iou_thresholds: tuple[int, ...]
    max_box_acc: dict[int, float]  # IoU threshold (percent) -> max over the grid of the accuracy (%)
    mean_max_box_acc: float  # MaxBoxAccV2 when multi-contour and IoU (30, 50, 70)
    best_threshold: dict[int, float]  # IoU threshold -> first CAM threshold reaching the max
    thresholds: np.ndarray  # (T,) the CAM threshold grid
    curves: dict[int, np.ndarray]  # IoU threshold -> (T,) accuracy (%) per CAM threshold
    num_images: int
    multi_contour: bool

    def to_dict(self) -> dict:
        """JSON-ready summary (curves as lists)."""
        return {
            "num_images": self.num_images,
            "multi_contour": self.multi_contour,
            "iou_thresholds": list(self.iou_thresholds),
            "max_box_acc": {str(k): v for k, v in self.max_box_acc.items()},
            "mean_max_box_acc": self.mean_max_box_acc,
            "best_threshold": {str(k): v for k, v in self.best_threshold.items()},
            "thresholds": self.thresholds.tolist(),
            "curves": {str(k): v.tolist() for k, v in self.curves.items()},
        }


class BoxEvaluator:
    """MaxBoxAcc(V2): accuracy of boxes from thresholded maps, maximized over the CAM threshold grid.

    ``accumulate(scoremaps (N, 224, 224) float in [0, 1], gt_boxes: N arrays (k_i, 4))``; ``compute()`` ->
    ``BoxResult``. MaxBoxAccV2 = ``multi_contour=True``, IoU (30, 50, 70), mean; the original MaxBoxAcc =
    ``multi_contour=False``, IoU 50. Both come from one union-find pass per map (``acol.wsol.contours``);
    ``n_workers > 1`` spreads chunks of maps over threads of that GIL-free kernel (use as a context manager
    or call ``close()``).
    """

    def __init__(
        self,
        iou_thresholds: Sequence[int] = (30, 50, 70),
        interval: float = 0.01,
        multi_contour: bool = True,
        n_workers: int = 1,
        chunk_size: int = 256,
    ) -> None:
        if not iou_thresholds:
            raise ValueError("iou_thresholds is empty")
        self.iou_thresholds = tuple(iou_percent(k, "iou_thresholds") for k in iou_thresholds)
        self.thresholds = threshold_grid(interval)
        self.multi_contour = multi_contour
        self.n_workers = max(1, int(n_workers))
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
        self.chunk_size = int(chunk_size)  # maps per thread task: bounds the uint8 copies
        self._iou_fracs = np.array([k / 100 for k in self.iou_thresholds])  # same floats as `k / 100`
        self._hits = np.zeros((len(self.iou_thresholds), len(self.thresholds)), dtype=np.int64)
        self._count = 0
        self._lock = threading.Lock()
        self._threads: ThreadPoolExecutor | None = None

    def accumulate(self, scoremaps: np.ndarray, gt_boxes: Sequence[np.ndarray]) -> None:
        """Add a batch: maps (N, H, W) normalized to [0, 1], N GT box arrays (k_i >= 1, 4) in map pixels."""
        maps = _check_batch(scoremaps)
        gt_flat, offsets = _flat_boxes(gt_boxes, len(maps))
        self._add(self._accumulate_chunks(maps, gt_flat, offsets), len(maps))

    def accumulate_table(self, table: IouTable, chunk_size: int = 1024) -> None:
        """Add maps already swept (``iou_table`` in this evaluator's contour mode): no new sweep."""
        if table.multi_contour != self.multi_contour:
            raise ValueError(
                f"the table was built with multi_contour={table.multi_contour}, this evaluator has "
                f"multi_contour={self.multi_contour}"
            )
        hits = np.zeros_like(self._hits)
        for start in range(0, len(table.qmax), chunk_size):  # bounds the (chunk, T) IoU array
            ious = table.take(slice(start, start + chunk_size)).at(self.thresholds)
            hits += (ious[None, :, :] >= self._iou_fracs[:, None, None]).sum(axis=1)
        self._add(hits, len(table.qmax))

    def _add(self, hits: np.ndarray, count: int) -> None:
        with self._lock:  # accumulate may be called from several threads
            self._hits += hits
            self._count += count

    def _accumulate_chunks(self, maps: np.ndarray, gt_flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(n_iou, T) hits of a batch, in chunks over ``n_workers`` threads (quantized inside each chunk)."""
        if len(maps) == 0:
            return np.zeros_like(self._hits)
        bounds = [*range(0, len(maps), self.chunk_size), len(maps)]
        jobs = [
            (
                maps[a:b],
                gt_flat[offsets[a] : offsets[b]],
                offsets[a : b + 1],
                self.thresholds,
                self._iou_fracs,
                self.multi_contour,
            )
            for a, b in itertools.pairwise(bounds)
        ]
        if self.n_workers > 1 and len(jobs) > 1:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.n_workers, thread_name_prefix="box-evaluator")
            return sum(self._threads.map(lambda job: _chunk_hits(*job), jobs))
        return sum(_chunk_hits(*job) for job in jobs)

    def compute(self) -> BoxResult:
        """MaxBoxAcc per IoU threshold (%), their mean, curves and best thresholds over all images so far."""
        if self._count == 0:
            raise RuntimeError("BoxEvaluator.compute() called before any accumulate()")
        curves = {k: self._hits[i] * 100.0 / float(self._count) for i, k in enumerate(self.iou_thresholds)}
        max_acc = {k: float(v.max()) for k, v in curves.items()}
        return BoxResult(
            iou_thresholds=self.iou_thresholds,
            max_box_acc=max_acc,
            mean_max_box_acc=float(np.average(list(max_acc.values()))),
            best_threshold={k: float(self.thresholds[int(np.argmax(v))]) for k, v in curves.items()},
            thresholds=self.thresholds,
            curves=curves,
            num_images=self._count,
            multi_contour=self.multi_contour,
        )

    def close(self) -> None:
        """Stop the worker threads, if started."""
        if self._threads is not None:
            self._threads.shutdown()
            self._threads = None

    def __enter__(self) -> BoxEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class MaskResult:
    """PxAP (%) and the pixel precision-recall curve (arrays over the right-edged bins, high to low)."""

    pxap: float
    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {"pxap": self.pxap, "precision": self.precision.tolist(), "recall": self.recall.tolist()}


class MaskEvaluator:
    """PxAP: area under the pixel precision-recall curve, wsolevaluation's histogram formulation.

    ``accumulate(scoremaps (N, H, W) in [0, 1], masks (N, H, W) uint8: 1 foreground, 0 background,
    ``ignore_value`` excluded)``. Bins are [0, d), [d, 2d), ..., [1-d, 1), [1, 2), [2, 3).
    """

    def __init__(self, interval: float = 0.01, ignore_value: int = 255) -> None:
        self.thresholds = threshold_grid(interval)
        self.ignore_value = ignore_value
        self._edges = np.append(self.thresholds, [1.0, 2.0, 3.0])
        self._true_hist = np.zeros(len(self.thresholds) + 2)
        self._false_hist = np.zeros(len(self.thresholds) + 2)
        self._lock = threading.Lock()

    def accumulate(self, scoremaps: np.ndarray, masks: np.ndarray) -> None:
        """Add score histograms at GT-foreground and GT-background pixels (ignored pixels left out)."""
        maps = _check_batch(scoremaps)
        m = np.asarray(masks)
        if m.ndim == 2:
            m = m[None]
        if m.shape != maps.shape:
            raise ValueError(f"masks shape {m.shape} does not match scoremaps shape {maps.shape}")
        if np.isnan(maps).any() or (maps < 0).any() or (maps > 1).any():
            raise ValueError("scoremaps must be in [0, 1] without NaN")
        unexpected = ~np.isin(m, (0, 1, self.ignore_value))
        if unexpected.any():
            raise ValueError(
                f"masks hold values other than 0, 1 and ignore={self.ignore_value}: "
                f"{np.unique(m[unexpected])}"
            )
        true_hist = np.histogram(maps[m == 1], bins=self._edges)[0]
        false_hist = np.histogram(maps[m == 0], bins=self._edges)[0]
        with self._lock:  # accumulate may be called from several threads
            self._true_hist += true_hist
            self._false_hist += false_hist

    def compute(self) -> MaskResult:
        """PxAP (%) = sum of precision x recall increments over the bins, as in wsolevaluation."""
        tp = self._true_hist[::-1].cumsum()
        fn = self._true_hist.sum() - tp
        fp = self._false_hist[::-1].cumsum()
        if ((tp + fn) <= 0).all():
            raise RuntimeError("No positive ground truth pixel in the accumulated masks.")
        if ((tp + fp) <= 0).all():
            raise RuntimeError("No positive prediction in the accumulated score maps.")
        non_zero = (tp + fp) != 0
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tp / (tp + fp)
        recall = tp / (tp + fn)
        auc = float((precision[1:] * np.diff(recall))[non_zero[1:]].sum() * 100)
        return MaskResult(pxap=auc, precision=precision, recall=recall, thresholds=self.thresholds)


def _read_mask(path: Path, size: int) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"cannot read mask image {path}")
    return cv2.resize(np.float32(image), (size, size), interpolation=cv2.INTER_NEAREST)


def load_wsol_mask(
    mask_root: str | Path, mask_paths: Sequence[str], ignore_path: str, size: int = RESIZE_LENGTH
) -> np.ndarray:
    """GT mask (size, size) uint8 as wsolevaluation's ``get_mask``: 1 = union of instance masks (> 0.5),
    255 = ignore box minus foreground, 0 = background; files are resized NEAREST. Empty ``ignore_path``
    means no ignore region."""
    root = Path(mask_root)
    if not mask_paths:
        raise ValueError("mask_paths is empty: an image needs at least one instance mask")
    # paths come from annotation files (untrusted): `resolve_inside` refuses any that leaves `mask_root`
    fg = np.stack([_read_mask(resolve_inside(root, p), size) > 0.5 for p in mask_paths]).any(axis=0)
    ignore = _read_mask(resolve_inside(root, ignore_path), size) > 0.5 if ignore_path else np.zeros_like(fg)
    ignore &= ~fg
    return fg.astype(np.uint8) + 255 * ignore.astype(np.uint8)


# --- Classic ACoL / CAM metrics -------------------------------------------------------------------------


def topk_correct(class_scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(N,) bool: the label is among the k highest scores of (N, C) ``class_scores``."""
    scores = np.asarray(class_scores)
    lab = np.asarray(labels)
    if scores.ndim != 2 or lab.shape != (scores.shape[0],):
        raise ValueError(f"class_scores must be (N, C) and labels (N,); got {scores.shape} and {lab.shape}")
    if k < 1 or k > scores.shape[1]:
        raise ValueError(f"k must be in [1, {scores.shape[1]}]; got {k}")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (top == lab[:, None]).any(axis=1)


def gt_known_correct(
    scoremaps: np.ndarray,
    gt_boxes: Sequence[np.ndarray],
    threshold: float,
    iou_threshold: int = 50,
    multi_contour: bool = False,
) -> np.ndarray:
    """(N,) bool: the box at CAM ``threshold`` of each GT-class map reaches ``iou_threshold`` (percent) with a GT."""
    iou_frac = iou_percent(iou_threshold, "iou_threshold") / 100  # the same float as BoxEvaluator's
    maps = _check_batch(scoremaps)
    qmaps = quantize(maps)
    t = np.array([threshold], dtype=np.float64)
    return np.array(
        [
            best_iou_per_threshold(q, g, t, multi_contour)[0] >= iou_frac
            for q, g in zip(qmaps, gt_boxes, strict=True)
        ],
        dtype=bool,
    )


@dataclass(frozen=True)
class ClassicResult:
    """Classic ACoL/CAM numbers (%), at one CAM threshold and IoU >= 0.5."""

    top1_cls_error: float
    top5_cls_error: float
    top1_loc_error: float
    top5_loc_error: float
    gt_known_loc_acc: float
    cam_threshold: float
    num_images: int


class ClassicLocEvaluator:
    """Top-1/5 classification and localization errors and GT-known localization, at a fixed CAM threshold.

    A localization is right when the class is right and the box has IoU >= ``iou_threshold`` percent (50) with
    a GT box. Top-5 loc
    in the CAM/ACoL papers checks the box of each of the top-5 classes; only the class equal to the label
    can count, so it is "label in top-5 and the GT-class map's box is right": only the GT-class map is
    needed. ``accumulate(class_scores (N, C), labels (N,), gt_class_maps (N, 224, 224), gt_boxes)``.
    """

    def __init__(self, cam_threshold: float, iou_threshold: int = 50, multi_contour: bool = False) -> None:
        if not 0 <= cam_threshold < 1:
            raise ValueError(f"cam_threshold must be in [0, 1); got {cam_threshold}")
        self.cam_threshold = cam_threshold
        self.iou_threshold = iou_percent(iou_threshold, "iou_threshold")
        self.multi_contour = multi_contour
        self._top1: list[np.ndarray] = []
        self._top5: list[np.ndarray] = []
        self._loc: list[np.ndarray] = []

    def accumulate(
        self,
        class_scores: np.ndarray,
        labels: np.ndarray,
        gt_class_maps: np.ndarray,
        gt_boxes: Sequence[np.ndarray],
    ) -> None:
        """Add a batch; maps are the prepared maps of each image's ground-truth class."""
        maps = _check_batch(gt_class_maps)
        if not (len(maps) == len(gt_boxes) == len(labels)):
            raise ValueError(
                f"batch sizes differ: {len(maps)} maps, {len(gt_boxes)} boxes, {len(labels)} labels"
            )
        self.accumulate_table(class_scores, labels, iou_table(maps, gt_boxes, self.multi_contour))

    def accumulate_table(self, class_scores: np.ndarray, labels: np.ndarray, table: IouTable) -> None:
        """Add a batch whose GT-class maps were already swept (``iou_table`` in this contour mode)."""
        if table.multi_contour != self.multi_contour:
            raise ValueError(
                f"the table was built with multi_contour={table.multi_contour}, this evaluator has "
                f"multi_contour={self.multi_contour}"
            )
        if len(table.qmax) != len(labels):
            raise ValueError(f"batch sizes differ: {len(table.qmax)} maps, {len(labels)} labels")
        k5 = min(5, np.asarray(class_scores).shape[1])
        self._top1.append(topk_correct(class_scores, labels, 1))
        self._top5.append(topk_correct(class_scores, labels, k5))
        self._loc.append(table.at(np.array([self.cam_threshold]))[:, 0] >= self.iou_threshold / 100)

    def compute(self) -> ClassicResult:
        """Errors and accuracy in percent over all accumulated images."""
        if not self._loc:
            raise RuntimeError("ClassicLocEvaluator.compute() called before any accumulate()")
        top1, top5, loc = (np.concatenate(x) for x in (self._top1, self._top5, self._loc))
        return ClassicResult(
            top1_cls_error=100.0 * (1 - top1.mean()),
            top5_cls_error=100.0 * (1 - top5.mean()),
            top1_loc_error=100.0 * (1 - (top1 & loc).mean()),
            top5_loc_error=100.0 * (1 - (top5 & loc).mean()),
            gt_known_loc_acc=100.0 * loc.mean(),
            cam_threshold=self.cam_threshold,
            num_images=len(loc),
        )


def select_cam_threshold(
    scoremaps: np.ndarray,
    gt_boxes: Sequence[np.ndarray],
    interval: float = 0.01,
    iou_threshold: int = 50,
    multi_contour: bool = False,
) -> float:
    """The CAM threshold maximizing GT-known localization on a held-out split (to apply on another split).

    ``iou_threshold`` is a percentage, as everywhere in this module."""
    iou_threshold = iou_percent(iou_threshold, "iou_threshold")
    evaluator = BoxEvaluator(iou_thresholds=(iou_threshold,), interval=interval, multi_contour=multi_contour)
    evaluator.accumulate(scoremaps, gt_boxes)
    return evaluator.compute().best_threshold[iou_threshold]
