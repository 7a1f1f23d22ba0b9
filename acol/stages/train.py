"""Stage train@<method>: Ray Train on the prepared manifests; ``model.pt``, ``model_card.json`` and
``history.csv`` swapped in as one set, with the MLflow run that records them.

The fit loop (workers, checkpoints, restarts, per-epoch metrics) is `acol.distributed.train`; this module
owns what the stage writes and tags: the model card and the run's artifacts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acol.config import Params
from acol.distributed import train as trainer  # looked up at call time: tests replace `fit`
from acol.distributed.train import TrainOutcome
from acol.io import replacing_dir, write_json_atomic
from acol.models import METHODS, ModelSpec
from acol.tracking import stage_runs as tracking

__all__ = ["METHODS", "TrainPaths", "model_card", "run"]

log = logging.getLogger("train")
KEEP = (".gitignore",)  # DVC's file in the output folder: the new set inherits it


@dataclass(frozen=True)
class TrainPaths:
    """What the stage reads and where it writes (on a cluster: paths every node sees)."""

    train_manifest: Path
    val_manifest: Path
    out: Path  # model.pt, model_card.json, history.csv
    params_file: Path  # the params file: the pipeline run's id hashes it (`stage_runs.stage_run`)
    root: str | None = None  # the dataset root; None: params data.root


def model_card(
    params: Params, method: str, outcome: TrainOutcome, data_version: str, run_id: str
) -> dict[str, Any]:
    """``model_card.json``: what extract, evaluate and serving need to rebuild and trust the model.

    ``spec`` is the network (`ModelSpec.to_dict`); ``backbone``, ``num_classes`` and ``model`` stay for
    readers of older cards and for people.
    """
    spec = ModelSpec.from_params(params.model.model_dump(), method, len(outcome.classes))
    return {
        "method": method,
        "backbone": params.model.backbone,
        "num_classes": len(outcome.classes),
        "classes": outcome.classes,
        "model": params.model.model_dump(mode="json"),
        "spec": spec.to_dict(),
        "train": params.train.model_dump(mode="json"),
        "data_version": data_version,
        "metrics": outcome.metrics,
        "epochs": len(outcome.history),
        "restarts": outcome.restarts,
        "ray_run": outcome.run_name,
        "mlflow_run_id": run_id,
    }


def run(params: Params, method: str, paths: TrainPaths) -> TrainOutcome:
    """The stage: train `method`, write the set (a kill leaves the previous set or this one) and log it.
    The tracking server is checked before Ray starts and the model trains."""
    tracking.check_tracking_server()
    root = paths.root or params.data.root
    manifests = [paths.train_manifest, paths.val_manifest]
    with (
        tracking.stage_run(
            "train", params, method=method, data_paths=manifests, params_file=paths.params_file
        ) as mlrun,
        replacing_dir(paths.out, keep=KEEP) as staging,  # model, card and history: one set or none
    ):
        import mlflow

        run_id = mlrun.info.run_id
        outcome = trainer.fit(params, method, *manifests, root, staging, run_id=run_id)
        mlflow.set_tags({"restarts": str(outcome.restarts), "ray_run": outcome.run_name})
        card = model_card(params, method, outcome, tracking.data_version(manifests), run_id)
        write_json_atomic(staging / "model_card.json", card)
        mlflow.log_artifact(str(staging / "model_card.json"))
        mlflow.log_artifact(str(outcome.history_path))
        log.info("trained %s: %s (the evaluate stage registers it)", method, outcome.metrics)
    return outcome
