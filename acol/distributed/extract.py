"""Extraction: run a trained model over a whole manifest and write its maps to Parquet (`acol.inference.mapstore`).

Two engines share every step but the scheduling, so one is the correctness reference of the other:

- `extract`: Ray Data. The manifest (sorted by ``image_id``) becomes blocks of ``batch_size`` rows; on GPU
  runs a pool of `BatchDecoder` actors reads and decodes the files and resizes them to uint8 (``S x S``) for a
  pool of `MapPredictor` actors (the model loaded once per actor), which normalize and predict; on CPU runs
  each inference actor decodes its own batches on its threads (`DecodingMapPredictor`); the driver streams the
  results in order and writes parts of ``rows_per_file`` rows. Nothing holds the whole dataset: the driver
  buffers one part. Ray starts in a background thread while the driver predicts the first ``driver_batches``
  batches itself (a CPU inference actor's steps), so the first maps come without waiting for Ray's start-up.
- `extract_plain`: a PyTorch DataLoader over the same decode step, the same predictor, the same writer.

Images travel between the steps as uint8 (a quarter of float32): `eval_transform` is split into its resize,
applied in the decode step, and its dtype-scale-normalize tail, applied by the predictor (on the GPU if any).
A file that cannot be read or decoded becomes a row with its reason in ``error`` and null maps; it never
stops the run. Outputs go to a temp folder next to ``out_dir`` (``.<name>.tmp-resume``), swapped into place at
the end (a parallel overwrite in place lost data: ray issue 55043). Identical inputs give byte-identical files.

Resume (described here only; elsewhere one sentence points here): each part is written whole (temp name,
fsync, rename) into that folder, beside a fingerprint of the inputs (hashes of the manifest and weights, the
engine, the params and options that change a byte). A run killed half way leaves the folder; a rerun with the
same fingerprint keeps its complete parts (part k = sorted rows [k*R, (k+1)*R)) and computes only the rest,
byte-identical to an uninterrupted run; other inputs (or the other engine) discard it. Tested by
``tests/test_extract_resume.py``; timed by ``benchmarks/bench_extract.py --resume``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
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
from acol.distributed.extract_job import ExtractionJob
from acol.distributed.session import Demand, check_placement, start_ray_in_background
from acol.inference.mapstore import (
    MAP_DTYPE,
    MAPSTORE_SCHEMA,
    METADATA_KEY,
    PARQUET_OPTIONS,
    columns_to_table,
    legacy_map_columns,
    part_name,
)
from acol.inference.model_card import check_weights, load_model_card, spec_from_card
from acol.inference.predict import (
    BatchDecoder,
    DecodingMapPredictor,
    ForwardOptions,
    MapPredictor,
    decode_batch,
    malloc_env,
)
from acol.io import atomic_path, resumable_dir, write_json_atomic
from acol.models import ModelSpec

__all__ = ["ExtractSummary", "ExtractionJob", "extract", "extract_plain"]

log = logging.getLogger(__name__)

_INPUT_COLUMNS = ["image_id", "class_index", "width", "height"]
_SUMMARY_NAME = "summary.json"
_MAPS_DIR = "maps"
# bump when the part layout or bytes change: older partial work is then discarded (2: float32 maps)
_RESUME_VERSION = 2


@dataclass
class ExtractSummary:
    """What `summary.json` holds: counts, the failed images with reasons, speed and storage per image."""

    method: str
    engine: str  # "ray" or "plain"
    rows: int = 0
    errors: int = 0
    error_list: list[tuple[str, str]] = field(default_factory=list)  # (image_id, reason)
    # A rerun after a kill keeps the finished parts: rows taken from them, and rows computed in this run.
    resumed_rows: int = 0
    computed_rows: int = 0
    # seconds: the streaming loop; setup_seconds: before it (manifest, hashes of the inputs, resume scan).
    # images_per_s counts the computed rows only.
    seconds: float = 0.0
    setup_seconds: float = 0.0
    images_per_s: float = 0.0
    # Start-up (model load, Ray actors) vs throughput: time to the first result batch, and images/s after it.
    first_batch_seconds: float = 0.0
    steady_images_per_s: float = 0.0
    parquet_bytes: int = 0
    bytes_per_image: float = 0.0
    parts: list[str] = field(default_factory=list)
    # the forward's options (`extract.amp`, `extract.channels_last` or the caller's): they change the maps' bits
    amp: bool = False
    channels_last: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- writing ---


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


class _PartWriter:
    """Writes incoming map-store tables as parts of exactly ``rows_per_file`` rows (deterministic layout).

    Each part is written whole (`atomic_path`), so `resume` may adopt any part a killed run left (module
    docstring, Resume).
    """

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
        self.skip = 0  # rows of the incoming stream already in adopted parts (the stream starts on a batch)

    def resume(self, inputs: pa.Table) -> int:
        """Adopt the leading complete parts of the folder; delete any other part. Returns the rows adopted.

        Part k holds rows [k*R, (k+1)*R) of the sorted inputs; one is adopted only if its ids are exactly those.
        """
        ids = inputs.column("image_id")
        for k in range(math.ceil(inputs.num_rows / self.rows_per_file)):
            path = self.folder / part_name(k)
            try:
                table = pq.read_table(path, columns=["image_id", "error"])
                legacy = legacy_map_columns(pq.read_schema(path))
            except (OSError, pa.ArrowInvalid, KeyError):
                break  # missing (or unreadable): this one and the rest are computed
            if legacy:
                log.warning(
                    "%s: maps stored as float16 (%s); recomputing it and the rest", path, ", ".join(legacy)
                )
                break
            want = ids.slice(k * self.rows_per_file, self.rows_per_file)
            if table.column("image_id").to_pylist() != want.to_pylist():
                break
            self._count_errors(table)
            self.parts.append(path.name)
            self.rows += table.num_rows
            self.bytes += path.stat().st_size
            self.last_id = want[-1].as_py()
        for stale in self.folder.glob("part-*.parquet"):
            if stale.name not in self.parts:
                stale.unlink()
        return self.rows

    def _count_errors(self, table: pa.Table) -> None:
        failed = table.filter(pc.invert(pc.is_null(table.column("error"))))
        failed_ids, reasons = failed.column("image_id").to_pylist(), failed.column("error").to_pylist()
        self.errors += list(zip(failed_ids, reasons, strict=True))

    def add(self, columns: dict[str, Any]) -> None:
        table = columns_to_table(columns, self.metadata)
        if self.skip:
            dropped = min(self.skip, table.num_rows)
            table, self.skip = table.slice(dropped), self.skip - dropped
        if table.num_rows == 0:
            return
        ids = table.column("image_id").to_pylist()
        previous = [self.last_id] if self.last_id is not None else []
        if any(a >= b for a, b in itertools.pairwise(previous + ids)):
            raise RuntimeError("extraction results arrived out of image_id order (preserve_order lost?)")
        self.last_id = ids[-1]
        self._count_errors(table)
        self.buffer.append(table)
        self.buffered += table.num_rows
        self.rows += table.num_rows
        while self.buffered >= self.rows_per_file:
            self._flush(self.rows_per_file)

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self.buffer).combine_chunks()
        head, rest = table.slice(0, rows), table.slice(rows)
        path = self.folder / part_name(len(self.parts))
        with atomic_path(path) as tmp:
            pq.write_table(head, tmp, row_group_size=max(rows, 1), **PARQUET_OPTIONS)
            _fsync(tmp)  # on disk before its name says it is complete
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


def _input_columns(inputs: pa.Table) -> dict[str, np.ndarray]:
    """The decode step's input: the manifest columns it reads, as NumPy (what Ray Data hands an actor)."""
    return {name: inputs.column(name).to_numpy(zero_copy_only=False) for name in _INPUT_COLUMNS}


