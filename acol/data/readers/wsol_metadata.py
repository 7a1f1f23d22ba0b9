"""The WSOL metadata format of clovaai/wsolevaluation (Choe et al., CVPR 2020), to and from a manifest.

A folder (e.g. ``ILSVRC/test``) holds comma-separated files without header, the last line possibly without a
newline; every path is relative to the dataset root (``val/ILSVRC2012_val_00000001.JPEG``, or for CUB
``001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg``, relative to ``CUB_200_2011/images``):

- ``image_ids.txt``: one path a line (the row order of the manifest);
- ``class_labels.txt``: ``path,class_index`` (ILSVRC 0-999 in sorted-wnid order, CUB 0-199);
- ``image_sizes.txt``: ``path,width,height`` (absent from train folders, empty in wsolevaluation's OpenImages
  folders: then the sizes are read from the image headers under ``image_root``, or for a mask folder
  scored without images from the first instance mask's header under ``mask_root``);
- ``localization.txt``: ``path,x0,y0,x1,y1``, one line a box (absent from train folders: no boxes); or, in
  wsolevaluation's OpenImages form, ``path,mask_path,ignore_path``, one line an instance mask, the ignore
  path on an image's first line only (mask paths relative to the mask root).

`read_wsol_metadata` makes a manifest of a folder; `read_wsol_localization` gives a score-map evaluator
(``python -m acol.evaluate``) the ids, sizes and boxes or masks, through the same parsing and checks.
Box files go through pyarrow's CSV reader and NumPy, no Python loop per line (50k images, 80k boxes: < 1 s).
A malformed line is an error naming the file and the line number.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from acol.data.errors import DataError, DataProblem, ProblemLog
from acol.data.manifest import manifest_classes, manifest_from_columns
from acol.data.paths import UnsafePathError, resolve_inside
from acol.data.readers.common import probe_images
from acol.io import write_text_atomic

__all__ = ["WsolLocalization", "read_wsol_localization", "read_wsol_metadata", "write_wsol_metadata"]

_FILES = ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt")
_BOX_COLUMNS = ["path", "x0", "y0", "x1", "y1"]
_MASK_COLUMNS = ["path", "mask_path", "ignore_path"]


def _read_csv(path: Path, names: list[str], types: dict[str, pa.DataType]) -> pa.Table:
    """Read one headerless comma-separated metadata file; errors name the file and, when found, the line."""
    try:
        return pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(column_names=names),
            parse_options=pcsv.ParseOptions(delimiter=",", quote_char=False),
            convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=False),
        )
    except FileNotFoundError:
        raise DataError(str(path), "missing file") from None
    except pa.ArrowInvalid as e:
        bad = _first_bad_line(path, names, types)
        detail = f"{path.name}:{bad[0]}: {bad[1]}" if bad else str(e)
        raise DataError(str(path), f"malformed line: {detail}") from None


def _first_bad_line(path: Path, names: list[str], types: dict[str, pa.DataType]) -> tuple[int, str] | None:
    """The line number (1-based, as an editor counts) and fault of the first line pyarrow would refuse.

    Only on the error path: pyarrow's own message names neither, and a user fixes a file by its line.
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    for n, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line:
            continue  # pyarrow skips empty lines too
        fields = line.split(",")
        if len(fields) != len(names):
            return n, f"expected {len(names)} fields {','.join(names)}, got {len(fields)}: {line!r}"
        for name, value in zip(names, fields, strict=True):
            try:
                pc.cast(pa.array([value], pa.string()), types[name])
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return n, f"{name} {value!r} is not a valid {types[name]}: {line!r}"
    return None


