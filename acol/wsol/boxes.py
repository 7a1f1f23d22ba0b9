"""Boxes for WSOL: scaling, IoU and boxes from thresholded score maps, exactly as Choe et al. 2020.

Box convention everywhere: ``(x0, y0, x1, y1)`` int pixel coordinates, inclusive (areas count
``x1 - x0 + 1``), in the 224x224 evaluation frame. A score map is ``(224, 224)`` float in [0, 1]; its
quantized form is ``q = (map * 255).astype(uint8)``. At a threshold ``t`` the foreground is
``q > int(t * q.max())`` (``cv2.threshold`` THRESH_BINARY), contours come from
``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)`` (outer borders and hole borders), a contour
gives ``x0, y0, x1, y1 = x, y, x + w, y + h`` from
``cv2.boundingRect`` with x1, y1 clipped to 223; no contour gives the box (0, 0, 0, 0).

Speed: a quantized map has at most 256 distinct masks, so thresholds are mapped to integer cuts. The boxes
of all cuts come from one union-find sweep per map (``acol.wsol.contours``), without ``findContours``: with
``multi_contour`` (MaxBoxAccV2) outer borders = 8-connected components, hole borders = enclosed 4-connected
background components grown by one pixel; the single largest contour (MaxBoxAcc, classic metrics) = the
top-level component of largest ``cv2.contourArea``, counted from 2x2 cells of the hole-filled map.
"""

from __future__ import annotations

import cv2
import numpy as np

from acol.wsol.contours import best_iou_per_cut
from acol.wsol.scoremaps import RESIZE_LENGTH, prepare_scoremap, quantize

EMPTY_BOX = np.zeros((1, 4), dtype=np.int64)  # what the protocol returns where no contour is found


