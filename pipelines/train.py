"""Stage train@<method>: Ray Train on the prepared manifests; model.pt, model_card.json, history.csv.

Run alone (starts a local Ray) or on a cluster: ``ray job submit --working-dir . -- python pipelines/train.py
--method acol`` (connects through RAY_ADDRESS). On a cluster, pass paths every node sees (and a shared
``train.storage_path``) and point MLFLOW_TRACKING_URI at a tracking server: the job's working directory is a
temporary copy, so relative outputs and ``sqlite:///mlflow.db`` would land there.
"""

from __future__ import annotations

import logging
from pathlib import Path

from acol.data.dataset import ManifestDataset
from acol.data.manifest import read_manifest
from acol.data.transforms import eval_transform
from acol.distributed.train import fit
from acol.io import write_json_atomic
from acol.models import METHODS, build_model, load_model_weights, model_kwargs
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
    with tracking.stage_run(
        "train", params, method=args.method, data_paths=manifests, params_file=args.params
    ) as run:
        import mlflow

        outcome = fit(params, args.method, *manifests, root, out, run_id=run.info.run_id)
        mlflow.set_tags({"restarts": str(outcome.restarts), "ray_run": outcome.run_name})

        model = build_model(**model_kwargs(params.model.model_dump(), args.method, len(outcome.classes)))
        load_model_weights(model, outcome.model_path)
        val = ManifestDataset(read_manifest(args.val_manifest), root, eval_transform(params.train.image_size))
        example = val[0][0][None]  # (1, 3, S, S) normalized image: the signature's input
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
        version = tracking.log_model(model, args.method, params, example, card)  # state dict + card
        card["registered_model"] = {
            "name": tracking.registered_model_name(params, args.method),
            "version": version,
        }
        write_json_atomic(out / "model_card.json", card)
        mlflow.log_artifact(str(out / "model_card.json"))
        mlflow.log_artifact(str(outcome.history_path))
        log.info("trained %s: %s; registered version %s", args.method, outcome.metrics, version)


if __name__ == "__main__":
    run_stage(main)
