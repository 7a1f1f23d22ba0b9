"""The report stage: one self-contained HTML page comparing the methods (ACoL, CAM) from the pipeline's outputs.

Split by concern: `acol.stages.report_inputs` reads and checks the files, `acol.stages.report_analysis` computes
the boxes, IoUs, comparisons and the published numbers to show, `acol.stages.report_render` lays out the page and
the galleries. Here: `build_report`, which runs them in order, and the stage entry `run` (files, MLflow).

Output: ``index.html`` with every figure embedded as base64 PNG, the same PNGs next to it; the folder is built
under a temp name and renamed into place (`acol.io.replace_dir`), so a reader never sees half a report.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from acol.config import Params
from acol.io import replacing_dir, write_bytes_atomic
from acol.presets import match_presets
from acol.published import PresetMatch
from acol.stages import plots
from acol.stages.report_analysis import (
    PUBLISHED,
    PublishedNumber,
    _number,
    _read_map_info,
    _what_this_shows,
    best_ious,
    best_methods,
    box_region_means,
    gallery_indices,
)
from acol.stages.report_inputs import (
    MethodInputs,
    ReportError,
    ReportInputs,
    _check_inputs,
    _gt_lookup,
    _read_csv,
    _read_json,
)
from acol.stages.report_render import _gallery_pngs, _html_context, render_html
from acol.tracking import stage_runs as tracking
from acol.wsol.metric_direction import metric_direction

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


def _write_folder(out_dir: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` into a temp folder beside ``out_dir``, then swap it in (`acol.io.replacing_dir`)."""
    with replacing_dir(out_dir) as tmp:
        for name, data in files.items():
            write_bytes_atomic(tmp / name, data)


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
