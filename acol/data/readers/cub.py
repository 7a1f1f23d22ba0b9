"""CUB-200-2011 read into a manifest.

``root`` is the ``CUB_200_2011`` folder of the download: ``images.txt`` (``id path``),
``image_class_labels.txt`` (``id class``, 1-based), ``bounding_boxes.txt`` (``id x y width height``, floats),
``train_test_split.txt`` (``id is_train``), ``classes.txt`` (``id name``) and ``images/<class>/<file>.jpg``.

Image ids are the paths of ``images.txt`` (``001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg``),
the WSOL metadata convention, so the image root for these ids is ``root/images`` (`cub_image_root`), not
``root``. Class index = CUB class id - 1; class id string = the class folder name
(``001.Black_footed_Albatross``).
Boxes ``x, y, w, h`` become ``[x, y, x + w, y + h]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from acol.data.errors import DataError, DataProblem, ProblemLog
from acol.data.manifest import manifest_from_records
from acol.data.readers.common import box_problem, probe_images

__all__ = ["cub_image_root", "read_cub"]


def cub_image_root(root: str | os.PathLike[str]) -> Path:
    """The folder that CUB manifest image ids are relative to: ``root/images``."""
    return Path(root) / "images"


def _read_table(path: Path, ncols: int, log: ProblemLog) -> dict[int, list[str]]:
    """``{id: [fields after the id]}`` from a whitespace-separated CUB file; a bad line is a problem."""
    out: dict[int, list[str]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(str(path), f"cannot read: {e.strerror or e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        # Paths and class names hold no spaces, so a plain split is exact.
        parts = line.split()
        if len(parts) != ncols or not parts[0].isdigit():
            log.add(f"{path}:{n}", f"malformed line: {line!r}, expected {ncols} fields starting with an id")
            continue
        if int(parts[0]) in out:
            log.add(f"{path}:{n}", f"duplicate id {parts[0]}")
            continue
        out[int(parts[0])] = parts[1:]
    return out


def read_cub(
    root: str | os.PathLike[str],
    split: Literal["train", "test", "all"] = "train",
    *,
    verify_images: bool = False,
    num_threads: int = 8,
    strict: bool = False,
) -> tuple[pa.Table, list[DataProblem]]:
    """Manifest of one CUB split (rows in ``images.txt`` order) and the problems met.

    Sizes are read from the image headers (CUB's text files have none); with ``verify_images`` every image
    is decoded. Images without class, box or split entries, boxes outside their image and unreadable images
    are recorded and dropped (``strict`` raises on the first).
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"read_cub: split must be 'train', 'test' or 'all', got {split!r}")
    root = Path(root)
    log = ProblemLog(strict)
    classes_txt = _read_table(root / "classes.txt", 2, log)
    classes = [classes_txt[i][0] for i in sorted(classes_txt)]
    if sorted(classes_txt) != list(range(1, len(classes) + 1)):
        raise DataError(str(root / "classes.txt"), "class ids must be 1..N without gaps")
    candidates = _candidates(root, split, len(classes), log)
    records = _probe_candidates(root, candidates, verify_images, num_threads, log)
    return manifest_from_records(records, classes, "cub"), log.problems


def _candidates(root: Path, split: str, n_classes: int, log: ProblemLog) -> list[dict[str, Any]]:
    """Records of the images of ``split`` with a class, a numeric box and a split entry (no size yet)."""
    images = _read_table(root / "images.txt", 2, log)
    labels = _read_table(root / "image_class_labels.txt", 2, log)
    boxes = _read_table(root / "bounding_boxes.txt", 5, log)
    is_train = _read_table(root / "train_test_split.txt", 2, log)
    candidates: list[dict[str, Any]] = []
    for image_id in sorted(images):
        rel = images[image_id][0]
        where = f"{root / 'images.txt'}:{rel}"
        missing = [
            name
            for name, tab in (("class", labels), ("box", boxes), ("split", is_train))
            if image_id not in tab
        ]
        if missing:
            log.add(where, f"missing annotation: no {', '.join(missing)} entry for image id {image_id}")
            continue
        if split != "all" and (is_train[image_id][0] == "1") != (split == "train"):
            continue
        label = labels[image_id][0]
        if not label.isdigit() or not 1 <= int(label) <= n_classes:
            log.add(where, f"unknown class: {label} not in 1..{n_classes}")
            continue
        try:
            x, y, w, h = (float(v) for v in boxes[image_id])
        except ValueError:
            log.add(where, f"bad box: {boxes[image_id]} is not numeric")
            continue
        candidates.append(
            {"image_id": rel, "class_index": int(label) - 1, "boxes": [[x, y, x + w, y + h]], "_where": where}
        )
    return candidates


def _probe_candidates(
    root: Path, candidates: list[dict[str, Any]], verify_images: bool, num_threads: int, log: ProblemLog
) -> list[dict[str, Any]]:
    """The candidates whose image reads and holds its box, with the size from the image."""
    results = probe_images(
        cub_image_root(root), [c["image_id"] for c in candidates], verify_images, num_threads
    )
    records = []
    for rec, res in zip(candidates, results, strict=True):
        where = rec.pop("_where")
        if isinstance(res, DataError):
            log.add(res.path, res.reason)
            continue
        problem = box_problem(rec["boxes"][0], *res)
        if problem is not None:
            log.add(where, problem)
            continue
        rec["width"], rec["height"] = res
        records.append(rec)
    return records
