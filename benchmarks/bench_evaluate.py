"""Benchmark: the project's BoxEvaluator against the plain per-threshold protocol loop, same maps.

Maps are synthetic smooth maps (bicubic-upsampled noise, 2..16 cells a side); boxes are the real ILSVRC val
boxes of the first ``--num-images`` images of a WSOL metadata folder, scaled to 224. The reference runs on
the first ``--reference-images`` images only; its per-image time is extrapolated to all images (said so in
the output), and its numbers on that subset must equal the evaluator's on the same subset.

    python benchmarks/bench_evaluate.py /work/shared/data/wsol-metadata/ILSVRC/test --num-images 2000 \
        --interval 0.001 --reference-images 200 --workers 2
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from acol.boxes import scale_boxes
from acol.evaluate import read_wsol_metadata, write_json_atomic
from acol.maps import normalize_maps
from acol.metrics import BoxEvaluator
from acol.metrics_reference import reference_box_accuracy


def synthetic_maps(n: int, seed: int) -> np.ndarray:
    """(n, 224, 224) float64 smooth maps in [0, 1]."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 224, 224))
    for i, k in enumerate(rng.integers(2, 17, n)):
        out[i] = cv2.resize(rng.random((k, k)), (224, 224), interpolation=cv2.INTER_CUBIC)
    return normalize_maps(out)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("metadata", help="WSOL metadata folder with real boxes (e.g. .../ILSVRC/test)")
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--interval", type=float, default=0.001)
    p.add_argument("--reference-images", type=int, default=200)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--single-contour", action="store_true")
    p.add_argument("--out", default="benchmarks/results/bench_evaluate.json")
    args = p.parse_args()

    meta = read_wsol_metadata(args.metadata)
    ids = meta.image_ids[: args.num_images]
    gts = [scale_boxes(meta.boxes[i], *meta.sizes[i]) for i in ids]
    maps = synthetic_maps(len(ids), seed=0)
    multi = not args.single_contour
    n_ref = min(args.reference_images, len(ids))

    t0 = time.perf_counter()
    with BoxEvaluator(interval=args.interval, multi_contour=multi, n_workers=args.workers) as ev:
        ev.accumulate(maps, gts)
        fast = ev.compute()
    t_fast = time.perf_counter() - t0

    sub = BoxEvaluator(interval=args.interval, multi_contour=multi)
    sub.accumulate(maps[:n_ref], gts[:n_ref])
    sub_res = sub.compute()
    t0 = time.perf_counter()
    ref = reference_box_accuracy(maps[:n_ref], gts[:n_ref], args.interval, (30, 50, 70), multi)
    t_ref_sub = time.perf_counter() - t0
    identical = all(np.array_equal(sub_res.curves[k], ref[k]) for k in (30, 50, 70))
    t_ref_all = t_ref_sub / n_ref * len(ids)

    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "python": platform.python_version(),
            "opencv": cv2.__version__,
            "numpy": np.__version__,
        },
        "num_images": len(ids),
        "interval": args.interval,
        "multi_contour": multi,
        "workers": args.workers,
        "evaluator_seconds": t_fast,
        "evaluator_ms_per_image": 1e3 * t_fast / len(ids),
        "reference_images": n_ref,
        "reference_seconds_on_subset": t_ref_sub,
        "reference_seconds_extrapolated": t_ref_all,
        "reference_ms_per_image": 1e3 * t_ref_sub / n_ref,
        "speedup": t_ref_all / t_fast,
        "identical_on_subset": identical,
        "max_box_acc": {str(k): v for k, v in fast.max_box_acc.items()},
        "mean_max_box_acc": fast.mean_max_box_acc,
    }
    print(f"{len(ids)} maps, interval {args.interval}, multi_contour={multi}, {args.workers} workers")
    print(f"evaluator: {t_fast:.1f} s ({result['evaluator_ms_per_image']:.2f} ms/image)")
    print(
        f"reference: {t_ref_sub:.1f} s on {n_ref} images ({result['reference_ms_per_image']:.2f} ms/image), "
        f"extrapolated to {len(ids)}: {t_ref_all:.1f} s"
    )
    print(f"speed-up {result['speedup']:.1f}x; identical on the reference subset: {identical}")
    print(f"MaxBoxAcc per IoU {result['max_box_acc']}, mean {fast.mean_max_box_acc:.3f}")
    write_json_atomic(result, args.out)
    if not identical:
        raise SystemExit("evaluator and reference disagree")


if __name__ == "__main__":
    main()
