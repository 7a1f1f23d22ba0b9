"""Extraction: run a trained model over a whole manifest and write its maps to Parquet (`acol.inference.mapstore`).

Two engines share every step but the scheduling, so one is the correctness reference of the other:

- `extract`: Ray Data. The manifest (sorted by ``image_id``) becomes blocks of ``batch_size`` rows; a task
  per block reads and decodes the files and resizes them to uint8 (``S x S``); a pool of `MapPredictor`
  actors (the model loaded once per actor) normalizes and predicts; the driver streams the results in order
  and writes parts of ``rows_per_file`` rows. Nothing holds the whole dataset: the driver buffers one part.
- `extract_plain`: a PyTorch DataLoader over the same decode step, the same predictor, the same writer.

Images travel between the steps as uint8 (a quarter of float32): `eval_transform` is split into its resize,
applied in the decode step, and its dtype-scale-normalize tail, applied by the predictor (on the GPU if any).
A file that cannot be read or decoded becomes a row with its reason in ``error`` and null maps; it never
stops the run. Outputs go to a fresh temp folder next to ``out_dir``, renamed into place at the end (a
parallel overwrite in place lost data: ray issue 55043). Identical inputs give byte-identical files.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from acol.config import Params
from acol.data.manifest import manifest_classes, read_manifest
from acol.distributed.session import ensure_ray
from acol.inference.mapstore import (
    MAPSTORE_SCHEMA,
    METADATA_KEY,
    PARQUET_OPTIONS,
    columns_to_table,
    part_name,
)
from acol.inference.model_card import check_weights, load_model_card, model_kwargs_from_card
from acol.inference.predict import MapPredictor, decode_batch
from acol.io import replacing_dir, write_json_atomic

__all__ = ["ExtractSummary", "extract", "extract_plain"]

log = logging.getLogger(__name__)

_INPUT_COLUMNS = ["image_id", "class_index", "width", "height"]
_SUMMARY_NAME = "summary.json"
_MAPS_DIR = "maps"


@dataclass
class ExtractSummary:
    """What `summary.json` holds: counts, the failed images with reasons, speed and storage per image."""

    method: str
    engine: str  # "ray" or "plain"
    rows: int = 0
    errors: int = 0
    error_list: list[tuple[str, str]] = field(default_factory=list)  # (image_id, reason)
    seconds: float = 0.0
    images_per_s: float = 0.0
    # Start-up (model load, Ray actors) vs throughput: time to the first result batch, and images/s after it.
    first_batch_seconds: float = 0.0
    steady_images_per_s: float = 0.0
    parquet_bytes: int = 0
    bytes_per_image: float = 0.0
    parts: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- writing ---


class _PartWriter:
    """Writes incoming map-store tables as parts of exactly ``rows_per_file`` rows (deterministic layout)."""

    def __init__(self, folder: Path, rows_per_file: int, metadata: dict[str, Any]) -> None:
        self.folder = folder
        self.rows_per_file = rows_per_file
        self.metadata = metadata
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.parts: list[str] = []
        self.rows = 0
        self.bytes = 0
        self.errors: list[tuple[str, str]] = []
        self.last_id: str | None = None

    def add(self, columns: dict[str, Any]) -> None:
        table = columns_to_table(columns, self.metadata)
        if table.num_rows == 0:
            return
        ids = table.column("image_id").to_pylist()
        previous = [self.last_id] if self.last_id is not None else []
        if any(a >= b for a, b in itertools.pairwise(previous + ids)):
            raise RuntimeError("extraction results arrived out of image_id order (preserve_order lost?)")
        self.last_id = ids[-1]
        failed = table.filter(pc.invert(pc.is_null(table.column("error"))))
        failed_ids, reasons = failed.column("image_id").to_pylist(), failed.column("error").to_pylist()
        self.errors += list(zip(failed_ids, reasons, strict=True))
        self.buffer.append(table)
        self.buffered += table.num_rows
        self.rows += table.num_rows
        while self.buffered >= self.rows_per_file:
            self._flush(self.rows_per_file)

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self.buffer).combine_chunks()
        head, rest = table.slice(0, rows), table.slice(rows)
        path = self.folder / part_name(len(self.parts))
        pq.write_table(head, path, row_group_size=max(rows, 1), **PARQUET_OPTIONS)
        self.parts.append(path.name)
        self.bytes += path.stat().st_size
        self.buffer, self.buffered = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
        log.info("wrote %s (%d rows, %d so far)", path.name, head.num_rows, self.rows - self.buffered)

    def close(self) -> None:
        if self.buffered:
            self._flush(self.buffered)
        if not self.parts:  # an empty manifest still gets a readable (empty) store with its schema
            meta = {METADATA_KEY: json.dumps(self.metadata, sort_keys=True).encode()}
            self.buffer = [MAPSTORE_SCHEMA.with_metadata(meta).empty_table()]
            self._flush(0)


def _sorted_inputs(manifest_path: str | os.PathLike[str]) -> tuple[pa.Table, list[str]]:
    manifest = read_manifest(manifest_path)
    classes = manifest_classes(manifest)
    table = manifest.select(_INPUT_COLUMNS)
    table = table.take(pc.sort_indices(table, sort_keys=[("image_id", "ascending")]))
    return table, classes


def _run(
    engine: str,
    params: Params,
    method: str,
    manifest_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    stream: Callable[[pa.Table, dict[str, Any]], Iterable[dict[str, Any]]],
    model_card: str | os.PathLike[str] | dict[str, Any],
) -> ExtractSummary:
    """Shared frame of both engines: inputs, metadata, temp folder, writer, summary, rename into place."""
    inputs, classes = _sorted_inputs(manifest_path)
    model_kwargs = model_kwargs_from_card(load_model_card(model_card), params, method, classes)
    metadata = {
        "method": method,
        "classes": classes,
        "box_threshold": params.extract.box_threshold,
        "image_size": params.train.image_size,
        "backbone": model_kwargs["name"],
    }
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A killed run's temp folder (or a half-done swap) is cleaned first; DVC's .gitignore in the folder stays.
    # (Two extractions into one folder at once are not supported: `dvc repro` holds a lock for that.)
    with replacing_dir(out_dir, keep=(".gitignore",)) as tmp:
        (tmp / _MAPS_DIR).mkdir()
        writer = _PartWriter(tmp / _MAPS_DIR, params.extract.rows_per_file, metadata)
        log.info("%s extraction of %d images (%s) -> %s", engine, inputs.num_rows, method, out_dir)
        start = time.perf_counter()
        last_log = start
        first: tuple[float, int] | None = None  # (seconds, rows) when the first batch was written
        progress = tqdm(total=inputs.num_rows, unit="img", desc=f"extract {method}", disable=None)
        for columns in stream(inputs, model_kwargs) if inputs.num_rows else ():  # empty: no engine start
            writer.add(columns)
            progress.update(len(columns["image_id"]))
            now = time.perf_counter()
            if first is None:
                first = (now - start, writer.rows)
            if now - last_log > 10:
                rate = writer.rows / (now - start)
                log.info("%d / %d images (%.1f images/s)", writer.rows, inputs.num_rows, rate)
                last_log = now
        progress.close()
        writer.close()
        seconds = time.perf_counter() - start
        first_seconds, first_rows = first or (seconds, writer.rows)
        steady_seconds = seconds - first_seconds
        if writer.rows != inputs.num_rows:
            raise RuntimeError(f"extraction wrote {writer.rows} rows for {inputs.num_rows} manifest rows")
        summary = ExtractSummary(
            method=method,
            engine=engine,
            rows=writer.rows,
            errors=len(writer.errors),
            error_list=writer.errors,
            seconds=round(seconds, 3),
            images_per_s=round(writer.rows / seconds, 2) if seconds > 0 else 0.0,
            first_batch_seconds=round(first_seconds, 3),
            steady_images_per_s=round((writer.rows - first_rows) / steady_seconds, 2)
            if steady_seconds > 0
            else 0.0,
            parquet_bytes=writer.bytes,
            bytes_per_image=round(writer.bytes / max(writer.rows, 1), 1),
            parts=writer.parts,
        )
        # Timings vary run to run; summary.json lives beside maps/ so the parts stay byte-identical.
        write_json_atomic(tmp / _SUMMARY_NAME, summary.to_json())
    log.info(
        "%d rows, %d errors, %.1f images/s, %.0f bytes/image",
        summary.rows,
        summary.errors,
        summary.images_per_s,
        summary.bytes_per_image,
    )
    for image_id, reason in summary.error_list[:20]:
        log.warning("image failed: %s: %s", image_id, reason)
    return summary


def _device(use_gpu: bool, device: str | None) -> str:
    if device is not None:
        return device
    return "cuda" if use_gpu else "cpu"


def extract(
    params: Params,
    method: str,
    manifest_path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    model_card: str | os.PathLike[str] | dict[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    amp: bool = False,
    channels_last: bool = False,
) -> ExtractSummary:
    """Ray Data extraction of every manifest image into ``out_dir/maps/part-*.parquet`` + ``summary.json``.

    Runs where `acol.distributed.session.ensure_ray` says (RAY_ADDRESS, else a private local Ray): every
    node must see ``root`` and ``model_path`` at the same paths. ``params.extract`` sets the batch, actor pool, GPU use, box
    threshold and rows per file; ``params.train.image_size`` the input size.
    """
    import ray

    cfg = params.extract
    size = params.train.image_size
    root_str, model_str = str(Path(root).resolve()), str(Path(model_path).resolve())
    if not Path(model_str).is_file():
        raise FileNotFoundError(f"model weights not found: {model_path}")

    def stream(inputs: pa.Table, model_kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        check_weights(model_kwargs, model_str)  # a bad model.pt fails here, named, before Ray starts
        gpus = cfg.num_actors if cfg.use_gpu else 0
        ensure_ray(cfg.num_actors * cfg.cpus_per_actor + cfg.decode_cpus, gpus, params.ray.join_local)
        ctx = ray.data.DataContext.get_current()
        old_order = ctx.execution_options.preserve_order
        ctx.execution_options.preserve_order = True  # results in manifest order: deterministic parts
        try:
            blocks = [inputs.slice(i, cfg.batch_size) for i in range(0, inputs.num_rows, cfg.batch_size)]
            ds = ray.data.from_arrow(blocks or [inputs])
            ds = ds.map_batches(
                decode_batch,
                fn_kwargs={"root": root_str, "size": size},
                batch_format="numpy",
                batch_size=None,
                num_cpus=cfg.decode_cpus,
            )
            ds = ds.map_batches(
                MapPredictor,
                fn_constructor_kwargs={
                    "model_kwargs": model_kwargs,
                    "model_path": model_str,
                    "size": size,
                    "box_threshold": cfg.box_threshold,
                    "device": _device(cfg.use_gpu, None),
                    "amp": amp,
                    "channels_last": channels_last,
                    "num_threads": math.ceil(cfg.cpus_per_actor),
                },
                compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
                num_gpus=1 if cfg.use_gpu else 0,
                num_cpus=cfg.cpus_per_actor,
                batch_size=cfg.batch_size,
                batch_format="numpy",
            )
            yield from ds.iter_batches(batch_size=None, batch_format="numpy")
        finally:
            ctx.execution_options.preserve_order = old_order

    return _run("ray", params, method, manifest_path, out_dir, stream, model_card)


class _DecodeDataset(torch.utils.data.Dataset):
    """Items are one-row decode results (the same `decode_batch` as Ray's), for a plain DataLoader."""

    def __init__(self, inputs: pa.Table, root: str, size: int) -> None:
        self.columns = {name: inputs.column(name).to_numpy(zero_copy_only=False) for name in _INPUT_COLUMNS}
        self.root, self.size = root, size

    def __len__(self) -> int:
        return len(self.columns["image_id"])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        row = {name: values[index : index + 1] for name, values in self.columns.items()}
        return decode_batch(row, self.root, self.size)


def _collate(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([item[name] for item in items]) for name in items[0]}


def extract_plain(
    params: Params,
    method: str,
    manifest_path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    model_card: str | os.PathLike[str] | dict[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    device: str | None = None,
    loader_workers: int = 0,
    amp: bool = False,
    channels_last: bool = False,
) -> ExtractSummary:
    """The same extraction with a PyTorch DataLoader in this process: the reference and the baseline."""
    cfg = params.extract
    size = params.train.image_size

    def stream(inputs: pa.Table, model_kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        predictor = MapPredictor(
            model_kwargs,
            str(model_path),
            size,
            cfg.box_threshold,
            _device(cfg.use_gpu, device),
            amp,
            channels_last,
        )
        loader = torch.utils.data.DataLoader(
            _DecodeDataset(inputs, str(root), size),
            batch_size=cfg.batch_size,
            shuffle=False,
            num_workers=loader_workers,
            collate_fn=_collate,
            pin_memory=predictor.device.type == "cuda",
        )
        for batch in loader:
            yield predictor(batch)

    return _run("plain", params, method, manifest_path, out_dir, stream, model_card)
