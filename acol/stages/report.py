"""The HTML report: one self-contained page comparing the methods (ACoL, CAM) from the pipeline's outputs.

Inputs (paths in `ReportInputs`, one `MethodInputs` per method): the evaluate stage's ``evaluation.json``,
``box_acc.csv`` (``threshold`` plus one column per curve, values in percent) and optional ``pr_curve.csv``
(``threshold, precision, recall``); the train stage's ``history.csv``; the extract stage's map store folder
(`acol.inference.mapstore`); the val manifest, dataset root and prepare ``summary.json``. A path set to None leaves its
section out; a path that is set but missing stops the report with a `ReportError` naming it, before any work.

Output: ``index.html`` laid out by ``templates/report.html.j2`` (Jinja2, autoescaped: values read from the inputs
are escaped by the engine; StrictUndefined) from plain data prepared here, every figure embedded as base64 PNG,
the same PNGs next to it; the folder is built under a temp name and renamed into place
(`acol.io.replace_dir`), so a reader never sees half a report.

Published numbers come from the one table `acol.published.NUMBERS`, labelled as published, each with its
source and status. When the run's params match a preset (``ReportInputs.presets``, from
`acol.presets.match_presets`), the table shows that preset's numbers beside the run's, per method, and says when the run is not the full
recipe; otherwise it lists the presets' confirmed numbers (`PUBLISHED`) for orientation only.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from acol.config import Params
from acol.errors import UserError
from acol.io import read_json_object, readable_path, replacing_dir, write_bytes_atomic
from acol.presets import match_presets
from acol.published import NUMBERS, PresetMatch, Published, for_preset, in_metric
from acol.stages import plots
from acol.tracking import stage_runs as tracking
from acol.wsol.boxes import iou
from acol.wsol.metrics import metric_direction

__all__ = [
    "ReportError",
    "MethodInputs",
    "ReportInputs",
    "PublishedNumber",
    "PUBLISHED",
    "PresetMatch",
    "metric_direction",
    "best_methods",
    "box_region_means",
    "gallery_indices",
    "best_ious",
    "build_report",
    "render_html",
    "ReportPaths",
    "run",
]

log = logging.getLogger(__name__)

_METRIC_ORDER = (
    "num_images",
    "top1_cls_error",
    "top5_cls_error",
    "top1_loc_error",
    "top5_loc_error",
    "gt_known_loc",
    "maxboxacc",
    "maxboxacc_v2",
    "maxboxacc_v2_iou30",
    "maxboxacc_v2_iou50",
    "maxboxacc_v2_iou70",
    "pxap",
    "best_threshold",
    "erase_threshold",
    "backbone",
)
_PREFERRED_ORDER = ("acol", "cam")  # ranking and column order: ACoL first, then CAM, then the rest


class ReportError(UserError, ValueError):
    """A report input that is missing or unusable; the message names the file (and key or column)."""


@dataclass(frozen=True)
class MethodInputs:
    """One method's files; None leaves that part out (``pr_curve`` is optional in the pipeline too)."""

    metrics: Path
    box_acc: Path | None = None
    pr_curve: Path | None = None
    history: Path | None = None
    maps: Path | None = None  # map store folder with part-*.parquet


