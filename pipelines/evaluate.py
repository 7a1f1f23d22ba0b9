"""Stage evaluate: every WSOL metric of one method from its extracted maps.

Writes ``evaluation.json`` (the full record: counts, threshold, map statistics, method; the metrics stage turns
it into what ``dvc metrics show`` compares) and the curves ``box_acc.csv`` / ``pr_curve.csv``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from acol.data.manifest import read_manifest
from acol.inference.mapstore import read_maps
from acol.io import write_json_atomic, write_text_atomic
from acol.models import METHODS
from acol.stages.cli import params_from_args, run_stage, setup_logging, stage_parser
from acol.stages.evaluate import EVALUATED_COLUMNS, evaluate_method
from acol.tracking import runs as tracking
from acol.tracking.registry import record_and_promote

log = logging.getLogger("evaluate")


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument(
        "--maps", default=None, help="extracted maps folder (default outputs/extract/<method>/maps)"
    )
    parser.add_argument("--manifest", default="outputs/prepare/val.parquet")
    parser.add_argument("--fullsup-maps", default=None, help="train-fullsup maps (evaluate.threshold_split)")
    parser.add_argument("--fullsup-manifest", default=None, help="train-fullsup manifest")
    parser.add_argument("--model-card", default=None, help="default outputs/train/<method>/model_card.json")
    parser.add_argument("--out", default=None, help="default outputs/evaluate/<method>")
    args = parser.parse_args()
    setup_logging()
    params = params_from_args(args)
    maps_dir = Path(args.maps or f"outputs/extract/{args.method}/maps")
    card_path = Path(args.model_card or f"outputs/train/{args.method}/model_card.json")
    out = Path(args.out or f"outputs/evaluate/{args.method}")
    tracking.check_tracking_server()

    card = json.loads(card_path.read_text())
    log.info("evaluating %s maps from %s", args.method, maps_dir)
    fullsup = None
    if args.fullsup_maps and args.fullsup_manifest:
        fullsup = (read_maps(args.fullsup_maps, EVALUATED_COLUMNS), read_manifest(args.fullsup_manifest))
    result = evaluate_method(
        read_maps(maps_dir, EVALUATED_COLUMNS),
        read_manifest(args.manifest),
        params.data.root,
        params.evaluate,
        fullsup,
    )
    metrics = {"method": args.method, "backbone": params.model.backbone, **result.metrics}
    if args.method == "acol":
        metrics["erase_threshold"] = params.model.erase_threshold
    write_text_atomic(
        out / "box_acc.csv", pd.DataFrame(result.box_curves).to_csv(index=False, float_format="%.6g")
    )
    if result.pr_curve is not None:
        write_text_atomic(
            out / "pr_curve.csv", pd.DataFrame(result.pr_curve).to_csv(index=False, float_format="%.6g")
        )
    else:  # no masks: an earlier run's curve must not stand beside these numbers (the report would plot it)
        (out / "pr_curve.csv").unlink(missing_ok=True)
    write_json_atomic(out / "evaluation.json", metrics)
    log.info("MaxBoxAccV2 %.2f, GT-known loc %.2f, top-1 loc error %.2f", metrics["maxboxacc_v2"],
             metrics["gt_known_loc"], metrics["top1_loc_error"])  # fmt: skip

    numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    with tracking.stage_run("evaluate", params, method=args.method, data_paths=[args.manifest]) as run:
        import mlflow

        mlflow.log_metrics(numbers)
        mlflow.log_artifacts(str(out))
        model = card.get("registered_model")
        if model and model.get("version"):
            mlflow.set_tags({"model_name": model["name"], "model_version": str(model["version"])})
            promotion = record_and_promote(
                model["name"], str(model["version"]), numbers, params.evaluate.champion_metric
            )
            mlflow.set_tag("champion", str(promotion["champion"]))
        log.info("MLflow run %s", run.info.run_id)


if __name__ == "__main__":
    run_stage(main)