def _sorted_inputs(manifest_path: str | os.PathLike[str]) -> tuple[pa.Table, list[str]]:
    manifest = read_manifest(manifest_path)
    classes = manifest_classes(manifest)
    table = manifest.select(_INPUT_COLUMNS)
    table = table.take(pc.sort_indices(table, sort_keys=[("image_id", "ascending")]))
    return table, classes


def _sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class _Prepared:
    """What one extraction computes: its sorted inputs, the model, the map-store metadata, the resume key."""

    inputs: pa.Table
    spec: ModelSpec
    metadata: dict[str, Any]
    fingerprint: dict[str, Any]


def _fingerprint_options(options: ForwardOptions) -> dict[str, Any]:
    """The forward's options that change a byte and are not in the metadata (the size and threshold are)."""
    return {"device": options.device, "amp": options.amp, "channels_last": options.channels_last}


def _prepare(engine: str, job: ExtractionJob, options: ForwardOptions) -> _Prepared:
    """Read the inputs and describe them; the fingerprint holds everything that changes a byte of the parts.

    (The image files under ``root`` are not hashed, only its path: a run over changed images in place must
    start afresh by hand.) Its keys and values are what partial folders of earlier code hold: changing one
    discards them (``tests/test_extract_resume.py`` pins it).
    """
    params, method = job.params, job.method
    inputs, classes = _sorted_inputs(job.manifest)
    spec = spec_from_card(load_model_card(job.model_card), params, method, classes)
    metadata = {
        "method": method,
        "classes": classes,
        "box_threshold": params.extract.box_threshold,
        "image_size": params.train.image_size,
        "backbone": spec.backbone,
    }
    fingerprint = {
        "version": _RESUME_VERSION,
        "map_dtype": MAP_DTYPE.name,  # parts of two precisions never share a store
        "engine": engine,
        "manifest_sha256": _sha256(job.manifest),
        "weights_sha256": _sha256(job.model),
        "root": str(job.root.resolve()),
        "metadata": metadata,
        "spec": spec.to_dict(),  # was "model_kwargs": a partial folder of older code is discarded
        "rows_per_file": params.extract.rows_per_file,
        "batch_size": params.extract.batch_size,  # batch composition can change the last bit of a map
        "options": _fingerprint_options(options),
    }
    return _Prepared(inputs, spec, metadata, fingerprint)


