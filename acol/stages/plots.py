"""Figures for the report: curves with both methods on the same axes, and map overlays for the galleries.

Matplotlib is used through `matplotlib.figure.Figure` with the Agg canvas only (no pyplot, no global state,
headless by construction). Every function returns PNG bytes; the caller decides where they go.

Overlay conventions: an image is ``(H, W, 3)`` uint8 RGB; a map is ``(h, w)`` float in [0, 1] at any
resolution (resized to the image with bilinear interpolation); boxes are ``[x0, y0, x1, y1]`` in original image
pixels (the manifest and extraction conventions).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "GT_COLOUR",
    "PRED_COLOUR",
    "overlay_map",
    "draw_boxes",
    "tile",
    "box_accuracy_figure",
    "pr_curve_figure",
    "training_figure",
    "gallery_figure",
]

GT_COLOUR = (40, 220, 40)  # RGB: ground-truth boxes
PRED_COLOUR = (255, 40, 40)  # RGB: predicted box
_METHOD_COLOURS = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange"]
_IOU_STYLES = ["-", "--", ":", "-."]


def _png(fig: Figure) -> bytes:
    """Render a Figure to PNG bytes (no timestamp in the metadata, so identical figures give identical files)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def overlay_map(image: np.ndarray, score_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a jet-coloured ``score_map`` over ``image``: ``(H, W, 3)`` uint8 RGB out.

    The map is resized to the image, clipped to [0, 1]; NaNs count as 0 (an empty map shows the image tinted blue).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB; got {image.shape} {image.dtype}")
    if score_map.ndim != 2:
        raise ValueError(f"score_map must be (h, w); got shape {score_map.shape}")
    h, w = image.shape[:2]
    m = np.nan_to_num(np.asarray(score_map, dtype=np.float32), nan=0.0)
    m = cv2.resize(np.clip(m, 0.0, 1.0), (w, h), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap((m * 255).astype(np.uint8), cv2.COLORMAP_JET)  # BGR
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(heat, alpha, image, 1.0 - alpha, 0.0)


def draw_boxes(
    image: np.ndarray, boxes: np.ndarray, colour: tuple[int, int, int], thickness: int = 2
) -> np.ndarray:
    """Return a copy of ``image`` with ``(k, 4)`` x0y0x1y1 pixel boxes drawn (rounded to the nearest pixel)."""
    out = image.copy()
    for x0, y0, x1, y1 in np.rint(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)).astype(int):
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), colour, thickness)
    return out


def tile(
    image: np.ndarray,
    score_map: np.ndarray | None,
    gt_boxes: np.ndarray,
    pred_box: np.ndarray | None,
    size: int = 128,
) -> np.ndarray:
    """One gallery tile: the image resized to ``size`` x ``size``, the map overlaid, GT (green) and pred (red).

    Boxes are given in the original pixels of ``image`` and scaled with it; a ``None`` map shows the bare image.
    """
    h, w = image.shape[:2]
    shown = cv2.resize(
        image, (size, size), interpolation=cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
    )
    if score_map is not None:
        shown = overlay_map(shown, score_map)
    scale = np.array([size / w, size / h, size / w, size / h])
    shown = draw_boxes(shown, np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4) * scale, GT_COLOUR)
    if pred_box is not None:
        shown = draw_boxes(shown, np.asarray(pred_box, dtype=np.float64).reshape(-1, 4) * scale, PRED_COLOUR)
    return shown


def box_accuracy_figure(curves: Mapping[str, pd.DataFrame]) -> bytes:
    """Box accuracy (%) vs CAM threshold, one colour per method, one line style per IoU column."""
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot()
    for i, (method, df) in enumerate(curves.items()):
        colour = _METHOD_COLOURS[i % len(_METHOD_COLOURS)]
        columns = [c for c in df.columns if c != "threshold"]
        for j, column in enumerate(columns):
            ax.plot(
                df["threshold"],
                df[column],
                color=colour,
                linestyle=_IOU_STYLES[j % len(_IOU_STYLES)],
                label=f"{method} {column}",
            )
    ax.set_xlabel("CAM threshold")
    ax.set_ylabel("box accuracy (%)")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncols=2)
    ax.set_title("Box accuracy vs CAM threshold")
    return _png(fig)


def pr_curve_figure(curves: Mapping[str, pd.DataFrame]) -> bytes:
    """Pixel precision-recall curves (PxAP is the area under them), one colour per method."""
    fig = _figure(5.0, 4.2)
    ax = fig.add_subplot()
    for i, (method, df) in enumerate(curves.items()):
        ax.plot(df["recall"], df["precision"], color=_METHOD_COLOURS[i % len(_METHOD_COLOURS)], label=method)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Pixel precision-recall")
    return _png(fig)


_TRAINING_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("training loss", ("loss",)),
    ("validation loss", ("val_loss",)),
    ("train accuracy (A solid, B dashed)", ("acc_a", "acc_b")),
    ("validation top-1 / top-5 (dashed)", ("val_top1", "val_top5")),
    ("learning rate", ("lr",)),
    ("seconds per epoch", ("seconds",)),
)


def training_figure(histories: Mapping[str, pd.DataFrame]) -> bytes:
    """A 2x3 grid of training curves per epoch; both methods on the same axes of each panel.

    Columns missing from a history (e.g. ``acc_b`` is empty for CAM) are skipped, not plotted as zeros.
    """
    fig = _figure(12.0, 6.0)
    axes = fig.subplots(2, 3).ravel()
    for ax, (title, columns) in zip(axes, _TRAINING_PANELS, strict=True):
        for i, (method, df) in enumerate(histories.items()):
            for j, column in enumerate(columns):
                if column not in df.columns or df[column].isna().all():
                    continue
                ax.plot(
                    df["epoch"],
                    df[column],
                    color=_METHOD_COLOURS[i % len(_METHOD_COLOURS)],
                    linestyle=_IOU_STYLES[j % len(_IOU_STYLES)],
                    marker="o",
                    markersize=3,
                    label=f"{method} {column}",
                )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    return _png(fig)


def gallery_figure(
    rows: Sequence[Sequence[np.ndarray]], column_titles: Sequence[str], row_titles: Sequence[str], title: str
) -> bytes:
    """A grid of RGB tiles: ``rows[i][j]`` is row i, column j; titles above columns and left of rows."""
    n_rows, n_cols = len(rows), len(column_titles)
    if n_rows == 0:
        raise ValueError("gallery_figure needs at least one row")
    fig = _figure(1.7 * n_cols + 0.6, 1.8 * n_rows + 0.5)
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    for i, row in enumerate(rows):
        if len(row) != n_cols:
            raise ValueError(f"gallery row {i} has {len(row)} tiles, expected {n_cols}")
        for j, image in enumerate(row):
            ax = axes[i, j]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(column_titles[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(row_titles[i], fontsize=7)
    fig.suptitle(title, fontsize=11)
    return _png(fig)
