"""Stage metrics: the DVC metrics files of every method, from the train and evaluate stages' records.

Reads ``<evaluate_dir>/<method>/evaluation.json`` and the last row of ``<train_dir>/<method>/history.csv`` for
every method the evaluate stage wrote, and writes one ``<metric>.json`` per metric (`acol.tracking.dvc_metrics`)
into a folder that replaces the previous one whole, so DVC never reads a mix of two runs.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from acol.config import Params
from acol.errors import UserError
from acol.io import read_json_object, replacing_dir, write_json_atomic
from acol.tracking.dvc_metrics import metric_table

__all__ = ["MetricsInputError", "collect_metrics", "run", "write_metrics"]

log = logging.getLogger(__name__)


class MetricsInputError(UserError, ValueError):
    """A record the metrics need is missing or empty; the message names the file."""


def _last_row(history: Path) -> dict[str, Any]:
    if not history.is_file():
        raise MetricsInputError(f"{history}: no training history (run the train stage first)")
    with history.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise MetricsInputError(f"{history}: no epoch in the training history")
    return rows[-1]


def _methods(evaluate_dir: Path, methods: Sequence[str]) -> list[str]:
    """`methods` (params.yaml's list), each with its evaluation record: folders of methods no longer in the
    list (an earlier run's) are not this run's and are left out."""
    missing = [m for m in methods if not (evaluate_dir / m / "evaluation.json").is_file()]
    if missing or not methods:
        raise MetricsInputError(
            f"{evaluate_dir}: no evaluation.json for {', '.join(missing) or 'any method'} (run the evaluate stage)"
        )
    return list(methods)


def collect_metrics(
    evaluate_dir: str | os.PathLike[str], train_dir: str | os.PathLike[str], methods: Sequence[str]
) -> dict[str, dict[str, float]]:
    """``{metric: {method: value}}`` for each of `methods` (see `metric_table`)."""
    evaluate_dir, train_dir = Path(evaluate_dir), Path(train_dir)
    if not evaluate_dir.is_dir():
        raise MetricsInputError(f"{evaluate_dir}: no such folder (run the evaluate stage)")
    methods = _methods(evaluate_dir, methods)
    records = {m: read_json_object(evaluate_dir / m / "evaluation.json", MetricsInputError) for m in methods}
    last_epochs = {m: _last_row(train_dir / m / "history.csv") for m in methods}
    return metric_table(records, last_epochs)


def write_metrics(table: dict[str, dict[str, float]], out: str | os.PathLike[str]) -> Path:
    """Write `table` as ``<out>/<metric>.json`` files, replacing the whole folder at once."""
    with replacing_dir(out) as tmp:
        for name, row in table.items():
            write_json_atomic(tmp / f"{name}.json", row)
    log.info(
        "wrote %d metrics of %s to %s",
        len(table),
        ", ".join(sorted({m for r in table.values() for m in r})),
        out,
    )
    return Path(out)


def run(params: Params, evaluate_dir: Path, train_dir: Path, out: Path) -> Path:
    """The stage: params.yaml's methods only (an earlier run's other methods stay out); returns `out`."""
    return write_metrics(collect_metrics(evaluate_dir, train_dir, params.methods), out)
