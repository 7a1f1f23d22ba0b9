"""Stage evaluate: every WSOL metric of one method from its extracted maps; registers the evaluated model.

Writes ``evaluation.json`` (the full record: counts, threshold, map statistics, the model that made the maps;
the metrics stage turns it into what ``dvc metrics show`` compares) and the curves ``box_acc.csv`` /
``pr_curve.csv``, replaced as one set. A dataset with masks and no boxes (OpenImages) gets PxAP and the
classification errors; its record says ``box_metrics: not measured ...`` and its ``box_acc.csv`` has no rows. Then registers the trained model with its card plus an ``evaluation``
section (protocol, CAM threshold, metrics) and promotes it (`acol.tracking.registry`). The metrics themselves
are `acol.stages.evaluation`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from acol.config import Params
from acol.data.dataset import ManifestDataset
from acol.data.manifest import read_manifest
from acol.data.transforms import eval_transform
from acol.inference import mapstore  # looked up at call time: tests replace read_maps
from acol.inference.model_card import load_model_card, spec_from_card
from acol.io import replacing_dir, write_json_atomic, write_text_atomic
from acol.models import METHODS
from acol.stages import evaluation  # looked up at call time: tests replace evaluate_method
from acol.stages.evaluation import EVALUATED_COLUMNS, EvaluationResult
from acol.tracking import stage_runs as tracking
from acol.tracking.registry import check_champion, comparison_key, record_and_promote

__all__ = ["METHODS", "EvaluatePaths", "run"]

log = logging.getLogger("evaluate")
KEEP = (".gitignore",)  # DVC's file in the output folder: the new set inherits it


@dataclass(frozen=True)
class EvaluatePaths:
    """The stage's inputs (the extract and train stages' outputs) and its output folder."""

    maps: Path
    manifest: Path
    model: Path  # the weights that are registered
    model_card: Path
    out: Path  # evaluation.json, box_acc.csv, pr_curve.csv
    fullsup_maps: Path | None = None  # with fullsup_manifest: the threshold is chosen there
    fullsup_manifest: Path | None = None


def _record(card: dict[str, Any], params: Params, method: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """evaluation.json: the model that made the maps is the card's (params only fill what the card lacks)."""
    spec = spec_from_card(card, params, method, list(card["classes"]))
    record = {"method": method, "backbone": spec.backbone, **metrics}
    if method == "acol":
        record["erase_threshold"] = spec.erase_threshold
    return record


def _write_set(out: Path, record: dict[str, Any], result: EvaluationResult) -> None:
    """box_acc.csv, pr_curve.csv (with masks only) and evaluation.json, swapped in as one folder: a kill
    anywhere leaves the previous set or this one, and no earlier curve beside these numbers."""
    with replacing_dir(out, keep=KEEP) as tmp:
        curves = pd.DataFrame(result.box_curves).to_csv(index=False, float_format="%.6g")
        write_text_atomic(tmp / "box_acc.csv", curves)
        if result.pr_curve is not None:
            pr = pd.DataFrame(result.pr_curve).to_csv(index=False, float_format="%.6g")
            write_text_atomic(tmp / "pr_curve.csv", pr)
        write_json_atomic(tmp / "evaluation.json", record)


def _evaluation(params: Params, card: dict[str, Any], numbers: dict[str, float]) -> dict[str, Any]:
    """The card's ``evaluation`` section: how the numbers were made (re-evaluation and serving read it)."""
    ev = params.evaluate
    return {
        "dataset": params.data.source,
        "protocol": ev.threshold_split,
        "holdout_fraction": ev.holdout_fraction,
        "interval": ev.interval,
        "iou_thresholds": list(ev.iou_thresholds),
        "image_size": params.train.image_size,  # what extract fed the model: the maps' input size
        "cam_threshold": numbers.get("best_threshold"),  # None: masks only, no box threshold chosen
        "champion_metric": ev.champion_metric,
        "metrics": numbers,
        "train_run_id": card.get("mlflow_run_id"),
    }


