"""ILSVRC 2012 (ImageNet CLS-LOC) as downloaded, read into manifests.

Dataset root: the folder holding ``train/<wnid>/*.JPEG`` and ``val/ILSVRC2012_val_XXXXXXXX.JPEG`` (in the
Kaggle download, ``ILSVRC/Data/CLS-LOC``), so ids match the WSOL ids (``val/ILSVRC2012_val_00000001.JPEG``).
Val boxes come either from per-image PASCAL VOC XML files (``ILSVRC/Annotations/CLS-LOC/val/*.xml``) or from
Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString`` with ``"wnid x0 y0 x1 y1 wnid ..."``); the
coordinates are kept as written (xmin, ymin, xmax, ymax in pixels). Classes come from
``LOC_synset_mapping.txt`` (``"n01440764 tench, Tinca tinca"``) and are indexed in sorted-wnid order, the
order of torchvision's ImageFolder and of the WSOL labels (0 = n01440764).

Bad entries (missing or malformed XML, an unknown wnid, a box outside the image or with x1 < x0, several
classes in one val image, an image listed but missing on disk or unreadable, an XML size that differs from
the file) are recorded as `DataProblem`s and the image is dropped; ``strict=True`` raises the first as
`DataError`.
"""

from __future__ import annotations

import csv
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as defused_et

from acol.data.errors import DataError, DataProblem, ProblemLog
from acol.data.images import ImageDecodeError
from acol.data.manifest import manifest_from_records
from acol.data.paths import entry_names
from acol.data.readers.common import Box, box_problem, probe_images

__all__ = ["IMAGE_EXTENSIONS", "read_ilsvrc_train", "read_ilsvrc_val", "read_solution_csv", "read_synsets"]

IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png"})


