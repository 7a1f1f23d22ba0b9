"""OpenImages30k: PxAP with instance and ignore masks (Choe et al.), the reader on the shipped metadata, an
empty image_sizes.txt, and the evaluate stage on a shadow OpenImages tree."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from acol.config import DataParams, EvaluateParams
from acol.data.errors import DataError
from acol.data.manifest import manifest_classes
from acol.data.readers.openimages import openimages_classes, read_openimages
from acol.data.readers.wsol_metadata import read_wsol_localization, read_wsol_metadata
from acol.data.shadow_openimages import generate_shadow_openimages
from acol.inference.mapstore import columns_to_table
from acol.stages.evaluation import NO_BOX_METRICS, evaluate_method
from acol.stages.prepare import index_dataset, index_fullsup
from acol.stages.score_npy import evaluate as score_npy
from acol.wsol.localization_metrics import MaskEvaluator, load_wsol_mask
from acol.wsol.reference import reference_pxap  # Choe et al.'s PxAP, written plainly
from acol.wsol.scoremaps import prepare_scoremap

ARCHIVE = Path(__file__).parent / "assets" / "openimages-metadata.tar.xz"
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def metadata(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped OpenImages folder (train/, val/, test/, example_masks/), extracted once."""
    dest = tmp_path_factory.mktemp("openimages-metadata")
    with tarfile.open(ARCHIVE, "r:xz") as tar:
        tar.extractall(dest, filter="data")
    return dest / "OpenImages"


# --- a plain re-implementation of Choe et al.'s get_mask and MaskEvaluator (wsol/evaluation.py) ----------


def _choe_get_mask(mask_root: Path, mask_paths: list[str], ignore_path: str, size: int = 224) -> np.ndarray:
    """Union of the instance masks (> 0.5); ignore = ignore box minus the foreground, 255; else 0."""

    def load(path: Path) -> np.ndarray:
        return cv2.resize(np.float32(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)), (size, size),
                          interpolation=cv2.INTER_NEAREST)  # fmt: skip

    fg = np.stack([load(mask_root / p) > 0.5 for p in mask_paths], axis=0).any(axis=0)
    ignore = np.logical_and(load(mask_root / ignore_path) > 0.5, np.logical_not(fg))
    return fg.astype(np.uint8) + 255 * ignore.astype(np.uint8)


def _png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), mask.astype(np.uint8) * 255)


# --- PxAP with ignore masks ---------------------------------------------------------------------------


def test_pxap_with_instances_and_ignore_by_hand(tmp_path: Path) -> None:
    """4x4 image, row 0 scored 0.9, 0.6, 0.3, 0.1, the rest 0. Instances cover (0, 0) and (0, 3); the ignore
    box covers (0, 0) and (0, 1): (0, 0) stays foreground, (0, 1) is ignored. Positives 0.9 and 0.1,
    negatives 0.3 and twelve 0s. From the top: at 0.9 P=1, R=1/2; at 0.3 P=1/2, R=1/2; at 0.1 P=2/3, R=1;
    at 0 R does not move. AP = 1 x 1/2 + 2/3 x 1/2 = 5/6. Without the ignore mask 0.6 is a negative: at 0.1
    P = 2/4, AP = 1/2 + 1/4 = 3/4."""
    a, b, ignore = (np.zeros((4, 4), bool) for _ in range(3))
    a[0, 0], b[0, 3], ignore[0, :2] = True, True, True
    for name, mask in (("a.png", a), ("b.png", b), ("ign.png", ignore)):
        _png(tmp_path / name, mask)
    scores = np.zeros((4, 4))
    scores[0] = [0.9, 0.6, 0.3, 0.1]

    gt = load_wsol_mask(tmp_path, ["a.png", "b.png"], "ign.png", size=4)
    assert gt[0].tolist() == [1, 255, 0, 1] and (gt[1:] == 0).all()
    evaluator = MaskEvaluator(interval=0.01)
    evaluator.accumulate(scores, gt)
    assert evaluator.compute().pxap == pytest.approx(100 * 5 / 6)

    plain = MaskEvaluator(interval=0.01)
    plain.accumulate(scores, load_wsol_mask(tmp_path, ["a.png", "b.png"], "", size=4))
    assert plain.compute().pxap == pytest.approx(100 * 3 / 4)