def _index_of(paths: pa.Array, ids: pa.Array) -> np.ndarray:
    """Row of each path in ``ids`` (-1 where absent)."""
    return pc.index_in(paths, value_set=ids).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _read_image_ids(folder: Path, log: ProblemLog) -> tuple[pa.Array, np.ndarray]:
    """The ids of ``image_ids.txt`` and which to keep: duplicates (after the first) and unsafe paths not."""
    ids = _read_csv(folder / "image_ids.txt", ["path"], {"path": pa.string()}).column("path").combine_chunks()
    keep = np.ones(len(ids), dtype=bool)
    counts = pc.value_counts(ids)
    for dup in counts.filter(pc.greater(counts.field("counts"), 1)).field("values").to_pylist():
        log.add(f"{folder / 'image_ids.txt'}:{dup}", "duplicate image id: listed more than once")
        keep[np.flatnonzero(pc.equal(ids, dup).to_numpy(zero_copy_only=False))[1:]] = False
    for i, p in enumerate(ids.to_pylist()):
        try:
            resolve_inside(".", p)
        except UnsafePathError as e:
            log.add(f"{folder / 'image_ids.txt'}:{p}", e.reason)
            keep[i] = False
    return ids, keep


def _read_class_labels(
    folder: Path, ids: pa.Array, keep: np.ndarray, classes: Sequence[str] | None, log: ProblemLog
) -> tuple[np.ndarray, int]:
    """Class index of each id (-1 if unlabelled) and the class count; drops unlabelled, out-of-range ids."""
    labels = _read_csv(
        folder / "class_labels.txt", ["path", "label"], {"path": pa.string(), "label": pa.int64()}
    )
    label_row = _index_of(labels.column("path").combine_chunks(), ids)
    label = np.full(len(ids), -1, dtype=np.int64)
    label[label_row[label_row >= 0]] = labels.column("label").to_numpy()[label_row >= 0]
    n_classes = len(classes) if classes is not None else int(max(label.max(initial=-1), -1)) + 1
    for i in np.flatnonzero(keep & ((label < 0) | (label >= n_classes))):
        reason = (
            "missing class label"
            if label[i] < 0
            else f"unknown class: label {label[i]} not in [0, {n_classes})"
        )
        log.add(f"{folder / 'class_labels.txt'}:{ids[i]}", reason)
        keep[i] = False
    return label, n_classes


def _read_image_sizes(
    path: Path, ids: pa.Array, keep: np.ndarray, log: ProblemLog
) -> tuple[np.ndarray, np.ndarray]:
    """Width and height of each id from ``image_sizes.txt``; drops ids without a positive size."""
    sizes = _read_csv(path, ["path", "w", "h"], {"path": pa.string(), "w": pa.int64(), "h": pa.int64()})
    width = np.zeros(len(ids), dtype=np.int64)
    height = np.zeros(len(ids), dtype=np.int64)
    row = _index_of(sizes.column("path").combine_chunks(), ids)
    width[row[row >= 0]] = sizes.column("w").to_numpy()[row >= 0]
    height[row[row >= 0]] = sizes.column("h").to_numpy()[row >= 0]
    for i in np.flatnonzero(keep & ((width <= 0) | (height <= 0))):
        log.add(f"{path}:{ids[i]}", "missing size: no positive width and height")
        keep[i] = False
    return width, height


def _has_lines(path: Path) -> bool:
    """Whether ``path`` exists and holds a non-blank line: wsolevaluation ships OpenImages' sizes empty."""
    try:
        return bool(path.read_bytes().strip())
    except FileNotFoundError:
        return False