@dataclass(frozen=True)
class ReportInputs:
    """Everything `build_report` reads. ``methods`` maps a method name to its files, in display order."""

    methods: Mapping[str, MethodInputs]
    manifest: Path | None = None  # val manifest: GT boxes and image sizes for the galleries and coverage
    dataset_root: Path | None = None  # where the manifest's image ids resolve
    summary: Path | None = None  # prepare stage summary.json
    gallery_size: int = 4  # images per gallery (best, worst, random)
    seed: int = 0  # random gallery
    max_stat_images: int = 500  # images sampled for the inside/outside map statistics (memory bound)
    presets: tuple[PresetMatch, ...] = ()  # methods whose params match a preset (acol.presets.match_presets)

    @classmethod
    def from_dirs(
        cls,
        evaluate_dir: str | Path,
        train_dir: str | Path,
        extract_dir: str | Path,
        manifest: str | Path | None,
        summary: str | Path | None,
        dataset_root: str | Path | None,
        methods: Sequence[str] | None = None,
        **options: Any,
    ) -> ReportInputs:
        """The pipeline layout: `methods` (params.yaml's list; None: every subfolder of ``evaluate_dir``);
        only pr_curve.csv may be absent."""
        evaluate_dir, train_dir, extract_dir = Path(evaluate_dir), Path(train_dir), Path(extract_dir)
        if not evaluate_dir.is_dir():
            raise ReportError(f"{evaluate_dir}: evaluate folder not found")
        names = (
            list(methods)
            if methods is not None
            else sorted(p.name for p in evaluate_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        )
        if not names:
            raise ReportError(f"{evaluate_dir}: no method subfolders (expected e.g. acol/, cam/)")
        names.sort(key=lambda n: (_PREFERRED_ORDER.index(n) if n in _PREFERRED_ORDER else 99, n))
        methods = {}
        for name in names:
            pr = evaluate_dir / name / "pr_curve.csv"
            methods[name] = MethodInputs(
                metrics=evaluate_dir / name / "evaluation.json",
                box_acc=evaluate_dir / name / "box_acc.csv",
                pr_curve=pr if pr.exists() else None,
                history=train_dir / name / "history.csv",
                maps=readable_path(extract_dir / name / "maps"),
            )
        return cls(
            methods=methods,
            manifest=Path(manifest) if manifest else None,
            summary=Path(summary) if summary else None,
            dataset_root=Path(dataset_root) if dataset_root else None,
            **options,
        )


PublishedNumber = Published  # the report's name for an `acol.published` entry
# For orientation when no preset matches: every preset's confirmed figure (in this project's metric).
PUBLISHED: tuple[Published, ...] = tuple(p for p in NUMBERS if p.preset and p.value is not None)


# --------------------------------------------------------------------------------------------------- numbers


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


# --------------------------------------------------------------------------------------------------- reading


def _require(path: Path | None) -> None:
    if path is not None and not path.exists():
        raise ReportError(f"{path}: required report input not found")


def _check_inputs(inputs: ReportInputs) -> None:
    if not inputs.methods:
        raise ReportError("ReportInputs.methods is empty: nothing to report")
    for m in inputs.methods.values():
        for path in (m.metrics, m.box_acc, m.pr_curve, m.history, m.maps):
            _require(path)
    for path in (inputs.manifest, inputs.summary, inputs.dataset_root):
        _require(path)


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, ReportError)


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: cannot read CSV: {e}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ReportError(f"{path}: missing column(s) {missing}; has {list(df.columns)}")
    return df


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


def _gt_lookup(manifest: pa.Table | None) -> dict[str, tuple[np.ndarray, int, int]]:
    if manifest is None:
        return {}
    ids = manifest.column("image_id").to_pylist()
    boxes = manifest.column("boxes").to_pylist()
    ws = manifest.column("width").to_numpy()
    hs = manifest.column("height").to_numpy()
    return {
        i: (np.asarray(b, dtype=np.float64).reshape(-1, 4), int(w), int(h))
        for i, b, w, h in zip(ids, boxes, ws, hs, strict=True)
    }


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


