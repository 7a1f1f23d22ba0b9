"""Manifest schema, validation and atomic Parquet round trip; safe path joining; problem logs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from acol.data.errors import DataError, DataProblem, ProblemLog, count_problems
from acol.data.manifest import (
    MANIFEST_SCHEMA,
    manifest_classes,
    manifest_from_columns,
    manifest_from_records,
    manifest_source,
    read_manifest,
    validate_manifest,
    write_manifest,
)
from acol.data.paths import UnsafePathError, resolve_inside

CLASSES = ["n01", "n02", "n03"]


def records() -> list[dict]:
    return [
        {"image_id": "val/a.JPEG", "class_index": 2, "width": 40, "height": 30, "boxes": [[0, 0, 40, 30]]},
        {
            "image_id": "val/b.JPEG",
            "class_id": "n01",
            "width": 10,
            "height": 20,
            "boxes": [[1, 2, 3, 4], [5, 6, 7, 8]],
        },
        {"image_id": "train/n02/c.JPEG", "class_index": 1, "width": 8, "height": 8, "mask_path": "m/c.png"},
    ]


def test_from_records_fills_schema_and_metadata() -> None:
    t = manifest_from_records(records(), CLASSES, "ilsvrc")
    assert t.schema.remove_metadata() == MANIFEST_SCHEMA
    assert manifest_classes(t) == CLASSES and manifest_source(t) == "ilsvrc"
    rows = t.to_pylist()
    assert [r["class_index"] for r in rows] == [2, 0, 1]
    assert [r["class_id"] for r in rows] == ["n03", "n01", "n02"]
    assert rows[1]["boxes"] == [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    assert rows[2]["boxes"] == [] and rows[2]["mask_path"] == "m/c.png" and rows[0]["ignore_path"] is None
    validate_manifest(t)


def test_from_columns_equals_from_records() -> None:
    t1 = manifest_from_records(records(), CLASSES, "x")
    t2 = manifest_from_columns(
        ["val/a.JPEG", "val/b.JPEG", "train/n02/c.JPEG"],
        [2, 0, 1],
        [40, 10, 8],
        [30, 20, 8],
        [1, 2, 0],
        np.array([[0, 0, 40, 30], [1, 2, 3, 4], [5, 6, 7, 8]]),
        CLASSES,
        "x",
        mask_paths=[None, None, "m/c.png"],
    )
    assert t1.equals(t2, check_metadata=True)


def test_records_with_inconsistent_class_raise() -> None:
    bad = {"image_id": "a", "class_index": 0, "class_id": "n02", "width": 1, "height": 1}
    with pytest.raises(DataError, match="class_id 'n02'"):
        manifest_from_records([bad], CLASSES, "x")
    with pytest.raises(DataError, match="unknown class"):
        manifest_from_records([{"image_id": "a", "class_id": "zz", "width": 1, "height": 1}], CLASSES, "x")
    with pytest.raises(DataError, match="4 coordinates"):
        manifest_from_records([{**bad, "class_id": "n01", "boxes": [[1, 2, 3]]}], CLASSES, "x")


def test_write_read_round_trip_is_atomic(tmp_path: Path) -> None:
    t = manifest_from_records(records(), CLASSES, "cub")
    path = tmp_path / "sub" / "m.parquet"
    write_manifest(t, path)
    back = read_manifest(path)
    assert back.equals(t) and manifest_classes(back) == CLASSES and manifest_source(back) == "cub"
    assert back.schema.field("boxes").type == pa.list_(pa.list_(pa.float32()))
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.parquet"]  # no temp file left
    # A failed write leaves the old file as it was.
    bad = t.set_column(0, "image_id", pa.array(["x", "x", "y"]))
    with pytest.raises(DataError, match="duplicate image_id 'x'"):
        write_manifest(bad, path)
    assert read_manifest(path).equals(t)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.parquet"]


def test_read_manifest_names_bad_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(DataError, match=re.escape("junk.parquet: cannot read manifest")):
        read_manifest(junk)
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"image_id": ["a"]}), plain)
    with pytest.raises(DataError, match=re.escape("plain.parquet: missing column 'class_index'")):
        read_manifest(plain)


def _with_box(box: list[float], w: int = 40, h: int = 30) -> pa.Table:
    return manifest_from_records(
        [{"image_id": "a", "class_index": 0, "width": w, "height": h, "boxes": [box]}], CLASSES, "x"
    )


@pytest.mark.parametrize(
    "box",
    [[-1, 0, 10, 10], [0, 0, 41, 10], [0, 0, 10, 31], [10, 0, 5, 10], [0, 10, 5, 5], [0, 0, float("nan"), 1]],
)
def test_validate_rejects_bad_boxes(box: list[float]) -> None:
    with pytest.raises(DataError, match="a: bad box"):
        validate_manifest(_with_box(box))


@pytest.mark.parametrize("box", [[0, 0, 40, 30], [0, 0, 39, 29], [5, 5, 5, 5]])
def test_validate_accepts_border_and_degenerate_boxes(box: list[float]) -> None:
    validate_manifest(_with_box(box))


def test_validate_other_rules(tmp_path: Path) -> None:
    t = manifest_from_records(records(), CLASSES, "x")
    with pytest.raises(DataError, match="class_index 7 outside"):
        validate_manifest(t.set_column(1, "class_index", pa.array([7, 0, 1], pa.int32())))
    with pytest.raises(DataError, match=re.escape("val/b.JPEG: class_id 'n03' != classes")):
        validate_manifest(t.set_column(2, "class_id", pa.array(["n03", "n03", "n02"])))
    with pytest.raises(DataError, match="non-positive size"):
        validate_manifest(t.set_column(3, "width", pa.array([0, 1, 1], pa.int32())))
    with pytest.raises(UnsafePathError, match="escapes"):
        validate_manifest(t.set_column(0, "image_id", pa.array(["../a", "b", "c"])))
    with pytest.raises(DataError, match="type int64, expected int32"):
        validate_manifest(t.set_column(1, "class_index", pa.array([2, 0, 1], pa.int64())))
    with pytest.raises(DataError, match=re.escape("acol.classes")):
        validate_manifest(t.replace_schema_metadata({}))
    # With a root, every referenced file must exist.
    for rel in ("val/a.JPEG", "val/b.JPEG", "train/n02/c.JPEG"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    with pytest.raises(DataError, match=re.escape("m/c.png: missing file")):
        validate_manifest(t, root=tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m/c.png").write_bytes(b"x")
    validate_manifest(t, root=tmp_path)


def test_empty_manifest_is_valid(tmp_path: Path) -> None:
    t = manifest_from_records([], CLASSES, "x")
    assert t.num_rows == 0
    write_manifest(t, tmp_path / "e.parquet")
    assert read_manifest(tmp_path / "e.parquet").num_rows == 0


@pytest.mark.parametrize("rel", ["val/a.JPEG", "a/./b.jpg", "a/../b.jpg", "001.Black/x y.jpg"])
def test_resolve_inside_accepts(tmp_path: Path, rel: str) -> None:
    p = resolve_inside(tmp_path, rel)
    assert p.is_relative_to(tmp_path) and p == tmp_path / Path(rel.replace("a/../", "").replace("./", ""))


@pytest.mark.parametrize(
    "rel", ["/etc/passwd", "../x", "a/../../x", "..", "", ".", "C:/x", "a\\..\\..\\x", "a\x00b"]
)
def test_resolve_inside_refuses(tmp_path: Path, rel: str) -> None:
    with pytest.raises(UnsafePathError, match="unsafe path") as e:
        resolve_inside(tmp_path, rel)
    assert isinstance(e.value, ValueError) and (rel in str(e.value) or rel == "")


def test_problem_log_and_counts() -> None:
    log = ProblemLog()
    log.add("a.xml", "malformed XML: bad tag")
    log.add("b.JPEG", "missing image: not on disk")
    log.add("c.JPEG", "missing image: not on disk")
    assert log.problems[0] == DataProblem("a.xml", "malformed XML: bad tag")
    assert count_problems(log.problems) == {"missing image": 2, "malformed XML": 1}
    strict = ProblemLog(strict=True)
    with pytest.raises(DataError, match=r"^a\.xml: malformed XML: bad tag$") as e:
        strict.add("a.xml", "malformed XML: bad tag")
    assert (e.value.path, e.value.reason) == ("a.xml", "malformed XML: bad tag") and not strict.problems


@pytest.mark.parametrize("col", ["mask_path", "ignore_path"])
@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd", "masks/../../x.png"])
def test_read_manifest_refuses_mask_paths_outside_the_root(tmp_path: Path, col: str, bad: str) -> None:
    """The evaluator joins ``root / mask_path``: a manifest whose mask path leaves the root is refused when it is
    read (no root needed), naming the file, the column and the image."""
    rec = {"image_id": "val/a.JPEG", "class_id": "n1", "width": 10, "height": 10, "boxes": [[0, 0, 5, 5]]}
    table = manifest_from_records([{**rec, col: bad}], ["n1"], "synthetic")
    path = tmp_path / "val.parquet"
    pq.write_table(table, path)  # written as a hostile file would be, without the writer's checks
    with pytest.raises(DataError, match=rf"val\.parquet: {col} of val/a\.JPEG: unsafe path"):
        read_manifest(path)