def _sizes_from_headers(
    root: str | os.PathLike[str], files: list[str | None], keep: np.ndarray, log: ProblemLog, verify: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Width and height of each kept row from the header of its file under ``root`` (the image, or for masks
    scored without images its first instance mask); unreadable files are problems and their rows dropped."""
    width = np.zeros(len(files), dtype=np.int64)
    height = np.zeros(len(files), dtype=np.int64)
    rows = [i for i in np.flatnonzero(keep).tolist() if files[i] is not None]
    for i, size in zip(rows, probe_images(Path(root), [files[i] for i in rows], verify, 8), strict=True):
        if isinstance(size, DataError):
            log.add_error(size)
            keep[i] = False
        else:
            width[i], height[i] = size
    return width, height


def _sizes(
    folder: Path,
    ids: pa.Array,
    keep: np.ndarray,
    log: ProblemLog,
    root: str | os.PathLike[str] | None,
    files: list[str | None] | None = None,
    verify: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Sizes from ``image_sizes.txt``, or when it is absent or empty from the headers of ``files`` (default
    the images) under ``root``; neither is an error naming the file."""
    path = folder / "image_sizes.txt"
    if _has_lines(path):
        return _read_image_sizes(path, ids, keep, log)
    if root is None:
        state = "empty file" if path.exists() else "missing file"
        raise DataError(str(path), f"{state} (pass the image or mask root to read the sizes from the files)")
    return _sizes_from_headers(root, files if files is not None else ids.to_pylist(), keep, log, verify)


def _read_boxes(
    path: Path,
    ids: pa.Array,
    keep: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    log: ProblemLog,
    coord_type: pa.DataType,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the kept ids from a box ``localization.txt``: owner row (sorted, file order within an image)
    and (n, 4) x0y0x1y1 of ``coord_type``; boxes of unknown images or outside their image are dropped."""
    loc = _read_csv(path, _BOX_COLUMNS, {"path": pa.string(), **dict.fromkeys(_BOX_COLUMNS[1:], coord_type)})
    owner = _index_of(loc.column("path").combine_chunks(), ids)
    xy = np.stack([loc.column(c).to_numpy() for c in _BOX_COLUMNS[1:]], axis=1)
    xy = xy.astype(coord_type.to_pandas_dtype()).reshape(-1, 4)
    w, h = width[np.maximum(owner, 0)], height[np.maximum(owner, 0)]
    inside = np.isfinite(xy).all(axis=1) & (xy[:, 0] >= 0) & (xy[:, 1] >= 0)
    inside &= (xy[:, 0] <= xy[:, 2]) & (xy[:, 1] <= xy[:, 3]) & (xy[:, 2] <= w) & (xy[:, 3] <= h)
    box_ok = (owner >= 0) & inside
    for j in np.flatnonzero(~box_ok):
        where = f"{path}:{loc.column('path')[int(j)]}"
        if owner[j] < 0:
            log.add(where, "unknown image: box for an image not in image_ids.txt")
        elif keep[owner[j]]:
            log.add(
                where, f"bad box: {xy[j].tolist()} not inside the {w[j]}x{h[j]} image with x0<=x1, y0<=y1"
            )
    owner, xy = owner[box_ok], xy[box_ok]
    owner_kept = keep[owner]
    owner, xy = owner[owner_kept], xy[owner_kept]
    order = np.argsort(owner, kind="stable")
    return owner[order], xy[order]


def read_wsol_metadata(
    folder: str | os.PathLike[str],
    classes: Sequence[str] | None = None,
    *,
    image_root: str | os.PathLike[str] | None = None,
    localization: Literal["boxes", "masks"] = "boxes",
    source: str = "wsol",
    strict: bool = False,
    verify_images: bool = False,
) -> tuple[pa.Table, list[DataProblem]]:
    """Read a WSOL metadata folder into a manifest (rows in ``image_ids.txt`` order).

    ``classes`` gives the class ids in index order (e.g. sorted wnids from `acol.data.readers.ilsvrc.read_synsets`);
    without it the ids are the indices as strings, ``"0"`` to ``str(max label)``. Without sizes (no or an
    empty ``image_sizes.txt``) they are read from the image headers under ``image_root``. ``localization``
    says which ``localization.txt`` form the folder has (``verify_images``: decode each image read for its
    size); with ``masks`` each image's first instance mask is
    ``mask_path``, the others ``more_mask_paths``, and its ignore mask ``ignore_path``, and an image without a
    mask is dropped. Images without a class label or size, duplicate ids, unsafe paths, and boxes of unknown
    images or outside their image are recorded as problems and dropped (the image, or the box); ``strict``
    raises on the first.
    """
    _check_localization(localization)
    folder = Path(folder)
    log = ProblemLog(strict)
    ids, keep = _read_image_ids(folder, log)
    label, n_classes = _read_class_labels(folder, ids, keep, classes, log)
    loc_path = folder / "localization.txt"
    masks: dict[int, list[str]] = {}
    ignores: dict[int, str] = {}
    if localization == "masks":
        masks, ignores = _read_masks(loc_path, ids, keep, log)
        _drop_unannotated(loc_path, ids, keep, masks, log)
    width, height = _sizes(folder, ids, keep, log, image_root, verify=verify_images)
    if localization == "boxes" and _has_lines(loc_path):  # OpenImages' train folder: an empty file
        owner, xy = _read_boxes(loc_path, ids, keep, width, height, log, pa.float32())
    else:
        owner, xy = np.empty(0, dtype=np.int64), np.empty((0, 4), dtype=np.float32)

    rows = np.flatnonzero(keep)
    box_counts = np.bincount(owner, minlength=len(ids))[rows]
    class_list = list(classes) if classes is not None else [str(i) for i in range(n_classes)]
    kept = rows.tolist()
    table = manifest_from_columns(
        ids.take(pa.array(rows)), label[rows], width[rows], height[rows], box_counts, xy, class_list, source,
        mask_paths=[masks[i][0] if i in masks else None for i in kept],
        ignore_paths=[ignores.get(i) or None for i in kept],
        more_mask_paths=[masks[i][1:] if i in masks else [] for i in kept],
    )  # fmt: skip
    return table, log.problems


def _check_localization(localization: str) -> None:
    if localization not in ("boxes", "masks"):
        raise ValueError(f"localization must be 'boxes' or 'masks', got {localization!r}")


def _drop_unannotated(path: Path, ids: pa.Array, keep: np.ndarray, annotated: dict, log: ProblemLog) -> None:
    """Record and drop the kept ids without a box (or mask) in ``annotated``: nothing to score them on."""
    for i in np.flatnonzero(keep).tolist():
        if i not in annotated:
            log.add(f"{path}:{ids[i]}", f"missing annotation: no annotation for image id {ids[i].as_py()!r}")
            keep[i] = False


@dataclass(frozen=True)
class WsolLocalization:
    """What a score-map evaluator needs from a WSOL metadata folder (no class labels), kept ids only."""

    image_ids: list[str]
    sizes: dict[str, tuple[int, int]]  # id -> (width, height)
    boxes: dict[str, np.ndarray]  # id -> (k >= 1, 4) int64 x0y0x1y1 in original pixels; empty for masks
    mask_paths: dict[str, list[str]]  # id -> instance mask paths, file order; empty for boxes
    ignore_paths: dict[str, str]  # id -> ignore mask path ("" for none), from the image's first line


def _read_masks(
    path: Path, ids: pa.Array, keep: np.ndarray, log: ProblemLog
) -> tuple[dict[int, list[str]], dict[int, str]]:
    """Mask and ignore paths by id row from a mask ``localization.txt`` (``id,mask_path,ignore_path``).

    wsolevaluation's OpenImages form: one line per instance mask, the ignore path on an image's first line
    (later ones leave it empty). Lines of unknown images and unsafe paths are problems and dropped.
    """
    loc = _read_csv(path, _MASK_COLUMNS, dict.fromkeys(_MASK_COLUMNS, pa.string()))
    owner = _index_of(loc.column("path").combine_chunks(), ids)
    mask_paths: dict[int, list[str]] = {}
    ignore_paths: dict[int, str] = {}
    for j, (image_id, mask, ignore) in enumerate(
        zip(*(loc.column(c).to_pylist() for c in _MASK_COLUMNS), strict=True)
    ):
        where = f"{path}:{image_id}"
        if owner[j] < 0:
            log.add(where, "unknown image: mask for an image not in image_ids.txt")
            continue
        try:
            for rel in (mask, ignore) if ignore else (mask,):
                resolve_inside(".", rel)
        except UnsafePathError as e:
            log.add(where, e.reason)
            keep[owner[j]] = False
            continue
        if owner[j] in mask_paths:
            mask_paths[owner[j]].append(mask)
        else:
            mask_paths[owner[j]], ignore_paths[owner[j]] = [mask], ignore
    return mask_paths, ignore_paths


def read_wsol_localization(
    folder: str | os.PathLike[str],
    localization: Literal["boxes", "masks"] = "boxes",
    *,
    strict: bool = True,
    size_root: str | os.PathLike[str] | None = None,
) -> tuple[WsolLocalization, list[DataProblem]]:
    """Read the ids, sizes and boxes (or masks) of a WSOL metadata folder, as a score-map evaluator needs.

    The same parsing and checks as `read_wsol_metadata`; ``localization`` says which ``localization.txt``
    form the folder has. Every image must have a size and at least one box (or mask). Without sizes (no or
    an empty ``image_sizes.txt``, as wsolevaluation's OpenImages folders) they come from file headers under
    ``size_root``: the images for boxes, each image's first instance mask for masks (PxAP resizes masks and
    maps to 224 whatever the size; the header is only checked to be readable). Strict by default: a scorer
    should fail on a malformed folder, not report a number over fewer images; with ``strict=False`` bad
    images are recorded and dropped.
    """
    _check_localization(localization)
    folder = Path(folder)
    log = ProblemLog(strict)
    ids, keep = _read_image_ids(folder, log)
    loc_path = folder / "localization.txt"
    boxes: dict[int, np.ndarray] = {}
    mask_paths: dict[int, list[str]] = {}
    ignore_paths: dict[int, str] = {}
    if localization == "boxes":
        width, height = _sizes(folder, ids, keep, log, size_root)
        owner, xy = _read_boxes(loc_path, ids, keep, width, height, log, pa.int64())
        starts = np.searchsorted(owner, np.arange(len(ids) + 1))
        boxes = {i: xy[starts[i] : starts[i + 1]] for i in np.flatnonzero(starts[1:] > starts[:-1]).tolist()}
        _drop_unannotated(loc_path, ids, keep, boxes, log)
    else:
        mask_paths, ignore_paths = _read_masks(loc_path, ids, keep, log)
        _drop_unannotated(loc_path, ids, keep, mask_paths, log)
        first = [mask_paths[i][0] if i in mask_paths else None for i in range(len(ids))]
        width, height = _sizes(folder, ids, keep, log, size_root, first)
    rows = np.flatnonzero(keep).tolist()
    names = ids.to_pylist()
    result = WsolLocalization(
        image_ids=[names[i] for i in rows],
        sizes={names[i]: (int(width[i]), int(height[i])) for i in rows},
        boxes={names[i]: boxes[i] for i in rows if i in boxes},
        mask_paths={names[i]: mask_paths[i] for i in rows if i in mask_paths},
        ignore_paths={names[i]: ignore_paths[i] for i in rows if i in ignore_paths},
    )
    return result, log.problems


def _format_coords(values: np.ndarray) -> list[str]:
    """Integers as ``12``, other values in their shortest float32 form (``12.5``): lossless round trip."""
    if np.all(values == np.round(values)):
        return [str(v) for v in values.astype(np.int64).tolist()]
    return [np.format_float_positional(v, trim="-") for v in values.astype(np.float32)]


def write_wsol_metadata(table: pa.Table, folder: str | os.PathLike[str]) -> None:
    """Write a manifest as the four WSOL metadata files in ``folder`` (each file written atomically).

    Class labels are the manifest's ``class_index``; the class ids themselves are not part of the format.
    """
    folder = Path(folder)
    manifest_classes(table)  # a manifest, not any table
    folder.mkdir(parents=True, exist_ok=True)
    ids = table.column("image_id").to_pylist()
    labels = table.column("class_index").to_pylist()
    widths = table.column("width").to_pylist()
    heights = table.column("height").to_pylist()
    boxes = table.column("boxes").combine_chunks()
    owner = pc.list_parent_indices(boxes).to_numpy()
    xy = pc.list_flatten(pc.list_flatten(boxes)).to_numpy(zero_copy_only=False).reshape(-1, 4)
    coords = np.asarray(_format_coords(xy.reshape(-1)), dtype=object).reshape(-1, 4)
    write_text_atomic(folder / "image_ids.txt", "".join(f"{p}\n" for p in ids))
    write_text_atomic(
        folder / "class_labels.txt", "".join(f"{p},{c}\n" for p, c in zip(ids, labels, strict=True))
    )
    write_text_atomic(
        folder / "image_sizes.txt",
        "".join(f"{p},{w},{h}\n" for p, w, h in zip(ids, widths, heights, strict=True)),
    )
    write_text_atomic(
        folder / "localization.txt",
        "".join(f"{ids[o]},{','.join(c)}\n" for o, c in zip(owner.tolist(), coords.tolist(), strict=True)),
    )
