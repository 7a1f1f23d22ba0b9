"""Stage extract: maps, top-5 and boxes of one trained method over a manifest, as Parquet parts, plus the
MLflow run that records them.

The extraction itself (Ray Data, or one process for debugging) is `acol.distributed.extract`; this module
decides what is extracted where and what MLflow keeps of it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from acol.config import Params
from acol.distributed import extract as engines  # looked up at call time: tests replace the engines
from acol.distributed.extract import ExtractionJob, ExtractSummary
from acol.models import METHODS
from acol.tracking import stage_runs as tracking

__all__ = ["ENGINES", "METHODS", "ExtractPaths", "run"]

log = logging.getLogger("extract")

Engine = Literal["ray", "plain"]
ENGINES: tuple[Engine, ...] = ("ray", "plain")  # plain: one process, no Ray (debugging)


@dataclass(frozen=True)
class ExtractPaths:
    """What the stage reads and where it writes; every node must see them at these paths."""

    manifest: Path
    model: Path
    model_card: Path
    out: Path  # maps/, summary.json
    fullsup_manifest: Path | None = None  # also extract it: threshold selection on train-fullsup
    fullsup_out: Path | None = None  # its maps/, summary.json
    root: str | None = None  # the dataset root; None: params data.root


def _train_run_id(card_path: Path) -> str:
    """The train run whose model made these maps (the evaluate stage registers that model)."""
    return str(json.loads(card_path.read_text()).get("mlflow_run_id", ""))


def run(params: Params, method: str, paths: ExtractPaths, engine: Engine = "ray") -> ExtractSummary:
    """The stage: the manifest's maps (and train-fullsup's when given), logged to MLflow; returns the
    manifest's summary. The tracking server is checked before Ray starts."""
    tracking.check_tracking_server()
    extract = engines.extract if engine == "ray" else engines.extract_plain
    root = paths.root or params.data.root
    job = ExtractionJob(params, method, paths.manifest, root, paths.model, paths.model_card, paths.out)
    summary = extract(job)  # amp and channels_last: params extract.amp / extract.channels_last
    if paths.fullsup_manifest is not None and paths.fullsup_out is not None:
        extract(replace(job, manifest=paths.fullsup_manifest, out_dir=paths.fullsup_out))
    _log_run(params, method, paths, engine, summary)
    return summary


def _log_run(
    params: Params, method: str, paths: ExtractPaths, engine: Engine, summary: ExtractSummary
) -> None:
    with tracking.stage_run("extract", params, method=method, data_paths=[paths.manifest]) as mlrun:
        import mlflow

        mlflow.log_metrics(
            {
                "rows": summary.rows,
                "errors": summary.errors,
                "images_per_s": summary.images_per_s,
                "bytes_per_image": summary.bytes_per_image,
            }
        )
        mlflow.set_tags({"engine": engine, "train_run_id": _train_run_id(paths.model_card)})
        mlflow.log_artifact(str(paths.out / "summary.json"))
        log.info("MLflow run %s", mlrun.info.run_id)
