"""Dataset readers on tiny real-format fixtures and on the real WSOL metadata (shipped archive)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from acol.data.errors import DataError, count_problems
from acol.data.manifest import manifest_classes, manifest_source, validate_manifest
from acol.data.readers.cub import cub_image_root, read_cub
from acol.data.readers.ilsvrc import read_ilsvrc_train, read_ilsvrc_val, read_synsets
from acol.data.readers.wsol_metadata import read_wsol_metadata, write_wsol_metadata
from tests.conftest_data import (
    CUB_IMAGES,
    UNKNOWN_WNID,
    WNIDS,
    gradient_rgb,
    jpeg_bytes,
    write_cub,
    write_ilsvrc,
    wsol_metadata_dir,  # noqa: F401  (session fixture)
)


def vid(n: int) -> str:
    return f"val/ILSVRC2012_val_{n:08d}.JPEG"


@pytest.fixture(scope="module")
def ilsvrc(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_ilsvrc(tmp_path_factory.mktemp("ilsvrc"))


def problems_by_image(problems: list) -> dict[int, str]:
    """``{val image number: problem kind}`` from paths naming ``ILSVRC2012_val_000000NN``."""
    out = {}
    for p in problems:
        m = re.search(r"ILSVRC2012_val_(\d{8})", p.path)
        assert m, p
        out[int(m.group(1))] = p.kind
    return out


def test_read_synsets_sorts_by_wnid(ilsvrc: dict) -> None:
    syn = read_synsets(ilsvrc["synsets"])
    assert [w for w, _ in syn] == WNIDS
    assert syn[0] == ("n01440764", "tench, Tinca tinca")


def test_read_synsets_rejects_malformed(tmp_path: Path) -> None:
    bad = tmp_path / "s.txt"
    bad.write_text("n01440764 tench\ntench n01443537\n")
    with pytest.raises(DataError, match=r"s\.txt:2: malformed synset line"):
        read_synsets(bad)
    bad.write_text("n01440764 tench\nn01440764 again\n")
    with pytest.raises(DataError, match="duplicate wnid n01440764"):
        read_synsets(bad)


COMMON_PROBLEMS = {
    5: "bad box",
    6: "bad box",
    7: "unknown wnid",
    8: "missing image",
    9: "empty file",
    11: "class mismatch",
    12: "missing annotation",
}


def test_val_from_solution_csv(ilsvrc: dict) -> None:
    t, problems = read_ilsvrc_val(ilsvrc["root"], ilsvrc["synsets"], solution_csv=ilsvrc["solution_csv"])
    validate_manifest(t, root=ilsvrc["root"])
    assert manifest_classes(t) == WNIDS and manifest_source(t) == "ilsvrc"
    # Image 10 is truncated after an intact header: only verify_images finds it.
    assert t.column("image_id").to_pylist() == [vid(n) for n in (1, 2, 3, 4, 10, 13, 14)]
    assert problems_by_image(problems) == COMMON_PROBLEMS
    rows = {r["image_id"]: r for r in t.to_pylist()}
    assert rows[vid(2)]["boxes"] == [[0, 0, 40, 30], [5, 5, 10, 12]]  # border box kept, both boxes
    assert (rows[vid(2)]["class_index"], rows[vid(2)]["class_id"]) == (1, WNIDS[1])
    assert (rows[vid(3)]["width"], rows[vid(3)]["height"]) == (40, 30)  # from the header (CSV has no size)
    assert all(r["width"] == 40 and r["height"] == 30 for r in rows.values())


def test_val_from_xml(ilsvrc: dict) -> None:
    t, problems = read_ilsvrc_val(ilsvrc["root"], ilsvrc["synsets"], xml_dir=ilsvrc["xml_dir"])
    validate_manifest(t, root=ilsvrc["root"])
    assert t.column("image_id").to_pylist() == [vid(n) for n in (1, 2, 3, 4, 10)]
    assert problems_by_image(problems) == {
        **COMMON_PROBLEMS,
        12: "missing annotation",
        13: "malformed XML",
        14: "size mismatch",
    }
    rows = {r["image_id"]: r for r in t.to_pylist()}
    assert rows[vid(1)]["boxes"] == [[2, 3, 20, 25]] and rows[vid(4)]["class_id"] == WNIDS[0]
    # Both annotation sources give the same rows for the images both accept.
    t_csv, _ = read_ilsvrc_val(ilsvrc["root"], ilsvrc["synsets"], solution_csv=ilsvrc["solution_csv"])
    assert t_csv.slice(0, 5).equals(t)


def test_val_verify_images_finds_truncated(ilsvrc: dict) -> None:
    t, problems = read_ilsvrc_val(
        ilsvrc["root"],
        ilsvrc["synsets"],
        solution_csv=ilsvrc["solution_csv"],
        verify_images=True,
        num_threads=2,
    )
    assert vid(10) not in t.column("image_id").to_pylist()
    assert problems_by_image(problems) == {**COMMON_PROBLEMS, 10: "truncated"}
    assert count_problems(problems)["bad box"] == 2


def test_val_strict_raises_first_problem(ilsvrc: dict) -> None:
    with pytest.raises(DataError, match=r"ILSVRC2012_val_00000007.*unknown wnid: n09999999") as e:
        read_ilsvrc_val(ilsvrc["root"], ilsvrc["synsets"], solution_csv=ilsvrc["solution_csv"], strict=True)
    assert str(ilsvrc["solution_csv"]) in e.value.path
    with pytest.raises(ValueError, match="exactly one of"):
        read_ilsvrc_val(ilsvrc["root"], ilsvrc["synsets"])
    with pytest.raises(ValueError, match="exactly one of"):
        read_ilsvrc_val(
            ilsvrc["root"], ilsvrc["synsets"], solution_csv=ilsvrc["solution_csv"], xml_dir=ilsvrc["xml_dir"]
        )


def test_solution_csv_malformed_rows(ilsvrc: dict, tmp_path: Path) -> None:
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text(
        "ImageId,PredictionString\n"
        f"ILSVRC2012_val_00000001,{WNIDS[0]} 2 3 20 25 \n"  # trailing space, as in Kaggle's file
        f"ILSVRC2012_val_00000002,{WNIDS[1]} 0 0 40\n"  # 4 numbers
        f"ILSVRC2012_val_00000003,{WNIDS[2]} 1 1 x 20\n"
    )
    t, problems = read_ilsvrc_val(ilsvrc["root"], ilsvrc["synsets"], solution_csv=csv)
    assert t.column("image_id").to_pylist() == [vid(1)]
    kinds = [(p.path.rsplit(":", 1)[-1], p.kind) for p in problems if p.kind == "malformed annotation"]
    assert kinds == [("3", "malformed annotation"), ("4", "malformed annotation")]  # line numbers


def test_train_reader(ilsvrc: dict) -> None:
    t, problems = read_ilsvrc_train(
        ilsvrc["root"], ilsvrc["synsets"], solution_csv=ilsvrc["train_solution_csv"]
    )
    validate_manifest(t, root=ilsvrc["root"])
    ids = [f"train/{w}/{w}_{k}.JPEG" for w in WNIDS for k in range(2)]
    assert t.column("image_id").to_pylist() == ids
    assert t.column("class_index").to_pylist() == [0, 0, 1, 1, 2, 2]
    assert t.column("width").to_pylist() == [40, 41] * 3  # read from each header
    boxes = t.column("boxes").to_pylist()
    assert boxes[1] == [[1, 2, 30, 20], [0, 0, 41, 30]] and all(
        b == [] for i, b in enumerate(boxes) if i != 1
    )
    assert [(Path(p.path).name, p.kind) for p in problems] == [
        (UNKNOWN_WNID, "unknown wnid"),
        ("LOC_train_solution.csv:n01443537_7", "missing image"),
    ]


def test_train_reader_verify_finds_bad_file(ilsvrc: dict, tmp_path: Path) -> None:
    root = tmp_path / "r"
    good = root / "train" / WNIDS[0] / "a.JPEG"
    good.parent.mkdir(parents=True)
    good.write_bytes(jpeg_bytes(gradient_rgb(8, 6)))
    (good.parent / "b.JPEG").write_bytes(b"not a jpeg at all")
    t, problems = read_ilsvrc_train(root, ilsvrc["synsets"], verify_images=True)
    assert t.column("image_id").to_pylist() == [f"train/{WNIDS[0]}/a.JPEG"]
    assert [(Path(p.path).name, p.kind) for p in problems] == [("b.JPEG", "not an image")]


def test_cub_reader(tmp_path: Path) -> None:
    cub = write_cub(tmp_path)
    test, problems = read_cub(cub, "test")
    validate_manifest(test, root=cub_image_root(cub))
    assert manifest_source(test) == "cub"
    assert manifest_classes(test) == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    assert test.column("image_id").to_pylist() == [CUB_IMAGES[0][1], CUB_IMAGES[2][1]]
    assert test.column("class_index").to_pylist() == [0, 1]
    assert test.column("boxes").to_pylist() == [[[60, 27, 385, 331]], [[144, 40, 477, 205]]]  # x, y, x+w, y+h
    assert test.column("height").to_pylist() == [335, 375]
    assert [(p.kind, p.path.endswith("Laysan_Albatross_0003_1033.jpg")) for p in problems] == [
        ("bad box", True)
    ]
    train, problems = read_cub(cub, "train")
    assert train.column("image_id").to_pylist() == [CUB_IMAGES[1][1]] and problems == []
    everything, _ = read_cub(cub, "all")
    assert everything.num_rows == 3
    with pytest.raises(ValueError, match="split must be"):
        read_cub(cub, "val")  # type: ignore[arg-type]


def test_cub_missing_image_and_bad_lines(tmp_path: Path) -> None:
    cub = write_cub(tmp_path, missing_image=True)
    with open(cub / "bounding_boxes.txt", "a") as f:
        f.write("5 1.0 2.0\n")
    t, problems = read_cub(cub, "test")
    assert t.column("image_id").to_pylist() == [CUB_IMAGES[0][1]]
    assert count_problems(problems) == {"malformed line": 1, "missing image": 1, "bad box": 1}
    with pytest.raises(DataError, match=r"bounding_boxes\.txt:5: malformed line"):
        read_cub(cub, "test", strict=True)


def test_cub_ids_follow_the_wsol_convention(tmp_path: Path, wsol_metadata_dir: Path) -> None:  # noqa: F811
    cub, _ = read_cub(write_cub(tmp_path), "test")
    wsol, _ = read_wsol_metadata(
        wsol_metadata_dir / "CUB" / "test", classes=manifest_classes(cub) + ["x"] * 198
    )
    wsol_rows = {r["image_id"]: r for r in wsol.to_pylist()}
    for row in cub.to_pylist():  # same id, class, size and box in both readers
        assert row == wsol_rows[row["image_id"]]


# Real WSOL metadata: (images, boxes, classes, first id, first class, first size, first boxes)
WSOL_FACTS = {
    "ILSVRC/test": (50000, 80477, 1000, "val/ILSVRC2012_val_00000001.JPEG", 65, (500, 375),
                    [[111, 108, 441, 193]]),
    "ILSVRC/val": (10000, 18532, 1000, "val2/0/0.jpeg", 0, (500, 375), [[156, 163, 318, 230]]),
    "CUB/test": (5794, 5794, 200, "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg", 0,
                 (500, 335), [[60, 27, 385, 331]]),
    "CUB/val": (1000, 1000, 200, "001.Black_footed_Albatross/30107316117.jpg", 0, (560, 419),
                [[176, 136, 459, 291]]),
}  # fmt: skip


def reference_wsol(folder: Path) -> dict[str, tuple[int, int, int, list[list[float]]]]:
    """A plain line-by-line parser in the style of wsolevaluation's data loaders."""
    out: dict[str, list] = {}
    for line in (folder / "image_ids.txt").read_text().splitlines():
        out[line] = [None, None, None, []]
    for line in (folder / "class_labels.txt").read_text().splitlines():
        p, c = line.split(",")
        out[p][0] = int(c)
    for line in (folder / "image_sizes.txt").read_text().splitlines():
        p, w, h = line.split(",")
        out[p][1:3] = [int(w), int(h)]
    for line in (folder / "localization.txt").read_text().splitlines():
        p, *xy = line.split(",")
        out[p][3].append([float(v) for v in xy])
    return {k: tuple(v) for k, v in out.items()}


