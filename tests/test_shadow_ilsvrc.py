"""The shadow ILSVRC val layout: real sizes, boxes and labels, the real on-disk layout, determinism."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from acol.data.readers.ilsvrc import read_ilsvrc_val
from acol.data.shadow_ilsvrc import _train_images, _write_chunk, shadow_geometry, shadow_texture
from acol.data.synthetic import SyntheticConfig, class_wnids, generate_synthetic
from tests.conftest_data import wsol_metadata_dir  # noqa: F401  (session fixture)

N_VAL = 30


def shadow_config(metadata: Path, **overrides: object) -> SyntheticConfig:
    fields = dict(layout="shadow_ilsvrc", num_classes=1000, shadow_metadata=str(metadata / "ILSVRC" / "test"),
                  num_val_images=N_VAL, train_per_class=0, jpeg_quality=90)  # fmt: skip
    return SyntheticConfig(**{**fields, **overrides})


def plain_rows(path: Path) -> list[list[str]]:
    """The metadata file as written: comma-separated rows, no header (an oracle independent of acol)."""
    return [line.split(",") for line in path.read_text().splitlines() if line]


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def shadow(tmp_path_factory: pytest.TempPathFactory, wsol_metadata_dir: Path) -> tuple[Path, Path]:  # noqa: F811
    root = tmp_path_factory.mktemp("shadow") / "data"
    generate_synthetic(root, shadow_config(wsol_metadata_dir), progress=False)
    return root, wsol_metadata_dir / "ILSVRC" / "test"


def test_sizes_boxes_and_labels_are_the_metadata_s(shadow: tuple[Path, Path]) -> None:
    root, meta = shadow
    ids = [r[0] for r in plain_rows(meta / "image_ids.txt")][:N_VAL]
    sizes = {r[0]: (int(r[1]), int(r[2])) for r in plain_rows(meta / "image_sizes.txt")}
    labels = {r[0]: int(r[1]) for r in plain_rows(meta / "class_labels.txt")}
    boxes: dict[str, list[list[int]]] = {}
    for r in plain_rows(meta / "localization.txt"):
        boxes.setdefault(r[0], []).append([int(float(v)) for v in r[1:]])
    assert sorted(p.name for p in (root / "val").iterdir()) == [
        f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, N_VAL + 1)
    ]
    wnids = class_wnids(1000)
    with open(root / "LOC_val_solution.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["ImageId", "PredictionString"] and len(rows) == N_VAL + 1
    solution = {r[0]: r[1].split() for r in rows[1:]}
    for image_id in ids:
        height, width = cv2.imread(str(root / image_id)).shape[:2]
        assert (width, height) == sizes[image_id]
        fields = solution[Path(image_id).stem]
        assert set(fields[0::5]) == {wnids[labels[image_id]]}
        got = [[int(v) for v in fields[i + 1 : i + 5]] for i in range(0, len(fields), 5)]
        assert got == boxes[image_id]
    mapping = [line.split()[0] for line in (root / "LOC_synset_mapping.txt").read_text().splitlines()]
    assert mapping == sorted(mapping) == wnids


def test_the_ilsvrc_reader_reads_it_back(shadow: tuple[Path, Path]) -> None:
    root, _ = shadow
    table, problems = read_ilsvrc_val(
        root, root / "LOC_synset_mapping.txt", solution_csv=root / "LOC_val_solution.csv", verify_images=True
    )
    assert problems == []
    assert len(table) == N_VAL
    assert table.column("image_id").to_pylist()[0] == "val/ILSVRC2012_val_00000001.JPEG"
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_objects_are_drawn_inside_their_boxes(shadow: tuple[Path, Path]) -> None:
    # The part's saturated hue appears inside a box of image 1 and nowhere else (background is grey).
    root, _ = shadow
    image = cv2.imread(str(root / "val" / "ILSVRC2012_val_00000001.JPEG"))
    saturated = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[..., 1] > 200
    x0, y0, x1, y1 = 111, 108, 441, 193  # localization.txt, first line
    inside = np.zeros_like(saturated)
    inside[y0 : y1 + 1, x0 : x1 + 1] = True
    assert saturated[inside].sum() > 50 and saturated[~inside].sum() < 20


def test_same_bytes_whatever_the_worker_count(tmp_path: Path, wsol_metadata_dir: Path) -> None:  # noqa: F811
    config = shadow_config(wsol_metadata_dir, num_val_images=6, seed=5)
    generate_synthetic(tmp_path / "one", config, workers=1, progress=False)
    generate_synthetic(tmp_path / "two", config, workers=2, progress=False)
    one, two = tree_digest(tmp_path / "one"), tree_digest(tmp_path / "two")
    assert one == two and len(one) == 6 + 3
    other = shadow_config(wsol_metadata_dir, num_val_images=6, seed=6)
    generate_synthetic(tmp_path / "other", other, progress=False)
    assert (
        tree_digest(tmp_path / "other")["val/ILSVRC2012_val_00000001.JPEG"]
        != one["val/ILSVRC2012_val_00000001.JPEG"]
    )


def test_train_tree_and_class_codes(tmp_path: Path, wsol_metadata_dir: Path) -> None:  # noqa: F811
    config = shadow_config(wsol_metadata_dir, train_per_class=3)
    val = shadow_geometry(config)
    train = _train_images(config, val)
    assert len(train) == 3000 and train[0].name == "train/n90000000/n90000000_0.JPEG"
    assert train[-1].name == "train/n90000999/n90000999_2.JPEG" and train[-1].label == 999
    assert (train[4].width, train[4].height, train[4].boxes) == (val[4].width, val[4].height, val[4].boxes)
    _write_chunk(str(tmp_path), config, "train", [(4, train[4])])  # one image, not the 3,000
    written = cv2.imread(str(tmp_path / "train" / "n90000001" / "n90000001_1.JPEG"))
    assert written.shape == (val[4].height, val[4].width, 3)
    codes = {(k % 20, shadow_texture(k)) for k in range(1000)}
    assert len(codes) == 1000  # every class a distinct (part hue, body texture) pair


def test_config_rules() -> None:
    with pytest.raises(ValidationError, match="shadow_metadata"):
        SyntheticConfig(layout="shadow_ilsvrc", num_classes=1000)
    with pytest.raises(ValidationError, match="num_classes=1000"):
        SyntheticConfig(layout="shadow_ilsvrc", shadow_metadata="m")
    with pytest.raises(ValidationError, match="layout='toy'"):
        SyntheticConfig(num_val_images=5)
    with pytest.raises(ValidationError, match="layout='toy'"):
        SyntheticConfig(num_classes=40)
    with pytest.raises(ValidationError, match="train_per_class"):
        SyntheticConfig(train_per_class=0)
    with pytest.raises(ValidationError):
        SyntheticConfig(layout="imagenet")