def read_synsets(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``[(wnid, name), ...]`` sorted by wnid (the class index order) from ``LOC_synset_mapping.txt``.

    A malformed or duplicated line makes the class list unusable, so it raises `DataError` (no lenient mode).
    """
    out: dict[str, str] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(str(path), f"cannot read synsets: {e.strerror or e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        wnid, _, name = line.strip().partition(" ")
        if not (wnid.startswith("n") and wnid[1:].isdigit()):
            raise DataError(f"{path}:{n}", f"malformed synset line: {line!r}, expected 'nXXXXXXXX name'")
        if wnid in out:
            raise DataError(f"{path}:{n}", f"duplicate wnid {wnid}")
        out[wnid] = name.strip()
    if not out:
        raise DataError(str(path), "no synsets")
    return sorted(out.items())


def read_solution_csv(path: str | os.PathLike[str], log: ProblemLog) -> dict[str, list[tuple[str, Box]]]:
    """``{ImageId: [(wnid, [x0, y0, x1, y1]), ...]}`` from a Kaggle ``LOC_*_solution.csv``; bad rows: log."""
    out: dict[str, list[tuple[str, Box]]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
                raise DataError(str(path), f"bad header {header!r}: expected 'ImageId,PredictionString'")
            for n, row in enumerate(reader, 2):
                if not row:
                    continue
                where = f"{path}:{n}"
                if len(row) != 2:
                    log.add(where, f"malformed annotation: expected 2 fields, got {len(row)}")
                    continue
                image, parts = row[0].strip(), row[1].split()
                if len(parts) == 0 or len(parts) % 5:
                    log.add(where, f"malformed annotation: {len(parts)} tokens, expected 5 per box")
                    continue
                try:
                    objs = [
                        (parts[i], [float(v) for v in parts[i + 1 : i + 5]]) for i in range(0, len(parts), 5)
                    ]
                except ValueError as e:
                    log.add(where, f"malformed annotation: {e}")
                    continue
                if image in out:
                    log.add(where, f"duplicate image: {image} listed twice")
                    continue
                out[image] = objs
    except OSError as e:
        raise DataError(str(path), f"cannot read solution file: {e.strerror or e}") from None
    return out


def _parse_xml(path: Path) -> tuple[tuple[int, int] | None, list[tuple[str, Box]]]:
    """``((width, height) or None, [(wnid, box), ...])`` from one PASCAL VOC XML; raises `DataError`."""
    try:
        # annotation files are untrusted input: defusedxml refuses entity expansion ("billion laughs") and
        # external entities or DTDs, which the standard library parser would follow
        root = defused_et.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(str(path), "missing annotation: no such XML file") from None
    except DefusedXmlException as e:
        raise DataError(str(path), f"unsafe XML: {type(e).__name__}: {e}") from None
    except (ET.ParseError, OSError) as e:
        raise DataError(str(path), f"malformed XML: {e}") from None
    size = None
    try:
        w, h = root.findtext("size/width"), root.findtext("size/height")
        if w is not None and h is not None:
            size = (int(float(w)), int(float(h)))
        objs = []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            name = obj.findtext("name")
            if bb is None or name is None:
                raise DataError(str(path), "malformed XML: <object> without <name> or <bndbox>")
            objs.append(
                (name.strip(), [float(bb.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax")])
            )
    except ValueError as e:
        raise DataError(str(path), f"malformed XML: {e}") from None
    return size, objs


def _finish(
    candidates: list[dict[str, Any]],
    root: Path,
    classes: list[str],
    log: ProblemLog,
    verify_images: bool,
    num_threads: int,
    check: Callable[[dict[str, Any], tuple[int, int]], str | None],
) -> pa.Table:
    """Probe each candidate image, run ``check`` (a reason or None), build the manifest of the good ones."""
    results = probe_images(root, [c["image_id"] for c in candidates], verify_images, num_threads)
    records = []
    for rec, res in zip(candidates, results, strict=True):
        if isinstance(res, DataError):
            reason = res.reason
            if isinstance(res, ImageDecodeError) and reason.startswith("missing image"):
                reason = (
                    f"missing image: listed in {rec.pop('_listed_in', 'the annotations')} but not on disk"
                )
            log.add(res.path, reason)
            continue
        reason = check(rec, res)
        if reason is not None:
            log.add(rec.pop("_where", rec["image_id"]), reason)
            continue
        rec.pop("_where", None)
        rec.pop("_listed_in", None)
        rec.setdefault("width", res[0])
        rec.setdefault("height", res[1])
        records.append(rec)
    return manifest_from_records(records, classes, "ilsvrc")


def _check_boxes(rec: dict[str, Any], size: tuple[int, int]) -> str | None:
    """The file's header size must match an annotated size; every box must fit the image."""
    width, height = rec.get("width", size[0]), rec.get("height", size[1])
    if (width, height) != size:
        return f"size mismatch: annotation says {width}x{height}, the image file is {size[0]}x{size[1]}"
    for box in rec["boxes"]:
        problem = box_problem(box, width, height)
        if problem is not None:
            return problem
    return None


def _list_images(folder: Path) -> list[Path]:
    """The image files of `folder`, sorted (`entry_names`: no ``stat`` per file)."""
    return [folder / n for n in entry_names(folder) if Path(n).suffix.lower() in IMAGE_EXTENSIONS]


def _list_folders(folder: Path) -> list[Path]:
    """The subfolders of `folder`, sorted (`entry_names`)."""
    return [folder / name for name in entry_names(folder, folders=True)]


def read_ilsvrc_train(
    root: str | os.PathLike[str],
    synsets_path: str | os.PathLike[str],
    *,
    solution_csv: str | os.PathLike[str] | None = None,
    verify_images: bool = False,
    num_threads: int = 8,
    strict: bool = False,
) -> tuple[pa.Table, list[DataProblem]]:
    """Manifest of ``root/train/<wnid>/*`` (ids ``train/<wnid>/<file>``), rows sorted by id.

    Boxes come from Kaggle's ``LOC_train_solution.csv`` when given (only part of train is annotated; the rest
    get an empty box list). Sizes are read from the image headers (``num_threads`` parallel reads); with
    ``verify_images`` every image is decoded, to find truncated files.
    """
    root = Path(root)
    log = ProblemLog(strict)
    wnids = [w for w, _ in read_synsets(synsets_path)]
    known = set(wnids)
    train = root / "train"
    if not train.is_dir():
        raise DataError(str(train), "missing folder: expected train/<wnid>/*.JPEG under the dataset root")
    solution = read_solution_csv(solution_csv, log) if solution_csv is not None else {}
    candidates: list[dict[str, Any]] = []
    for folder in _list_folders(train):
        if folder.name not in known:
            log.add(str(folder), f"unknown wnid: {folder.name} is not in {Path(synsets_path).name}")
            continue
        for path in _list_images(folder):
            rec: dict[str, Any] = {"image_id": f"train/{folder.name}/{path.name}", "class_id": folder.name}
            objs = solution.pop(path.stem, [])
            rec["boxes"] = [box for _, box in objs]
            if any(w != folder.name for w, _ in objs):
                other = sorted({w for w, _ in objs} - {folder.name})
                rec["_where"] = f"{solution_csv}:{path.stem}"
                rec["_reason"] = f"class mismatch: boxes labelled {other} in a {folder.name} image"
            candidates.append(rec)
    for image in sorted(solution):
        log.add(f"{solution_csv}:{image}", "missing image: annotated but not found under train/<wnid>/")

    def check(rec: dict[str, Any], size: tuple[int, int]) -> str | None:
        return rec.pop("_reason", None) or _check_boxes(rec, size)

    return _finish(candidates, root, wnids, log, verify_images, num_threads, check), log.problems


def read_ilsvrc_val(
    root: str | os.PathLike[str],
    synsets_path: str | os.PathLike[str],
    solution_csv: str | os.PathLike[str] | None = None,
    xml_dir: str | os.PathLike[str] | None = None,
    *,
    verify_images: bool = False,
    num_threads: int = 8,
    strict: bool = False,
) -> tuple[pa.Table, list[DataProblem]]:
    """Manifest of the 50k val images (ids ``val/ILSVRC2012_val_XXXXXXXX.JPEG``), rows sorted by id.

    Give exactly one of ``solution_csv`` and ``xml_dir``. The label of an image is the wnid of its boxes (all
    objects of an ILSVRC val image share the image label; an image whose boxes name several wnids is recorded
    and dropped). Sizes come from the XML ``<size>`` (checked against the file header) or from the header.
    Images on disk without annotation are recorded as problems too.
    """
    if (solution_csv is None) == (xml_dir is None):
        raise ValueError("read_ilsvrc_val: give exactly one of solution_csv= and xml_dir=")
    root = Path(root)
    log = ProblemLog(strict)
    wnids = [w for w, _ in read_synsets(synsets_path)]
    known = set(wnids)
    val = root / "val"
    if not val.is_dir():
        raise DataError(str(val), "missing folder: expected val/ILSVRC2012_val_*.JPEG under the dataset root")
    on_disk = {p.stem: p.name for p in _list_images(val)}
    annotations, listed_in = _val_annotations(solution_csv, xml_dir, on_disk, log)
    candidates = _val_candidates(annotations, on_disk, known, Path(synsets_path).name, listed_in, log)
    for image in sorted(on_disk):
        log.add(str(val / on_disk[image]), f"missing annotation: not listed in {listed_in}")
    return _finish(candidates, root, wnids, log, verify_images, num_threads, _check_boxes), log.problems


_ValAnnotations = dict[str, tuple[str, tuple[int, int] | None, list[tuple[str, Box]]]]


def _val_annotations(
    solution_csv: str | os.PathLike[str] | None,
    xml_dir: str | os.PathLike[str] | None,
    on_disk: dict[str, str],
    log: ProblemLog,
) -> tuple[_ValAnnotations, str]:
    """``{stem: (where, XML size or None, objects)}`` from the CSV or the XML folder, and what lists them.

    An unreadable XML is a problem and its image leaves ``on_disk`` (it is not "missing annotation" too).
    """
    annotations: _ValAnnotations = {}
    if solution_csv is not None:
        for image, objs in read_solution_csv(solution_csv, log).items():
            annotations[image] = (f"{solution_csv}:{image}", None, objs)
        return annotations, Path(solution_csv).name
    assert xml_dir is not None
    xml_folder = Path(xml_dir)
    stems = set(on_disk) | {p.stem for p in xml_folder.glob("*.xml")}
    for image in sorted(stems):
        try:
            size, objs = _parse_xml(xml_folder / f"{image}.xml")
        except DataError as e:
            log.add_error(e)
            on_disk.pop(image, None)
            continue
        annotations[image] = (str(xml_folder / f"{image}.xml"), size, objs)
    return annotations, str(xml_folder)


def _val_candidates(
    annotations: _ValAnnotations,
    on_disk: dict[str, str],
    known: set[str],
    synsets_name: str,
    listed_in: str,
    log: ProblemLog,
) -> list[dict[str, Any]]:
    """Records of the annotated images whose objects share one known wnid; each found one leaves ``on_disk``."""
    candidates: list[dict[str, Any]] = []
    for image in sorted(annotations):
        where, size, objs = annotations[image]
        name = on_disk.pop(image, f"{image}.JPEG")
        names = sorted({w for w, _ in objs})
        if not objs:
            log.add(where, "missing boxes: the annotation has no object")
            continue
        if len(names) > 1:
            log.add(where, f"class mismatch: objects of several classes {names} in one val image")
            continue
        if names[0] not in known:
            log.add(where, f"unknown wnid: {names[0]} is not in {synsets_name}")
            continue
        rec: dict[str, Any] = {"image_id": f"val/{name}", "class_id": names[0], "boxes": [b for _, b in objs]}
        rec["_where"], rec["_listed_in"] = where, listed_in
        if size is not None:
            rec["width"], rec["height"] = size
        candidates.append(rec)
    return candidates
