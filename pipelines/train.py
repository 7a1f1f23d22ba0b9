"""Stage train@<method>: Ray Train on the prepared manifests; model.pt, model_card.json, history.csv.

Run alone (starts a local Ray) or on a cluster: ``ray job submit --working-dir . -- python pipelines/train.py
--method acol ...`` (connects through RAY_ADDRESS). On a cluster, pass paths every node sees (and a shared
``train.storage_path``) and point MLFLOW_TRACKING_URI at a tracking server: the job's working directory is a
temporary copy, so relative outputs and ``sqlite:///mlflow.db`` would land there.
"""

from __future__ import annotations

import sys
from pathlib import Path

from acol.stages import train
from acol.stages.cli import params_from_args, run_stage, setup_logging, stage_parser


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--method", required=True, choices=train.METHODS)
    parser.add_argument("--train-manifest", required=True, type=Path)
    parser.add_argument("--val-manifest", required=True, type=Path)
    parser.add_argument("--root", default=None, help="dataset root (default: params data.root)")
    parser.add_argument("--out", required=True, type=Path, help="model.pt, model_card.json, history.csv")
    args = parser.parse_args(argv)
    setup_logging()
    paths = train.TrainPaths(args.train_manifest, args.val_manifest, args.out, Path(args.params), args.root)
    train.run(params_from_args(args), args.method, paths)


if __name__ == "__main__":
    run_stage(lambda: main(sys.argv[1:]))
