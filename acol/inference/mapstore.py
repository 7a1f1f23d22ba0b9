"""The map store: localization maps and predictions of one model over a manifest, as Parquet parts.

One row per manifest image, sorted by ``image_id``, in files ``part-00000.parquet``, ``part-00001.parquet``...
Columns (`MAPSTORE_SCHEMA`):

- ``image_id`` (string), ``label`` (int32): from the manifest (``class_index``).
- ``top5_classes`` (list<int32>), ``top5_scores`` (list<float32>): the softmax top-k of branch A's logits,
  best first, k = min(5, number of classes).
- ``map_height``, ``map_width`` (int32): the feature-map grid (h, w) of the maps below.
- ``map_gt``, ``map_top1`` (list<float32>): the fused localization map (`WSOLModel.localization_maps`,
  min-max normalized to [0, 1]) of the ground-truth and of the top-1 class, row-major h*w. For ACoL each
  comes from a pass whose erasing used that class (the official code and Choe et al.'s `wsol/method/acol.py`):
  ``map_gt`` feeds GT-known loc, MaxBoxAcc(V2) and PxAP; ``map_top1`` the predicted box (top-1 loc).
- ``map_a_gt``, ``map_b_gt`` (list<float32>): branch A's and B's normalized map of the ground-truth class
  (B erased by the ground-truth class); ``map_b_gt`` is null for one-branch methods.
- ``pred_box`` (list<float32>): ``[x0, y0, x1, y1]`` in original image pixels, from ``map_top1`` as the WSOL
  protocol does it (Choe et al. 2020): bicubic resize to 224x224, min-max normalize, threshold at
  ``box_threshold``, the largest contour's inclusive box in that 224 frame, then scaled by ``width / 224``
  and ``height / 224``. It is computed from the map as stored, so a reader can reproduce it.
- ``error`` (string): null when fine; an image that could not be read or decoded has its reason here, and null
  maps, scores and box.

The schema metadata key ``acol.mapstore`` holds a JSON object (method, classes, box threshold, image size).

Why float32 maps: the protocol resizes bicubically and quantizes to 256 levels, so float16's rounding moved
boxes and MaxBoxAccV2 (``benchmarks/README.md``, "Map precision"). The map values are written
BYTE_STREAM_SPLIT with no dictionary (smaller and faster to read than pyarrow's default dictionary). Stores
written before (list<float16> maps, `LEGACY_MAP_TYPE`) still read: `read_maps` returns them as float32.
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

from acol.errors import UserError
from acol.io import readable_path

__all__ = [
    "LEGACY_MAP_TYPE",
    "MAPSTORE_SCHEMA",
    "MAP_COLUMNS",
    "MAP_DTYPE",
    "MAP_TYPE",
    "METADATA_KEY",
    "MapStoreError",
    "columns_to_table",
    "legacy_map_columns",
    "part_name",
    "read_maps",
    "read_metadata",
    "maps_array",
    "ok_rows",
]

METADATA_KEY = b"acol.mapstore"  # the format's name in Parquet schema metadata (not the module path)
MAP_COLUMNS = ("map_gt", "map_top1", "map_a_gt", "map_b_gt")
MAP_DTYPE = np.dtype(np.float32)  # the stored precision of the maps: the one place that sets it
MAP_TYPE = pa.list_(pa.from_numpy_dtype(MAP_DTYPE))
LEGACY_MAP_TYPE = pa.list_(pa.float16())  # stores written before float32: read, converted, never written

MAPSTORE_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("top5_classes", pa.list_(pa.int32())),
        pa.field("top5_scores", pa.list_(pa.float32())),
        pa.field("map_height", pa.int32()),
        pa.field("map_width", pa.int32()),
        *(pa.field(name, MAP_TYPE) for name in MAP_COLUMNS),
        pa.field("pred_box", pa.list_(pa.float32())),
        pa.field("error", pa.string()),
    ]
)


def _leaf_path(field: pa.Field) -> str:
    """The Parquet column path of a field's values: pyarrow's per-column options need it for list columns."""
    return f"{field.name}.list.element" if pa.types.is_list(field.type) else field.name


def _parquet_options() -> dict[str, Any]:
    """Writer options: the map values BYTE_STREAM_SPLIT without a dictionary, the other columns as before."""
    maps = [_leaf_path(MAPSTORE_SCHEMA.field(name)) for name in MAP_COLUMNS]
    others = [_leaf_path(f) for f in MAPSTORE_SCHEMA if f.name not in MAP_COLUMNS]
    return {
        "compression": "zstd",
        "compression_level": 3,
        "write_statistics": False,
        "use_dictionary": others,  # a list: the dictionary for these columns only
        "column_encoding": dict.fromkeys(maps, "BYTE_STREAM_SPLIT"),
    }


PARQUET_OPTIONS: dict[str, Any] = _parquet_options()


class MapStoreError(UserError, ValueError):
    """A map store folder or table that cannot be used; the message names the file or column."""


def _list_column(values: np.ndarray | None, ok: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """(N, L) rows -> list<value_type>, null (and zero-length) where not ``ok`` or ``values`` is None."""
    n = len(ok)
    if values is None:
        return pa.nulls(n, type=pa.list_(value_type))
    values = np.asarray(values).reshape(n, -1)
    lengths = np.where(ok, values.shape[1], 0)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = pa.array(np.ascontiguousarray(values[ok]).reshape(-1), type=value_type)
    return pa.ListArray.from_arrays(pa.array(offsets), flat, mask=pa.array(~ok))


def _stored(maps: Any) -> np.ndarray | None:
    """Map values in `MAP_DTYPE` (NumPy's rounding if given wider), so Arrow gets exactly the stored values."""
    return None if maps is None else np.asarray(maps, dtype=MAP_DTYPE)


def columns_to_table(columns: dict[str, Any], metadata: dict[str, Any] | None = None) -> pa.Table:
    """Build a `MAPSTORE_SCHEMA` table from a dict of NumPy columns (as `predict_batch` returns plus ids).

    ``columns`` holds ``image_id``, ``label``, ``error`` (str, "" or None when fine) and the prediction
    columns; rows with an error get null predictions whatever their (placeholder) values are.
    """
    ids = [str(i) for i in np.asarray(columns["image_id"]).tolist()]
    errors = [e if e else None for e in np.asarray(columns["error"], dtype=object).tolist()]
    ok = np.array([e is None for e in errors], dtype=bool)
    n = len(ids)

    def scalar(name: str) -> pa.Array:
        return pa.array(np.asarray(columns[name], dtype=np.int32).reshape(n), mask=~ok)

    arrays = [
        pa.array(ids, type=pa.string()),
        pa.array(np.asarray(columns["label"], dtype=np.int32).reshape(n)),
        _list_column(columns["top5_classes"], ok, pa.int32()),
        _list_column(columns["top5_scores"], ok, pa.float32()),
        scalar("map_height"),
        scalar("map_width"),
        *(_list_column(_stored(columns.get(name)), ok, MAP_TYPE.value_type) for name in MAP_COLUMNS),
        _list_column(columns["pred_box"], ok, pa.float32()),
        pa.array(errors, type=pa.string()),
    ]
    schema = MAPSTORE_SCHEMA
    if metadata is not None:
        schema = schema.with_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    return pa.Table.from_arrays(arrays, schema=schema)


def part_name(index: int) -> str:
    """Deterministic part file name: ``part-00000.parquet``."""
    return f"part-{index:05d}.parquet"


def _parts(folder: str | os.PathLike[str]) -> list[Path]:
    folder = readable_path(folder)  # the complete old copy while an output swap is half done
    if not folder.is_dir():
        raise MapStoreError(f"map store folder not found: {folder}")
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        raise MapStoreError(f"{folder}: no part-*.parquet files")
    return parts


def legacy_map_columns(schema: pa.Schema) -> list[str]:
    """The map columns of ``schema`` stored as `LEGACY_MAP_TYPE` (float16), which the writer no longer makes."""
    return [f.name for f in schema if f.name in MAP_COLUMNS and f.type == LEGACY_MAP_TYPE]


def _check_types(part: Path, schema: pa.Schema) -> None:
    """Each column has its `MAPSTORE_SCHEMA` type; a map column may also be legacy float16."""
    for field in schema:
        expected = MAPSTORE_SCHEMA.field(field.name).type if field.name in MAPSTORE_SCHEMA.names else None
        allowed = (expected, LEGACY_MAP_TYPE) if field.name in MAP_COLUMNS else (expected,)
        if expected is None or field.type not in allowed:
            also = f" (or the legacy {LEGACY_MAP_TYPE})" if field.name in MAP_COLUMNS else ""
            raise MapStoreError(
                f"{part}: column {field.name!r} has type {field.type}, expected {expected}{also}"
            )


def _upgrade(table: pa.Table) -> pa.Table:
    """Legacy float16 map columns as `MAP_TYPE`: exact (float16 is a subset), and parts of both kinds concat."""
    for name in legacy_map_columns(table.schema):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, MAPSTORE_SCHEMA.field(name), table.column(i).cast(MAP_TYPE))
    return table


