"""Stage prepare: index the dataset at data.root into train/val manifests (Parquet) and a summary."""

from __future__ import annotations

import sys
from pathlib import Path

from acol.stages import prepare
from acol.stages.cli import params_from_args, run_stage, setup_logging, stage_parser


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument(
        "--out", required=True, type=Path, help="folder for train/val/fullsup.parquet and summary.json"
    )
    args = parser.parse_args(argv)
    setup_logging()
    prepare.run(params_from_args(args), args.out)


if __name__ == "__main__":
    run_stage(lambda: main(sys.argv[1:]))