@pytest.mark.parametrize("name", list(WSOL_FACTS))
def test_real_wsol_metadata(wsol_metadata_dir: Path, name: str) -> None:  # noqa: F811
    n_images, n_boxes, n_classes, first, label, size, boxes = WSOL_FACTS[name]
    t, problems = read_wsol_metadata(wsol_metadata_dir / name)
    assert problems == []
    assert t.num_rows == n_images and sum(len(b) for b in t.column("boxes").to_pylist()) == n_boxes
    assert manifest_classes(t) == [str(i) for i in range(n_classes)]
    r = t.slice(0, 1).to_pylist()[0]
    assert (r["image_id"], r["class_index"], (r["width"], r["height"]), r["boxes"]) == (
        first,
        label,
        size,
        boxes,
    )
    validate_manifest(t)
    if name in ("CUB/test", "ILSVRC/val"):  # every row against the plain parser (ILSVRC/test: too slow here)
        ref = reference_wsol(wsol_metadata_dir / name)
        assert list(ref) == t.column("image_id").to_pylist()
        got = zip(t.column("class_index").to_pylist(), t.column("width").to_pylist(),
                  t.column("height").to_pylist(), t.column("boxes").to_pylist(), strict=True)  # fmt: skip
        assert list(got) == list(ref.values())


