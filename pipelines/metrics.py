"""Stage metrics: the numbers `dvc metrics show` compares, one file per metric, a column per method."""

from __future__ import annotations

from acol.stages.cli import params_from_args, run_stage, setup_logging, stage_parser
from acol.stages.metrics import collect_metrics, write_metrics
from acol.tracking.dvc_metrics import METRICS_DIR


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--evaluate-dir", default="outputs/evaluate", help="<method>/evaluation.json")
    parser.add_argument("--train-dir", default="outputs/train", help="<method>/history.csv")
    parser.add_argument("--out", default=METRICS_DIR, help="folder of <metric>.json files (replaced whole)")
    args = parser.parse_args(argv)
    setup_logging()
    methods = params_from_args(args).methods  # params.yaml's list: an earlier run's other methods stay out
    write_metrics(collect_metrics(args.evaluate_dir, args.train_dir, methods), args.out)


if __name__ == "__main__":
    run_stage(main)
