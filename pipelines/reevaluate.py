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

import sys
from pathlib import Path

from acol.stages import reevaluate
from acol.stages.cli import params_from_args, run_stage, setup_logging, stage_parser


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--method", required=True, choices=reevaluate.METHODS)
    parser.add_argument("--manifest", required=True, type=Path, help="the val manifest to use now")
    parser.add_argument("--root", default=None, help="dataset root (default: params data.root)")
    parser.add_argument("--out", required=True, type=Path, help="model/, extract/, report.json, report.md")
    parser.add_argument(
        "--fullsup-manifest",
        required=True,
        type=Path,
        help="train-fullsup manifest, read for a version evaluated with threshold_split fullsup",
    )
    parser.add_argument("--engine", default="ray", choices=reevaluate.ENGINES, help="extraction engine")
    args = parser.parse_args(argv)
    setup_logging()
    paths = reevaluate.ReevaluatePaths(args.manifest, args.fullsup_manifest, args.out, args.root)
    return reevaluate.run(params_from_args(args), args.method, paths, args.engine)


if __name__ == "__main__":
    run_stage(lambda: main(sys.argv[1:]))
