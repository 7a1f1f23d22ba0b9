"""Stage metrics: the numbers `dvc metrics show` compares, one file per metric, a column per method."""

from __future__ import annotations

import sys
from pathlib import Path

from acol.stages import metrics
from acol.stages.cli import params_from_args, run_stage, setup_logging, stage_parser


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--evaluate-dir", required=True, type=Path, help="<method>/evaluation.json")
    parser.add_argument("--train-dir", required=True, type=Path, help="<method>/history.csv")
    parser.add_argument(
        "--out", required=True, type=Path, help="folder of <metric>.json files (replaced whole)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    metrics.run(params_from_args(args), args.evaluate_dir, args.train_dir, args.out)


if __name__ == "__main__":
    run_stage(lambda: main(sys.argv[1:]))
