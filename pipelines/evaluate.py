"""Stage evaluate: every WSOL metric of one method from its extracted maps; registers the evaluated model.

Writes ``evaluation.json`` and the curves ``box_acc.csv`` / ``pr_curve.csv`` (one set) into ``--out``, then
registers the model (``--model``, ``--model-card``) with its evaluation and promotes it (`acol.stages.evaluate`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from acol.stages import evaluate
from acol.stages.cli import params_from_args, run_stage, setup_logging, stage_parser


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--method", required=True, choices=evaluate.METHODS)
    parser.add_argument("--maps", required=True, type=Path, help="the extract stage's maps folder")
    parser.add_argument("--manifest", required=True, type=Path, help="the val manifest")
    parser.add_argument("--model", required=True, type=Path, help="the train stage's model.pt")
    parser.add_argument("--model-card", required=True, type=Path, help="the train stage's model_card.json")
    parser.add_argument("--out", required=True, type=Path, help="evaluation.json, box_acc.csv, pr_curve.csv")
    parser.add_argument("--fullsup-maps", type=Path, help="train-fullsup maps (evaluate.threshold_split)")
    parser.add_argument("--fullsup-manifest", type=Path, help="train-fullsup manifest")
    args = parser.parse_args(argv)
    setup_logging()
    paths = evaluate.EvaluatePaths(
        args.maps,
        args.manifest,
        args.model,
        args.model_card,
        args.out,
        args.fullsup_maps,
        args.fullsup_manifest,
    )
    evaluate.run(params_from_args(args), args.method, paths)


if __name__ == "__main__":
    run_stage(lambda: main(sys.argv[1:]))
