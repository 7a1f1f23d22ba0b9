"""Benchmark: the project's BoxEvaluator (MaxBoxAccV2, MaxBoxAcc) against the plain per-threshold protocol loop.

Maps are synthetic CAM-like maps: random low-resolution fields (7x7, 14x14 or 28x28) upsampled bicubic to
224 and min-max normalized, as a network's maps are; float32, made batch by batch (not timed). Boxes are the
real ILSVRC val boxes (by default from the shipped archive ``tests/assets/wsol-metadata.tar.xz``,
``ILSVRC/test``, extracted to a temporary folder), scaled to 224 the protocol's way.

The reference (``acol.wsol.reference``: ``cv2.threshold`` + ``cv2.findContours`` per map per threshold)
is too slow for all maps: it runs on the first ``--reference-images`` maps in one process and its time is
extrapolated linearly to all maps and to the full 50,000 (said so in the output). The evaluator's curves on
that subset must equal the reference's exactly, or the script exits with an error. Wall time and CPU time
(all threads) are both reported: on a shared machine the CPU time is the steadier figure.

    python benchmarks/bench_evaluate.py --num-images 5000 --interval 0.001 --reference-images 200 --workers 2
    python benchmarks/bench_evaluate.py --num-images 2000 --contours both --out benchmarks/results/bench_evaluate_single.json

``--contours both`` runs MaxBoxAccV2 (multi-contour) and MaxBoxAcc (largest contour) side by side in one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from acol.data.readers.wsol_metadata import read_wsol_localization
from acol.io import write_json_atomic
from acol.wsol.boxes import scale_boxes
from acol.wsol.localization_metrics import BoxEvaluator
from acol.wsol.reference import reference_box_accuracy
from acol.wsol.scoremaps import normalize_maps

ARCHIVE = Path(__file__).resolve().parents[1] / "tests" / "assets" / "wsol-metadata.tar.xz"
FULL_SCALE = 50_000  # ILSVRC val: the protocol's full evaluation


def synthetic_maps(n: int, seed: int) -> np.ndarray:
    """(n, 224, 224) float32 CAM-like maps in [0, 1]: random 7/14/28-cell fields, bicubic to 224."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 224, 224), np.float32)
    for i, k in enumerate(rng.choice([7, 14, 28], n)):
        field = rng.random((k, k)).astype(np.float32) ** 2  # a few strong blobs over a weak background
        out[i] = cv2.resize(field, (224, 224), interpolation=cv2.INTER_CUBIC)
    return normalize_maps(out)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_boxes(metadata: str | None, n: int, tmp: str) -> list[np.ndarray]:
    """GT boxes (k_i, 4) in the 224 frame of the first n images (cycled if the folder has fewer)."""
    if metadata is None:
        with tarfile.open(ARCHIVE) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("ILSVRC/test")]
            tar.extractall(tmp, members=members, filter="data")
        metadata = str(Path(tmp) / "ILSVRC" / "test")
    meta, _ = read_wsol_localization(metadata)
    ids = [meta.image_ids[i % len(meta.image_ids)] for i in range(n)]
    return [scale_boxes(np.asarray(meta.boxes[i]), *meta.sizes[i]) for i in ids]


