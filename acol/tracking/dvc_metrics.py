"""What ``dvc metrics show`` / ``dvc exp show`` display: the numbers a user compares, one file per number.

Why one file per number, keyed by method (``metrics/MaxBoxAccV2.json`` = ``{"acol": 69.24, "cam": 55.11}``):
DVC draws one row per metrics file and one column per key of any file. Files per stage and method made a
table of 13 columns (172 characters with these names; 1,640 when the files also carried run ids, paths and
params); turned around, ``dvc metrics show`` is one row per metric and one column per method, like a paper's
table on its side, and fits an 80-column terminal. ``dvc metrics diff`` lists ``<file> <method>`` pairs.

Percentages keep two decimals, the loss four: finer digits are noise between runs. The full records keep
acol's own names (``maxboxacc_v2``, ``top1_loc_error``...), which MLflow logs and ``evaluate.champion_metric``
names; this module is the only place with the display names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["EVALUATION_KEYS", "METRICS_DIR", "METRIC_NAMES", "TRAINING_KEYS", "metric_table"]

METRICS_DIR = "metrics"  # the metrics stage's output folder, relative to the repository (dvc.yaml)

# evaluation record key -> metric name (the file's stem); percent, two decimals
EVALUATION_KEYS = {
    "maxboxacc_v2": "MaxBoxAccV2",
    "maxboxacc_v2_iou30": "MaxBoxAccV2_IoU30",
    "maxboxacc_v2_iou50": "MaxBoxAccV2_IoU50",
    "maxboxacc_v2_iou70": "MaxBoxAccV2_IoU70",
    "gt_known_loc": "GT-known",
    "top1_loc_error": "top1_loc_err",
    "top5_loc_error": "top5_loc_err",
    "top1_cls_error": "top1_cls_err",
    "top5_cls_error": "top5_cls_err",
    "pxap": "PxAP",
}
# history column (last epoch) -> (metric name, scale, decimals)
TRAINING_KEYS = {
    "loss": ("train_loss", 1.0, 4),
    "acc_a": ("train_acc", 100.0, 2),  # training accuracy of branch A, percent
    "samples_per_second": ("train_img_per_s", 1.0, 1),  # training throughput of all workers together
}
METRIC_NAMES: tuple[str, ...] = (*EVALUATION_KEYS.values(), *(name for name, _, _ in TRAINING_KEYS.values()))


def _number(value: Any) -> float | None:
    """A finite float from a JSON number or a CSV cell; None for anything else (absent, NaN, text, bool)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _shown(record: Mapping[str, Any], last_epoch: Mapping[str, Any]) -> dict[str, float]:
    """One method's metrics under their display names, rounded; what it lacks (PxAP without masks) left out."""
    shown = {name: _number(record.get(key)) for key, name in EVALUATION_KEYS.items()}
    rounded = {name: round(value, 2) for name, value in shown.items() if value is not None}
    for key, (name, scale, decimals) in TRAINING_KEYS.items():
        value = _number(last_epoch.get(key))
        if value is not None:
            rounded[name] = round(value * scale, decimals)
    return rounded


def metric_table(
    records: Mapping[str, Mapping[str, Any]], last_epochs: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, float]]:
    """``{metric name: {method: value}}`` from each method's evaluation record and last training history row.

    Metrics in `METRIC_NAMES` order, methods sorted; a metric no method has is left out.
    """
    per_method = {
        m: _shown(records.get(m, {}), last_epochs.get(m, {})) for m in sorted({*records, *last_epochs})
    }
    table = {
        name: {m: shown[name] for m, shown in per_method.items() if name in shown} for name in METRIC_NAMES
    }
    return {name: row for name, row in table.items() if row}
