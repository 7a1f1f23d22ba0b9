"""Profile: where the evaluate stage's time goes, phase by phase, on extracted maps (issue 11).

Runs the stage's steps one after another in one thread (OpenCV's own threads off, as in the stage) on the first ``--images`` maps of a map store and
reports the CPU time of each per map, and that CPU time projected to every map of the store: the stage runs
the same steps over ``os.cpu_count()`` threads, so the sum over the number of cores is the floor of its wall
time. Phases: reading the store (whole table), the float maps of the GT class (``maps_array``), resize +
normalize + quantize (``prepare_quantized``), the largest-contour table alone (its own hole filling, its sweep:
MaxBoxAcc, the threshold, GT-known), then both tables in one pass (``quantized_iou_tables``, as the stage
runs test images): what that adds over the first is the multi-contour sweeps (MaxBoxAccV2), and what the
stage asks of the tables afterwards.

    python benchmarks/profile_evaluate.py --maps <kept>/maps --manifest <kept>/manifest.parquet \
        --images 5000 --interval 0.001 --out benchmarks/results/profile_evaluate.json
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from acol.data.manifest import read_manifest
from acol.inference.mapstore import maps_array, read_maps
from acol.io import write_json_atomic
from acol.stages.evaluation import EVALUATED_COLUMNS, _gt_boxes_224, _opencv_threads, _rows_of_maps
from acol.wsol.localization_metrics import (
    BoxEvaluator,
    ClassicLocEvaluator,
    quantized_iou_table,
    quantized_iou_tables,
)
from acol.wsol.scoremaps import prepare_quantized


def cpu(fn):
    """(result, CPU seconds of this process) of ``fn()``."""
    start = time.process_time()
    result = fn()
    return result, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--maps", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--interval", type=float, default=0.001)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/profile_evaluate.json"))
    args = parser.parse_args()

    table, read_s = cpu(lambda: read_maps(args.maps, EVALUATED_COLUMNS))
    ok, rows, _ = _rows_of_maps(table, read_manifest(args.manifest), "validation")
    n_all = ok.num_rows
    ok, rows = ok.slice(0, args.images), rows.slice(0, args.images)
    n = ok.num_rows
    gt = _gt_boxes_224(rows)
    qwarm = prepare_quantized(maps_array(ok.slice(0, 8), "map_gt"))  # compile the kernels outside the timing
    quantized_iou_tables(qwarm, gt[:8], np.ones(8, bool))

    everything = np.ones(n, bool)
    raw, raw_s = cpu(lambda: maps_array(ok, "map_gt"))
    with _opencv_threads(0):  # as the stage runs it: its own threads over chunks, none inside OpenCV
        qmaps, prepare_s = cpu(lambda: prepare_quantized(raw))
    (_, table_v1), v1_s = cpu(lambda: quantized_iou_tables(qmaps, gt, ~everything))
    _, v2_alone_s = cpu(lambda: quantized_iou_table(qmaps, gt, multi_contour=True))  # for the V1-vs-V2 goal
    (table_v2, _), both_s = cpu(lambda: quantized_iou_tables(qmaps, gt, everything))

    def answers() -> None:
        v1 = BoxEvaluator((50,), args.interval, multi_contour=False)
        v1.accumulate_table(table_v1)
        BoxEvaluator(interval=args.interval, multi_contour=True).accumulate_table(table_v2)
        classic = ClassicLocEvaluator(v1.compute().best_threshold[50])
        labels = np.asarray(ok.column("label"), dtype=np.int64)
        scores = np.zeros((n, int(labels.max()) + 1))
        scores[np.arange(n), labels] = 1.0
        classic.accumulate_table(scores, labels, table_v1)

    _, answers_s = cpu(answers)
    phases = {
        "maps_array": raw_s,
        "prepare_quantized": prepare_s,
        "largest_contour_table_v1": v1_s,
        "multi_contour_tables_v2_added": both_s - v1_s,
        "table_answers": answers_s,
    }
    per_map = {k: round(1e3 * v / n, 3) for k, v in phases.items()}
    alone = {
        "largest_contour_v1": per_map["largest_contour_table_v1"],
        "multi_contour_v2": round(1e3 * v2_alone_s / n, 3),
    }
    total_ms = sum(per_map.values())
    cores = os.cpu_count() or 1
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "maps": str(args.maps),
        "map_grid": [int(ok.column("map_height")[0].as_py()), int(ok.column("map_width")[0].as_py())],
        "profiled_images": n,
        "store_images": n_all,
        "interval": args.interval,
        "read_store_cpu_seconds": round(read_s, 3),
        "cpu_ms_per_map": per_map,
        "cpu_ms_per_map_total": round(total_ms, 3),
        "cpu_ms_per_map_each_table_alone": alone,
        "projected_cpu_seconds_all_maps": round(total_ms * n_all / 1e3 + read_s, 1),
        "cores": cores,
        "wall_floor_seconds_on_these_cores": round((total_ms * n_all / 1e3 + read_s) / cores, 1),
        "note": "one thread, process CPU time; the stage sweeps V2 on the test part only (80% by default)",
    }
    write_json_atomic(args.out, report)
    print(report)


if __name__ == "__main__":
    main()