def check_boxes(boxes: np.ndarray, name: str = "boxes") -> np.ndarray:
    """Return ``boxes`` as an (N, 4) int64 array; raise if not x0y0x1y1 with 0 <= x0 <= x1, 0 <= y0 <= y1."""
    arr = np.asarray(boxes)
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) in x0y0x1y1; got shape {arr.shape}")
    if arr.size and ((arr < 0).any() or (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any()):
        raise ValueError(f"{name} must be non-negative x0y0x1y1 boxes with x0 <= x1 and y0 <= y1")
    return arr


def scale_boxes(boxes: np.ndarray, width: float, height: float, size: int = RESIZE_LENGTH) -> np.ndarray:
    """Scale (k, 4) boxes of a ``width`` x ``height`` image to the ``size`` x ``size`` frame (int, truncated).

    Same float arithmetic as wsolevaluation's ``resize_bbox``: ``int(x * size / width)``.
    """
    arr = check_boxes(boxes).astype(np.float64)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive; got width={width}, height={height}")
    scale = np.array([width, height, width, height], dtype=np.float64)
    return np.trunc(arr * float(size) / scale).astype(np.int64)


def iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU matrix (N, M) float64 of inclusive-pixel boxes (N, 4) and (M, 4); a zero denominator gives 0."""
    a = check_boxes(boxes_a, "boxes_a").astype(np.int64)[:, None, :]
    b = check_boxes(boxes_b, "boxes_b").astype(np.int64)[None, :, :]
    inter_w = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    denom = area_a + area_b - inter
    bad = denom <= 0
    return np.where(bad, 0.0, inter / np.where(bad, 1, denom))


def _contour_boxes_areas(contours: tuple, size_limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (C, 4) clipped to ``size_limit`` and ``cv2.contourArea`` values (C,) of many contours at once."""
    lengths = np.fromiter((len(c) for c in contours), dtype=np.int64, count=len(contours))
    pts = np.concatenate(contours).reshape(-1, 2).astype(np.int64)  # (P, 2) x, y
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    mins = np.minimum.reduceat(pts, starts, axis=0)
    maxs = np.maximum.reduceat(pts, starts, axis=0)
    boxes = np.concatenate([mins, np.minimum(maxs + 1, size_limit)], axis=1)
    # Shoelace with each contour closed on itself; integer sums are exact, as OpenCV's double sums are.
    nxt = np.arange(1, len(pts) + 1)
    nxt[np.cumsum(lengths) - 1] = starts
    cross = pts[:, 0] * pts[nxt, 1] - pts[nxt, 0] * pts[:, 1]
    areas = np.abs(np.add.reduceat(cross, starts)) / 2.0
    return boxes, areas


def boxes_from_mask(mask: np.ndarray, multi_contour: bool) -> np.ndarray:
    """Boxes (k, 4) int64 of a binary (H, W) mask: all contours, or the largest by contour area.

    Ties in area go to the first contour in OpenCV's order, as ``max(contours, key=cv2.contourArea)`` does.
    No foreground gives ``[[0, 0, 0, 0]]``.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W); got shape {m.shape}")
    contours = cv2.findContours((m > 0).view(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return EMPTY_BOX.copy()
    boxes, areas = _contour_boxes_areas(contours, 1 << 30)
    boxes[:, 2] = np.minimum(boxes[:, 2], m.shape[1] - 1)
    boxes[:, 3] = np.minimum(boxes[:, 3], m.shape[0] - 1)
    return boxes if multi_contour else boxes[[int(np.argmax(areas))]]


def threshold_cuts(qmax: int | np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Integer cuts ``int(t * qmax)`` (T,) of thresholds for a quantized map whose maximum is ``qmax``;
    (N, T) for the maxima (N,) of N maps."""
    scale = np.asarray(qmax, dtype=np.float64)[..., None]
    return np.floor(np.asarray(thresholds, dtype=np.float64) * scale).astype(np.int64)


def boxes_at_thresholds(
    scoremap: np.ndarray, thresholds: np.ndarray, multi_contour: bool
) -> list[np.ndarray]:
    """Boxes (k_t, 4) at each threshold of a normalized (H, W) map; one contour search per distinct cut."""
    q = quantize(scoremap)
    if q.ndim != 2:
        raise ValueError(f"scoremap must be 2-D (H, W); got shape {q.shape}")
    qmax = int(q.max())
    cuts = threshold_cuts(qmax, thresholds)
    cache: dict[int, np.ndarray] = {}
    out = []
    for c in cuts.tolist():
        if c >= qmax:  # the mask q > c is empty
            out.append(EMPTY_BOX.copy())
            continue
        if c not in cache:
            cache[c] = boxes_from_mask(q > c, multi_contour)
        out.append(cache[c].copy())
    return out


def best_iou_per_threshold(
    scoremap: np.ndarray, gt_boxes: np.ndarray, thresholds: np.ndarray, multi_contour: bool
) -> np.ndarray:
    """Best IoU (T,) float64 of the estimated box(es) with any GT box, at each threshold of the grid.

    ``scoremap`` is a normalized (H, W) float map or its quantized uint8 form; ``gt_boxes`` (k, 4) in the
    same frame; thresholds >= 0. Identical to the per-threshold protocol loop (``acol.wsol.reference``).
    """
    q = scoremap if np.asarray(scoremap).dtype == np.uint8 else quantize(scoremap)
    if q.ndim != 2:
        raise ValueError(f"scoremap must be 2-D (H, W); got shape {q.shape}")
    gt = check_boxes(gt_boxes, "gt_boxes")
    if len(gt) == 0:
        raise ValueError("gt_boxes must hold at least one box")
    if (np.asarray(thresholds) < 0).any():
        raise ValueError("thresholds must be >= 0 (the protocol's grid is [0, 1))")
    cuts = threshold_cuts(int(q.max()), thresholds)  # cuts >= q.max() hold the empty box's IoU
    return best_iou_per_cut(q, gt, cuts, multi_contour)[np.minimum(cuts, 255)]


def boxes_from_maps(
    maps: np.ndarray, widths: np.ndarray, heights: np.ndarray, box_threshold: float
) -> np.ndarray:
    """Boxes (B, 4) float32 in original pixels from normalized (B, h, w) maps, the protocol's way.

    Each map is resized bicubic to 224x224 and min-max normalized (`acol.wsol.scoremaps.prepare_scoremap`); the box of
    the largest contour at ``box_threshold`` (inclusive x0y0x1y1 in the 224 frame, (0, 0, 0, 0) when nothing
    is above it) is scaled to the original ``width`` x ``height`` image by ``x * width / 224``.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (B, h, w); got {maps.shape}")
    scale = np.stack([widths, heights, widths, heights], axis=1).astype(np.float64) / RESIZE_LENGTH
    thresholds = np.array([box_threshold], dtype=np.float64)
    boxes224 = (
        np.stack(
            [boxes_at_thresholds(prepare_scoremap(m), thresholds, multi_contour=False)[0][0] for m in maps]
        )
        if len(maps)
        else np.zeros((0, 4))
    )
    return (boxes224 * scale).astype(np.float32)