@dataclass
class _Timing:
    """Wall times of the streaming loop, to split start-up (first batch) from throughput."""

    seconds: float
    first_seconds: float
    first_rows: int  # rows written (adopted included) when the first batch arrived


def _stream_into(
    writer: _PartWriter,
    stream: Iterable[dict[str, Any]],
    total: int,
    desc: str,
) -> _Timing:
    """Feed the engine's result batches to the writer, with progress; returns the loop's timings."""
    start = time.perf_counter()
    last_log = start
    first: tuple[float, int] | None = None  # (seconds, rows) when the first batch was written
    progress = tqdm(total=total, initial=writer.rows, unit="img", desc=desc, disable=None)
    for columns in stream:
        writer.add(columns)
        progress.update(len(columns["image_id"]))
        now = time.perf_counter()
        if first is None:
            first = (now - start, writer.rows)
        if now - last_log > 10:
            log.info("%d / %d images (%.1f images/s)", writer.rows, total, writer.rows / (now - start))
            last_log = now
    progress.close()
    writer.close()
    seconds = time.perf_counter() - start
    first_seconds, first_rows = first or (seconds, writer.rows)
    return _Timing(seconds, first_seconds, first_rows)


def _summary(
    method: str,
    engine: str,
    writer: _PartWriter,
    timing: _Timing,
    setup_seconds: float,
    resumed: int,
    options: ForwardOptions,
) -> ExtractSummary:
    """The counts cover every row (adopted parts included); the rates only the rows computed in this run."""
    computed = writer.rows - resumed
    steady_seconds = timing.seconds - timing.first_seconds
    return ExtractSummary(
        method=method,
        engine=engine,
        rows=writer.rows,
        errors=len(writer.errors),
        error_list=writer.errors,
        resumed_rows=resumed,
        computed_rows=computed,
        seconds=round(timing.seconds, 3),
        setup_seconds=round(setup_seconds, 3),
        images_per_s=round(computed / timing.seconds, 2) if timing.seconds > 0 else 0.0,
        first_batch_seconds=round(timing.first_seconds, 3),
        steady_images_per_s=round((writer.rows - timing.first_rows) / steady_seconds, 2)
        if steady_seconds > 0
        else 0.0,
        parquet_bytes=writer.bytes,
        bytes_per_image=round(writer.bytes / max(writer.rows, 1), 1),
        parts=writer.parts,
        amp=options.amp,
        channels_last=options.channels_last,
    )


