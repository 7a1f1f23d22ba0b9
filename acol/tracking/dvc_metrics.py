"""What ``dvc metrics show`` / ``dvc exp show`` display: the numbers a user compares, under short names.

Why: DVC puts every key of every metrics file in one table, so a metrics file that also carries run ids, paths,
params and counts made a table 1,640 columns wide. The stages write their full records (``model_card.json``,
``evaluation.json``, ``summary.json``) as plain outputs, and only these few rounded numbers as DVC metrics.
Percentages keep two decimals, the loss four: finer digits are noise between runs.

The full records keep acol's own names (``maxboxacc_v2``, ``top1_loc_error``...), which MLflow logs and
``evaluate.champion_metric`` names; this module is the only place with the short display names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["EVALUATION_KEYS", "TRAINING_KEYS", "evaluation_metrics", "training_metrics"]

# acol name (evaluation record) -> DVC column; percent
EVALUATION_KEYS = {
    "maxboxacc_v2": "MaxBoxAccV2",
    "maxboxacc_v2_iou30": "IoU30",
    "maxboxacc_v2_iou50": "IoU50",
    "maxboxacc_v2_iou70": "IoU70",
    "gt_known_loc": "GT-known",
    "top1_loc_error": "loc_err@1",
    "top5_loc_error": "loc_err@5",
    "top1_cls_error": "cls_err@1",
    "top5_cls_error": "cls_err@5",
    "pxap": "PxAP",
}
# history column (last epoch) -> (DVC column, scale, decimals)
TRAINING_KEYS = {
    "loss": ("loss", 1.0, 4),
    "acc_a": ("acc", 100.0, 2),  # training accuracy of branch A, percent
    "samples_per_second": ("img/s", 1.0, 1),  # training throughput of all workers together
}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def evaluation_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The DVC metrics of an evaluation record (`acol.stages.evaluate.EvaluationResult.metrics`); absent keys
    (PxAP without masks, IoUs not configured) are left out."""
    return {
        column: round(float(record[key]), 2)
        for key, column in EVALUATION_KEYS.items()
        if _finite(record.get(key))
    }


def training_metrics(last_epoch: Mapping[str, Any]) -> dict[str, float]:
    """The DVC metrics of a training run from its last history row."""
    return {
        column: round(float(last_epoch[key]) * scale, decimals)
        for key, (column, scale, decimals) in TRAINING_KEYS.items()
        if _finite(last_epoch.get(key))
    }
