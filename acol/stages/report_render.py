"""The report page: HTML from plain data, and the gallery figures.

``index.html`` is laid out by ``templates/report.html.j2`` (Jinja2, autoescaped: values read from the inputs are
escaped by the engine; StrictUndefined) from plain data prepared here (numbers formatted, the better value marked),
every figure embedded as base64 PNG (drawn by `acol.stages.plots`). Nothing here decides a number: that is
`acol.stages.report_analysis`.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from acol.published import PresetMatch, Published, for_preset, in_metric
from acol.stages import plots
from acol.stages.report_analysis import PUBLISHED, _MapInfo, _recipe_text, best_methods, gallery_indices
from acol.stages.report_inputs import _PREFERRED_ORDER, ReportInputs, _maps_for, _read_json
from acol.wsol.metric_direction import metric_direction

log = logging.getLogger(__name__)

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
