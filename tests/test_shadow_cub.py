"""Shadow CUB-200-2011: the real download layout, read back by the project's CUB and WSOL readers.

The oracle is the shipped WSOL metadata (CUB/test, CUB/val) read as plain text, not through acol.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from acol.config import DataParams
from acol.data.shadow_cub import generate_shadow_cub, main
from acol.stages.prepare import index_dataset, index_fullsup
from tests.conftest_data import wsol_metadata_dir  # noqa: F401  (session fixture)

CLASSES, TRAIN, TEST, FULLSUP = 4, 3, 3, 2
Row = tuple[str, int, int, int, list[list[float]]]  # id, class index, width, height, boxes


def metadata_rows(folder: Path) -> list[Row]:
    """Every image of a WSOL metadata folder, in image_ids.txt order, from the comma-separated text."""

    def rows(name: str) -> list[list[str]]:
        return [line.split(",") for line in (folder / name).read_text().splitlines() if line]

    labels = {r[0]: int(r[1]) for r in rows("class_labels.txt")}
    sizes = {r[0]: (int(r[1]), int(r[2])) for r in rows("image_sizes.txt")}
    boxes: dict[str, list[list[float]]] = {}
    for r in rows("localization.txt"):
        boxes.setdefault(r[0], []).append([float(v) for v in r[1:]])
    return [(i, labels[i], *sizes[i], boxes[i]) for (i,) in rows("image_ids.txt")]


def first_per_class(rows: list[Row], per_class: int) -> list[Row]:
    """The first ``per_class`` rows of each of the first CLASSES classes, in file order."""
    return [row for k in range(CLASSES) for row in [r for r in rows if r[1] == k][:per_class]]


def manifest_rows(table: object) -> list[Row]:
    return sorted(
        (r["image_id"], r["class_index"], r["width"], r["height"], r["boxes"])
        for r in table.to_pylist()  # type: ignore[attr-defined]
    )


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def shadow(tmp_path_factory: pytest.TempPathFactory, wsol_metadata_dir: Path) -> tuple[Path, Path, Path]:  # noqa: F811
    base = tmp_path_factory.mktemp("shadow_cub")
    root, fullsup = base / "CUB_200_2011", base / "wsol-metadata" / "CUB" / "val"
    generate_shadow_cub(root, wsol_metadata_dir / "CUB", classes=CLASSES, train_per_class=TRAIN,
                        test_per_class=TEST, fullsup_per_class=FULLSUP, seed=0,
                        fullsup_metadata_out=fullsup)  # fmt: skip
    return root, fullsup, wsol_metadata_dir / "CUB"


def test_test_split_is_the_metadata_s(shadow: tuple[Path, Path, Path]) -> None:
    root, _, meta = shadow
    train, val, problems = index_dataset(DataParams(source="cub", root=str(root), verify_images=True))
    assert problems == []
    expected = first_per_class(metadata_rows(meta / "test"), TEST)
    assert manifest_rows(val) == sorted((f"images/{i}", *rest) for i, *rest in expected)  # type: ignore[misc]
    folders = [expected[k * TEST][0].split("/")[0] for k in range(CLASSES)]
    assert sorted(set(train.column("class_id").to_pylist())) == folders
    assert (root / "classes.txt").read_text() == "".join(f"{k + 1} {f}\n" for k, f in enumerate(folders))


def test_train_split_borrows_the_class_s_test_geometry(shadow: tuple[Path, Path, Path]) -> None:
    root, _, meta = shadow
    train, _, _ = index_dataset(DataParams(source="cub", root=str(root), verify_images=True))
    every = metadata_rows(meta / "test")
    expected = []
    for k in range(CLASSES):
        of_class = [r for r in every if r[1] == k]
        stem = Path(of_class[0][0]).stem.rsplit("_", 2)[0]
        folder = of_class[0][0].split("/")[0]
        for n in range(TRAIN):
            _, _, w, h, boxes = of_class[n % len(of_class)]
            expected.append((f"images/{folder}/{stem}_{9000 + n}_{n}.jpg", k, w, h, boxes))
    assert manifest_rows(train) == sorted(expected)
    split = dict(line.split() for line in (root / "train_test_split.txt").read_text().splitlines())
    assert sorted(split.values()) == ["0"] * CLASSES * TEST + ["1"] * CLASSES * TRAIN


def test_fullsup_folder_is_read_by_index_fullsup(shadow: tuple[Path, Path, Path]) -> None:
    root, fullsup, meta = shadow
    data = DataParams(source="cub", root=str(root), fullsup_metadata=str(fullsup))
    train, _, _ = index_dataset(data)
    classes = sorted(set(train.column("class_id").to_pylist()))
    table, problems = index_fullsup(data, classes)
    assert problems == []
    expected = first_per_class(metadata_rows(meta / "val"), FULLSUP)
    assert len(expected) == CLASSES * FULLSUP
    assert manifest_rows(table) == sorted((f"images/{i}", *rest) for i, *rest in expected)  # type: ignore[misc]
    for image_id, _, w, h, _ in expected:  # real sizes on disk, not only in the metadata
        assert cv2.imread(str(root / "images" / image_id)).shape == (h, w, 3)


def test_the_object_is_drawn_inside_its_box(shadow: tuple[Path, Path, Path]) -> None:
    # Saturated part pixels lie inside the real box (x, y, x + w, y + h) and nowhere else (grey background).
    root, _, _ = shadow
    image = cv2.imread(str(root / "images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"))
    saturated = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[..., 1] > 200
    inside = np.zeros_like(saturated)
    inside[27 : 331 + 1, 60 : 385 + 1] = True  # CUB/test localization.txt, first line
    assert saturated[inside].sum() > 50 and saturated[~inside].sum() < 20


def test_same_arguments_same_bytes(tmp_path: Path, wsol_metadata_dir: Path) -> None:  # noqa: F811
    meta = wsol_metadata_dir / "CUB"
    args = dict(classes=2, train_per_class=1, test_per_class=1, fullsup_per_class=1)
    for name, seed in (("one", 3), ("two", 3), ("other", 4)):
        generate_shadow_cub(
            tmp_path / name, meta, seed=seed, fullsup_metadata_out=tmp_path / f"{name}-m", **args
        )
    one, two, other = (tree_digest(tmp_path / name) for name in ("one", "two", "other"))
    assert one == two and len(one) == 5 + 2 * 3 + 1  # 5 text files, 2 classes x 3 images, the marker
    assert tree_digest(tmp_path / "one-m") == tree_digest(tmp_path / "two-m")
    test_image = "images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
    assert one[test_image] != other[test_image]
    assert json.loads((tmp_path / "one" / "shadow_cub.json").read_text())["images"] == {
        "train": 2, "test": 2, "fullsup": 2}  # fmt: skip
    generate_shadow_cub(tmp_path / "one", meta, seed=3, **args)  # same arguments: allowed, same files
    assert tree_digest(tmp_path / "one") == one
    with pytest.raises(FileExistsError, match="other arguments"):
        generate_shadow_cub(tmp_path / "one", meta, seed=5, **args)


def test_argument_rules(tmp_path: Path, wsol_metadata_dir: Path) -> None:  # noqa: F811
    meta = wsol_metadata_dir / "CUB"
    with pytest.raises(ValueError, match="classes"):
        generate_shadow_cub(tmp_path, meta, classes=201, train_per_class=1, test_per_class=1)
    with pytest.raises(ValueError, match="test_per_class"):
        generate_shadow_cub(tmp_path, meta, classes=2, train_per_class=1, test_per_class=0)
    with pytest.raises(ValueError, match="fullsup_per_class"):
        generate_shadow_cub(tmp_path, meta, classes=2, train_per_class=1, test_per_class=1,
                            fullsup_metadata_out=tmp_path / "m")  # fmt: skip
    with pytest.raises(ValueError, match="< 1000"):
        generate_shadow_cub(tmp_path, meta, classes=2, train_per_class=1000, test_per_class=1)
    assert not any(tmp_path.iterdir())  # refused before writing anything


def test_the_command_line_writes_the_same_files(tmp_path: Path, wsol_metadata_dir: Path) -> None:  # noqa: F811
    meta = wsol_metadata_dir / "CUB"
    generate_shadow_cub(tmp_path / "py", meta, classes=2, train_per_class=1, test_per_class=1, seed=2)
    assert main([str(tmp_path / "cli"), str(meta), "--classes", "2", "--train-per-class", "1",
                 "--test-per-class", "1", "--seed", "2"]) == 0  # fmt: skip
    assert tree_digest(tmp_path / "cli") == tree_digest(tmp_path / "py")