def _log_summary(summary: ExtractSummary) -> None:
    log.info(
        "%d rows (%d resumed), %d errors, %.1f images/s, %.0f bytes/image",
        summary.rows,
        summary.resumed_rows,
        summary.errors,
        summary.images_per_s,
        summary.bytes_per_image,
    )
    for image_id, reason in summary.error_list[:20]:
        log.warning("image failed: %s: %s", image_id, reason)


def _adopt(writer: _PartWriter, inputs: pa.Table, work: Path, batch_size: int) -> tuple[int, int]:
    """Take the killed run's complete parts; returns (rows adopted, the batch-aligned row to restart at).

    Restarting on a batch boundary makes every batch the one an uninterrupted run computes (byte-identical
    maps); the writer drops the few rows of the first batch that an adopted part already holds.
    """
    resumed = writer.resume(inputs)
    begin = resumed // batch_size * batch_size
    writer.skip = resumed - begin
    log.info(
        "resuming %s: %d of %d rows kept in %d parts, restarting at row %d",
        work,
        resumed,
        inputs.num_rows,
        len(writer.parts),
        begin,
    )
    return resumed, begin


def _extract_into_store(
    engine: str,
    job: ExtractionJob,
    options: ForwardOptions,
    stream: Callable[[pa.Table, ModelSpec], Iterable[dict[str, Any]]],
) -> ExtractSummary:
    """Shared frame of both engines: inputs, resume folder, writer, summary, swap into place.

    A killed run resumes as the module docstring's Resume paragraph says (`resumable_dir`, then `_adopt`).
    """
    setup_start = time.perf_counter()
    prepared = _prepare(engine, job, options)
    inputs, cfg, method = prepared.inputs, job.params.extract, job.method
    job.out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A bad model.pt fails here, named, before Ray starts or any partial folder is made.
    check_weights(prepared.spec, job.model)
    # Leftovers of another kind (a half-done swap, an older temp folder) are cleaned first; DVC's .gitignore
    # in the folder stays. (Two extractions into one folder at once are not supported: `dvc repro` locks.)
    with resumable_dir(job.out_dir, prepared.fingerprint, keep=(".gitignore",)) as (work, resuming):
        (work / _MAPS_DIR).mkdir(exist_ok=True)
        writer = _PartWriter(work / _MAPS_DIR, cfg.rows_per_file, prepared.metadata)
        resumed, begin = _adopt(writer, inputs, work, cfg.batch_size) if resuming else (0, 0)
        log.info(
            "%s extraction of %d images (%s) -> %s", engine, inputs.num_rows - resumed, method, job.out_dir
        )
        rest = inputs.slice(begin)
        batches = stream(rest, prepared.spec) if resumed < inputs.num_rows else ()  # all done: no start
        setup_seconds = time.perf_counter() - setup_start
        timing = _stream_into(writer, batches, inputs.num_rows, f"extract {method}")
        if writer.rows != inputs.num_rows:
            raise RuntimeError(f"extraction wrote {writer.rows} rows for {inputs.num_rows} manifest rows")
        summary = _summary(method, engine, writer, timing, setup_seconds, resumed, options)
        # Timings vary run to run; summary.json lives beside maps/ so the parts stay byte-identical.
        write_json_atomic(work / _SUMMARY_NAME, summary.to_json())
    _log_summary(summary)
    return summary


