"""Benchmark: the evaluate stage (``acol.stages.evaluation.evaluate_method``) on ILSVRC-size input, code trees side by side.

The input is the real ILSVRC val annotation (50,000 images, their sizes and 80,477 boxes, from the shipped
``tests/assets/wsol-metadata.tar.xz``) as a manifest, and a map store of CAM-like maps on a 14 x 14 grid
(VGG16-ACoL's, random fields squared: a few strong blobs over a weak background) stored in the map store's
precision (`MAP_DTYPE`), as extraction writes them. Both are made once into ``--work`` (not timed) and reused.
The figures in ``benchmarks/README.md`` were measured on float16 stores (the format then); a tree from before
the float32 store cannot read a ``--work`` built by a later one.

Each ``--tree`` (a checkout of this repository, e.g. ``git worktree add /tmp/old <commit>``) runs the stage on
the same files in a fresh process, one after the other: wall time, CPU time (all threads), peak RSS, and the
metrics, which must be identical in every tree or the script exits with an error. The kernels are compiled
on 16 maps before the clock starts.

    python benchmarks/bench_evaluate_stage.py --tree old=/tmp/old --tree new=. --images 50000 --interval 0.001 \\
        --out benchmarks/results/evaluate_stage_50000.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

ARCHIVE = Path(__file__).resolve().parents[1] / "tests" / "assets" / "wsol-metadata.tar.xz"
GRID = 14  # VGG16-ACoL's map grid at 224


def build_inputs(work: Path, n: int, seed: int) -> None:
    """``work/val.parquet`` (manifest) and ``work/maps/part-00000.parquet`` (map store) of the first n images."""
    from acol.data.manifest import write_manifest
    from acol.data.readers.wsol_metadata import read_wsol_metadata
    from acol.inference.mapstore import MAP_DTYPE, PARQUET_OPTIONS, columns_to_table

    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(ARCHIVE) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("ILSVRC/test")]
            tar.extractall(tmp, members=members, filter="data")
        manifest, _ = read_wsol_metadata(Path(tmp) / "ILSVRC" / "test", source="ilsvrc")
    manifest = manifest.slice(0, n)
    rng = np.random.default_rng(seed)
    fields = rng.random((manifest.num_rows, GRID, GRID)).astype(np.float32) ** 2
    maps = fields.reshape(len(fields), -1).astype(MAP_DTYPE)
    labels = np.asarray(manifest.column("class_index"), dtype=np.int32)
    shift = rng.choice([0, 1, 5], size=len(labels), p=[0.6, 0.3, 0.1])  # label 1st, 2nd, not in the top 5
    top5 = (labels[:, None] + np.arange(5)[None, :] - shift[:, None]) % 1000
    columns = {
        "image_id": np.asarray(manifest.column("image_id").to_pylist(), dtype=object),
        "label": labels,
        "error": np.full(len(labels), "", dtype=object),
        "top5_classes": top5.astype(np.int32),
        "top5_scores": np.tile(np.linspace(0.5, 0.1, 5, dtype=np.float32), (len(labels), 1)),
        "map_height": np.full(len(labels), GRID, np.int32),
        "map_width": np.full(len(labels), GRID, np.int32),
        "map_gt": maps,
        "map_top1": maps,
        "map_a_gt": maps,
        "pred_box": np.zeros((len(labels), 4), np.float32),
    }
    table = columns_to_table(columns, {"method": "cam", "classes": [str(i) for i in range(1000)]})
    order = np.argsort(np.asarray(table.column("image_id").to_pylist(), dtype=object), kind="stable")
    (work / "maps").mkdir(parents=True, exist_ok=True)
    import pyarrow.parquet as pq

    pq.write_table(table.take(pa.array(order)), work / "maps" / "part-00000.parquet", **PARQUET_OPTIONS)
    write_manifest(manifest, work / "val.parquet")


def measure(work: Path, interval: float) -> dict:
    """Run the stage once in this process (the tree on sys.path); its metrics and costs."""
    from acol.config import EvaluateParams
    from acol.data.manifest import read_manifest
    from acol.inference.mapstore import read_maps
    from acol.stages.evaluation import EVALUATED_COLUMNS, evaluate_method

    params = EvaluateParams(interval=interval)
    manifest = read_manifest(work / "val.parquet")
    maps = read_maps(work / "maps", EVALUATED_COLUMNS)
    evaluate_method(maps.slice(0, 16), manifest, work, params)  # compile the kernels (Numba cache)
    wall, cpu = time.perf_counter(), time.process_time()
    result = evaluate_method(maps, manifest, work, params)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(peak_mb),
        "metrics": result.metrics,
    }


def run_tree(tree: Path, work: Path, interval: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    cmd = [sys.executable, __file__, "--measure", "--work", str(work), "--interval", str(interval)]
    out = subprocess.run(cmd, env=env, cwd=tree, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of a checkout (repeatable)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_evaluate_stage")
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--interval", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # one tree, in this process
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.work, args.interval)))
        return
    stamp = args.work / f"inputs-{args.images}-{args.seed}.done"
    if not stamp.exists():
        build_inputs(args.work, args.images, args.seed)
        stamp.touch()
    trees = dict(t.split("=", 1) for t in args.tree) or {"here": "."}
    load_before = os.getloadavg()
    runs = {}
    for name, path in trees.items():
        runs[name] = run_tree(Path(path), args.work, args.interval)
        print(name, {k: v for k, v in runs[name].items() if k != "metrics"}, flush=True)
    first = next(iter(runs.values()))["metrics"]
    for name, run in runs.items():
        if run["metrics"] != first:
            sys.exit(f"tree {name} gives other metrics: {run['metrics']} vs {first}")
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_avg_before": load_before,
        "images": args.images,
        "interval": args.interval,
        "map_grid": GRID,
        "opencv": cv2.__version__,
        "runs": runs,
        "same_metrics": True,
    }
    print(json.dumps(first, indent=1))
    if args.out:
        from acol.io import write_json_atomic

        write_json_atomic(args.out, report)


if __name__ == "__main__":
    main()
