"""Stage train@<method>: Ray Train on the prepared manifests; model.pt, model_card.json, history.csv.

Run alone (starts a local Ray) or on a cluster: ``ray job submit --working-dir . -- python pipelines/train.py
--method acol`` (connects through RAY_ADDRESS). On a cluster, pass paths every node sees (and a shared
``train.storage_path``) and point MLFLOW_TRACKING_URI at a tracking server: the job's working directory is a
temporary copy, so relative outputs and ``sqlite:///mlflow.db`` would land there.
"""

from __future__ import annotations

import logging
from pathlib import Path

from acol.distributed.train import fit
from acol.io import replacing_dir, write_json_atomic
from acol.models import METHODS
from acol.stages.cli import params_from_args, run_stage, setup_logging, stage_parser
from acol.tracking import runs as tracking

log = logging.getLogger("train")


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--train-manifest", default="outputs/prepare/train.parquet")
    parser.add_argument("--val-manifest", default="outputs/prepare/val.parquet")
    parser.add_argument("--root", default=None, help="dataset root (default: params data.root)")
    parser.add_argument("--out", default=None, help="default outputs/train/<method>")
    args = parser.parse_args(argv)
    setup_logging()
    params = params_from_args(args)
    out = Path(args.out or Path("outputs/train") / args.method)
    root = args.root or params.data.root
    tracking.check_tracking_server()  # before Ray starts and the model trains

    manifests = [args.train_manifest, args.val_manifest]
    with (
        tracking.stage_run(
            "train", params, method=args.method, data_paths=manifests, params_file=args.params
        ) as run,
        replacing_dir(out, keep=(".gitignore",)) as staging,  # model, card and history: one set or none
    ):
        import mlflow

        outcome = fit(params, args.method, *manifests, root, staging, run_id=run.info.run_id)
        mlflow.set_tags({"restarts": str(outcome.restarts), "ray_run": outcome.run_name})
        card = {
            "method": args.method,
            "backbone": params.model.backbone,
            "num_classes": len(outcome.classes),
            "classes": outcome.classes,
            "model": params.model.model_dump(mode="json"),
            "train": params.train.model_dump(mode="json"),
            "data_version": tracking.data_version(manifests),
            "metrics": outcome.metrics,
            "epochs": len(outcome.history),
            "restarts": outcome.restarts,
            "ray_run": outcome.run_name,
            "mlflow_run_id": run.info.run_id,
        }
        write_json_atomic(staging / "model_card.json", card)
        mlflow.log_artifact(str(staging / "model_card.json"))
        mlflow.log_artifact(str(outcome.history_path))
        log.info("trained %s: %s (the evaluate stage registers it)", args.method, outcome.metrics)


if __name__ == "__main__":
    run_stage(main)