def _register(params: Params, method: str, card: dict[str, Any], model_path: Path, val: Path) -> str:
    """Log and register the model of `card` in the active run; returns the new version."""
    from acol.tracking.mlflow_model import build_from_card, log_model

    model = build_from_card(card, model_path)
    example = ManifestDataset(read_manifest(val), params.data.root, eval_transform(params.train.image_size))
    return log_model(model, method, params, example[0][0][None], card)


def _params_of(params: Params, card: dict[str, Any]) -> Params:
    """`params` with the card's backbone: the registered name is the evaluated model's, whatever params say."""
    return params.model_copy(update={"model": params.model.model_copy(update={"backbone": card["backbone"]})})


def _register_and_promote(params: Params, method: str, card: dict[str, Any], model: Path, val: Path) -> None:
    """Refuse an incomparable champion first (nothing registered then), register, tag and promote."""
    import mlflow

    params = _params_of(params, card)
    name, key = tracking.registered_model_name(params, method), comparison_key(card)
    metric = params.evaluate.champion_metric
    check_champion(name, key, metric)
    version = _register(params, method, card, model, val)
    mlflow.set_tags({"model_name": name, "model_version": version})
    promotion = record_and_promote(name, version, card["evaluation"]["metrics"], metric, key=key)
    mlflow.set_tag("champion", str(promotion["champion"]))
    log.info("registered %s v%s (%s)", name, version, "champion" if promotion["champion"] else "candidate")


def _evaluate(params: Params, paths: EvaluatePaths) -> EvaluationResult:
    fullsup = None
    if paths.fullsup_maps and paths.fullsup_manifest:
        fullsup = (
            mapstore.read_maps(paths.fullsup_maps, EVALUATED_COLUMNS),
            read_manifest(paths.fullsup_manifest),
        )
    return evaluation.evaluate_method(
        mapstore.read_maps(paths.maps, EVALUATED_COLUMNS),
        read_manifest(paths.manifest),
        params.data.root,
        params.evaluate,
        fullsup,
    )


def _log_headline(record: dict[str, Any]) -> None:
    """The stage's one-line result: the box metrics, or PxAP where the dataset has masks and no boxes."""
    if "box_metrics" in record:
        log.info("PxAP %.2f, top-1 cls error %.2f (box metrics %s)", record["pxap"], record["top1_cls_error"],
                 record["box_metrics"])  # fmt: skip
        return
    log.info("MaxBoxAccV2 %.2f, GT-known loc %.2f, top-1 loc error %.2f", record["maxboxacc_v2"],
             record["gt_known_loc"], record["top1_loc_error"])  # fmt: skip


def run(params: Params, method: str, paths: EvaluatePaths) -> dict[str, Any]:
    """The stage: evaluate, write the set, log it to MLflow, register and promote; returns evaluation.json's
    record. A missing card, tracking server or model fails before the maps are read."""
    paths.model_card.stat()  # missing: FileNotFoundError naming it, one line and exit 2
    card = load_model_card(paths.model_card)
    tracking.check_tracking_server()
    if not paths.model.is_file():
        raise FileNotFoundError(
            f"model weights not found: {paths.model} (--model; the train stage writes it)"
        )

    log.info("evaluating %s maps from %s", method, paths.maps)
    result = _evaluate(params, paths)
    record = _record(card, params, method, result.metrics)
    _write_set(paths.out, record, result)
    _log_headline(record)

    numbers = {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    card = {**card, "backbone": record["backbone"], "evaluation": _evaluation(params, card, numbers)}
    with tracking.stage_run("evaluate", params, method=method, data_paths=[paths.manifest]) as mlrun:
        import mlflow

        mlflow.log_metrics(numbers)
        mlflow.log_artifacts(str(paths.out))
        _register_and_promote(params, method, card, paths.model, paths.manifest)
        log.info("MLflow run %s", mlrun.info.run_id)
    return record
