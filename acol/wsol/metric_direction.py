"""Which way a metric improves, by its name: one rule for the report, the registry and the re-evaluation.

Kept apart from the evaluators (`acol.wsol.localization_metrics`): the modules that only rank numbers (the
report, the registry) need no map or box code, and their DVC deps stay short (tests/test_layout.py).
"""

from __future__ import annotations

from typing import Literal

__all__ = ["lower_is_better", "metric_direction"]

# Name fragments of the metrics where a larger value is better (accuracies, MaxBoxAcc(V2), GT-known, PxAP, top-k).
_HIGHER_IS_BETTER = ("maxboxacc", "gt_known_loc", "pxap", "acc", "top1", "top5")


def metric_direction(name: str) -> Literal["lower", "higher"] | None:
    """Which way a metric improves: errors, losses and ``drop.*`` lower; accuracies higher; others neither.

    Why: the report's highlight, the registry's champion and the re-evaluation's regressions must agree on
    every metric name the pipeline writes (``top1_loc_error``, ``val_loss``, ``maxboxacc_v2_iou50``, ``pxap``,
    ``val_top1``...). Thresholds, counts, timings and map means have no better side (None).
    """
    if name.startswith("drop."):  # re-evaluation: points lost since promotion
        return "lower"
    if "error" in name or name.endswith("loss"):
        return "lower"
    if "threshold" not in name and any(tag in name for tag in _HIGHER_IS_BETTER):
        return "higher"
    return None


def lower_is_better(name: str) -> bool:
    """True for errors and losses; a metric without a direction counts as higher-is-better (an accuracy)."""
    return metric_direction(name) == "lower"
