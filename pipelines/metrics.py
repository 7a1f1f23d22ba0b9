"""Stage metrics: the numbers `dvc metrics show` compares, one file per metric, a column per method."""

from __future__ import annotations

import argparse

from acol.stages.cli import DEBUG_ENV, run_stage, setup_logging
from acol.stages.metrics import collect_metrics, write_metrics
from acol.tracking.dvc_metrics import METRICS_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--evaluate-dir", default="outputs/evaluate", help="<method>/evaluation.json")
    parser.add_argument("--train-dir", default="outputs/train", help="<method>/history.csv")
    parser.add_argument("--out", default=METRICS_DIR, help="folder of <metric>.json files (replaced whole)")
    parser.add_argument(
        "--debug", action="store_true", help=f"show the traceback of input errors (or {DEBUG_ENV}=1)"
    )
    args = parser.parse_args()
    setup_logging()
    write_metrics(collect_metrics(args.evaluate_dir, args.train_dir), args.out)


if __name__ == "__main__":
    run_stage(main)