def _forward_options(
    params: Params, device: str, amp: bool | None, channels_last: bool | None
) -> ForwardOptions:
    """The predictor's options: ``amp`` and ``channels_last`` as given, else ``extract.amp`` /
    ``extract.channels_last``; the input size and box threshold always the params' (the map-store metadata's).

    Why both: the stage sets them in params.yaml; a caller (the benchmark's --bf16) may still override them.
    """
    cfg = params.extract
    return ForwardOptions(
        size=params.train.image_size,
        box_threshold=cfg.box_threshold,
        device=device,
        amp=cfg.amp if amp is None else amp,
        channels_last=cfg.channels_last if channels_last is None else channels_last,
    )


def _device(use_gpu: bool, device: str | None) -> str:
    if device is not None:
        return device
    return "cuda" if use_gpu else "cpu"


def _buffer_bytes(params: Params) -> int:
    """Ray Data's object-store budget: ``extract.buffer_batches`` decoded batches (uint8 3 x S x S images)."""
    size = params.train.image_size
    return params.extract.buffer_batches * params.extract.batch_size * 3 * size * size


def _ray_cpus(params: Params) -> float:
    """The CPUs the Ray plan holds at once: the inference actors, plus one decode actor on GPU runs."""
    cfg = params.extract
    return cfg.num_actors * cfg.cpus_per_actor + (cfg.decode_cpus if cfg.use_gpu else 0.0)


def _ray_dataset(
    inputs: pa.Table,
    params: Params,
    spec: ModelSpec,
    root: str,
    model_path: str,
    forward: ForwardOptions,
) -> Any:
    """The Ray Data plan: blocks of ``batch_size`` rows -> a pool of `MapPredictor` actors, fed by a pool of
    `BatchDecoder` actors (1 to ``decode_actors``) on GPU runs; on CPU runs the inference actors decode their
    own batches (`DecodingMapPredictor`): both would take the same cores, and contended (benchmarks/README.md)."""
    import ray

    cfg, size = params.extract, params.train.image_size
    blocks = [inputs.slice(i, cfg.batch_size) for i in range(0, inputs.num_rows, cfg.batch_size)]
    ds = ray.data.from_blocks(blocks or [inputs])
    predictor: dict[str, Any] = {"spec": spec, "model_path": model_path, "options": forward}
    if cfg.use_gpu:
        ds = ds.map_batches(
            BatchDecoder,
            fn_constructor_kwargs={"root": root, "size": size},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.decode_actors),
            batch_format="numpy",
            batch_size=None,
            num_cpus=cfg.decode_cpus,
        )
        cls: type[MapPredictor] = MapPredictor
    else:
        cls, predictor = DecodingMapPredictor, {**predictor, "root": root}
    return ds.map_batches(
        cls,
        fn_constructor_kwargs={**predictor, "num_threads": math.ceil(cfg.cpus_per_actor)},
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE", **malloc_env()}},
        num_gpus=1 if cfg.use_gpu else 0,
        num_cpus=cfg.cpus_per_actor,
        batch_size=cfg.batch_size,
        batch_format="numpy",
    )


