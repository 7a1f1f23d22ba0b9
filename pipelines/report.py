"""Stage report: one self-contained HTML page comparing the methods, logged to MLflow as artifacts.

When the run's params match a preset (`acol.presets.match_presets`), the page shows its published numbers
beside the run's.
"""

from __future__ import annotations

import logging
from pathlib import Path

from acol.presets import match_presets
from acol.stages.cli import params_from_args, run_stage, setup_logging, stage_parser
from acol.stages.report import ReportInputs, build_report
from acol.tracking import stage_runs as tracking

log = logging.getLogger("report")


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--evaluate-dir", default="outputs/evaluate", help="one subfolder per method")
    parser.add_argument("--train-dir", default="outputs/train", help="<method>/history.csv")
    parser.add_argument("--extract-dir", default="outputs/extract", help="<method>/maps/part-*.parquet")
    parser.add_argument("--manifest", default="outputs/prepare/val.parquet", help="val manifest (GT boxes)")
    parser.add_argument("--summary", default="outputs/prepare/summary.json", help="prepare summary")
    parser.add_argument("--out", default="outputs/report", help="folder for index.html and the PNGs")
    args = parser.parse_args()
    setup_logging()
    params = params_from_args(args)
    tracking.check_tracking_server()  # fail before the work, not after it
    inputs = ReportInputs.from_dirs(
        args.evaluate_dir,
        args.train_dir,
        args.extract_dir,
        manifest=args.manifest,
        summary=args.summary,
        dataset_root=params.data.root,
        methods=params.methods,
        presets=match_presets(params),
    )
    log.info("building the report for %s", ", ".join(inputs.methods))
    index = build_report(inputs, args.out)
    with tracking.stage_run("report", params, data_paths=[args.manifest]) as run:
        import mlflow

        mlflow.log_artifacts(str(Path(args.out)), artifact_path="report")
        log.info("report %s logged to MLflow run %s", index, run.info.run_id)


if __name__ == "__main__":
    run_stage(main)
