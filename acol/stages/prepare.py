"""Index a dataset into train/val manifests plus a summary: what the prepare stage does.

The summary counts images, classes and boxes and lists every entry the readers skipped, so a report can say
what was left out and why.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from acol.config import DataParams, Params
from acol.data.errors import DataProblem, count_problems
from acol.data.manifest import manifest_classes, manifest_from_records, validate_manifest, write_manifest
from acol.data.paths import entry_names
from acol.data.readers.wsol_metadata import read_wsol_metadata
from acol.io import write_json_atomic
from acol.tracking import stage_runs as tracking

__all__ = ["attach_masks", "index_dataset", "index_fullsup", "manifest_stats", "prepare_summary", "run"]

log = logging.getLogger("prepare")

# Problems listed by path in the summary; beyond this only their counts are kept.
MAX_LISTED_PROBLEMS = 200


def attach_masks(table: pa.Table, root: Path, mask_dir: str) -> pa.Table:
    """Set `mask_path` to `<mask_dir>/<image file stem>.png` for the images whose mask file exists."""
    folder = mask_dir.rstrip("/")
    present = _file_names(root / folder)
    paths = []
    for image_id in table.column("image_id").to_pylist():
        name = f"{Path(image_id).stem}.png"
        paths.append(f"{folder}/{name}" if name in present else None)
    index = table.schema.get_field_index("mask_path")
    return table.set_column(index, table.schema.field(index), pa.array(paths, type=pa.string()))


def _file_names(folder: Path) -> set[str]:
    """Names of the files in `folder` (none when it is missing), listed once (`entry_names`), where a
    ``stat`` per image cost a file-system round trip each (50,000 for ILSVRC val)."""
    try:
        return set(entry_names(folder))
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _prefixed(
    table: pa.Table, problems: list[DataProblem], prefix: str
) -> tuple[pa.Table, list[DataProblem]]:
    ids = pc.binary_join_element_wise(prefix, table.column("image_id"), "")
    return table.set_column(table.schema.get_field_index("image_id"), "image_id", ids), problems


def index_dataset(data: DataParams) -> tuple[pa.Table, pa.Table, list[DataProblem]]:
    """(train manifest, val manifest, problems) for the dataset described by `data`."""
    root = Path(data.root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root: dataset folder {root} does not exist")
    common: dict[str, Any] = {"verify_images": data.verify_images, "strict": data.strict}
    if data.source in ("synthetic", "ilsvrc"):
        from acol.data.readers.ilsvrc import read_ilsvrc_train, read_ilsvrc_val

        synsets = root / data.synsets
        train, train_problems = read_ilsvrc_train(root, synsets, **common)
        val, val_problems = read_ilsvrc_val(
            root,
            synsets,
            solution_csv=root / data.val_solution if data.val_solution else None,
            xml_dir=root / data.val_xml_dir if data.val_xml_dir else None,
            **common,
        )
    elif data.source == "openimages":
        from acol.data.readers.openimages import read_openimages

        # Choe et al.'s splits: train trains, test is reported (the pipeline's val); val is train-fullsup
        train, train_problems = read_openimages(root, str(data.metadata), "train", **common)
        val, val_problems = read_openimages(root, str(data.metadata), "test", **common)
    else:
        from acol.data.readers.cub import read_cub

        # CUB ids are relative to CUB_200_2011/images (the WSOL convention); the pipeline keeps every id
        # relative to data.root, so they get the images/ prefix here.
        train, train_problems = _prefixed(*read_cub(root, "train", **common), "images/")
        val, val_problems = _prefixed(*read_cub(root, "test", **common), "images/")
    if data.mask_dir:
        val = attach_masks(val, root, data.mask_dir)
    for table in (train, val):
        validate_manifest(table)
    if manifest_classes(train) != manifest_classes(val):
        raise ValueError("train and val manifests disagree on the class list")
    return train, val, train_problems + val_problems


def index_fullsup(data: DataParams, classes: list[str]) -> tuple[pa.Table, list[DataProblem]]:
    """The train-fullsup manifest (Choe et al. 2020) from ``data.fullsup_metadata``, in `classes`' order.

    Empty (with the classes) when no folder is set, so the pipeline's outputs exist either way. Image ids
    stay as the metadata gives them, relative to ``data.root`` (ILSVRC: ``val2/<class>/<n>.jpeg``; CUB:
    under ``images/``, as the CUB reader's ids; OpenImages: ``val/<class>/<id>.jpg``, with its masks).
    """
    if not data.fullsup_metadata:
        return manifest_from_records([], classes, data.source), []
    folder = Path(data.fullsup_metadata)
    if not folder.is_dir():
        raise FileNotFoundError(f"data.fullsup_metadata: WSOL metadata folder {folder} does not exist")
    masks = data.source == "openimages"  # its fullsup split (val/) has masks and no sizes: read the headers
    table, problems = read_wsol_metadata(
        folder,
        classes,
        image_root=data.root if masks else None,
        localization="masks" if masks else "boxes",
        source=data.source,
        strict=data.strict,
    )
    if data.source == "cub":  # CUB metadata ids are relative to CUB_200_2011/images, as in index_dataset
        table, problems = _prefixed(table, problems, "images/")
    missing = [i for i in table.column("image_id").to_pylist() if not (Path(data.root) / i).is_file()]
    if missing:
        raise FileNotFoundError(
            f"data.fullsup_metadata: {len(missing)} of its images are not under data.root {data.root}, "
            f"e.g. {missing[0]}"
        )
    validate_manifest(table)
    return table, problems


def manifest_stats(table: pa.Table) -> dict[str, Any]:
    """Images, boxes per image and box area fractions of one manifest."""
    boxes = table.column("boxes").to_pylist()
    widths = np.asarray(table.column("width"), dtype=np.float64)
    heights = np.asarray(table.column("height"), dtype=np.float64)
    counts = np.array([len(b) for b in boxes])
    fractions = [
        (x1 - x0 + 1) * (y1 - y0 + 1) / (w * h)
        for image_boxes, w, h in zip(boxes, widths, heights, strict=True)
        for x0, y0, x1, y1 in image_boxes
    ]
    stats: dict[str, Any] = {
        "images": table.num_rows,
        "images_per_class": (np.bincount(table.column("class_index"), minlength=1).tolist()),
        "boxes": int(counts.sum()),
        "images_with_masks": int(table.num_rows - table.column("mask_path").null_count),
    }
    if fractions:
        stats["boxes_per_image_mean"] = round(float(counts[counts > 0].mean()), 4)
        quantiles = np.quantile(fractions, [0.1, 0.5, 0.9])
        stats["box_area_fraction"] = {
            f"q{int(q * 100)}": round(float(v), 4) for q, v in zip((0.1, 0.5, 0.9), quantiles, strict=True)
        }
    return stats


def _shown(path: str) -> str:
    """`path` relative to the working directory when inside it: the summary is committed, and a checkout's
    own location is not part of the dataset."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path


def prepare_summary(
    train: pa.Table, val: pa.Table, problems: list[DataProblem], data: DataParams
) -> dict[str, Any]:
    return {
        "source": data.source,
        "root": _shown(data.root),
        "num_classes": len(manifest_classes(train)),
        "classes": manifest_classes(train),
        "train": manifest_stats(train),
        "val": manifest_stats(val),
        "problems": len(problems),
        "problems_by_kind": count_problems(problems),
        "problem_list": [{"path": p.path, "reason": p.reason} for p in problems[:MAX_LISTED_PROBLEMS]],
    }


def run(params: Params, out: Path) -> dict[str, Any]:
    """The stage: train/val/fullsup manifests and ``summary.json`` in `out`, logged to MLflow; returns the
    summary. The tracking server is checked first, before the dataset is read."""
    tracking.check_tracking_server()
    log.info("indexing %s dataset at %s", params.data.source, params.data.root)
    train, val, problems = index_dataset(params.data)
    fullsup, fullsup_problems = index_fullsup(params.data, manifest_classes(val))
    problems += fullsup_problems
    summary = prepare_summary(train, val, problems, params.data)
    summary["fullsup_images"] = fullsup.num_rows
    write_manifest(train, out / "train.parquet")
    write_manifest(val, out / "val.parquet")
    write_manifest(fullsup, out / "fullsup.parquet")
    write_json_atomic(out / "summary.json", summary)
    log.info("%d train, %d val images, %d problems %s", train.num_rows, val.num_rows, len(problems),
             summary["problems_by_kind"])  # fmt: skip
    _log_run(
        params, out, {"train_images": train.num_rows, "val_images": val.num_rows, "problems": len(problems)}
    )
    return summary


def _log_run(params: Params, out: Path, counts: dict[str, int]) -> None:
    with tracking.stage_run(
        "prepare", params, data_paths=[out / "train.parquet", out / "val.parquet"]
    ) as mlrun:
        import mlflow

        mlflow.log_metrics(counts)
        mlflow.log_artifact(str(out / "summary.json"))
        log.info("MLflow run %s", mlrun.info.run_id)