def test_ilsvrc_test_known_values(wsol_metadata_dir: Path) -> None:  # noqa: F811
    t, _ = read_wsol_metadata(wsol_metadata_dir / "ILSVRC" / "test", classes=[f"w{i}" for i in range(1000)])
    rows = t.slice(0, 2).to_pylist()
    assert rows[1]["boxes"] == [
        [45, 49, 499, 162],
        [2, 69, 437, 207],
    ]  # an image with two boxes, in file order
    assert rows[1]["class_id"] == "w970"
    last = t.slice(t.num_rows - 1).to_pylist()[0]
    assert last["image_id"] == "val/ILSVRC2012_val_00050000.JPEG"
    counts = np.bincount([len(b) for b in t.column("boxes").to_pylist()])
    assert counts[0] == 0 and counts.sum() == 50000


def test_wsol_round_trip(wsol_metadata_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    src = wsol_metadata_dir / "ILSVRC" / "test"
    t, _ = read_wsol_metadata(src)
    write_wsol_metadata(t, tmp_path / "out")
    for name in ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt"):
        # Same text; the originals may lack the final newline.
        assert (tmp_path / "out" / name).read_text().rstrip("\n") == (src / name).read_text().rstrip("\n")
    back, problems = read_wsol_metadata(tmp_path / "out")
    assert problems == [] and back.equals(t)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_wsol_fractional_boxes_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "image_ids.txt").write_text("a.jpg\nb.jpg")
    (folder / "class_labels.txt").write_text("a.jpg,1\nb.jpg,0")
    (folder / "image_sizes.txt").write_text("a.jpg,10,10\nb.jpg,10,10")
    (folder / "localization.txt").write_text("b.jpg,0.1,1.5,9.25,3\na.jpg,0,0,1,1")
    t, _ = read_wsol_metadata(folder)
    assert t.column("boxes").to_pylist()[1] == [[np.float32(0.1), 1.5, 9.25, 3.0]]
    write_wsol_metadata(t, tmp_path / "out")
    assert (tmp_path / "out" / "localization.txt").read_text() == "a.jpg,0,0,1,1\nb.jpg,0.1,1.5,9.25,3\n"