def _maps_for(folder: Path, image_ids: Sequence[str], columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Maps of the given images: {image_id: {column: (h, w) float32 or None}}, only rows without error."""
    from acol.inference.mapstore import read_maps

    table = read_maps(folder, columns=[*columns, "map_height", "map_width", "error"])
    table = table.filter(pc.is_in(table.column("image_id"), value_set=pa.array(list(image_ids), pa.string())))
    out: dict[str, dict[str, Any]] = {}
    for row in table.to_pylist():
        if row["error"] is not None:
            continue
        shape = (row["map_height"], row["map_width"])
        out[row["image_id"]] = {
            c: None if row[c] is None else np.asarray(row[c], dtype=np.float32).reshape(shape)
            for c in columns
        }
    return out


# --------------------------------------------------------------------------------------------------- HTML

TEMPLATE = "report.html.j2"  # in acol/stages/templates, shipped as package data


@functools.cache
def _environment() -> jinja2.Environment:
    """Autoescaping (values from files are escaped by the engine) and StrictUndefined (a typo fails loudly)."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("acol.stages", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(context: Mapping[str, Any]) -> str:
    """The report page from plain data (`_html_context`); a missing variable raises `jinja2.UndefinedError`."""
    return _environment().get_template(TEMPLATE).render(context)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "—" if not math.isfinite(value) else f"{value:.2f}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _metric_rows(metrics: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per metric key (known keys in `_METRIC_ORDER` first): formatted cells, the better one marked."""
    keys = [k for k in _METRIC_ORDER if any(k in m for m in metrics.values())]
    keys += sorted({k for m in metrics.values() for k in m} - set(keys) - {"method"})
    rows = []
    for key in keys:
        values = {m: metrics[m].get(key) for m in metrics}
        best = best_methods(key, values)
        arrow = {"lower": " ↓", "higher": " ↑"}.get(metric_direction(key) or "", "")
        cells = [{"text": _fmt(v), "best": m in best} for m, v in values.items()]
        rows.append({"key": key, "arrow": arrow, "cells": cells})
    return rows


def _published_rows(
    matches: Sequence[PresetMatch], metrics: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The matched presets' figures beside the run's (``matched``); without a match, `PUBLISHED` alone."""
    if not matches:
        return [_published_row(p, None, "", None) for p in PUBLISHED]
    return [
        _published_row(p, m.method, _recipe_text(m), metrics.get(m.method, {}).get(p.metric))
        for m in matches
        for p in for_preset(m.preset)
    ]


def _published_row(p: Published, method: str | None, recipe: str, run: Any) -> dict[str, Any]:
    return {
        "matched": method is not None,
        "preset": p.preset or "",
        "recipe": recipe,
        "method": method or p.method,
        "row": p.row,
        "metric": p.metric,
        "run": _fmt(run) if method is not None else "—",
        "value": in_metric(p),
        "printed": p.as_printed(),
        "paper": p.paper,
        "source": p.source,
        "where": p.where,
        "status": p.status,
        "note": p.note,
    }


def _recipe_text(match: PresetMatch) -> str:
    """Whether the run is the preset's full recipe (amounts such as epochs count: a rehearsal is not)."""
    return "full recipe" if not match.differs else "not the full recipe: " + "; ".join(match.differs)


def _preset_sentences(matches: Sequence[PresetMatch]) -> list[str]:
    return [
        f"{m.method}: this run's params match preset {m.preset} ({_recipe_text(m)}); its published numbers "
        "stand beside this run's in the published table."
        for m in matches
    ]


def _flatten(data: Any, prefix: str = "", limit: int = 200) -> list[tuple[str, Any]]:
    """Nested JSON as dotted (key, value) pairs; long lists become their length."""
    out: list[tuple[str, Any]] = []
    if isinstance(data, dict) and not data and prefix:
        out.append((prefix, "none"))
    elif isinstance(data, dict):
        for k, v in data.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k), limit)
    elif isinstance(data, list) and (len(data) > 10 or any(isinstance(x, dict | list) for x in data)):
        out.append((prefix, f"list of {len(data)} items"))
    else:
        out.append((prefix, ", ".join(map(str, data)) if isinstance(data, list) else data))
    return out[:limit]


def _png(png: bytes, name: str) -> dict[str, str]:
    return {"name": name, "png": base64.b64encode(png).decode()}


def _extraction(infos: Mapping[str, _MapInfo]) -> dict[str, Any] | None:
    """Row and error counts per method's map store, one row per kind of error."""
    if not infos:
        return None
    kinds = [
        "rows",
        "errors",
        *sorted({k for i in infos.values() for k in i.error_counts} - {"rows", "errors"}),
    ]
    rows = [{"kind": k, "counts": [str(i.error_counts.get(k, 0)) for i in infos.values()]} for k in kinds]
    return {"methods": list(infos), "rows": rows}


def _diff_sentence(key: str, label: str, metrics: Mapping[str, Mapping[str, Any]]) -> str | None:
    a, c = _number(metrics.get("acol", {}).get(key)), _number(metrics.get("cam", {}).get(key))
    if a is None or c is None:
        return None
    delta = a - c
    direction = metric_direction(key)
    better = (delta < 0) if direction == "lower" else (delta > 0)
    verdict = "equal to" if delta == 0 else ("better than" if better else "worse than")
    return f"{label}: ACoL {a:.2f} vs CAM {c:.2f} ({delta:+.2f} points), ACoL is {verdict} CAM on this run."


# --------------------------------------------------------------------------------------------------- build


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


