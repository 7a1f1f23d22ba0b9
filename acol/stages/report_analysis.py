"""The report's analysis: the numbers and sentences the page shows, computed from the inputs already read.

Boxes are redrawn from the top-1 maps at each method's best threshold (so the galleries show the boxes the
metrics scored) and scored per image with the protocol's IoU; the methods are compared metric by metric; B's map is
measured inside and outside the GT boxes. Published numbers come from the one table `acol.published.NUMBERS`,
labelled as published, each with its source and status. When the run's params match a preset
(``ReportInputs.presets``, from `acol.presets.match_presets`), the page shows that preset's numbers beside the
run's, per method, and says when the run is not the full recipe; otherwise it lists the presets' confirmed numbers
(`PUBLISHED`) for orientation only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from acol.published import NUMBERS, PresetMatch, Published
from acol.stages.report_inputs import ReportError, ReportInputs
from acol.wsol.boxes import iou
from acol.wsol.metric_direction import metric_direction

PublishedNumber = Published  # the report's name for an `acol.published` entry
# For orientation when no preset matches: every preset's confirmed figure (in this project's metric).
PUBLISHED: tuple[Published, ...] = tuple(p for p in NUMBERS if p.preset and p.value is not None)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def best_methods(key: str, values: Mapping[str, Any]) -> set[str]:
    """Methods holding the better value of ``key``; empty when there is no direction, <2 numbers, or a tie."""
    direction = metric_direction(key)
    numbers = {m: v for m, v in ((m, _number(v)) for m, v in values.items()) if v is not None}
    if direction is None or len(numbers) < 2 or len(set(numbers.values())) == 1:
        return set()
    target = min(numbers.values()) if direction == "lower" else max(numbers.values())
    return {m for m, v in numbers.items() if v == target}


def box_region_means(
    maps: np.ndarray, boxes: Sequence[np.ndarray], widths: np.ndarray, heights: np.ndarray
) -> tuple[float, float]:
    """Mean map value inside and outside the GT boxes, pooled over all cells of all images.

    maps: (N, h, w) float in [0, 1]; boxes[i]: (k, 4) x0y0x1y1 in original pixels of a widths[i] x heights[i]
    image (inclusive pixel coordinates). A map cell is inside when its centre, mapped to original pixels
    (``(c + 0.5) * W / w - 0.5``), lies in a box. Returns (nan, nan) parts where there are no such cells.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3 or len(maps) != len(boxes):
        raise ValueError(f"maps must be (N, h, w) with one box array per map; got {maps.shape}, {len(boxes)}")
    n, h, w = maps.shape
    inside = np.zeros((n, h, w), dtype=bool)
    for i, b in enumerate(boxes):
        b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
        xs = (np.arange(w) + 0.5) * widths[i] / w - 0.5  # cell centres in original pixels
        ys = (np.arange(h) + 0.5) * heights[i] / h - 0.5
        in_x = (xs[None, :] >= b[:, 0:1]) & (xs[None, :] <= b[:, 2:3])  # (k, w)
        in_y = (ys[None, :] >= b[:, 1:2]) & (ys[None, :] <= b[:, 3:4])  # (k, h)
        inside[i] = (in_y[:, :, None] & in_x[:, None, :]).any(axis=0)
    mean_in = float(maps[inside].mean()) if inside.any() else math.nan
    mean_out = float(maps[~inside].mean()) if (~inside).any() else math.nan
    return mean_in, mean_out


def best_ious(pred_boxes: Sequence[np.ndarray | None], gt_boxes: Sequence[np.ndarray]) -> np.ndarray:
    """(N,) float64: best IoU of each predicted box with the image's GT boxes; NaN without a prediction or GT.

    Boxes are rounded to whole pixels and compared with the protocol's inclusive-pixel IoU (`acol.wsol.boxes.iou`).
    """
    out = np.full(len(gt_boxes), np.nan)
    for i, (pred, gt) in enumerate(zip(pred_boxes, gt_boxes, strict=True)):
        gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
        if pred is None or len(gt) == 0:
            continue
        p = np.clip(np.rint(np.asarray(pred, dtype=np.float64).reshape(1, 4)), 0, None).astype(np.int64)
        out[i] = float(iou(p, np.clip(np.rint(gt), 0, None).astype(np.int64)).max())
    return out