def _read_part(part: Path, wanted: list[str] | None) -> pa.Table:
    """One part, its column types checked and its maps in `MAP_DTYPE`; errors name the file."""
    try:
        table = pq.read_table(part, columns=wanted)
    except (OSError, pa.ArrowInvalid) as e:
        raise MapStoreError(f"{part}: cannot read map store part: {e}") from None
    except KeyError as e:
        raise MapStoreError(f"{part}: missing column {e}") from None
    _check_types(part, table.schema)
    missing = set(wanted or MAPSTORE_SCHEMA.names) - set(table.column_names)
    if missing:
        raise MapStoreError(f"{part}: missing columns {sorted(missing)}")
    return _upgrade(table)


def read_maps(folder: str | os.PathLike[str], columns: Sequence[str] | None = None) -> pa.Table:
    """Read every part of a map store folder into one table sorted by ``image_id``; errors name the file.

    ``columns`` selects a subset (``image_id`` is always read, for the sort). Map columns come back as
    `MAP_TYPE` (float32) whether the part stores them so or as legacy float16.
    """
    wanted = None if columns is None else list(dict.fromkeys(["image_id", *columns]))
    tables = [_read_part(part, wanted) for part in _parts(folder)]
    table = pa.concat_tables(tables, promote_options="none") if len(tables) > 1 else tables[0]
    indices = pc.sort_indices(table, sort_keys=[("image_id", "ascending")])
    return table.take(indices)