def _gallery_pngs(
    infos: Mapping[str, _MapInfo],
    folders: Mapping[str, Path],
    root: Path,
    gt: Mapping[str, tuple[np.ndarray, int, int]],
    size: int,
    seed: int,
) -> dict[str, bytes]:
    """Best / worst / random galleries ranked by ACoL's IoU (else the first method's), all methods side by side."""
    from acol.data.images import ImageDecodeError, read_image
    from acol.data.paths import resolve_inside

    ranker = next((m for m in _PREFERRED_ORDER if m in infos), next(iter(infos)))
    info = infos[ranker]
    ids_all = info.table.column("image_id").to_pylist()
    picks = gallery_indices(info.ious, size, seed)
    chosen = sorted({ids_all[i] for idx in picks.values() for i in idx})
    maps = {m: _maps_for(folders[m], chosen, ["map_gt", "map_a_gt", "map_b_gt"]) for m in infos}
    pred = {
        m: dict(
            zip(i.table.column("image_id").to_pylist(), i.table.column("pred_box").to_pylist(), strict=True)
        )
        for m, i in infos.items()
    }
    iou_of = {
        m: dict(zip(i.table.column("image_id").to_pylist(), i.ious, strict=True)) for m, i in infos.items()
    }
    has_b = {m: any(v.get("map_b_gt") is not None for v in maps[m].values()) for m in infos}
    titles = ["image (GT green)"]
    for m in infos:
        titles += [f"{m} fused", f"{m} A", f"{m} B"] if has_b[m] else [f"{m} map"]
    out = {}
    for kind, idx in picks.items():
        rows, labels = [], []
        for image_id in (ids_all[i] for i in idx):
            try:
                image = read_image(resolve_inside(root, image_id))
            except ImageDecodeError as e:
                log.warning("gallery: skipping %s: %s", image_id, e)
                continue
            row_maps = {m: maps[m].get(image_id, {}) for m in infos}
            row_preds = {m: pred[m].get(image_id) for m in infos}
            rows.append(_gallery_row(image, gt[image_id][0], row_maps, row_preds, has_b))
            ious = ", ".join(f"{m} {iou_of[m].get(image_id, math.nan):.2f}" for m in infos)
            labels.append(f"{Path(image_id).name[:28]}\nIoU {ious}")
        if rows:
            out[f"gallery_{kind}.png"] = plots.gallery_figure(
                rows,
                titles,
                labels,
                f"{kind} {len(rows)} by {ranker}'s IoU (pred box red: top-1 map at the method's best threshold; "
                "maps: GT class)",
            )
    return out


def _gallery_row(
    image: np.ndarray,
    boxes: np.ndarray,
    maps: Mapping[str, Mapping[str, Any]],
    pred: Mapping[str, Any],
    has_b: Mapping[str, bool],
) -> list[np.ndarray]:
    """One image's tiles: the image with its GT boxes, then each method's maps (fused, A, B) with its box."""
    row = [plots.tile(image, None, boxes, None)]
    for m, mm in maps.items():
        cols = ["map_gt", "map_a_gt", "map_b_gt"] if has_b[m] else ["map_gt"]
        row += [plots.tile(image, mm.get(c), boxes, pred[m]) for c in cols]
    return row


def build_report(inputs: ReportInputs, out_dir: str | Path) -> Path:
    """Write ``out_dir/index.html`` and its PNGs (atomically, as one folder); return the HTML path."""
    from acol.data.manifest import read_manifest

    _check_inputs(inputs)
    out_dir = Path(out_dir)
    metrics = {m: _read_json(i.metrics) for m, i in inputs.methods.items()}
    box_acc = {m: _read_csv(i.box_acc, ["threshold"]) for m, i in inputs.methods.items() if i.box_acc}
    pr = {
        m: _read_csv(i.pr_curve, ["threshold", "precision", "recall"])
        for m, i in inputs.methods.items()
        if i.pr_curve
    }
    history = {m: _read_csv(i.history, ["epoch"]) for m, i in inputs.methods.items() if i.history}
    manifest = read_manifest(inputs.manifest) if inputs.manifest else None
    gt = _gt_lookup(manifest)
    folders = {m: i.maps for m, i in inputs.methods.items() if i.maps is not None}
    infos = {
        m: _read_map_info(folder, gt, _number(metrics[m].get("best_threshold")))
        for m, folder in folders.items()
    }

    pngs: dict[str, bytes] = {}
    if box_acc:
        pngs["box_accuracy.png"] = plots.box_accuracy_figure(box_acc)
    if pr:
        pngs["pr_curve.png"] = plots.pr_curve_figure(pr)
    if history:
        pngs["training.png"] = plots.training_figure(history)
    if infos and gt and inputs.dataset_root is not None:
        log.info("drawing galleries")
        pngs.update(_gallery_pngs(infos, folders, inputs.dataset_root, gt, inputs.gallery_size, inputs.seed))

    shows = _what_this_shows(inputs, metrics, gt)
    page = render_html(_html_context(inputs, metrics, pngs, shows, infos))
    _write_folder(out_dir, {**pngs, "index.html": page.encode()})
    log.info("report written to %s (%d figures)", out_dir / "index.html", len(pngs))
    return out_dir / "index.html"