def gallery_indices(ious: np.ndarray, k: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Indices of the ``k`` best, ``k`` worst and ``k`` random images by IoU; NaN IoUs are never chosen.

    Ties keep the input order (stable sort), so the same inputs give the same galleries.
    """
    ious = np.asarray(ious, dtype=np.float64)
    valid = np.flatnonzero(np.isfinite(ious))
    k = min(k, len(valid))
    order = valid[np.argsort(ious[valid], kind="stable")]
    best = valid[np.argsort(-ious[valid], kind="stable")][:k]
    rng = np.random.default_rng(seed)
    return {"best": best, "worst": order[:k], "random": np.sort(rng.choice(valid, size=k, replace=False))}


@dataclass
class _MapInfo:
    """What the report uses from one method's map store, aligned with the manifest rows it shares."""

    table: pa.Table  # image_id, pred_box, error (all rows)
    ious: np.ndarray  # (N,) per row of `table`, NaN for errors / no GT
    error_counts: dict[str, int] = field(default_factory=dict)


def _error_counts(errors: list[str | None]) -> dict[str, int]:
    counts: dict[str, int] = {"rows": len(errors), "errors": sum(e is not None for e in errors)}
    for e in errors:
        if e is not None:
            kind = "error: " + e.split(":", 1)[0].strip()[:60]
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def _read_map_info(
    folder: Path, gt: Mapping[str, tuple[np.ndarray, int, int]], threshold: float | None = None
) -> _MapInfo:
    """Predicted boxes and their IoUs for one method.

    With ``threshold`` (the method's best threshold from the evaluate stage) the boxes are recomputed from the
    top-1 class maps at that threshold, so the galleries show the boxes the metrics scored; without it, the
    map store's ``pred_box`` (drawn at ``extract.box_threshold``) is used.
    """
    from acol.inference.mapstore import MapStoreError, read_maps

    columns = ["pred_box", "error"] if threshold is None else ["map_top1", "map_height", "map_width", "error"]
    try:
        table = read_maps(folder, columns=columns)
    except MapStoreError as e:
        raise ReportError(str(e)) from None
    ids = table.column("image_id").to_pylist()
    if threshold is None:
        preds = table.column("pred_box").to_pylist()
    else:
        preds = _boxes_at(table, ids, gt, threshold)
        table = table.append_column("pred_box", pa.array([None if b is None else b.tolist() for b in preds]))
    gts = [gt[i][0] if i in gt else np.zeros((0, 4)) for i in ids]
    return _MapInfo(table, best_ious(preds, gts), _error_counts(table.column("error").to_pylist()))


_BOX_CHUNK = 1024  # maps boxed at once: (1024, h, w) float32, a few MB


def _boxes_at(
    table: pa.Table, ids: Sequence[str], gt: Mapping[str, tuple[np.ndarray, int, int]], threshold: float
) -> list[np.ndarray | None]:
    """The top-1 map's box of each row at `threshold` (None without a map or a ground truth), chunk by chunk
    in a thread pool: the maps stay float32 arrays (as Python floats they took ~1.25 GB per method at 50,000
    maps), and the boxes are the same as one image at a time (each map is boxed on its own)."""
    from concurrent.futures import ThreadPoolExecutor

    from acol.data.cpus import usable_cpus
    from acol.inference.mapstore import maps_array
    from acol.wsol.boxes import boxes_from_maps

    has_map = ~table.column("map_top1").is_null().to_numpy(zero_copy_only=False)
    rows = [i for i in np.flatnonzero(has_map) if ids[i] in gt]
    preds: list[np.ndarray | None] = [None] * len(ids)

    def box_chunk(start: int) -> tuple[list[int], np.ndarray]:
        chunk = rows[start : start + _BOX_CHUNK]
        sizes = np.array([gt[ids[i]][1:] for i in chunk], dtype=np.int64).reshape(-1, 2)
        maps = maps_array(table.take(pa.array(chunk, pa.int64())), "map_top1")
        return chunk, boxes_from_maps(maps, sizes[:, 0], sizes[:, 1], threshold)

    with ThreadPoolExecutor(usable_cpus()) as pool:
        for chunk, boxes in pool.map(box_chunk, range(0, len(rows), _BOX_CHUNK)):
            for i, box in zip(chunk, boxes, strict=True):
                preds[i] = box
    return preds


_DISPLAY = {"acol": "ACoL", "cam": "CAM", "has": "HaS", "cutmix": "CutMix", "adl": "ADL", "spg": "SPG"}


def display_name(method: str) -> str:
    """A method as papers print it (``acol`` -> ``ACoL``); an unknown one as it is named."""
    return _DISPLAY.get(method, method)


def _diff_sentences(key: str, label: str, metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The highlighted method (ACoL where the run has it, else the first shown) against each other method."""
    if not metrics:
        return []
    ours = "acol" if "acol" in metrics else next(iter(metrics))
    a = _number(metrics[ours].get(key))
    sentences = []
    for other in metrics:
        c = _number(metrics[other].get(key))
        if other == ours or a is None or c is None:
            continue
        delta = a - c
        better = (delta < 0) if metric_direction(key) == "lower" else (delta > 0)
        verdict = "equal to" if delta == 0 else ("better than" if better else "worse than")
        x, y = display_name(ours), display_name(other)
        sentences.append(
            f"{label}: {x} {a:.2f} vs {y} {c:.2f} ({delta:+.2f} points), {x} is {verdict} {y} on this run."
        )
    return sentences


def _coverage_sentences(
    folder: Path, gt: Mapping[str, tuple[np.ndarray, int, int]], erase: float | None, n_max: int, seed: int
) -> list[str]:
    """B vs A inside and outside the GT boxes, on up to ``n_max`` images of one ACoL map store."""
    from acol.inference.mapstore import maps_array, ok_rows, read_maps

    table = ok_rows(read_maps(folder, columns=["map_a_gt", "map_b_gt", "map_height", "map_width", "error"]))
    table = table.filter(pc.is_in(table.column("image_id"), value_set=pa.array(list(gt), pa.string())))
    if table.num_rows == 0 or table.column("map_b_gt").null_count == table.num_rows:
        return []
    if table.num_rows > n_max:
        pick = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=n_max, replace=False))
        table = table.take(pa.array(pick))
    ids = table.column("image_id").to_pylist()
    boxes = [gt[i][0] for i in ids]
    ws = np.array([gt[i][1] for i in ids])
    hs = np.array([gt[i][2] for i in ids])
    map_a, map_b = maps_array(table, "map_a_gt"), maps_array(table, "map_b_gt")
    a_in, a_out = box_region_means(map_a, boxes, ws, hs)
    b_in, b_out = box_region_means(map_b, boxes, ws, hs)
    lines = [
        f"Over {len(ids)} ACoL images, branch A's map averages {a_in:.3f} inside the GT boxes and {a_out:.3f} "
        f"outside; branch B's averages {b_in:.3f} inside and {b_out:.3f} outside."
    ]
    if erase is not None:
        # mean of B over the cells A leaves (A < erase threshold): sum(B * kept) / sum(kept), inside and outside
        kept = (map_a < erase).astype(np.float64)
        b_kept_in, b_kept_out = box_region_means(map_b * kept, boxes, ws, hs)
        kept_in, kept_out = box_region_means(kept, boxes, ws, hs)
        if kept_in > 0 and kept_out > 0:
            inside, outside = b_kept_in / kept_in, b_kept_out / kept_out
            lines.append(
                f"Where A is below the erase threshold ({erase:g}), B averages {inside:.3f} inside the GT boxes "
                f"and {outside:.3f} outside: B {'does' if inside > outside else 'does not'} respond more to the "
                "object parts that A leaves out than to the background."
            )
    return lines


def _what_this_shows(
    inputs: ReportInputs,
    metrics: Mapping[str, Mapping[str, Any]],
    gt: Mapping[str, tuple[np.ndarray, int, int]],
) -> list[str]:
    """Factual sentences: ACoL against each other method, and where B's map sits relative to A's and the boxes."""
    compared = (
        ("maxboxacc_v2", "MaxBoxAccV2"),
        ("gt_known_loc", "GT-known localization"),
        ("top1_loc_error", "Top-1 localization error"),
        ("top1_cls_error", "Top-1 classification error"),
        ("pxap", "PxAP"),
    )
    shows = [s for key, label in compared for s in _diff_sentences(key, label, metrics)]
    acol_maps = inputs.methods["acol"].maps if "acol" in inputs.methods else None
    if acol_maps is not None and gt:
        erase = _number(metrics["acol"].get("erase_threshold"))
        shows += _coverage_sentences(acol_maps, gt, erase, inputs.max_stat_images, inputs.seed)
    shows = shows or ["Only one method or too few numbers to compare; see the tables below."]
    return shows + _preset_sentences(inputs.presets)


def _recipe_text(match: PresetMatch) -> str:
    """Whether the run is the preset's full recipe (amounts such as epochs count: a rehearsal is not)."""
    return "full recipe" if not match.differs else "not the full recipe: " + "; ".join(match.differs)


def _preset_sentences(matches: Sequence[PresetMatch]) -> list[str]:
    return [
        f"{m.method}: this run's params match preset {m.preset} ({_recipe_text(m)}); its published numbers "
        "stand beside this run's in the published table."
        for m in matches
    ]
