"""Stage extract: maps, top-5 and boxes of one trained method over the val manifest, as Parquet parts.

Runs on the current Ray cluster (``ray job submit ... -- python pipelines/extract.py --method acol`` connects to
it; run directly, it starts a local one). Every node must see the dataset root and the model at these paths.
"""

from __future__ import annotations

import sys
from pathlib import Path

from acol.stages import extract
from acol.stages.cli import params_from_args, run_stage, setup_logging, stage_parser


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--method", required=True, choices=extract.METHODS)
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--root", default=None, help="dataset root (default: params data.root)")
    parser.add_argument("--model", required=True, type=Path, help="the train stage's model.pt")
    parser.add_argument("--model-card", required=True, type=Path, help="the train stage's model_card.json")
    parser.add_argument("--out", required=True, type=Path, help="maps/ and summary.json go here")
    parser.add_argument("--fullsup-manifest", type=Path, help="also extract this train-fullsup manifest")
    parser.add_argument("--fullsup-out", type=Path, help="where its maps go (maps/, summary.json)")
    parser.add_argument(
        "--engine", default="ray", choices=extract.ENGINES, help="plain: one process, no Ray (debugging)"
    )
    args = parser.parse_args(argv)
    if (args.fullsup_manifest is None) != (args.fullsup_out is None):
        parser.error("--fullsup-manifest and --fullsup-out go together")
    setup_logging()
    paths = extract.ExtractPaths(
        args.manifest,
        args.model,
        args.model_card,
        args.out,
        args.fullsup_manifest,
        args.fullsup_out,
        args.root,
    )
    extract.run(params_from_args(args), args.method, paths, args.engine)


if __name__ == "__main__":
    run_stage(lambda: main(sys.argv[1:]))
