"""Plain reference of the WSOL box and mask metrics: per image, per threshold, as wsolevaluation does it.

Slow on purpose; tests and the benchmark check that the vectorized evaluators in ``acol.wsol.localization_metrics`` give
identical numbers. Conventions as in ``acol.wsol.boxes`` (x0y0x1y1 inclusive boxes, 224x224 maps in [0, 1]).
"""

from __future__ import annotations

import cv2
import numpy as np


def reference_iou(box_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
    """IoU (N, M) of inclusive-pixel boxes, the protocol's ``calculate_multiple_iou``."""
    a = np.asarray(box_a)[:, None, :]
    b = np.asarray(box_b)[None, :, :]
    min_x = np.maximum(a[..., 0], b[..., 0])
    min_y = np.maximum(a[..., 1], b[..., 1])
    max_x = np.minimum(a[..., 2], b[..., 2])
    max_y = np.minimum(a[..., 3], b[..., 3])
    inter = np.maximum(0, max_x - min_x + 1) * np.maximum(0, max_y - min_y + 1)
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    denom = (area_a + area_b - inter).astype(np.float64)
    degenerate = denom <= 0
    denom[degenerate] = 1
    ious = inter / denom
    ious[degenerate] = 0
    return ious


def reference_boxes(scoremap: np.ndarray, thresholds: np.ndarray, multi_contour: bool) -> list[np.ndarray]:
    """Boxes per threshold: ``cv2.threshold`` + ``cv2.findContours`` once per threshold."""
    height, width = scoremap.shape
    image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
    out = []
    for t in thresholds:
        _, binary = cv2.threshold(image, int(t * np.max(image)), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        if len(contours) == 0:
            out.append(np.asarray([[0, 0, 0, 0]]))
            continue
        if not multi_contour:
            contours = [max(contours, key=cv2.contourArea)]
        boxes = []
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
        out.append(np.asarray(boxes))
    return out


def reference_box_accuracy(
    scoremaps: list[np.ndarray] | np.ndarray,
    gt_boxes: list[np.ndarray],
    interval: float = 0.01,
    iou_thresholds: tuple[int, ...] = (30, 50, 70),
    multi_contour: bool = True,
) -> dict[int, np.ndarray]:
    """Accuracy curves (%) per IoU threshold over ``np.arange(0, 1, interval)``, the protocol's loop."""
    thresholds = np.arange(0, 1, interval)
    correct = {k: np.zeros(len(thresholds)) for k in iou_thresholds}
    for scoremap, gt in zip(scoremaps, gt_boxes, strict=True):
        per_thr = reference_boxes(scoremap, thresholds, multi_contour)
        ious = reference_iou(np.concatenate(per_thr, axis=0), np.asarray(gt))
        best_per_box = ious.max(1)
        idx, best = 0, []
        for boxes in per_thr:
            best.append(best_per_box[idx : idx + len(boxes)].max())
            idx += len(boxes)
        for k in iou_thresholds:
            correct[k][np.where(np.asarray(best) >= k / 100)[0]] += 1
    return {k: v * 100.0 / len(gt_boxes) for k, v in correct.items()}


def reference_pxap(
    scoremaps: list[np.ndarray] | np.ndarray, masks: list[np.ndarray] | np.ndarray, interval: float = 0.01
) -> float:
    """PxAP (%) from score histograms at GT-positive (mask == 1) and GT-negative (mask == 0) pixels."""
    thresholds = np.arange(0, 1, interval)
    edges = np.append(thresholds, [1.0, 2.0, 3.0])
    true_hist = np.zeros(len(thresholds) + 2)
    false_hist = np.zeros(len(thresholds) + 2)
    for scoremap, mask in zip(scoremaps, masks, strict=True):
        true_hist += np.histogram(scoremap[mask == 1], bins=edges)[0]
        false_hist += np.histogram(scoremap[mask == 0], bins=edges)[0]
    tp = true_hist[::-1].cumsum()
    fn = true_hist.sum() - tp
    fp = false_hist[::-1].cumsum()
    non_zero = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    return float((precision[1:] * np.diff(recall))[non_zero[1:]].sum() * 100)
