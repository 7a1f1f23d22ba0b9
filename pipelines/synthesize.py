"""Stage synthesize: write the synthetic ILSVRC-format dataset (the default data) under data.root."""

from __future__ import annotations

import logging
import os

from acol.data.synthetic import generate_synthetic
from acol.stages.cli import params_from_args, run_stage, setup_logging, stage_parser

log = logging.getLogger("synthesize")


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default=None, help="dataset folder (default: data.root)")
    args = parser.parse_args()
    setup_logging()
    params = params_from_args(args)
    out = args.out or params.data.root
    log.info("generating %s", params.data.synthetic)
    config = params.data.synthetic
    cores = os.cpu_count() or 1  # the toy set is small: 4 workers; the shadow ILSVRC set uses every core
    summary = generate_synthetic(
        out, config, workers=cores if config.layout == "shadow_ilsvrc" else min(4, cores)
    )
    log.info("wrote %s: %s images, %s boxes", out, summary.images, summary.boxes)


if __name__ == "__main__":
    run_stage(main)
