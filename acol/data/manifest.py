"""The manifest: one Arrow/Parquet table, one row per image, read by every stage.

Columns (`MANIFEST_SCHEMA`):

- ``image_id`` (string): the image path relative to the dataset root, ``/``-separated (the WSOL id convention,
  e.g. ``val/ILSVRC2012_val_00000001.JPEG``); the root is never stored, so manifests move with the data.
- ``class_index`` (int32): index into the class list; ``class_id`` (string): that class's id (wnid, CUB
  folder).
- ``width``, ``height`` (int32): the original image size in pixels.
- ``boxes`` (list<list<float32>>): ``[x0, y0, x1, y1]`` in original-image pixels, ``x0 <= x1``, ``y0 <= y1``,
  inside ``[0, width] x [0, height]``; an empty list for an image without box annotation.
- ``mask_path``, ``ignore_path`` (string, nullable): relative paths of a foreground mask and its ignore mask.
- ``more_mask_paths`` (list<string>): the image's other instance masks (OpenImages annotates each instance;
  the ground-truth foreground is the union of ``mask_path`` and these, as Choe et al.'s ``get_mask``); empty
  for one mask or none. A manifest written before this column reads as having none.

Schema metadata: ``acol.classes`` (JSON list of class ids in index order) and ``acol.source``
(``"ilsvrc"``, ``"cub"``, ``"wsol"``, ``"synthetic"``...).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from acol.data.errors import DataError, DataProblem, ProblemLog, count_problems
from acol.data.paths import UnsafePathError, resolve_inside
from acol.io import atomic_path

__all__ = [
    "MANIFEST_SCHEMA",
    "DataError",
    "DataProblem",
    "ProblemLog",
    "count_problems",
    "manifest_classes",
    "manifest_from_columns",
    "manifest_from_records",
    "manifest_source",
    "read_manifest",
    "validate_manifest",
    "write_manifest",
]

CLASSES_KEY = b"acol.classes"
SOURCE_KEY = b"acol.source"

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("class_index", pa.int32(), nullable=False),
        pa.field("class_id", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("boxes", pa.list_(pa.list_(pa.float32())), nullable=False),
        pa.field("mask_path", pa.string(), nullable=True),
        pa.field("ignore_path", pa.string(), nullable=True),
        pa.field("more_mask_paths", pa.list_(pa.string()), nullable=False),
    ]
)

_BOXES_TYPE = MANIFEST_SCHEMA.field("boxes").type


def _with_metadata(table: pa.Table, classes: Sequence[str], source: str) -> pa.Table:
    meta = {CLASSES_KEY: json.dumps(list(classes)).encode(), SOURCE_KEY: source.encode()}
    return table.replace_schema_metadata(meta)


def manifest_from_columns(
    image_ids: Sequence[str] | pa.Array,
    class_indices: np.ndarray | Sequence[int],
    widths: np.ndarray | Sequence[int],
    heights: np.ndarray | Sequence[int],
    box_counts: np.ndarray | Sequence[int],
    box_coords: np.ndarray,
    classes: Sequence[str],
    source: str,
    mask_paths: Sequence[str | None] | None = None,
    ignore_paths: Sequence[str | None] | None = None,
    more_mask_paths: Sequence[Sequence[str]] | None = None,
) -> pa.Table:
    """Build a manifest from columns without a Python loop per box (fast path for 50k+ images).

    ``box_counts[i]`` is the number of boxes of image ``i``; ``box_coords`` is ``(sum(box_counts), 4)`` float,
    the boxes of image 0 first, then image 1, and so on. ``class_id`` is filled from ``classes``.
    """
    classes = list(classes)
    idx = np.asarray(class_indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= len(classes)):
        bad = int(idx[(idx < 0) | (idx >= len(classes))][0])
        raise DataError("manifest", f"class index {bad} outside [0, {len(classes)})")
    counts = np.asarray(box_counts, dtype=np.int64)
    coords = np.asarray(box_coords, dtype=np.float32).reshape(-1, 4)
    if int(counts.sum()) != len(coords):
        raise DataError(
            "manifest", f"box_counts sum to {int(counts.sum())} but {len(coords)} boxes were given"
        )
    n = len(idx)
    inner = pa.ListArray.from_arrays(
        pa.array(np.arange(0, 4 * len(coords) + 1, 4, dtype=np.int32)), pa.array(coords.reshape(-1))
    )
    outer_offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=outer_offsets[1:])
    boxes = pa.ListArray.from_arrays(pa.array(outer_offsets), inner).cast(_BOXES_TYPE)
    class_ids = pa.array(np.asarray(classes, dtype=object)[idx] if n else [], type=pa.string())
    table = pa.Table.from_arrays(
        [
            pa.array(image_ids, type=pa.string()),
            pa.array(idx.astype(np.int32)),
            class_ids,
            pa.array(np.asarray(widths, dtype=np.int32)),
            pa.array(np.asarray(heights, dtype=np.int32)),
            boxes,
            pa.array(mask_paths if mask_paths is not None else [None] * n, type=pa.string()),
            pa.array(ignore_paths if ignore_paths is not None else [None] * n, type=pa.string()),
            pa.array(
                more_mask_paths if more_mask_paths is not None else [[]] * n, type=pa.list_(pa.string())
            ),
        ],
        schema=MANIFEST_SCHEMA,
    )
    return _with_metadata(table, classes, source)


def manifest_from_records(records: list[dict[str, Any]], classes: list[str], source: str) -> pa.Table:
    """Build a manifest from one dict per image.

    Each record has ``image_id``, ``width``, ``height``, ``class_index`` or ``class_id`` (the other is derived
    from ``classes``), optional ``boxes`` (list of ``[x0, y0, x1, y1]``), ``mask_path``, ``ignore_path``,
    ``more_mask_paths``.
    """
    lookup = {c: i for i, c in enumerate(classes)}
    indices, boxes_flat, counts = [], [], []
    for r in records:
        if "class_index" in r:
            indices.append(int(r["class_index"]))
        elif r.get("class_id") in lookup:
            indices.append(lookup[r["class_id"]])
        else:
            raise DataError(str(r.get("image_id")), f"unknown class: {r.get('class_id')!r} not in classes")
        if "class_id" in r and 0 <= indices[-1] < len(classes) and classes[indices[-1]] != r["class_id"]:
            raise DataError(str(r["image_id"]), f"class_id {r['class_id']!r} != classes[{indices[-1]}]")
        bxs = r.get("boxes") or []
        for b in bxs:
            if len(b) != 4:
                raise DataError(str(r["image_id"]), f"malformed box: {b!r} does not have 4 coordinates")
        boxes_flat.extend(bxs)
        counts.append(len(bxs))
    return manifest_from_columns(
        [r["image_id"] for r in records],
        np.asarray(indices, dtype=np.int64),
        [r["width"] for r in records],
        [r["height"] for r in records],
        counts,
        np.asarray(boxes_flat, dtype=np.float32).reshape(-1, 4),
        classes,
        source,
        mask_paths=[r.get("mask_path") for r in records],
        ignore_paths=[r.get("ignore_path") for r in records],
        more_mask_paths=[list(r.get("more_mask_paths") or []) for r in records],
    )


def manifest_classes(table: pa.Table) -> list[str]:
    """The class ids in index order, from the schema metadata."""
    meta = table.schema.metadata or {}
    if CLASSES_KEY not in meta:
        raise DataError("manifest", "missing schema metadata 'acol.classes'")
    classes = json.loads(meta[CLASSES_KEY])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DataError("manifest", "schema metadata 'acol.classes' is not a JSON list of strings")
    return classes


def manifest_source(table: pa.Table) -> str:
    """The ``acol.source`` tag (``"ilsvrc"``, ``"cub"``...)."""
    meta = table.schema.metadata or {}
    if SOURCE_KEY not in meta:
        raise DataError("manifest", "missing schema metadata 'acol.source'")
    return meta[SOURCE_KEY].decode()


def _check_schema(table: pa.Table, where: str) -> None:
    for field in MANIFEST_SCHEMA:
        if field.name not in table.column_names:
            raise DataError(where, f"missing column {field.name!r}")
        actual = table.schema.field(field.name).type
        if actual != field.type:
            raise DataError(where, f"column {field.name!r} has type {actual}, expected {field.type}")
        if not field.nullable and table.column(field.name).null_count:
            raise DataError(where, f"column {field.name!r} has null values")


def _check_ids(table: pa.Table, where: str) -> list[str]:
    """Unique, safe image ids and safe mask paths; returns the ids."""
    ids = table.column("image_id").to_pylist()
    if len(set(ids)) != len(ids):
        dup = pc.value_counts(table.column("image_id").combine_chunks())
        dup = dup.filter(pc.greater(dup.field("counts"), 1))
        raise DataError(where, f"duplicate image_id {dup[0]['values'].as_py()!r}")
    for i in ids:
        resolve_inside(".", i)
    # Mask paths are joined to the dataset root by the evaluator: refuse ones that leave it, naming the file.
    orphans = pc.and_(
        pc.is_null(table.column("mask_path")),
        pc.greater(pc.list_value_length(table.column("more_mask_paths")), 0),
    )
    if pc.any(orphans).as_py():
        first = ids[pc.index(orphans, True).as_py()]
        raise DataError(f"{where}: more_mask_paths of {first}", "instance masks without a mask_path")
    for col in ("mask_path", "ignore_path", "more_mask_paths"):
        for image_id, value in zip(ids, table.column(col).to_pylist(), strict=True):
            for rel in value if isinstance(value, list) else [value]:
                if rel is None:
                    continue
                try:
                    resolve_inside(".", rel)
                except UnsafePathError as e:
                    raise DataError(f"{where}: {col} of {image_id}", e.reason) from None
    return ids


def _check_classes(table: pa.Table, ids: list[str], classes: list[str]) -> None:
    """``class_index`` in range and ``class_id`` the class it indexes."""
    idx = table.column("class_index").to_numpy()
    bad = np.flatnonzero((idx < 0) | (idx >= len(classes)))
    if bad.size:
        raise DataError(ids[bad[0]], f"class_index {idx[bad[0]]} outside [0, {len(classes)})")
    expected = np.asarray(classes, dtype=object)[idx] if len(idx) else np.empty(0, dtype=object)
    given = np.asarray(table.column("class_id").to_pylist(), dtype=object)
    bad = np.flatnonzero(expected != given)
    if bad.size:
        raise DataError(ids[bad[0]], f"class_id {given[bad[0]]!r} != classes[{idx[bad[0]]}]")


def _check_sizes_and_boxes(table: pa.Table, ids: list[str]) -> None:
    """Positive sizes; every box 4 finite coordinates inside its image with x0 <= x1, y0 <= y1."""
    w = table.column("width").to_numpy()
    h = table.column("height").to_numpy()
    bad = np.flatnonzero((w <= 0) | (h <= 0))
    if bad.size:
        raise DataError(ids[bad[0]], f"non-positive size {w[bad[0]]}x{h[bad[0]]}")
    boxes = table.column("boxes").combine_chunks()
    inner = pc.list_flatten(boxes)
    lengths = pc.list_value_length(inner).to_numpy(zero_copy_only=False)
    owner = pc.list_parent_indices(boxes).to_numpy()
    bad = np.flatnonzero(lengths != 4)
    if bad.size:
        raise DataError(
            ids[owner[bad[0]]], f"malformed box: {inner[int(bad[0])].as_py()} has not 4 coordinates"
        )
    xy = pc.list_flatten(inner).to_numpy(zero_copy_only=False).reshape(-1, 4)
    if len(xy):
        ww, hh = w[owner], h[owner]
        ok = np.isfinite(xy).all(axis=1)
        ok &= (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] <= xy[:, 2]) & (xy[:, 1] <= xy[:, 3])
        ok &= (xy[:, 2] <= ww) & (xy[:, 3] <= hh)
        bad = np.flatnonzero(~ok)
        if bad.size:
            j = bad[0]
            raise DataError(
                ids[owner[j]],
                f"bad box: {xy[j].tolist()} not inside the {ww[j]}x{hh[j]} image with x0<=x1, y0<=y1",
            )


def _check_files(table: pa.Table, root: str | os.PathLike[str]) -> None:
    """Every image and mask file of the manifest exists under ``root``."""
    for col in ("image_id", "mask_path", "ignore_path", "more_mask_paths"):
        for value in table.column(col).to_pylist():
            for rel in value if isinstance(value, list) else [value]:
                if rel is not None and not resolve_inside(root, rel).is_file():
                    raise DataError(rel, f"missing file: not found under {root}")


def validate_manifest(
    table: pa.Table, root: str | os.PathLike[str] | None = None, where: str = "manifest"
) -> None:
    """Check a manifest; raise `DataError` naming the first bad image and the reason.

    Checks: schema and metadata, unique safe ``image_id``, ``class_index`` in range and matching ``class_id``,
    positive sizes, every box of 4 finite coordinates with ``0 <= x0 <= x1 <= width`` and ``0 <= y0 <= y1 <=
    height``. With ``root``, also that every image (and mask) file exists.
    """
    _check_schema(table, where)
    classes = manifest_classes(table)
    manifest_source(table)
    ids = _check_ids(table, where)
    _check_classes(table, ids, classes)
    _check_sizes_and_boxes(table, ids)
    if root is not None:
        _check_files(table, root)


def write_manifest(table: pa.Table, path: str | os.PathLike[str]) -> None:
    """Validate ``table`` and write it as Parquet atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    validate_manifest(table, where=str(path))
    with atomic_path(path) as tmp:
        pq.write_table(table.select(MANIFEST_SCHEMA.names), tmp)


def read_manifest(path: str | os.PathLike[str]) -> pa.Table:
    """Read and validate a manifest written by `write_manifest`; errors name ``path``."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(str(path), f"cannot read manifest: {e}") from None
    if "more_mask_paths" not in table.column_names:  # written before the column: one mask per image at most
        empty = pa.array([[]] * table.num_rows, type=pa.list_(pa.string()))
        table = table.append_column(MANIFEST_SCHEMA.field("more_mask_paths"), empty)
    validate_manifest(table, where=str(path))
    return table
