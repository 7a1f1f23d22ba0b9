"""Reading the report's inputs: which files each method has, that they exist, and their parsed contents.

Inputs (paths in `ReportInputs`, one `MethodInputs` per method): the evaluate stage's ``evaluation.json``,
``box_acc.csv`` (``threshold`` plus one column per curve, values in percent) and optional ``pr_curve.csv``
(``threshold, precision, recall``); the train stage's ``history.csv``; the extract stage's map store folder
(`acol.inference.mapstore`); the val manifest, dataset root and prepare ``summary.json``. A path set to None leaves its
section out; a path that is set but missing stops the report with a `ReportError` naming it, before any work.

Kept apart from the analysis (`acol.stages.report_analysis`) and the page (`acol.stages.report_render`) so every
file-format check, and every `ReportError` for a bad input, lives in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from acol.errors import UserError
from acol.io import read_json_object, readable_path
from acol.published import PresetMatch

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
