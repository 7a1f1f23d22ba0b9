"""Stage synthesize: the synthetic ILSVRC-format dataset (the default data) written where dvc.yaml says."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from acol.config import Params
from acol.data.synthetic import SyntheticSummary, generate_synthetic

__all__ = ["run"]

log = logging.getLogger("synthesize")


def _workers(layout: str) -> int:
    """The toy set is small: 4 workers; the shadow ILSVRC set uses every core."""
    cores = os.cpu_count() or 1
    return cores if layout == "shadow_ilsvrc" else min(4, cores)


def run(params: Params, out: Path) -> SyntheticSummary:
    """Write ``params.data.synthetic`` into `out`; returns the generator's summary (images, boxes)."""
    config = params.data.synthetic
    log.info("generating %s", config)
    summary = generate_synthetic(out, config, workers=_workers(config.layout))
    log.info("wrote %s: %s images, %s boxes", out, summary.images, summary.boxes)
    return summary