def test_pxap_equals_choes_mask_evaluator_on_random_maps(tmp_path: Path) -> None:
    """Random maps and masks of several instances and an ignore box, at different image sizes."""
    rng = np.random.default_rng(0)
    ours = MaskEvaluator(interval=0.01)
    maps, gts = [], []
    for i in range(6):
        h, w = rng.integers(40, 90, size=2)
        instances = [f"m/{i}_{k}.png" for k in range(rng.integers(1, 4))]
        for path in instances:
            mask = np.zeros((h, w), bool)
            y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
            mask[y : y + rng.integers(5, h // 2), x : x + rng.integers(5, w // 2)] = True
            _png(tmp_path / path, mask)
        ignore = np.zeros((h, w), bool)
        ignore[rng.integers(0, h // 2) :, : rng.integers(5, w)] = True
        _png(tmp_path / f"m/{i}_ignore.png", ignore)
        scoremap = prepare_scoremap(rng.random((14, 14)))
        maps.append(scoremap)
        gts.append(_choe_get_mask(tmp_path, instances, f"m/{i}_ignore.png"))
        ours.accumulate(scoremap, load_wsol_mask(tmp_path, instances, f"m/{i}_ignore.png"))
        assert (load_wsol_mask(tmp_path, instances, f"m/{i}_ignore.png") == gts[-1]).all()
    assert sum((g == 255).sum() for g in gts) > 0 and sum((g == 1).sum() for g in gts) > 0
    assert ours.compute().pxap == pytest.approx(reference_pxap(maps, gts, 0.01), abs=1e-9)


# --- the reader on the shipped metadata -------------------------------------------------------------


def _counts_from_text(folder: Path) -> dict[str, int]:
    """Images, classes, instance masks and ignore masks of a metadata folder, from its text files alone."""
    ids = [line for line in (folder / "image_ids.txt").read_text().splitlines() if line]
    labels = {
        line.rsplit(",", 1)[1] for line in (folder / "class_labels.txt").read_text().splitlines() if line
    }
    loc = [line.split(",") for line in (folder / "localization.txt").read_text().splitlines() if line]
    return {
        "images": len(ids),
        "classes": len(labels),
        "masks": len(loc),
        "ignores": sum(bool(f[2]) for f in loc),
    }


def _placeholder_tree(root: Path, metadata: Path) -> None:
    """Every image the metadata names as a hard link to one 3x2 JPEG: the reader reads sizes from headers."""
    one = root / "one.jpg"
    one.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(one), np.zeros((2, 3, 3), np.uint8))
    for split in SPLITS:
        for image_id in (metadata / split / "image_ids.txt").read_text().split():
            (root / image_id).parent.mkdir(parents=True, exist_ok=True)
            os.link(one, root / image_id)


def test_reader_on_the_shipped_metadata(metadata: Path, tmp_path: Path) -> None:
    _placeholder_tree(tmp_path / "OpenImages", metadata)
    classes = openimages_classes(metadata)
    assert len(classes) == 100 and classes[0] == "01226z"
    for split in SPLITS:
        expected = _counts_from_text(metadata / split)
        table, problems = read_openimages(tmp_path / "OpenImages", metadata, split, strict=True)
        assert problems == []
        rows = table.to_pydict()
        instances = sum(m is not None for m in rows["mask_path"]) + sum(map(len, rows["more_mask_paths"]))
        assert table.num_rows == expected["images"], split
        assert len(set(rows["class_index"])) == expected["classes"] == 100, split
        assert instances == expected["masks"], split
        assert sum(p is not None for p in rows["ignore_path"]) == expected["ignores"], split
        assert set(rows["width"]) == {3} and set(rows["height"]) == {2}
        assert all(not b for b in rows["boxes"])
        assert all(c == classes[k] == i.split("/")[1] for c, k, i in
                   zip(rows["class_id"], rows["class_index"], rows["image_id"], strict=True))  # fmt: skip
    # the split sizes of Choe et al.'s OpenImages30k as the files give them
    assert [_counts_from_text(metadata / s)["images"] for s in SPLITS] == [29819, 2500, 5000]


# --- an empty image_sizes.txt ---------------------------------------------------------------------------


def _example_folder(metadata: Path, dest: Path) -> Path:
    """A val metadata folder of the five images whose masks ship (example_masks), sizes file empty as the
    real one."""
    examples = {p.name.split("_")[0] for p in (metadata / "example_masks").rglob("*.png")}
    dest.mkdir(parents=True)
    for name in ("image_ids.txt", "class_labels.txt", "localization.txt"):
        lines = (metadata / "val" / name).read_text().splitlines()
        kept = [line for line in lines if Path(line.split(",")[0]).stem in examples]
        (dest / name).write_text("".join(f"{line}\n" for line in kept))
    (dest / "image_sizes.txt").write_text("")
    return dest


def test_empty_sizes_file_reads_sizes_from_the_masks(metadata: Path, tmp_path: Path) -> None:
    """wsolevaluation's OpenImages image_sizes.txt is empty: `python -m acol.evaluate --masks` once stopped on
    it (DataError: malformed line: Empty CSV file); it now reads sizes from the masks and gives Choe's PxAP
    on the shipped example masks, two instances in one image and the ignore masks included."""
    folder = _example_folder(metadata, tmp_path / "meta")
    masks = metadata / "example_masks"
    meta, problems = read_wsol_localization(folder, "masks", size_root=masks)
    assert problems == [] and len(meta.image_ids) == 5
    assert meta.sizes["val/0bt_c3/1cd9ac0169ec7df0.jpg"] == (459, 632)
    assert max(len(v) for v in meta.mask_paths.values()) == 2
    rng = np.random.default_rng(1)
    maps = {}
    for image_id in meta.image_ids:
        maps[image_id] = rng.random((9, 12))
        (tmp_path / "maps" / image_id).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "maps" / image_id, maps[image_id])
    result = score_npy(folder, tmp_path / "maps", masks=masks, interval=0.01)
    gts = [_choe_get_mask(masks, meta.mask_paths[i], meta.ignore_paths[i]) for i in meta.image_ids]
    expected = reference_pxap([prepare_scoremap(maps[i]) for i in meta.image_ids], gts, 0.01)
    assert result["num_images"] == 5 and result["pxap"] == pytest.approx(expected, abs=1e-9)

    with pytest.raises(DataError, match=r"image_sizes\.txt: empty file"):
        read_wsol_localization(folder, "masks")  # nowhere to read sizes from: the error names the file
    with pytest.raises(DataError, match=r"image_sizes\.txt: empty file"):
        read_wsol_metadata(folder, localization="masks")


# --- the shadow tree, prepare and the evaluate stage ----------------------------------------------------


@pytest.fixture(scope="module")
def shadow(metadata: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A shadow dataset/OpenImages of 3 classes (2 train, 2 val, 4 test images each) and its metadata."""
    base = tmp_path_factory.mktemp("shadow-openimages")
    generate_shadow_openimages(base / "OpenImages", metadata, base / "metadata", classes=3,
                               per_class={"train": 2, "val": 2, "test": 4})  # fmt: skip
    return base / "OpenImages", base / "metadata"


def test_shadow_tree_follows_the_metadata(shadow: tuple[Path, Path], metadata: Path) -> None:
    root, written = shadow
    for split, per_class in (("train", 2), ("val", 2), ("test", 4)):
        counts = _counts_from_text(written / split) if split != "train" else None
        ids = (written / split / "image_ids.txt").read_text().split()
        assert len(ids) == 3 * per_class and all((root / i).is_file() for i in ids)
        real = (metadata / split / "image_ids.txt").read_text().split()
        assert set(ids) <= set(real)
        if counts:
            lines = [line.split(",") for line in (written / split / "localization.txt").read_text().split()]
            assert all((root / f[1]).is_file() and (not f[2] or (root / f[2]).is_file()) for f in lines)
            assert counts["ignores"] == counts["images"]  # every real val/test image names an ignore mask
    image = cv2.imread(str(root / ids[0]), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(root / lines[0][1]), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == image.shape[:2] and set(np.unique(mask)) == {0, 255}


def test_prepare_indexes_openimages(shadow: tuple[Path, Path]) -> None:
    root, written = shadow
    data = DataParams(
        source="openimages", root=str(root), metadata=str(written), fullsup_metadata=str(written / "val")
    )
    train, val, problems = index_dataset(data)
    assert problems == [] and (train.num_rows, val.num_rows) == (6, 12)
    assert val.column("mask_path").null_count == 0 and train.column("mask_path").null_count == 6
    fullsup, _ = index_fullsup(data, manifest_classes(train))
    assert fullsup.num_rows == 6 and fullsup.column("ignore_path").null_count == 0
    with pytest.raises(ValueError, match=r"data\.metadata"):
        DataParams(source="openimages", root=str(root))


def test_evaluate_stage_on_shadow_openimages(shadow: tuple[Path, Path], tmp_path: Path) -> None:
    """PxAP over every test image with all its instance masks and its ignore mask, as Choe et al. compute it;
    classification errors; the box metrics said not measured, none written as a number."""
    root, written = shadow
    manifest, _ = read_openimages(root, written, "test", strict=True)
    n, grid = manifest.num_rows, 16
    assert sum(map(len, manifest.column("more_mask_paths").to_pylist())) > 0  # some image has 2+ instances
    rng = np.random.default_rng(3)
    maps = rng.random((n, grid, grid)).astype(np.float16)
    labels = np.asarray(manifest.column("class_index"))
    # 3 classes: the stored top-5 holds 3 of them; every third image ranks its label second
    top5 = np.stack([np.roll(np.arange(3), -int(k)) if i % 3 else np.roll(np.arange(3), 1 - int(k))
                     for i, k in enumerate(labels)])  # fmt: skip
    flat = maps.reshape(n, -1)
    columns = {"image_id": manifest.column("image_id").to_pylist(), "label": labels, "error": [None] * n,
               "top5_classes": top5, "top5_scores": np.tile(np.linspace(0.5, 0.1, 5, dtype=np.float32), (n, 1)),
               "map_height": np.full(n, grid), "map_width": np.full(n, grid), "map_gt": flat, "map_top1": flat,
               "map_a_gt": flat, "map_b_gt": flat, "pred_box": np.zeros((n, 4), np.float32)}  # fmt: skip
    result = evaluate_method(columns_to_table(columns), manifest, root, EvaluateParams(interval=0.01))
    metrics = result.metrics

    rows = manifest.to_pylist()
    gts = [_choe_get_mask(root, [r["mask_path"], *r["more_mask_paths"]], r["ignore_path"]) for r in rows]
    prepared = [prepare_scoremap(m.astype(np.float32)) for m in maps]
    assert metrics["pxap"] == pytest.approx(reference_pxap(prepared, gts, 0.01), abs=1e-6)
    assert metrics["num_images"] == n and metrics["box_metrics"] == NO_BOX_METRICS
    assert metrics["top1_cls_error"] == pytest.approx(100 * np.mean([i % 3 == 0 for i in range(n)]))
    assert metrics["top5_cls_error"] == 0.0
    assert not any(
        k.startswith(("maxboxacc", "gt_known", "top1_loc", "top5_loc", "best_threshold")) for k in metrics
    )
    assert len(result.box_curves["threshold"]) == 0 and result.pr_curve is not None
