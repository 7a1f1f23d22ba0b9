"""Benchmark extraction: Ray Data vs the plain DataLoader loop on the same images, model and batch.

Reports images/s of each engine (the ratio Ray / plain), peak resident memory while each runs (the driver
alone, and the driver with every process it started: Ray's raylet and workers) at two or more dataset sizes,
to show that it stays flat as the dataset grows, and the Parquet bytes per image. Writes JSON to
benchmarks/results/. Images are random-noise JPEGs and the model is randomly initialized: speed and memory do
not depend on what the model learned.

    python benchmarks/bench_extract.py --sizes 128 512 --batch-size 32
    python benchmarks/bench_extract.py --device cuda --channels-last --bf16 --backbone vgg16 --image-size 224
    python benchmarks/bench_extract.py --sizes 2048 --resume --set extract.rows_per_file=256
    python benchmarks/bench_extract.py --sizes 1500 --batch-size 64 --image-size 224 --source-size 500 \
        --method cam --head-channels 32 --num-classes 1000 --rounds 3   # issue 23's command, paired 3 times
    python benchmarks/bench_extract.py --manifest <work>/prepare/val.parquet --data-root <work>/data \
        --method cam --sizes 50000 --image-size 64 --components 512   # as benchmarks/shadow_ilsvrc.sh prepares

``--manifest`` / ``--data-root``: the first N rows of a prepared manifest (e.g. the shadow ILSVRC val set at the
real image sizes) instead of generated noise JPEGs. ``--components K``: also the decode-only rate
(`decode_batch`, one process) and the model-only rate (`MapPredictor` on decoded batches) on K images, so
that the bottleneck of the engines has a name.

``--resume``: after the full run at the largest size, a run "killed" half way (the part writer raises once
half the parts are on disk, as a kill would leave them) and its rerun, which keeps those parts: the rerun's
wall time vs the full run's. Every row also has the time from the call to the first result batch
(``setup_seconds``: manifest, input hashes, resume scan; plus ``first_batch_seconds``).

Memory note: the sum of RSS counts shared pages (Ray's object store is shared memory) once per process that
maps them, so it over-states use; what matters is whether it grows with the dataset size.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil
import torch

import acol.distributed.extract as extract_module
from acol.config import load_params
from acol.data.manifest import manifest_classes, manifest_from_records, read_manifest, write_manifest
from acol.distributed.extract import ExtractionJob, ExtractSummary, extract, extract_plain
from acol.distributed.session import disable_usage_stats
from acol.inference.model_card import spec_from_card
from acol.inference.predict import ForwardOptions, MapPredictor, decode_batch
from acol.io import write_json_atomic
from acol.models import build_model

log = logging.getLogger("bench_extract")


class PeakMemory:
    """Samples RSS every `interval` s in a thread: peak of this process, and of it plus all descendants.

    Why not more often: walking Ray's dozen processes every 50 ms cost the driver 3.6 s of CPU in a 60 s run,
    taken from the engine it measures (py-spy); the plain loop has no children to walk.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.driver = 0
        self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = driver = me.memory_info().rss
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # exited between listing and reading
                    total += child.memory_info().rss
            self.driver, self.total = max(self.driver, driver), max(self.total, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def make_dataset(
    root: Path, count: int, size: int, classes: list[str], seed: int = 0
) -> list[dict[str, Any]]:
    """`count` random-noise JPEGs of size x size with a bright square (so maps are not flat)."""
    rng = np.random.default_rng(seed)
    (root / "val").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        x, y = rng.integers(0, size // 2, 2)
        image[y : y + size // 3, x : x + size // 3] = 250
        image_id = f"val/img_{i:07d}.JPEG"
        cv2.imwrite(str(root / image_id), image)
        records.append(
            {
                "image_id": image_id,
                "class_index": i % len(classes),
                "width": size,
                "height": size,
                "boxes": [],
            }
        )
    return records


class _Killed(BaseException):
    """The simulated kill: a BaseException, so nothing on its way catches it."""


@contextlib.contextmanager
def _killed_after_parts(parts: int):
    """The part writer raises `_Killed` once `parts` parts are on disk (the state a kill leaves)."""
    flush = extract_module._PartWriter._flush

    def flush_then_die(self, rows: int) -> None:
        flush(self, rows)
        if len(self.parts) >= parts:
            raise _Killed

    extract_module._PartWriter._flush = flush_then_die
    try:
        yield
    finally:
        extract_module._PartWriter._flush = flush


def _resume_row(run: Any, job: ExtractionJob, full: dict[str, Any], rows_per_file: int) -> dict[str, Any]:
    """Kill a run half way, rerun it: the rerun's times against the full run's."""
    job = dataclasses.replace(job, out_dir=Path(f"{job.out_dir}_resume"))
    half = max(full["parts"] // 2, 1)
    with contextlib.suppress(_Killed), _killed_after_parts(half):
        run(job)
    start = time.perf_counter()
    summary: ExtractSummary = run(job)
    wall = time.perf_counter() - start
    return {
        "engine": full["engine"],
        "images": full["images"],
        "killed_after_parts": half,
        "resumed_rows": summary.resumed_rows,
        "computed_rows": summary.computed_rows,
        "resumed_wall_seconds": round(wall, 3),
        "full_wall_seconds": full["wall_seconds"],
        "resumed_over_full": round(wall / full["wall_seconds"], 3),
        "rows_per_file": rows_per_file,
    }


def component_rates(
    manifest: Path, root: Path, model_path: Path, card: dict[str, Any], params: Any, count: int
) -> dict[str, float]:
    """Decode-only and model-only images/s on the first `count` rows, each alone in this process."""
    table = read_manifest(manifest).slice(0, count)
    columns = extract_module._input_columns(table)
    size, batch = params.train.image_size, params.extract.batch_size
    start, decoded = time.perf_counter(), []
    for first in range(0, table.num_rows, batch):
        decoded.append(
            decode_batch({k: v[first : first + batch] for k, v in columns.items()}, str(root), size)
        )
    decode_s = time.perf_counter() - start
    spec = spec_from_card(card, params, card["method"], manifest_classes(table))
    options = ForwardOptions(size=size, box_threshold=params.extract.box_threshold)
    predictor = MapPredictor(spec, str(model_path), options)
    predictor(decoded[0])  # warm-up, not timed
    start = time.perf_counter()
    for item in decoded:
        predictor(item)
    model_s = time.perf_counter() - start
    return {
        "images": table.num_rows,
        "decode_images_per_s": round(table.num_rows / decode_s, 1),
        "model_images_per_s": round(table.num_rows / model_s, 1),
        "torch_threads": torch.get_num_threads(),
    }


def keep_output(out: Path, manifest: Path, card: dict[str, Any], keep: Path) -> None:
    """The extraction (maps + summary), its manifest and model card, for the evaluate stage to read."""
    shutil.rmtree(keep, ignore_errors=True)
    shutil.copytree(out, keep)
    shutil.copy(manifest, keep / "manifest.parquet")
    write_json_atomic(keep / "model_card.json", card)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512], help="dataset sizes (images)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64, help="model input size S")
    parser.add_argument("--source-size", type=int, default=96, help="side of the generated JPEGs")
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--head-channels", type=int, default=256)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--num-actors", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (Ray then gives each actor one GPU)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward pass")
    parser.add_argument("--engines", nargs="+", default=["plain", "ray"], choices=["plain", "ray"])
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the engines this many times, the order reversed every other round (this VM's speed drifts "
        "by 20%% within minutes: only pairs run together compare); the ratio reported is the median",
    )
    parser.add_argument("--resume", action="store_true", help="also time a rerun after a half-way kill")
    parser.add_argument("--out", default="benchmarks/results/extract.json")
    parser.add_argument(
        "--manifest", type=Path, default=None, help="a prepared manifest instead of noise JPEGs"
    )
    parser.add_argument("--data-root", type=Path, default=None, help="the images of --manifest")
    parser.add_argument(
        "--components", type=int, default=0, help="decode-only / model-only rates on K images"
    )
    parser.add_argument("--method", default="acol", choices=["acol", "cam", "acol_a"])
    parser.add_argument("--plain-max", type=int, default=None, help="run the plain loop only up to this size")
    parser.add_argument(
        "--keep", type=Path, default=None, help="copy the largest run's output (maps, summary, card) here"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="params override, e.g. extract.decode_cpus=0.5",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    use_gpu = args.device.startswith("cuda")
    if (args.manifest is None) != (args.data_root is None):
        parser.error("--manifest and --data-root go together")
    source = read_manifest(args.manifest) if args.manifest is not None else None
    if source is not None and source.num_rows < max(args.sizes):
        parser.error(f"{args.manifest} has {source.num_rows} rows, fewer than --sizes {max(args.sizes)}")
    classes = (
        manifest_classes(source) if source is not None else [f"n{i:08d}" for i in range(args.num_classes)]
    )
    results: list[dict[str, Any]] = []
    resumes: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        work = Path(tmp)
        if source is None:
            data_root = work / "data"
            records = make_dataset(data_root, max(args.sizes), args.source_size, classes)
        else:
            data_root = args.data_root
        torch.manual_seed(0)
        model = build_model(args.backbone, len(classes), args.method, head_channels=args.head_channels)
        torch.save(model.state_dict(), work / "model.pt")
        card = {
            "method": args.method,
            "backbone": args.backbone,
            "num_classes": len(classes),
            "classes": classes,
            "model": {"head_channels": args.head_channels},
        }
        params = load_params(
            work / "none.yaml",
            [
                f"model.backbone={args.backbone}",
                f"train.image_size={args.image_size}",
                f"extract.batch_size={args.batch_size}",
                f"extract.num_actors={args.num_actors}",
                f"extract.use_gpu={str(use_gpu).lower()}",
                *args.set,
            ],
        )
        options = {"amp": args.bf16 or None, "channels_last": args.channels_last or None}  # None: the params'
        rounds = [args.engines if r % 2 == 0 else args.engines[::-1] for r in range(args.rounds)]
        for round_index, engine in ((r, e) for r, engines in enumerate(rounds) for e in engines):
            if engine == "ray":
                import ray

                disable_usage_stats()  # as the stage's private Ray
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            for n in args.sizes:
                if engine == "plain" and args.plain_max is not None and n > args.plain_max:
                    continue
                manifest = work / f"val_{n}.parquet"
                if source is not None:
                    table = source.slice(0, n)
                else:
                    table = manifest_from_records(records[:n], classes, "synthetic")
                write_manifest(table, manifest)
                out = work / "out" / f"{engine}_{n}_{round_index}"
                job = ExtractionJob(params, args.method, manifest, data_root, work / "model.pt", card, out)
                if engine == "ray":
                    run = functools.partial(extract, **options)
                else:
                    run = functools.partial(extract_plain, device=args.device, **options)
                start = time.perf_counter()
                with PeakMemory() as memory:
                    summary = run(job)
                wall = time.perf_counter() - start
                row = {
                    "engine": engine,
                    "round": round_index,
                    "images": n,
                    "images_per_s": summary.images_per_s,
                    "wall_seconds": round(wall, 3),
                    "call_to_first_batch_seconds": round(
                        summary.setup_seconds + summary.first_batch_seconds, 3
                    ),
                    "setup_seconds": summary.setup_seconds,
                    "first_batch_seconds": summary.first_batch_seconds,
                    "steady_images_per_s": summary.steady_images_per_s,
                    "seconds": summary.seconds,
                    "bytes_per_image": summary.bytes_per_image,
                    "peak_rss_driver_mb": round(memory.driver / 2**20, 1),
                    "peak_rss_total_mb": round(memory.total / 2**20, 1),
                    "parts": len(summary.parts),
                }
                log.info("%s", row)
                results.append(row)
                if args.resume and n == max(args.sizes) and round_index == 0:
                    resumes.append(_resume_row(run, job, row, params.extract.rows_per_file))
                    log.info("%s", resumes[-1])
                if args.keep is not None and n == max(args.sizes):  # the last engine's copy stays
                    keep_output(out, manifest, card, args.keep)
            if engine == "ray":
                ray.shutdown()
        components = None
        if args.components:
            manifest = work / f"val_{max(args.sizes)}.parquet"
            components = component_rates(
                manifest, data_root, work / "model.pt", card, params, args.components
            )
            log.info("components: %s", components)

    by_key = {(r["engine"], r["images"], r["round"]): r for r in results}

    def ratios_by_round(key: str) -> dict[int, list[float]]:
        """Ray / plain of each round, per size (rounds with both engines and a plain rate above 0)."""
        return {
            n: [
                round(by_key["ray", n, r][key] / by_key["plain", n, r][key], 3)
                for r in range(args.rounds)
                if ("ray", n, r) in by_key and ("plain", n, r) in by_key and by_key["plain", n, r][key] > 0
            ]
            for n in args.sizes
        }

    def medians(by_round: dict[int, list[float]]) -> dict[int, float]:
        return {n: round(statistics.median(values), 3) for n, values in by_round.items() if values}

    ratio_rounds, steady_rounds = ratios_by_round("images_per_s"), ratios_by_round("steady_images_per_s")
    ratios, steady_ratios = medians(ratio_rounds), medians(steady_rounds)
    report = {
        "config": {
            key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if use_gpu and torch.cuda.is_available() else None,
        },
        "results": results,
        "resume": resumes,
        "components": components,
        "ray_over_plain_images_per_s": ratios,
        "ray_over_plain_steady_images_per_s": steady_ratios,
        "ray_over_plain_images_per_s_by_round": ratio_rounds,
        "ray_over_plain_steady_images_per_s_by_round": steady_rounds,
        "note": "wall_seconds: the extract call; call_to_first_batch_seconds: from the call to the first result "
        "batch (import time excluded); images_per_s includes start-up (Ray: starting the actor and loading the model, a fixed cost); "
        "steady_images_per_s counts from the first result batch on; RSS sums count shared memory once per process.",
    }
    out = Path(args.out)
    write_json_atomic(out, report)
    for row in results:
        print(
            f"round {row['round']} {row['engine']:>5} {row['images']:>6} images: {row['images_per_s']:8.1f} images/s "
            f"({row['steady_images_per_s']:.1f} after a first batch at {row['first_batch_seconds']:.1f} s; "
            f"{row['call_to_first_batch_seconds']:.1f} s from the call), "
            f"peak RSS driver {row['peak_rss_driver_mb']:7.1f} MB, total {row['peak_rss_total_mb']:7.1f} MB, "
            f"{row['bytes_per_image']:.0f} bytes/image"
        )
    for row in resumes:
        print(
            f"{row['engine']:>5} resume: {row['resumed_rows']} rows kept, {row['computed_rows']} computed in "
            f"{row['resumed_wall_seconds']:.1f} s vs {row['full_wall_seconds']:.1f} s for the full run "
            f"({row['resumed_over_full']:.2f})"
        )
    if args.rounds > 1:
        print("Ray / plain images/s by round:", ratio_rounds, "steady:", steady_rounds)
    print("Ray / plain images/s (median):", ratios, "steady:", steady_ratios, "->", out)


if __name__ == "__main__":
    main()