def test_wsol_bad_entries(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "image_ids.txt").write_text("a.jpg\nb.jpg\nc.jpg\na.jpg\n../d.jpg\ne.jpg")
    (folder / "class_labels.txt").write_text("a.jpg,0\nb.jpg,1\n../d.jpg,0\ne.jpg,7\n")  # c unlabelled
    (folder / "image_sizes.txt").write_text("a.jpg,10,8\nb.jpg,10,8\nc.jpg,10,8\ne.jpg,10,8\n")
    (folder / "localization.txt").write_text("a.jpg,0,0,10,8\nb.jpg,0,0,11,8\nb.jpg,1,1,2,2\nz.jpg,0,0,1,1")
    t, problems = read_wsol_metadata(folder, classes=["x", "y"])
    assert t.column("image_id").to_pylist() == ["a.jpg", "b.jpg"]
    assert t.column("boxes").to_pylist() == [[[0, 0, 10, 8]], [[1, 1, 2, 2]]]  # b's bad box dropped
    assert [(p.path.rsplit(":", 1)[-1], p.kind) for p in problems] == [
        ("a.jpg", "duplicate image id"),
        ("../d.jpg", "unsafe path"),
        ("c.jpg", "missing class label"),
        ("e.jpg", "unknown class"),
        ("b.jpg", "bad box"),
        ("z.jpg", "unknown image"),
    ]
    with pytest.raises(DataError, match=r"image_ids\.txt:a\.jpg: duplicate image id"):
        read_wsol_metadata(folder, classes=["x", "y"], strict=True)


