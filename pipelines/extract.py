"""Stage extract: maps, top-5 and boxes of one trained method over the val manifest, as Parquet parts.

Runs on the current Ray cluster (``ray job submit ... -- python pipelines/extract.py --method acol`` connects to
it; run directly, it starts a local one). Every node must see the dataset root and the model at these paths.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from acol.distributed.extract import extract, extract_plain
from acol.models import METHODS
from acol.stages.cli import params_from_args, run_stage, setup_logging, stage_parser
from acol.tracking import runs as tracking

log = logging.getLogger("extract")


def _train_run_id(card_path: Path) -> str:
    """The train run whose model made these maps (the evaluate stage registers that model)."""
    return str(json.loads(card_path.read_text()).get("mlflow_run_id", ""))


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--manifest", default="outputs/prepare/val.parquet")
    parser.add_argument("--root", default=None, help="dataset root (default: params data.root)")
    parser.add_argument("--model", default=None, help="default outputs/train/<method>/model.pt")
    parser.add_argument("--model-card", default=None, help="default outputs/train/<method>/model_card.json")
    parser.add_argument("--out", default=None, help="default outputs/extract/<method> (maps/, summary.json)")
    parser.add_argument("--fullsup-manifest", default=None, help="also extract this train-fullsup manifest")
    parser.add_argument("--fullsup-out", default=None, help="where its maps go (maps/, summary.json)")
    parser.add_argument(
        "--engine", default="ray", choices=["ray", "plain"], help="plain: one process, no Ray (debugging)"
    )
    args = parser.parse_args()
    setup_logging()
    params = params_from_args(args)
    train_dir = Path("outputs/train") / args.method
    model = Path(args.model or train_dir / "model.pt")
    card_path = Path(args.model_card or train_dir / "model_card.json")
    out = Path(args.out or Path("outputs/extract") / args.method)
    root = args.root or params.data.root
    tracking.check_tracking_server()

    run = extract if args.engine == "ray" else extract_plain
    forward = {"amp": params.extract.amp, "channels_last": params.extract.channels_last}
    summary = run(params, args.method, args.manifest, root, model, card_path, out, **forward)
    if args.fullsup_manifest:  # threshold selection on train-fullsup (evaluate.threshold_split: fullsup)
        fullsup_out = Path(args.fullsup_out or Path("outputs/extract_fullsup") / args.method)
        run(params, args.method, args.fullsup_manifest, root, model, card_path, fullsup_out, **forward)

    with tracking.stage_run("extract", params, method=args.method, data_paths=[args.manifest]) as mlrun:
        import mlflow

        mlflow.log_metrics(
            {
                "rows": summary.rows,
                "errors": summary.errors,
                "images_per_s": summary.images_per_s,
                "bytes_per_image": summary.bytes_per_image,
            }
        )
        mlflow.set_tags({"engine": args.engine, "train_run_id": _train_run_id(card_path)})
        mlflow.log_artifact(str(out / "summary.json"))
        log.info("MLflow run %s", mlrun.info.run_id)


if __name__ == "__main__":
    run_stage(main)
