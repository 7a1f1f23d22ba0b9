"""Benchmark the ILSVRC readers of the prepare stage: files/s with image verification on and off.

Indexes an ILSVRC-layout root (e.g. the shadow val set of ``layout: shadow_ilsvrc``) with
`read_ilsvrc_val` and `read_ilsvrc_train`, each with ``verify_images`` off (sizes from the JPEG headers) and on
(every image decoded), at 1 thread and at every core, and prints files/s and files per CPU-second, so that the
time for the real 1,281,167 train images can be stated (printed as arithmetic, not a measurement).

    python benchmarks/bench_index.py --root data/shadow --out benchmarks/results/index.json
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

from acol.data.readers.ilsvrc import read_ilsvrc_train, read_ilsvrc_val
from acol.io import write_json_atomic

ILSVRC_TRAIN_IMAGES = 1_281_167


def time_reader(split: str, root: Path, verify: bool, threads: int) -> dict[str, Any]:
    """One indexing pass: wall and CPU seconds, files/s, files per CPU-second."""
    synsets = root / "LOC_synset_mapping.txt"
    wall, cpu = time.perf_counter(), time.process_time()  # CPU of every thread, as the other benchmarks
    if split == "val":
        table, problems = read_ilsvrc_val(
            root, synsets, root / "LOC_val_solution.csv", verify_images=verify, num_threads=threads
        )
    else:
        table, problems = read_ilsvrc_train(root, synsets, verify_images=verify, num_threads=threads)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "split": split,
        "verify_images": verify,
        "threads": threads,
        "files": table.num_rows,
        "problems": len(problems),
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "files_per_s": round(table.num_rows / wall, 1),
        "files_per_cpu_s": round(table.num_rows / cpu, 1) if cpu > 0 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, required=True, help="an ILSVRC-layout dataset root")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/index.json"))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    for split in args.splits:
        for verify in (False, True):
            for threads in sorted({1, cores}):
                rows.append(time_reader(split, args.root, verify, threads))
                print(rows[-1], flush=True)
    verified = [r for r in rows if r["split"] == "train" and r["verify_images"] and r["threads"] == cores]
    projection = None
    if verified and verified[0]["files_per_cpu_s"]:
        per_cpu_s = verified[0]["files_per_cpu_s"]
        projection = {
            "train_images": ILSVRC_TRAIN_IMAGES,
            "verified_files_per_cpu_s": per_cpu_s,
            "cpu_hours": round(ILSVRC_TRAIN_IMAGES / per_cpu_s / 3600, 2),
            "wall_hours_at_measured_rate": round(ILSVRC_TRAIN_IMAGES / verified[0]["files_per_s"] / 3600, 2),
            "note": "arithmetic from the rates measured on this root (its image sizes, this machine's load and "
            "page cache), not a measurement of the real train set",
        }
        print("ILSVRC train with verification, projected:", projection)
    report = {
        "machine": {"cpus": cores, "platform": platform.platform()},
        "root": str(args.root),
        "results": rows,
        "projection": projection,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    write_json_atomic(args.out, report)
    print("->", args.out)


if __name__ == "__main__":
    main()