def test_wsol_without_sizes_reads_headers(tmp_path: Path) -> None:
    folder, images = tmp_path / "train_cls", tmp_path / "images"
    folder.mkdir()
    (images / "n1").mkdir(parents=True)
    (images / "n1" / "a.JPEG").write_bytes(jpeg_bytes(gradient_rgb(12, 7)))
    (folder / "image_ids.txt").write_text("n1/a.JPEG\nn1/missing.JPEG\n")
    (folder / "class_labels.txt").write_text("n1/a.JPEG,0\nn1/missing.JPEG,0\n")
    with pytest.raises(DataError, match=r"image_sizes\.txt: missing file"):
        read_wsol_metadata(folder)
    t, problems = read_wsol_metadata(folder, image_root=images)
    assert t.to_pylist() == [
        {"image_id": "n1/a.JPEG", "class_index": 0, "class_id": "0", "width": 12, "height": 7, "boxes": [],
         "mask_path": None, "ignore_path": None, "more_mask_paths": []}
    ]  # fmt: skip
    assert [p.kind for p in problems] == ["missing image"]


def test_wsol_malformed_file_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "image_ids.txt").write_text("a.jpg\n")
    (folder / "class_labels.txt").write_text("a.jpg,zero\n")
    with pytest.raises(DataError, match=r"class_labels\.txt: malformed line"):
        read_wsol_metadata(folder)


def test_val_xml_with_entities_is_refused_not_expanded(ilsvrc: dict, tmp_path: Path) -> None:
    """Annotation XML is untrusted: an entity declaration (the start of a "billion laughs" or an external
    entity) makes the file a problem; the standard library parser would expand it and accept the image."""
    import shutil

    xml_dir = tmp_path / "xml"
    shutil.copytree(ilsvrc["xml_dir"], xml_dir)
    path = xml_dir / "ILSVRC2012_val_00000001.xml"
    text = path.read_text()
    wnid = re.search(r"<name>(\w+)</name>", text).group(1)
    body = text[text.index("<annotation") :].replace(f"<name>{wnid}</name>", "<name>&w;</name>")
    path.write_text(f'<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY w "{wnid}">]>\n{body}')
    t, problems = read_ilsvrc_val(ilsvrc["root"], ilsvrc["synsets"], xml_dir=xml_dir)
    assert vid(1) not in t.column("image_id").to_pylist()
    assert problems_by_image(problems)[1] == "unsafe XML"
    assert any("EntitiesForbidden" in p.reason for p in problems if "00000001" in p.path)
