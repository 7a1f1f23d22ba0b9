"""The shadow ILSVRC val layout: real sizes, boxes and labels, the real on-disk layout, determinism."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from acol.config import DataParams
from acol.data.readers.ilsvrc import read_ilsvrc_val
from acol.data.shadow_ilsvrc import (
    FULLSUP_METADATA,
    _train_images,
    _write_chunk,
    shadow_geometry,
    shadow_texture,
)
from acol.data.synthetic import SyntheticConfig, class_wnids, generate_synthetic
from acol.stages.prepare import index_dataset, index_fullsup
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
    marker = json.loads((root / "synthetic.json").read_text())["config"]
    assert (
        "shadow_classes" not in marker and "shadow_fullsup_metadata" not in marker
    )  # as before they existed


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


Row = tuple[str, int, int, int, list[list[float]]]  # id, class index, width, height, boxes
SUBSET, VAL_PER_CLASS, FULLSUP_PER_CLASS = 3, 2, 2


def metadata_rows(folder: Path) -> list[Row]:
    """Every image of a WSOL metadata folder in image_ids.txt order, from the plain text."""
    labels = {r[0]: int(r[1]) for r in plain_rows(folder / "class_labels.txt")}
    sizes = {r[0]: (int(r[1]), int(r[2])) for r in plain_rows(folder / "image_sizes.txt")}
    boxes: dict[str, list[list[float]]] = {}
    for r in plain_rows(folder / "localization.txt"):
        boxes.setdefault(r[0], []).append([float(v) for v in r[1:]])
    return [(i, labels[i], *sizes[i], boxes[i]) for (i,) in plain_rows(folder / "image_ids.txt")]


def first_of_classes(rows: list[Row], per_class: int) -> list[Row]:
    return [row for k in range(SUBSET) for row in [r for r in rows if r[1] == k][:per_class]]


def manifest_rows(table: object) -> list[Row]:
    return sorted(
        (r["image_id"], r["class_index"], r["width"], r["height"], r["boxes"])
        for r in table.to_pylist()  # type: ignore[attr-defined]
    )


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory, wsol_metadata_dir: Path) -> tuple[Path, SyntheticConfig]:  # noqa: F811
    root = tmp_path_factory.mktemp("shadow_subset") / "data"
    config = shadow_config(wsol_metadata_dir, num_val_images=None, shadow_classes=SUBSET,
                           val_per_class=VAL_PER_CLASS, train_per_class=2, holdout_per_class=FULLSUP_PER_CLASS,
                           shadow_fullsup_metadata=str(wsol_metadata_dir / "ILSVRC" / "val"))  # fmt: skip
    generate_synthetic(root, config, progress=False)
    return root, config


def test_a_class_subset_reads_back_as_its_classes(subset: tuple[Path, SyntheticConfig]) -> None:
    root, config = subset
    train, val, problems = index_dataset(DataParams(source="ilsvrc", root=str(root)))
    assert problems == []
    wnids = class_wnids(SUBSET)
    assert sorted(set(train.column("class_id").to_pylist())) == wnids
    assert train.column("class_index").to_pylist() == [0, 0, 1, 1, 2, 2]
    expected = first_of_classes(metadata_rows(Path(str(config.shadow_metadata))), VAL_PER_CLASS)
    assert manifest_rows(val) == sorted(expected)
    assert len(list((root / "val").iterdir())) == SUBSET * VAL_PER_CLASS
    assert (root / "LOC_synset_mapping.txt").read_text().split()[::4] == wnids
    assert json.loads((root / "synthetic.json").read_text())["config"]["shadow_classes"] == SUBSET
    assert not generate_synthetic(root, config, progress=False).created  # the marker matches its config


def test_a_subset_s_files_are_the_full_set_s(subset: tuple[Path, SyntheticConfig], tmp_path: Path) -> None:
    # A val image keeps its metadata row as render index, a train image its class-major position.
    root, config = subset
    full = config.model_copy(update={"shadow_classes": None, "shadow_fullsup_metadata": None})
    every = shadow_geometry(full)
    row = next(i for i, g in enumerate(every) if g.label == 2)
    _write_chunk(str(tmp_path), full, "val", [(row, every[row])])
    assert (tmp_path / every[row].name).read_bytes() == (root / every[row].name).read_bytes()
    first = _train_images(full, every)[5]
    _write_chunk(str(tmp_path), full, "train", [(5, first)])
    assert (tmp_path / first.name).read_bytes() == (root / first.name).read_bytes()


def test_fullsup_images_and_metadata(subset: tuple[Path, SyntheticConfig]) -> None:
    root, config = subset
    data = DataParams(source="ilsvrc", root=str(root), fullsup_metadata=str(root / FULLSUP_METADATA))
    table, problems = index_fullsup(data, class_wnids(SUBSET))
    assert problems == []
    expected = first_of_classes(metadata_rows(Path(str(config.shadow_fullsup_metadata))), FULLSUP_PER_CLASS)
    assert len(expected) == SUBSET * FULLSUP_PER_CLASS and expected[0][0].startswith("val2/0/")
    assert manifest_rows(table) == sorted(expected)
    for image_id, _, w, h, _ in expected:
        assert cv2.imread(str(root / image_id)).shape == (h, w, 3)
    summary = json.loads((root / "synthetic.json").read_text())["summary"]
    assert summary["images"] == {"train": 6, "val": 6, "holdout": 6} and summary["num_classes"] == SUBSET


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
    with pytest.raises(ValidationError, match="layout='toy'"):
        SyntheticConfig(shadow_classes=4)
    with pytest.raises(ValidationError, match="layout='toy'"):
        SyntheticConfig(shadow_fullsup_metadata="m")
    with pytest.raises(ValidationError, match="holdout_per_class"):
        SyntheticConfig(layout="shadow_ilsvrc", num_classes=1000, shadow_metadata="m",
                        shadow_fullsup_metadata="v", holdout_per_class=0)  # fmt: skip
    with pytest.raises(ValidationError):
        SyntheticConfig(layout="shadow_ilsvrc", num_classes=1000, shadow_metadata="m", shadow_classes=1001)
