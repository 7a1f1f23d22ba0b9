"""Stage report: one self-contained HTML page comparing the methods, logged to MLflow as artifacts.

When the run's params match a preset (`acol.presets.match_presets`), the page shows its published numbers
beside the run's.
"""

from __future__ import annotations

import sys
from pathlib import Path

from acol.stages import report
from acol.stages.cli import params_from_args, run_stage, setup_logging, stage_parser


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--evaluate-dir", required=True, type=Path, help="one subfolder per method")
    parser.add_argument("--train-dir", required=True, type=Path, help="<method>/history.csv")
    parser.add_argument("--extract-dir", required=True, type=Path, help="<method>/maps/part-*.parquet")
    parser.add_argument("--manifest", required=True, type=Path, help="val manifest (GT boxes)")
    parser.add_argument("--summary", required=True, type=Path, help="prepare summary.json")
    parser.add_argument("--out", required=True, type=Path, help="folder for index.html and the PNGs")
    args = parser.parse_args(argv)
    setup_logging()
    paths = report.ReportPaths(
        args.evaluate_dir, args.train_dir, args.extract_dir, args.manifest, args.summary, args.out
    )
    report.run(params_from_args(args), paths)


if __name__ == "__main__":
    run_stage(lambda: main(sys.argv[1:]))
