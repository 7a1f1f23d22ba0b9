"""One rule for "which way is better", table-driven over every metric name the pipeline writes."""

from __future__ import annotations

import pytest

from acol.stages import reevaluate, report
from acol.tracking import registry
from acol.tracking.dvc_metrics import EVALUATION_KEYS, TRAINING_KEYS
from acol.wsol.metric_direction import lower_is_better, metric_direction

# evaluation.json (acol.stages.evaluate), history.csv and the train metrics (acol.training, acol.distributed.train),
# the report's extra keys, and the re-evaluation's MLflow drops.
DIRECTIONS = {
    "num_images": None,
    "num_holdout_images": None,
    "failed_images": None,
    "top1_cls_error": "lower",
    "top5_cls_error": "lower",
    "top1_loc_error": "lower",
    "top5_loc_error": "lower",
    "gt_known_loc": "higher",
    "best_threshold": None,
    "erase_threshold": None,
    "maxboxacc": "higher",
    "maxboxacc_v2": "higher",
    "maxboxacc_v2_iou30": "higher",
    "maxboxacc_v2_iou50": "higher",
    "maxboxacc_v2_iou70": "higher",
    "pxap": "higher",
    "map_fused_in_mask": None,
    "map_fused_out_mask": None,
    "map_a_in_mask": None,
    "map_a_out_mask": None,
    "map_b_in_mask": None,
    "map_b_out_mask": None,
    "backbone": None,
    "epoch": None,
    "loss": "lower",
    "val_loss": "lower",
    "acc_a": "higher",
    "acc_b": "higher",
    "val_top1": "higher",
    "val_top5": "higher",
    "lr": None,
    "seconds": None,
    "samples": None,
    "samples_per_second": None,
    "drop.maxboxacc_v2": "lower",  # points lost since promotion
    "drop.top1_loc_error": "lower",
}


@pytest.mark.parametrize(("name", "expected"), DIRECTIONS.items())
def test_metric_direction(name: str, expected: str | None) -> None:
    assert metric_direction(name) == expected
    assert lower_is_better(name) is (expected == "lower")


def test_table_covers_the_named_metrics() -> None:
    named = {*EVALUATION_KEYS, *TRAINING_KEYS, *reevaluate.COMPARED_METRICS}
    assert named <= set(DIRECTIONS)
    assert all(DIRECTIONS[n] is not None for n in reevaluate.COMPARED_METRICS)  # compared ones have a side


def test_one_rule_everywhere() -> None:
    assert report.metric_direction is metric_direction
    assert reevaluate.lower_is_better is lower_is_better
    assert registry.lower_is_better is lower_is_better
