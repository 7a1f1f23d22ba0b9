"""Benchmark: does float16 map storage change anything the WSOL protocol sees, and which Parquet encoding of the
maps reads back fastest? (It decided the map store's format: float32, BYTE_STREAM_SPLIT, no dictionary.)

Part 1, precision. Real-size inputs: the first ``--images`` shadow ILSVRC val images (the real sizes, boxes
and labels of ILSVRC 2012 val from the shipped ``tests/assets/wsol-metadata.tar.xz``, ``ILSVRC/test``), decoded
and resized to the model input (224) as extraction does (`decode_batch`), through a trained model
(``--model`` with its ``model_card.json``; a 2-class card gets label = ILSVRC class index % 2, since the
shadow images of any class serve as inputs) or a randomly initialized one (``--random-backbone resnet50``,
1,000 classes, the real labels). Every map is computed ONCE in float32 (`MapPredictor`: the map store's
precision; when this was measured the store rounded to float16 and this script replaced that rounding, in its
process only, by a float32 copy); the float16 version is that same array rounded as the float16 store rounded
it (``torch .to(float16)``) and read back as `maps_array` reads it (``.astype(float32)``). Both go through the
protocol's own code: `prepare_quantized`
(bicubic to 224, min-max, uint8), box IoU tables (`quantized_iou_tables`), boxes at each threshold of the 0.01
and 0.001 grids (`boxes_from_mask`, OpenCV), the predicted box at ``extract.box_threshold`` from ``map_top1``
(`boxes_from_maps`), and `evaluate_method` (MaxBoxAcc, MaxBoxAccV2, GT-known, top-1/5 loc, the chosen CAM
threshold) at both grid steps. Reported: how many images' quantized maps / boxes differ, the smallest IoU
between an image's float16 and float32 box, the largest change of an image's best IoU with its GT boxes, and
each metric's difference.

Part 2, encoding. The same float32 maps (``map_gt``, (N, h, w)) written as Parquet (zstd 3, the map store's
compression) in three encodings, each in float16 and float32: ``list`` (the store's: built from offsets,
`acol.inference.mapstore._list_column`), ``fixed_size_list<h*w>`` and Arrow's canonical fixed-shape tensor
extension type (``arrow.fixed_shape_tensor``, shape (h, w)); each with three Parquet value encodings:
pyarrow's default (dictionary encoding first: the float16 store's), the dictionary off (PLAIN),
and BYTE_STREAM_SPLIT (``use_byte_stream_split``, dictionary off: it groups the floats' bytes by significance,
which zstd compresses better). Read back = ``pq.read_table`` of the map column +
conversion to an (N, h, w) float32 NumPy array (`maps_array`'s path for ``list``); median of ``--repeats``
reads from the page cache, interleaved, and file bytes. Besides the N real maps, the same maps tiled to
``--read-rows`` rows (ILSVRC val scale) time the read where per-call overhead does not dominate; the tiled
files' sizes are not representative (the compressor can find the repeats) and are reported only for the N rows.

    python benchmarks/bench_map_precision.py --images 600 \
        --model /tmp/reh2/repo/outputs/train/acol/model.pt --out benchmarks/results/map_precision.json

Maps and data are kept in ``--work`` (reruns reuse them; ``--fresh`` recomputes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from acol.config import load_params
from acol.data.manifest import manifest_from_records
from acol.data.shadow_ilsvrc import metadata_geometry
from acol.data.synthetic import SyntheticConfig, generate_synthetic
from acol.inference.mapstore import MAP_DTYPE, PARQUET_OPTIONS, _list_column, columns_to_table, maps_array
from acol.inference.model_card import spec_from_card
from acol.inference.predict import ForwardOptions, MapPredictor, decode_batch
from acol.io import write_json_atomic
from acol.models import build_model
from acol.stages.evaluation import evaluate_method, holdout_mask
from acol.wsol.boxes import boxes_from_maps, boxes_from_mask, iou, scale_boxes
from acol.wsol.localization_metrics import quantized_iou_tables, threshold_grid
from acol.wsol.scoremaps import prepare_quantized

ARCHIVE = Path(__file__).resolve().parents[1] / "tests" / "assets" / "wsol-metadata.tar.xz"
MAPS = ("map_gt", "map_top1", "map_a_gt", "map_b_gt")
# Parquet value encodings of the map column: pyarrow's default (the map store's: a dictionary, which falls back to
# PLAIN once it passes 1 MB), PLAIN, and BYTE_STREAM_SPLIT (both with the dictionary off)
VALUE_ENCODINGS = ("dictionary", "plain", "byte_stream_split")


# ----------------------------------------------------------------------------------------------- inputs
def shadow_data(work: Path, n: int) -> tuple[Path, list[Any]]:
    """The first n shadow ILSVRC val images (real sizes) under work/data, and their geometry."""
    meta_root = work / "metadata"
    if not (meta_root / "ILSVRC" / "test").is_dir():
        with tarfile.open(ARCHIVE) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("ILSVRC/test")]
            tar.extractall(meta_root, members=members, filter="data")
    metadata = str(meta_root / "ILSVRC" / "test")
    config = SyntheticConfig(
        layout="shadow_ilsvrc",
        num_classes=1000,
        shadow_metadata=metadata,
        num_val_images=n,
        train_per_class=0,
        jpeg_quality=90,
    )
    root = work / f"data_{n}"
    generate_synthetic(root, config, workers=1, progress=True)
    return root, metadata_geometry(metadata)[:n]


def float32_maps(args: argparse.Namespace, work: Path, root: Path, geometry: list[Any]) -> dict[str, Any]:
    """Every map-store column of the n images, maps in float32 (computed once; cached in work)."""
    tag = "random_" + args.random_backbone if args.random_backbone else Path(args.model).parent.name
    cache = work / f"maps_{tag}_{len(geometry)}.npz"
    meta_path = cache.with_suffix(".json")
    if cache.exists() and meta_path.exists() and not args.fresh:
        with np.load(cache, allow_pickle=False) as z:
            cols = {k: z[k] for k in z.files}
        return {"columns": cols, **json.loads(meta_path.read_text())}
    params = load_params(work / "none.yaml", ["train.image_size=224"])
    if args.random_backbone:
        classes = [f"n{i:08d}" for i in range(1000)]
        card = {"method": "acol", "backbone": args.random_backbone, "num_classes": 1000, "classes": classes}
        torch.manual_seed(0)
        spec = spec_from_card(card, params, "acol", classes)
        model_path = work / f"random_{args.random_backbone}.pt"
        torch.save(build_model(spec).state_dict(), model_path)
        label_of = lambda k: k  # noqa: E731
        model_desc = f"ACoL {args.random_backbone}, random initial weights (torch seed 0), 1000 classes"
    else:
        model_path = Path(args.model)
        card = json.loads((model_path.parent / "model_card.json").read_text())
        classes = list(card["classes"])
        spec = spec_from_card(card, params, card["method"], classes)
        label_of = lambda k: k % len(classes)  # noqa: E731
        model_desc = (
            f"{card['method']} {card['backbone']} from {model_path} ({len(classes)} classes; "
            f"card metrics {card.get('metrics')}); label = ILSVRC class index % {len(classes)}"
        )
    records = [
        {
            "image_id": g.name,
            "class_index": label_of(g.label),
            "width": g.width,
            "height": g.height,
            "boxes": [list(b) for b in g.boxes],
        }
        for g in geometry
    ]
    if np.dtype(np.float32) != MAP_DTYPE:
        raise SystemExit(f"the map store keeps {MAP_DTYPE}: part 1 needs the float32 maps")
    torch.set_num_threads(args.threads)
    options = ForwardOptions(size=224, box_threshold=params.extract.box_threshold)
    predictor = MapPredictor(spec, str(model_path), options)
    parts: list[dict[str, np.ndarray]] = []
    t0, c0 = time.perf_counter(), time.process_time()
    for first in range(0, len(records), args.batch_size):
        chunk = records[first : first + args.batch_size]
        batch = {
            "image_id": np.array([r["image_id"] for r in chunk], dtype=object),
            "class_index": np.array([r["class_index"] for r in chunk], dtype=np.int64),
            "width": np.array([r["width"] for r in chunk], dtype=np.int64),
            "height": np.array([r["height"] for r in chunk], dtype=np.int64),
        }
        parts.append(predictor(decode_batch(batch, str(root), 224)))
        print(f"  maps {first + len(chunk)}/{len(records)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    cols: dict[str, np.ndarray] = {}
    for name in parts[0]:
        values = [p[name] for p in parts]
        cols[name] = np.concatenate(
            [np.asarray(v, dtype=object if name in ("image_id", "error") else None) for v in values]
        )
    cols["image_id"] = cols["image_id"].astype(str)
    cols["error"] = np.array([e if e else "" for e in cols["error"]], dtype=str)
    for name in MAPS:
        if name in cols and cols[name].dtype != np.float32:
            raise RuntimeError(f"{name} is {cols[name].dtype}, expected float32 (the patch did not take)")
    meta = {
        "model": model_desc,
        "classes": classes,
        "records": records,
        "extract_seconds_wall": round(wall, 1),
        "extract_seconds_cpu": round(cpu, 1),
        "box_threshold": params.extract.box_threshold,
    }
    np.savez(cache, **cols)
    meta_path.write_text(json.dumps(meta))
    return {"columns": cols, **meta}


def as_float16(maps: np.ndarray) -> np.ndarray:
    """What the float16 map store kept (torch's round-to-nearest float16) read back as `maps_array` does."""
    return torch.from_numpy(np.ascontiguousarray(maps)).to(torch.float16).numpy().astype(np.float32)


# ----------------------------------------------------------------------------------------------- part 1
def box_changes(q16: np.ndarray, q32: np.ndarray, grid: np.ndarray) -> dict[str, Any]:
    """Per image and threshold of `grid`, the protocol's boxes of both quantized maps (largest contour and all
    contours): images / (image, threshold) pairs whose boxes differ, and the smallest IoU between the float16
    and the float32 largest-contour box. Masks are compared first: equal masks give equal boxes."""
    out = {
        "images_any_box_differs_largest": 0,
        "images_any_box_differs_multi": 0,
        "pairs_box_differs_largest": 0,
        "pairs_box_differs_multi": 0,
        "min_iou_f16_vs_f32_box_largest": 1.0,
        "pairs": int(len(q16) * len(grid)),
    }
    for a, b in zip(q16, q32, strict=True):
        ca = np.floor(grid * float(a.max())).astype(np.int64)
        cb = np.floor(grid * float(b.max())).astype(np.int64)
        seen: dict[tuple[int, int], tuple[bool, bool, float]] = {}
        diff_l = diff_m = 0
        for x, y in zip(ca.tolist(), cb.tolist(), strict=True):
            if (x, y) not in seen:
                ma, mb = a > x, b > y
                if np.array_equal(ma, mb):
                    seen[x, y] = (False, False, 1.0)
                else:
                    la, lb = boxes_from_mask(ma, False), boxes_from_mask(mb, False)
                    xa, xb = boxes_from_mask(ma, True), boxes_from_mask(mb, True)
                    dl = not np.array_equal(la, lb)
                    dm = not (
                        xa.shape == xb.shape and np.array_equal(np.sort(xa, axis=0), np.sort(xb, axis=0))
                    )
                    seen[x, y] = (dl, dm, float(iou(la, lb)[0, 0]) if dl else 1.0)
            dl, dm, v = seen[x, y]
            diff_l += dl
            diff_m += dm
            out["min_iou_f16_vs_f32_box_largest"] = min(out["min_iou_f16_vs_f32_box_largest"], v)
        out["pairs_box_differs_largest"] += diff_l
        out["pairs_box_differs_multi"] += diff_m
        out["images_any_box_differs_largest"] += diff_l > 0
        out["images_any_box_differs_multi"] += diff_m > 0
    out["min_iou_f16_vs_f32_box_largest"] = round(out["min_iou_f16_vs_f32_box_largest"], 6)
    return out


def precision_part(data: dict[str, Any], root: Path, work: Path, intervals: list[float]) -> dict[str, Any]:
    cols, records = data["columns"], data["records"]
    ok = cols["error"] == ""
    if not ok.all():
        raise RuntimeError(f"{int((~ok).sum())} images failed to decode: {set(cols['error'][~ok])}")
    n = len(records)
    h, w = int(cols["map_height"][0]), int(cols["map_width"][0])
    gt = [scale_boxes(np.asarray(r["boxes"]), r["width"], r["height"]) for r in records]
    m32 = cols["map_gt"].reshape(n, h, w)
    m16 = as_float16(m32)
    rel = np.abs(m16 - m32)
    q32, q16 = prepare_quantized(m32), prepare_quantized(m16)
    qdiff = q16.astype(np.int16) - q32.astype(np.int16)
    result: dict[str, Any] = {
        "images": n,
        "map_grid": [h, w],
        "float16_rounding_max_abs": float(rel.max()),
        "quantized_224": {
            "images_differing": int((qdiff != 0).any(axis=(1, 2)).sum()),
            "pixels_differing": int((qdiff != 0).sum()),
            "pixels": int(qdiff.size),
            "max_abs_level_difference": int(np.abs(qdiff).max()),
            "images_qmax_differs": int((q16.max(axis=(1, 2)) != q32.max(axis=(1, 2))).sum()),
        },
    }
    # best IoU with the GT boxes at every cut, both contour modes: what every box metric counts
    every = np.ones(n, dtype=bool)
    multi32, large32 = quantized_iou_tables(q32, gt, every)
    multi16, large16 = quantized_iou_tables(q16, gt, every)
    boxes: dict[str, Any] = {}
    for interval in intervals:
        grid = threshold_grid(interval)
        entry = box_changes(q16, q32, grid)
        for mode, (t16, t32) in {"largest": (large16, large32), "multi": (multi16, multi32)}.items():
            d = np.abs(t16.at(grid) - t32.at(grid))
            entry[f"images_best_gt_iou_changes_{mode}"] = int((d > 0).any(axis=1).sum())
            entry[f"max_best_gt_iou_change_{mode}"] = round(float(d.max()), 6)
            hits = {
                k: int(((t16.at(grid) >= k / 100) != (t32.at(grid) >= k / 100)).sum()) for k in (30, 50, 70)
            }
            entry[f"pairs_hit_flips_{mode}_iou30_50_70"] = list(hits.values())
        boxes[str(interval)] = entry
    result["boxes_per_threshold"] = boxes
    # the predicted box (top-1 map) at extract.box_threshold, in original pixels, as predict_batch stores it
    top32 = cols["map_top1"].reshape(n, h, w)
    widths = np.array([r["width"] for r in records])
    heights = np.array([r["height"] for r in records])
    p32 = boxes_from_maps(top32, widths, heights, data["box_threshold"])
    p16 = boxes_from_maps(as_float16(top32), widths, heights, data["box_threshold"])
    differ = ~(p16 == p32).all(axis=1)
    ious = [
        float(iou(a.astype(np.int64), b.astype(np.int64))[0, 0])
        for a, b in zip(p16[differ], p32[differ], strict=True)
    ]
    result["pred_box"] = {
        "box_threshold": data["box_threshold"],
        "images_differing": int(differ.sum()),
        "min_iou_f16_vs_f32": round(min(ious), 6) if ious else 1.0,
    }
    # the evaluate stage on both versions
    classes = data["classes"]
    manifest = manifest_from_records(records, classes, "ilsvrc")
    base = {k: cols[k] for k in cols if k not in ("width", "height")}
    table32 = columns_to_table(base)  # the map store's float32
    # the float16 values, as reading a float16 store gives them (as float32)
    table16 = columns_to_table({**base, **{k: cols[k].astype(np.float16) for k in MAPS if k in cols}})
    metrics: dict[str, Any] = {}
    for interval in intervals:
        params = load_params(work / "none.yaml", [f"evaluate.interval={interval}"]).evaluate
        t0 = time.perf_counter()
        r32 = evaluate_method(table32, manifest, root, params).metrics
        r16 = evaluate_method(table16, manifest, root, params).metrics
        keys = [k for k in r32 if isinstance(r32[k], (int, float)) and not isinstance(r32[k], bool)]
        metrics[str(interval)] = {
            "float32": {k: r32[k] for k in keys},
            "float16": {k: r16[k] for k in keys},
            "difference_f16_minus_f32": {k: round(r16[k] - r32[k], 9) for k in keys},
            "seconds": round(time.perf_counter() - t0, 1),
        }
    result["metrics"] = metrics
    result["holdout_images"] = int(holdout_mask([r["image_id"] for r in records], 0.2).sum())
    return result


# ----------------------------------------------------------------------------------------------- part 2
# the map store's compression alone: each variant below sets its own value encoding
COMPRESSION = {k: PARQUET_OPTIONS[k] for k in ("compression", "compression_level", "write_statistics")}


def encode(maps: np.ndarray, encoding: str, dtype: str) -> pa.Array:
    n, h, w = maps.shape
    values = maps.astype(np.float16 if dtype == "float16" else np.float32)
    vtype = pa.float16() if dtype == "float16" else pa.float32()
    if encoding == "list":
        return _list_column(values, np.ones(n, dtype=bool), vtype)
    flat = pa.array(values.reshape(-1), type=vtype)
    if encoding == "fixed_size_list":
        return pa.FixedSizeListArray.from_arrays(flat, h * w)
    storage = pa.FixedSizeListArray.from_arrays(flat, h * w)
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(vtype, (h, w)), storage)