def _what_this_shows(
    inputs: ReportInputs,
    metrics: Mapping[str, Mapping[str, Any]],
    gt: Mapping[str, tuple[np.ndarray, int, int]],
) -> list[str]:
    """Factual sentences: ACoL vs CAM differences, and how B's map sits relative to A's and the GT boxes."""
    shows = [
        s
        for s in (
            _diff_sentence("maxboxacc_v2", "MaxBoxAccV2", metrics),
            _diff_sentence("gt_known_loc", "GT-known localization", metrics),
            _diff_sentence("top1_loc_error", "Top-1 localization error", metrics),
            _diff_sentence("top1_cls_error", "Top-1 classification error", metrics),
            _diff_sentence("pxap", "PxAP", metrics),
        )
        if s
    ]
    acol_maps = inputs.methods["acol"].maps if "acol" in inputs.methods else None
    if acol_maps is not None and gt:
        erase = _number(metrics["acol"].get("erase_threshold"))
        shows += _coverage_sentences(acol_maps, gt, erase, inputs.max_stat_images, inputs.seed)
    shows = shows or ["Only one method or too few numbers to compare; see the tables below."]
    return shows + _preset_sentences(inputs.presets)


_CAPTIONS = {
    "box_accuracy.png": "Box accuracy per CAM threshold: iouNN columns count an image as correct when any "
    "contour's box (multi-contour, MaxBoxAccV2) reaches NN% IoU; single_iou50 uses the largest contour only.",
    "pr_curve.png": "Pixel precision-recall over the CAM thresholds; PxAP is the area under the curve.",
    "training.png": "Training history per epoch (train stage history.csv).",
}


def _html_context(
    inputs: ReportInputs,
    metrics: Mapping[str, Mapping[str, Any]],
    pngs: Mapping[str, bytes],
    shows: Sequence[str],
    infos: Mapping[str, _MapInfo],
) -> dict[str, Any]:
    """Everything the template shows, as plain strings and lists (numbers formatted, PNGs as base64)."""
    summary = None
    if inputs.summary:
        summary = [(k, _fmt(v)) for k, v in _flatten(_read_json(inputs.summary))]
    return {
        "methods": list(inputs.methods),
        "shows": list(shows),
        "metric_rows": _metric_rows(metrics),
        "published": _published_rows(inputs.presets, metrics),
        "curves": [
            {**_png(pngs[name], name), "caption": caption}
            for name, caption in _CAPTIONS.items()
            if name in pngs
        ],
        "has_pr_curve": "pr_curve.png" in pngs,
        "galleries": [_png(png, name) for name, png in pngs.items() if name.startswith("gallery_")],
        "summary": summary,
        "extraction": _extraction(infos),
    }


def _write_folder(out_dir: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` into a temp folder beside ``out_dir``, then swap it in (`acol.io.replacing_dir`)."""
    with replacing_dir(out_dir) as tmp:
        for name, data in files.items():
            write_bytes_atomic(tmp / name, data)


# ------------------------------------------------------------------------------------------------------ stage


@dataclass(frozen=True)
class ReportPaths:
    """The report stage's inputs and output folder, as dvc.yaml passes them."""

    evaluate_dir: Path  # one subfolder per method
    train_dir: Path  # <method>/history.csv
    extract_dir: Path  # <method>/maps/part-*.parquet
    manifest: Path  # val manifest (GT boxes)
    summary: Path  # prepare summary.json
    out: Path  # index.html and the PNGs


def run(params: Params, paths: ReportPaths) -> Path:
    """The stage: the page for params' methods, beside a matching preset's published numbers
    (`acol.presets.match_presets`), logged to MLflow as artifacts; returns ``index.html``. The tracking server
    is checked first: fail before the work, not after it."""
    stage_log = logging.getLogger("report")
    tracking.check_tracking_server()
    inputs = ReportInputs.from_dirs(
        paths.evaluate_dir,
        paths.train_dir,
        paths.extract_dir,
        manifest=paths.manifest,
        summary=paths.summary,
        dataset_root=params.data.root,
        methods=params.methods,
        presets=match_presets(params),
    )
    stage_log.info("building the report for %s", ", ".join(inputs.methods))
    index = build_report(inputs, paths.out)
    with tracking.stage_run("report", params, data_paths=[paths.manifest]) as mlrun:
        import mlflow

        mlflow.log_artifacts(str(paths.out), artifact_path="report")
        stage_log.info("report %s logged to MLflow run %s", index, mlrun.info.run_id)
    return index
