"""Stage prepare: index the dataset at data.root into train/val manifests (Parquet) and a summary."""

from __future__ import annotations

import logging
from pathlib import Path

from acol.data.manifest import manifest_classes, write_manifest
from acol.io import write_json_atomic
from acol.stages.cli import params_from_args, run_stage, setup_logging, stage_parser
from acol.stages.prepare import index_dataset, index_fullsup, prepare_summary
from acol.tracking import stage_runs as tracking

log = logging.getLogger("prepare")


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument(
        "--out", default="outputs/prepare", help="folder for train/val.parquet and summary.json"
    )
    args = parser.parse_args()
    setup_logging()
    params = params_from_args(args)
    out = Path(args.out)
    tracking.check_tracking_server()
    log.info("indexing %s dataset at %s", params.data.source, params.data.root)
    train, val, problems = index_dataset(params.data)
    fullsup, fullsup_problems = index_fullsup(params.data, manifest_classes(val))
    problems += fullsup_problems
    summary = prepare_summary(train, val, problems, params.data)
    summary["fullsup_images"] = fullsup.num_rows
    write_manifest(train, out / "train.parquet")
    write_manifest(val, out / "val.parquet")
    write_manifest(fullsup, out / "fullsup.parquet")
    write_json_atomic(out / "summary.json", summary)
    log.info("%d train, %d val images, %d problems %s", train.num_rows, val.num_rows, len(problems),
             summary["problems_by_kind"])  # fmt: skip
    with tracking.stage_run(
        "prepare", params, data_paths=[out / "train.parquet", out / "val.parquet"]
    ) as run:
        import mlflow

        mlflow.log_metrics(
            {"train_images": train.num_rows, "val_images": val.num_rows, "problems": len(problems)}
        )
        mlflow.log_artifact(str(out / "summary.json"))
        log.info("MLflow run %s", run.info.run_id)


if __name__ == "__main__":
    run_stage(main)