def decode(path: Path, encoding: str, shape: tuple[int, int]) -> np.ndarray:
    col = pq.read_table(path, columns=["map_gt"]).column("map_gt").combine_chunks()
    if encoding == "list":  # maps_array's path: list_flatten, to_numpy, reshape, astype float32
        table = pa.table(
            {
                "map_gt": col,
                "map_height": pa.array(np.full(len(col), shape[0], np.int32)),
                "map_width": pa.array(np.full(len(col), shape[1], np.int32)),
            }
        )
        return maps_array(table, "map_gt")
    if encoding == "fixed_size_list":
        return col.values.to_numpy(zero_copy_only=False).reshape(len(col), *shape).astype(np.float32)
    return col.to_numpy_ndarray().astype(np.float32)


def encoding_part(maps: np.ndarray, work: Path, read_rows: int, repeats: int) -> dict[str, Any]:
    n, h, w = maps.shape
    folder = work / "encodings"
    folder.mkdir(exist_ok=True)
    encodings = ("list", "fixed_size_list", "fixed_shape_tensor")
    out: dict[str, Any] = {"rows": n, "read_rows_tiled": read_rows, "repeats": repeats, "results": []}
    tiled = np.tile(maps, (-(-read_rows // n), 1, 1))[:read_rows]
    for label, data in (("real", maps), ("tiled", tiled)):
        files = {}
        for dtype in ("float16", "float32"):
            for enc in encodings:
                for split in VALUE_ENCODINGS:
                    path = folder / f"{label}_{enc}_{dtype}_{split}.parquet"
                    options = dict(COMPRESSION)  # pyarrow's default value encoding: dictionary first
                    if split != "dictionary":  # (dictionary encoding would take precedence over BSS)
                        options["use_dictionary"] = False
                    if split == "byte_stream_split":
                        options["use_byte_stream_split"] = ["map_gt.list.element"]
                    t0 = time.perf_counter()
                    pq.write_table(pa.table({"map_gt": encode(data, enc, dtype)}), path, **options)
                    write_s = time.perf_counter() - t0
                    column = pq.ParquetFile(path).metadata.row_group(0).column(0)
                    if (split == "byte_stream_split") != ("BYTE_STREAM_SPLIT" in column.encodings):
                        raise RuntimeError(f"{path}: encodings {column.encodings}")
                    back = decode(path, enc, (h, w))
                    expect = data.astype(np.float16).astype(np.float32) if dtype == "float16" else data
                    if not np.array_equal(back, expect):
                        raise RuntimeError(f"{path}: maps do not read back bit for bit")
                    files[dtype, enc, split] = (path, write_s)
        times: dict[tuple[str, str, str], list[float]] = {key: [] for key in files}
        for _ in range(repeats):  # interleaved: load changes hit every encoding alike
            for (dtype, enc, split), (path, _) in files.items():
                t0 = time.perf_counter()
                decode(path, enc, (h, w))
                times[dtype, enc, split].append(time.perf_counter() - t0)
        for (dtype, enc, split), (path, write_s) in files.items():
            med = statistics.median(times[dtype, enc, split])
            out["results"].append(
                {
                    "data": label,
                    "rows": len(data),
                    "dtype": dtype,
                    "encoding": enc,
                    "value_encoding": split,
                    "parquet_encodings": list(pq.ParquetFile(path).metadata.row_group(0).column(0).encodings),
                    "file_bytes": path.stat().st_size if label == "real" else None,
                    "bytes_per_map": round(path.stat().st_size / len(data), 1) if label == "real" else None,
                    "read_ms_median": round(med * 1e3, 3),
                    "read_ms_min": round(min(times[dtype, enc, split]) * 1e3, 3),
                    "read_us_per_map": round(med / len(data) * 1e6, 3),
                    "write_ms": round(write_s * 1e3, 1),
                }
            )
    return out


# ----------------------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=600)
    p.add_argument(
        "--model",
        default="/tmp/reh2/repo/outputs/train/acol/model.pt",
        help="a trained model.pt with model_card.json beside it",
    )
    p.add_argument(
        "--random-backbone", default=None, help="e.g. resnet50: random initial weights, 1000 classes"
    )
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_map_precision")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the forward")
    p.add_argument("--intervals", type=float, nargs="+", default=[0.01, 0.001])
    p.add_argument("--read-rows", type=int, default=50_000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--fresh", action="store_true", help="recompute the maps even if cached in --work")
    p.add_argument("--skip-encoding", action="store_true")
    p.add_argument("--out", default="benchmarks/results/map_precision.json")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    c0 = time.process_time()
    root, geometry = shadow_data(args.work, args.images)
    data = float32_maps(args, args.work, root, geometry)
    print("precision ...", flush=True)
    precision = precision_part(data, root, args.work, args.intervals)
    print(json.dumps(precision, indent=1), flush=True)
    encoding = None
    if not args.skip_encoding:
        print("encodings ...", flush=True)
        n = len(data["records"])
        h, w = int(data["columns"]["map_height"][0]), int(data["columns"]["map_width"][0])
        encoding = encoding_part(
            data["columns"]["map_gt"].reshape(n, h, w), args.work, args.read_rows, args.repeats
        )
        for row in encoding["results"]:
            print(row, flush=True)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_map_precision.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if v not in (None, False) and k != "fresh"
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pyarrow": pa.__version__,
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
        "model": data["model"],
        "extract_seconds_wall": data["extract_seconds_wall"],
        "extract_seconds_cpu": data["extract_seconds_cpu"],
        "script_cpu_seconds_this_run": round(time.process_time() - c0, 1),
        "precision": precision,
        "encoding": encoding,
    }
    write_json_atomic(Path(args.out), report)
    print("->", args.out)


if __name__ == "__main__":
    main()
