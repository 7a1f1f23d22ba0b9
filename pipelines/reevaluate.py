"""Scheduled re-evaluation: the registered model
(``<tracking.registered_model>-<model.backbone>-<method>-<evaluate.threshold_split>@<reevaluate.alias>``) on the
current val manifest, compared with the metrics recorded when it was promoted.

Extracts and evaluates with the settings recorded on the version (its model card's ``evaluation``: image size,
threshold protocol, grid step, held-out fraction, IoU thresholds), not today's params; a version evaluated with
``threshold_split: fullsup`` re-chooses its threshold on ``--fullsup-manifest``.

Exit status: 0 when no metric fell by more than ``reevaluate.tolerance`` points, 3 on a regression (the report
names the metrics), 1 when it could not run, 2 on bad params or a missing input file (one line on stderr).
Run from cron, a Kubernetes CronJob, or ``ray job submit``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from acol.models import METHODS
from acol.stages.cli import params_from_args, run_stage, setup_logging, stage_parser
from acol.stages.reevaluate import REGRESSION_EXIT_CODE, ReevaluationError, reevaluate
from acol.tracking import runs as tracking

log = logging.getLogger("reevaluate")


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument(
        "--manifest", default="outputs/prepare/val.parquet", help="the val manifest to use now"
    )
    parser.add_argument("--root", default=None, help="dataset root (default: params data.root)")
    parser.add_argument("--out", default=None, help="default outputs/reevaluate/<method>")
    parser.add_argument(
        "--fullsup-manifest",
        default="outputs/prepare/fullsup.parquet",
        help="train-fullsup manifest, read for a version evaluated with threshold_split fullsup",
    )
    parser.add_argument("--engine", default="ray", choices=["ray", "plain"], help="extraction engine")
    args = parser.parse_args(argv)
    setup_logging()
    params = params_from_args(args)
    out = Path(args.out or Path("outputs/reevaluate") / args.method)
    tracking.check_tracking_server()
    try:
        report = reevaluate(
            params,
            args.method,
            args.manifest,
            args.root or params.data.root,
            out,
            engine=args.engine,
            fullsup_manifest=args.fullsup_manifest,
        )
    except ReevaluationError as e:
        log.error("%s", e)
        return 1
    print(report.summary())
    print(f"report: {out / 'report.md'}")
    return 0 if report.passed else REGRESSION_EXIT_CODE


if __name__ == "__main__":
    run_stage(main)