def measure(args: argparse.Namespace, gts: list[np.ndarray], n_ref: int, multi_contour: bool) -> dict:
    """Time the evaluator on all maps and the reference loop on the first ``n_ref``; check they agree."""
    n = len(gts)
    wall = cpu = 0.0
    ref_maps = None
    warm_up = BoxEvaluator(interval=args.interval, multi_contour=multi_contour)  # compiles or loads the cache
    warm_up.accumulate(synthetic_maps(2, seed=10**9), gts[:2])
    with BoxEvaluator(interval=args.interval, multi_contour=multi_contour, n_workers=args.workers) as ev:
        for start in range(0, n, args.batch):
            maps = synthetic_maps(min(args.batch, n - start), seed=start)
            if start == 0:
                ref_maps = maps[:n_ref].copy()
            t0, c0 = time.perf_counter(), time.process_time()
            ev.accumulate(maps, gts[start : start + len(maps)])
            wall += time.perf_counter() - t0
            cpu += time.process_time() - c0
        fast = ev.compute()
    assert ref_maps is not None
    sub = BoxEvaluator(interval=args.interval, multi_contour=multi_contour)
    sub.accumulate(ref_maps, gts[:n_ref])
    sub_res = sub.compute()
    t0, c0 = time.perf_counter(), time.process_time()
    ref = reference_box_accuracy(ref_maps, gts[:n_ref], args.interval, (30, 50, 70), multi_contour)
    t_ref, c_ref = time.perf_counter() - t0, time.process_time() - c0
    ref_ms, ref_cpu_ms = 1e3 * t_ref / n_ref, 1e3 * c_ref / n_ref
    ev_ms, ev_cpu_ms = 1e3 * wall / n, 1e3 * cpu / n
    return {
        "multi_contour": multi_contour,
        "num_thresholds": len(fast.thresholds),
        "evaluator_seconds": wall,
        "evaluator_cpu_seconds": cpu,
        "evaluator_ms_per_image": ev_ms,
        "evaluator_cpu_ms_per_image": ev_cpu_ms,
        "reference_seconds_on_subset": t_ref,
        "reference_ms_per_image": ref_ms,
        "reference_cpu_ms_per_image": ref_cpu_ms,
        "speedup_wall": ref_ms / ev_ms,
        "speedup_cpu": ref_cpu_ms / ev_cpu_ms,
        "projected_full_scale_seconds": {
            "images": FULL_SCALE,
            "evaluator_wall": ev_ms * FULL_SCALE / 1e3,
            "evaluator_cpu_over_workers": ev_cpu_ms * FULL_SCALE / 1e3 / args.workers,
            "reference_wall_extrapolated": ref_ms * FULL_SCALE / 1e3,
        },
        "identical_on_subset": all(np.array_equal(sub_res.curves[k], ref[k]) for k in (30, 50, 70)),
        "max_box_acc": {str(k): v for k, v in fast.max_box_acc.items()},
        "mean_max_box_acc": fast.mean_max_box_acc,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("metadata", nargs="?", help="WSOL metadata folder (default: the shipped ILSVRC/test)")
    p.add_argument("--num-images", type=int, default=5000)
    p.add_argument("--interval", type=float, default=0.001)
    p.add_argument("--reference-images", type=int, default=200)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch", type=int, default=1000, help="maps made and accumulated per batch")
    p.add_argument(
        "--contours",
        choices=["multi", "single", "both"],
        default="multi",
        help="MaxBoxAccV2 (all contours), MaxBoxAcc (largest contour) or both side by side",
    )
    p.add_argument("--out", default="benchmarks/results/bench_evaluate.json")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        gts = load_boxes(args.metadata, args.num_images, tmp)
    n = len(gts)
    n_ref = min(args.reference_images, n)
    load_before = os.getloadavg()

    modes = {"multi": [True], "single": [False], "both": [True, False]}[args.contours]
    runs = {("MaxBoxAccV2" if m else "MaxBoxAcc"): measure(args, gts, n_ref, m) for m in modes}
    load_after = os.getloadavg()
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "python": platform.python_version(),
            "opencv": cv2.__version__,
            "numpy": np.__version__,
            "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        },
        "maps": "synthetic CAM-like: 7/14/28-cell random fields squared, bicubic to 224, float32",
        "boxes": args.metadata or "tests/assets/wsol-metadata.tar.xz ILSVRC/test (ILSVRC 2012 val)",
        "num_images": n,
        "interval": args.interval,
        "workers": args.workers,
        "reference_images": n_ref,
        "reference_note": "one process, on the first maps only; all-map times below are extrapolated",
        **(next(iter(runs.values())) if len(runs) == 1 else {"runs": runs}),
    }
    print(f"{n} maps, interval {args.interval}, {args.workers} workers")
    for name, r in runs.items():
        full = r["projected_full_scale_seconds"]
        print(
            f"{name}: evaluator {r['evaluator_seconds']:.1f} s wall ({r['evaluator_ms_per_image']:.2f} ms/map), "
            f"{r['evaluator_cpu_seconds']:.1f} s CPU ({r['evaluator_cpu_ms_per_image']:.2f} ms/map)"
        )
        print(
            f"  reference: {r['reference_seconds_on_subset']:.1f} s on {n_ref} maps "
            f"({r['reference_ms_per_image']:.2f} ms/map wall, {r['reference_cpu_ms_per_image']:.2f} CPU)"
        )
        print(f"  speed-up: {r['speedup_wall']:.1f}x wall, {r['speedup_cpu']:.1f}x CPU time")
        print(
            f"  projected to {FULL_SCALE} maps: evaluator {full['evaluator_wall']:.0f} s wall; reference "
            f"{full['reference_wall_extrapolated']:.0f} s (extrapolated from {n_ref} maps)"
        )
        print(
            f"  identical on the reference subset: {r['identical_on_subset']}; MaxBoxAcc {r['max_box_acc']}"
        )
    print(f"load average before/after: {load_before[0]:.1f} / {load_after[0]:.1f}")
    write_json_atomic(args.out, result)
    if not all(r["identical_on_subset"] for r in runs.values()):
        raise SystemExit("evaluator and reference disagree")


if __name__ == "__main__":
    main()
