"""Extraction: run a trained model over a whole manifest and write its maps to Parquet (`acol.mapstore`).

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
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torchvision.transforms import v2
from tqdm import tqdm

from acol.config import Params
from acol.data.errors import DataError
from acol.data.images import read_image
from acol.data.manifest import manifest_classes, read_manifest
from acol.data.transforms import eval_transform, to_float_tensor
from acol.distributed.session import ensure_ray
from acol.io import replacing_dir, write_json_atomic
from acol.mapstore import (
    MAPSTORE_SCHEMA,
    METADATA_KEY,
    PARQUET_OPTIONS,
    columns_to_table,
    part_name,
    predict_batch,
)
from acol.models import WSOLModel, build_model, load_model_weights
from acol.models import model_kwargs as architecture_kwargs
from acol.paths import resolve_inside

__all__ = [
    "ExtractSummary",
    "MapPredictor",
    "check_weights",
    "decode_batch",
    "extract",
    "extract_plain",
    "load_model_card",
    "model_from_card",
]

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


# --- model ---


def load_model_card(card: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    """A model card (path to model_card.json, or the dict itself); errors name the file."""
    if isinstance(card, dict):
        return card
    path = Path(card)
    try:
        loaded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read model card {path}: {e}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"model card {path}: expected a JSON object, got {type(loaded).__name__}")
    return loaded


def _model_kwargs(card: dict[str, Any], params: Params, method: str, classes: list[str]) -> dict[str, Any]:
    """build_model arguments: the card's architecture (it describes the saved weights), params as fallback.

    The card's ``classes`` must equal the manifest's (the class indices would mean other classes otherwise).
    Keys read: ``method``, ``backbone``, ``num_classes``, ``classes``, and ``head_channels`` /
    ``erase_threshold`` from ``card["model"]`` or ``card["params"]["model"]``.
    """
    if card.get("method", method) != method:
        raise ValueError(f"model card is for method {card['method']!r}, extraction asked for {method!r}")
    if "classes" in card and list(card["classes"]) != classes:
        raise ValueError("model card classes differ from the manifest classes (another dataset or order?)")
    model_section = card.get("model")
    if not isinstance(model_section, dict):  # {"params": {"model": {...}}} is accepted too
        nested = card.get("params")
        model_section = nested.get("model", {}) if isinstance(nested, dict) else {}
    num_classes = int(card.get("num_classes", len(classes)))
    if num_classes != len(classes):
        raise ValueError(f"model card has {num_classes} classes, the manifest {len(classes)}")
    section = {**params.model.model_dump(), **model_section}
    if "backbone" in card:
        section["backbone"] = card["backbone"]
    return architecture_kwargs(section, method, num_classes)


def check_weights(model_kwargs: dict[str, Any], model_path: str | os.PathLike[str]) -> None:
    """Raise `WeightsError` naming `model_path` unless it holds a state dict of exactly this architecture.

    Run on the driver before Ray starts: in a `MapPredictor` actor the same error would only surface as an
    actor-construction failure after the cluster and the decode tasks are up. The model is built on the meta
    device (no memory, no init), so the check costs one read of the file.
    """
    with torch.device("meta"):
        model = build_model(**model_kwargs)
    with warnings.catch_warnings():  # copying real tensors into meta ones is a no-op, which is the point
        warnings.simplefilter("ignore", UserWarning)
        load_model_weights(model, model_path)


def model_from_card(
    model_kwargs: dict[str, Any],
    model_path: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> WSOLModel:
    """Build the model (no backbone weights: the state dict has them all), load weights, eval mode."""
    model = build_model(**model_kwargs)
    load_model_weights(model, model_path)
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


# --- decode and predict (shared by both engines) ---


def _split_eval_transform(size: int) -> tuple[Callable, Callable]:
    """`eval_transform(size)` as (uint8 resize, float normalize): composed, they are exactly the original."""
    steps = eval_transform(size).transforms
    if not isinstance(steps[0], v2.Resize):
        raise RuntimeError("eval_transform no longer starts with Resize; update _split_eval_transform")
    return steps[0], v2.Compose(steps[1:])


def decode_batch(batch: dict[str, np.ndarray], root: str, size: int) -> dict[str, np.ndarray]:
    """Read, decode and resize the images of a batch: adds ``image`` (B, 3, S, S) uint8 and ``error`` (B,).

    ``error`` is "" when fine, else "<kind>: <reason>"; a failed image gets a zero placeholder.
    """
    resize, _ = _split_eval_transform(size)
    ids = [str(i) for i in batch["image_id"]]
    images = np.zeros((len(ids), 3, size, size), dtype=np.uint8)
    errors = np.full(len(ids), "", dtype=object)
    for k, image_id in enumerate(ids):
        try:
            pixels = read_image(resolve_inside(root, image_id))
            images[k] = resize(to_float_tensor(pixels)).numpy()
        except DataError as e:
            errors[k] = e.reason
        except Exception as e:  # a run over 1M images must not stop on one odd file; it is recorded
            errors[k] = f"unexpected: {type(e).__name__}: {e}"
    return {**batch, "image": images, "error": errors}


class MapPredictor:
    """Ray Data callable class: loads the model once, maps a numpy batch dict to the map-store columns."""

    def __init__(
        self,
        model_kwargs: dict[str, Any],
        model_path: str,
        size: int,
        box_threshold: float,
        device: str = "cpu",
        amp: bool = False,
        channels_last: bool = False,
        num_threads: int | None = None,
    ) -> None:
        if num_threads is not None:  # Ray sets OMP_NUM_THREADS to the actor's whole CPUs (1 for 1.5)
            torch.set_num_threads(num_threads)
        self.device = torch.device(device)
        self.model = model_from_card(model_kwargs, model_path, self.device, channels_last)
        self.normalize = _split_eval_transform(size)[1]
        self.box_threshold = box_threshold
        self.amp = amp
        self.channels_last = channels_last

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = np.asarray(batch["error"], dtype=object)
        ok = errors == ""
        out: dict[str, Any] = {
            "image_id": batch["image_id"],
            "label": np.asarray(batch["class_index"], dtype=np.int32),
            "width": batch["width"],
            "height": batch["height"],
            "error": errors,
        }
        if ok.any():
            images = torch.from_numpy(np.ascontiguousarray(batch["image"][ok])).to(self.device)
            images = self.normalize(images)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            cols = predict_batch(
                self.model,
                images,
                np.asarray(batch["class_index"])[ok],
                np.asarray(batch["width"])[ok],
                np.asarray(batch["height"])[ok],
                self.box_threshold,
                amp=self.amp,
            )
        else:  # all failed: shapes from a zero image, so every batch has the same columns
            cols = predict_batch(
                self.model,
                self.normalize(torch.zeros((1, *batch["image"].shape[1:]), dtype=torch.uint8)),
                np.zeros(1),
                np.ones(1),
                np.ones(1),
                self.box_threshold,
            )
        for name, values in cols.items():
            if values is None:  # CAM has no branch B: the column is left out and written as null
                continue
            full = np.zeros((len(errors), *values.shape[1:]), dtype=values.dtype)
            if ok.any():
                full[ok] = values
            out[name] = full
        return out


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
    model_kwargs = _model_kwargs(load_model_card(model_card), params, method, classes)
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