def _ray_batches(
    ray_started: Future[str],
    inputs: pa.Table,
    params: Params,
    spec: ModelSpec,
    root: str,
    model_path: str,
    forward: ForwardOptions,
) -> Iterator[dict[str, Any]]:
    """Once Ray is up, run the `_ray_dataset` plan over ``inputs`` and yield its result batches in order."""
    import ray

    ray_started.result()  # raises what starting Ray raised
    cfg = params.extract
    inference = {"CPU": cfg.cpus_per_actor, "GPU": 1.0 if cfg.use_gpu else 0.0}
    demands = [Demand("extract.cpus_per_actor, use_gpu", inference)]
    if cfg.use_gpu:  # CPU runs decode in the inference actors
        demands.append(Demand("extract.decode_cpus", {"CPU": cfg.decode_cpus}))
    check_placement(demands, params.ray.autoscaling)
    ctx = ray.data.DataContext.get_current()
    options = ctx.execution_options
    old_order, old_limits = options.preserve_order, options.resource_limits
    options.preserve_order = True  # results in manifest order: deterministic parts
    options.resource_limits = old_limits.copy(object_store_memory=_buffer_bytes(params))
    try:
        ds = _ray_dataset(inputs, params, spec, root, model_path, forward)
        # prefetch_batches=0: with any prefetch, Ray Data (2.60) hands a block over only once the next one is
        # out, so every batch came one actor call late (dead time at the start); the executor still runs ahead.
        yield from ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0)
    finally:
        options.preserve_order, options.resource_limits = old_order, old_limits