def read_metadata(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The first part's JSON metadata, schema key ``acol.mapstore``: method, classes, box_threshold, image_size."""
    part = _parts(folder)[0]
    meta = pq.read_schema(part).metadata or {}
    if METADATA_KEY not in meta:
        raise MapStoreError(f"{part}: missing schema metadata {METADATA_KEY.decode()!r}")
    return json.loads(meta[METADATA_KEY])


def ok_rows(table: pa.Table) -> pa.Table:
    """The rows without an error (the ones that have maps)."""
    return table.filter(pc.is_null(table.column("error")))


def maps_array(table: pa.Table, column: str) -> np.ndarray:
    """A map column as an (N, h, w) float32 array; raises if a row is null (filter with `ok_rows` first).

    All rows must share one grid (``map_height``, ``map_width``), as one model's maps do.
    """
    if column not in MAP_COLUMNS:
        raise MapStoreError(f"{column!r} is not a map column; choose one of {list(MAP_COLUMNS)}")
    for name in (column, "map_height", "map_width"):
        if name not in table.column_names:
            raise MapStoreError(f"map table has no column {name!r}")
    col = table.column(column)
    if col.null_count:
        raise MapStoreError(
            f"column {column!r} has {col.null_count} null rows (errors, or branch B of CAM); "
            "select rows with ok_rows(table) first"
        )
    n = table.num_rows
    if n == 0:
        return np.zeros((0, 0, 0), dtype=np.float32)
    hs = np.unique(table.column("map_height").to_numpy())
    ws = np.unique(table.column("map_width").to_numpy())
    if len(hs) != 1 or len(ws) != 1:
        raise MapStoreError(f"rows have different map grids: heights {hs.tolist()}, widths {ws.tolist()}")
    flat = pc.list_flatten(col.combine_chunks()).to_numpy(zero_copy_only=False)
    if flat.size != n * int(hs[0]) * int(ws[0]):
        raise MapStoreError(f"column {column!r}: a map's length differs from map_height * map_width")
    return flat.reshape(n, int(hs[0]), int(ws[0])).astype(np.float32)  # a copy: Arrow's buffer is read-only
