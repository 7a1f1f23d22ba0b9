"""Benchmark: shadow ILSVRC val generation (``layout: shadow_ilsvrc``) at the real image sizes, images/s per core.

Writes the first ``--num-images`` val images of the real ILSVRC val geometry (sizes, boxes, labels from the
shipped ``tests/assets/wsol-metadata.tar.xz``, ``ILSVRC/test``, extracted to a temporary folder) into a temporary
folder, in one process (``workers=1``), and reports wall and CPU time. CPU time is the steadier figure on a
shared machine: images per CPU second is the rate of one core, and 50,000 images / (rate x cores) the projected
time of the whole val set on an idle machine (an extrapolation, said so in the output).

    python benchmarks/bench_generate.py --num-images 300
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

from acol.data.synthetic import SyntheticConfig, generate_synthetic
from acol.io import write_json_atomic

ARCHIVE = Path(__file__).resolve().parents[1] / "tests" / "assets" / "wsol-metadata.tar.xz"
FULL_SCALE = 50_000


def extract_metadata(tmp: str) -> str:
    """The shipped ILSVRC/test metadata folder, extracted under ``tmp``."""
    with tarfile.open(ARCHIVE) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("ILSVRC/test")]
        tar.extractall(tmp, members=members, filter="data")
    return str(Path(tmp) / "ILSVRC" / "test")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=300)
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--out", default="benchmarks/results/bench_generate.json")
    args = p.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        config = SyntheticConfig(
            layout="shadow_ilsvrc",
            num_classes=1000,
            shadow_metadata=extract_metadata(tmp),
            num_val_images=args.num_images,
            train_per_class=0,
            jpeg_quality=args.jpeg_quality,
        )
        t0, c0 = time.perf_counter(), time.process_time()
        summary = generate_synthetic(Path(tmp) / "data", config, workers=1, progress=True)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        files = list((Path(tmp) / "data" / "val").glob("*.JPEG"))
        mean_bytes = float(np.mean([f.stat().st_size for f in files]))
    n = summary.images["val"]
    load_after = os.getloadavg()
    rate = n / cpu
    cores = os.cpu_count() or 1
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": cores,
            "python": platform.python_version(),
            "opencv": cv2.__version__,
            "numpy": np.__version__,
            "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        },
        "images": n,
        "boxes": summary.boxes,
        "jpeg_quality": args.jpeg_quality,
        "mean_jpeg_bytes": mean_bytes,
        "seconds_wall": wall,
        "seconds_cpu": cpu,
        "images_per_cpu_second": rate,
        "images_per_wall_second": n / wall,
        "note": "includes reading the 50,000-image metadata once; one process; projection is extrapolated",
        "projected_full_val_seconds": {
            "one_core": FULL_SCALE / rate,
            f"{cores}_cores": FULL_SCALE / rate / cores,
        },
    }
    print(
        f"{n} images ({summary.boxes} boxes) at the real sizes, JPEG quality {args.jpeg_quality}, "
        f"{mean_bytes / 1e3:.1f} kB each"
    )
    print(f"{wall:.1f} s wall ({n / wall:.1f} images/s), {cpu:.1f} s CPU: {rate:.1f} images per CPU second")
    print(
        f"projected 50,000 images: {FULL_SCALE / rate / 60:.1f} min on one idle core, "
        f"{FULL_SCALE / rate / cores / 60:.1f} min on {cores} (extrapolated)"
    )
    print(f"load average before/after: {load_before[0]:.1f} / {load_after[0]:.1f}")
    write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