class _Background:
    """Iterate ``produce()`` in a thread, handing its items over in order through a short queue.

    Why: Ray's start-up (``ray.init``, actors importing torch, loading the model) takes 10-20 s on a small
    machine; run in the background, the driver meanwhile computes the first batches itself.
    """

    _END = object()

    def __init__(self, produce: Callable[[], Iterator[Any]], depth: int = 2) -> None:
        self._items: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._produce_into_queue, args=(produce,), name="extract-ray", daemon=True
        )
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._items.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _produce_into_queue(self, produce: Callable[[], Iterator[Any]]) -> None:
        try:
            items = produce()
            try:
                for item in items:
                    if not self._put(item):
                        return
            finally:
                if hasattr(items, "close"):  # a generator: its own finally runs here, in this thread
                    items.close()
            self._put(self._END)
        except BaseException as error:  # handed to the consumer, raised there
            self._put(error)

    def __iter__(self) -> Iterator[Any]:
        while (item := self._items.get()) is not self._END:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self, timeout: float = 120.0) -> None:
        """Stop the producer (after the item it is computing) and wait for it to end, at most ``timeout`` s:
        a Ray plan that never delivers (actors that cannot be placed) must not hang the caller's exit."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            with suppress(queue.Empty):
                self._items.get(timeout=0.2)
        if self._thread.is_alive():
            log.warning(
                "the Ray extraction thread did not stop within %.0f s; leaving it to the process exit",
                timeout,
            )


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _driver_batches(params: Params) -> int:
    """Batches the driver predicts itself while Ray starts: ``extract.driver_batches`` on CPU runs; none with
    GPUs (the driver may have none, and a CPU's maps differ from a GPU's in the last bits)."""
    return 0 if params.extract.use_gpu else params.extract.driver_batches


def _driver_predictions(
    inputs: pa.Table, spec: ModelSpec, job: ExtractionJob, options: ForwardOptions
) -> Iterator[dict[str, Any]]:
    """The driver's result batches of ``inputs``: an inference actor's steps (`DecodingMapPredictor`) with as
    many torch threads, so the same bytes as Ray's (the threads can change a convolution's last bits)."""
    cfg = job.params.extract
    with _torch_threads(math.ceil(cfg.cpus_per_actor)):
        predictor = DecodingMapPredictor(spec, str(job.model), replace(options, device="cpu"), str(job.root))
        for start in range(0, inputs.num_rows, cfg.batch_size):
            yield predictor(_input_columns(inputs.slice(start, cfg.batch_size)))


def extract(
    job: ExtractionJob, *, amp: bool | None = None, channels_last: bool | None = None
) -> ExtractSummary:
    """Ray Data extraction of every manifest image into ``out_dir/maps/part-*.parquet`` + ``summary.json``.

    Runs where `acol.distributed.session.ensure_ray` says (RAY_ADDRESS, else a private local Ray): every
    node must see the job's ``root`` and ``model`` at the same paths. ``params.extract`` sets the batch, actor
    pool, GPU use, box threshold and rows per file; ``params.train.image_size`` the input size. A rerun after a
    kill computes only the missing parts (module docstring, Resume).
    While Ray starts (in a background thread), the driver predicts the first ``extract.driver_batches``
    batches itself with the same steps and as many torch threads as an actor: the same bytes as Ray's.
    ``amp`` (bf16 autocast) and ``channels_last`` default to ``extract.amp`` and ``extract.channels_last``.
    """
    params = job.params
    cfg = params.extract
    if not job.model.resolve().is_file():
        raise FileNotFoundError(f"model weights not found: {job.model}")
    job = job.resolved()
    options = _forward_options(params, _device(cfg.use_gpu, None), amp, channels_last)

    def stream(inputs: pa.Table, spec: ModelSpec) -> Iterator[dict[str, Any]]:
        head = min(inputs.num_rows, _driver_batches(params) * cfg.batch_size)
        tail = inputs.slice(head)
        feed = None
        if tail.num_rows:  # Ray starts now, in the background
            gpus = cfg.num_actors if cfg.use_gpu else 0
            started = start_ray_in_background(_ray_cpus(params), gpus, params.ray.join_local)
            args = (started, tail, params, spec, str(job.root), str(job.model), options)
            feed = _Background(lambda: _ray_batches(*args))
        try:
            if head:
                log.info("the driver predicts the first %d images while Ray starts", head)
                yield from _driver_predictions(inputs.slice(0, head), spec, job, options)
            if feed is not None:
                yield from feed
        finally:
            if feed is not None:
                feed.close()

    return _extract_into_store("ray", job, options, stream)


class _DecodeDataset(torch.utils.data.Dataset):
    """Items are one-row decode results (the same `decode_batch` as Ray's), for a plain DataLoader."""

    def __init__(self, inputs: pa.Table, root: str, size: int) -> None:
        self.columns = _input_columns(inputs)
        self.root, self.size = root, size

    def __len__(self) -> int:
        return len(self.columns["image_id"])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        row = {name: values[index : index + 1] for name, values in self.columns.items()}
        return decode_batch(row, self.root, self.size)


def _collate(items: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """One batch dict; ``image`` as a tensor: the loader's ``pin_memory`` pins tensors only (not NumPy)."""
    batch: dict[str, Any] = {name: np.concatenate([item[name] for item in items]) for name in items[0]}
    batch["image"] = torch.from_numpy(batch["image"])
    return batch


def _plain_batches(
    inputs: pa.Table, spec: ModelSpec, job: ExtractionJob, options: ForwardOptions, loader_workers: int = 0
) -> Iterator[dict[str, Any]]:
    """The result batches of ``inputs`` from a DataLoader over `decode_batch` and a `MapPredictor` in this process."""
    predictor = MapPredictor(spec, str(job.model), options)
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(inputs, str(job.root), options.size),
        batch_size=job.params.extract.batch_size,
        shuffle=False,
        num_workers=loader_workers,
        collate_fn=_collate,
        pin_memory=predictor.device.type == "cuda",  # the predictor then copies asynchronously
    )
    for batch in loader:
        yield predictor(batch)


def extract_plain(
    job: ExtractionJob,
    *,
    device: str | None = None,
    loader_workers: int = 0,
    amp: bool | None = None,
    channels_last: bool | None = None,
) -> ExtractSummary:
    """The same extraction with a PyTorch DataLoader in this process: the reference and the baseline.

    A rerun after a kill resumes as the module docstring's Resume paragraph says.
    ``amp`` and ``channels_last`` default to ``extract.amp`` and ``extract.channels_last``.
    """
    options = _forward_options(job.params, _device(job.params.extract.use_gpu, device), amp, channels_last)

    def stream(inputs: pa.Table, spec: ModelSpec) -> Iterator[dict[str, Any]]:
        yield from _plain_batches(inputs, spec, job, options, loader_workers)

    return _extract_into_store("plain", job, options, stream)
