"""The evaluate stage's library: numbers agree with the evaluators run by hand on the same maps and split."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from acol.config import EvaluateParams
from acol.data.manifest import manifest_from_records
from acol.inference.mapstore import columns_to_table
from acol.stages.evaluation import evaluate_method, holdout_mask
from acol.wsol.boxes import scale_boxes
from acol.wsol.localization_metrics import (
    BoxEvaluator,
    ClassicLocEvaluator,
    load_wsol_mask,
    select_cam_threshold,
)
from acol.wsol.scoremaps import prepare_scoremap

CLASSES = [f"n9{i:07d}" for i in range(6)]
SIZE, GRID = 64, 16


def _dataset(tmp_path: Path, n: int = 60, seed: int = 0):
    """Images with one box each; maps light up the box (good) or a corner (bad); masks = the box."""
    rng = np.random.default_rng(seed)
    records, maps, labels, top5 = [], [], [], []
    (tmp_path / "masks").mkdir()
    for i in range(n):
        gx0, gy0 = rng.integers(0, 8, size=2)
        gx1, gy1 = gx0 + rng.integers(4, 8), gy0 + rng.integers(4, 8)
        box = [gx0 * 4, gy0 * 4, gx1 * 4 - 1, gy1 * 4 - 1]
        grid = np.zeros((GRID, GRID), np.float32)
        if i % 3:  # two thirds of the maps cover the object, the rest a wrong corner
            grid[gy0:gy1, gx0:gx1] = 1.0
        else:
            grid[12:, 12:] = 1.0
        grid += rng.random((GRID, GRID)).astype(np.float32) * 0.05
        label = i % len(CLASSES)
        order = [label, *[c for c in range(len(CLASSES)) if c != label]][:5]
        if i % 4 == 0:  # a quarter misclassified: label only second
            order[0], order[1] = order[1], order[0]
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[box[1] : box[3] + 1, box[0] : box[2] + 1] = 255
        cv2.imwrite(str(tmp_path / "masks" / f"img{i:03d}.png"), mask)
        records.append(
            {
                "image_id": f"val/img{i:03d}.JPEG",
                "class_index": label,
                "width": SIZE,
                "height": SIZE,
                "boxes": [[float(v) for v in box]],
                "mask_path": f"masks/img{i:03d}.png",
            }
        )
        maps.append(grid.astype(np.float16))
        labels.append(label)
        top5.append(order)
    manifest = manifest_from_records(records, CLASSES, "synthetic")
    flat = np.stack(maps).reshape(n, -1)
    columns = {
        "image_id": [r["image_id"] for r in records],
        "label": np.array(labels),
        "error": [None] * n,
        "top5_classes": np.array(top5),
        "top5_scores": np.tile(np.linspace(0.5, 0.1, 5, dtype=np.float32), (n, 1)),
        "map_height": np.full(n, GRID),
        "map_width": np.full(n, GRID),
        "map_gt": flat,
        "map_top1": flat,
        "map_a_gt": flat,
        "map_b_gt": flat,
        "pred_box": np.zeros((n, 4), np.float32),
    }
    return manifest, columns, np.stack(maps), labels, top5


@pytest.mark.parametrize("chunk", [256, 3])  # one task, and many tasks over the stage's threads
def test_numbers_match_the_evaluators_on_the_test_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr("acol.stages.evaluation.CHUNK", chunk)
    manifest, columns, maps, labels, top5 = _dataset(tmp_path)
    params = EvaluateParams(interval=0.05, holdout_fraction=0.3)
    result = evaluate_method(columns_to_table(columns), manifest, tmp_path, params)
    metrics = result.metrics

    ids = manifest.column("image_id").to_pylist()
    held = holdout_mask(ids, 0.3)
    test, hold = np.flatnonzero(~held), np.flatnonzero(held)
    assert metrics["num_images"] == len(test) and metrics["num_holdout_images"] == len(hold) > 0
    prepared = prepare_scoremap(maps.astype(np.float32))
    gt = [scale_boxes(np.asarray(b), SIZE, SIZE) for b in manifest.column("boxes").to_pylist()]

    v2 = BoxEvaluator((30, 50, 70), 0.05, multi_contour=True)
    v2.accumulate(prepared[test], [gt[i] for i in test])
    expected = v2.compute()
    assert metrics["maxboxacc_v2"] == pytest.approx(expected.mean_max_box_acc)
    assert metrics["maxboxacc_v2_iou70"] == pytest.approx(expected.max_box_acc[70])
    np.testing.assert_allclose(result.box_curves["iou50"], expected.curves[50])

    threshold = select_cam_threshold(prepared[hold], [gt[i] for i in hold], 0.05)
    assert metrics["best_threshold"] == threshold
    classic = ClassicLocEvaluator(threshold)
    scores = np.full((len(labels), len(CLASSES)), -1.0)
    for row, order in enumerate(top5):
        scores[row, order] = np.arange(5, 0, -1)
    classic.accumulate(scores[test], np.array(labels)[test], prepared[test], [gt[i] for i in test])
    loc = classic.compute()
    assert metrics["top1_loc_error"] == pytest.approx(loc.top1_loc_error)
    assert metrics["gt_known_loc"] == pytest.approx(loc.gt_known_loc_acc)
    # the hand-made data: a quarter misclassified, a third of the maps on a wrong corner
    assert metrics["top1_cls_error"] == pytest.approx(100 * np.mean([i % 4 == 0 for i in test]))
    assert metrics["top5_cls_error"] == 0.0
    assert 0 < metrics["gt_known_loc"] < 100

    # PxAP from the masks on disk, and map statistics inside vs outside the masks
    assert 0 < metrics["pxap"] <= 100
    assert metrics["map_fused_in_mask"] > metrics["map_fused_out_mask"]
    # the exact pixel means over the test images, whatever the chunking
    paths = manifest.column("mask_path").to_pylist()
    masks = np.stack([load_wsol_mask(tmp_path, [paths[i]], "", 224) for i in test])
    assert metrics["map_fused_in_mask"] == pytest.approx(
        prepared[test][masks == 1].mean(dtype=np.float64), rel=1e-12
    )
    assert metrics["map_fused_out_mask"] == pytest.approx(
        prepared[test][masks == 0].mean(dtype=np.float64), rel=1e-12
    )
    assert result.pr_curve is not None and len(result.pr_curve["precision"]) == len(
        result.pr_curve["threshold"]
    )


def test_error_rows_are_counted_and_left_out(tmp_path: Path) -> None:
    manifest, columns, *_ = _dataset(tmp_path, n=20)
    columns["error"] = ["truncated: cut" if i in (3, 7) else None for i in range(20)]
    result = evaluate_method(columns_to_table(columns), manifest, tmp_path, EvaluateParams(interval=0.1))
    assert result.metrics["failed_images"] == 2
    assert result.metrics["num_images"] + result.metrics["num_holdout_images"] == 18


def test_maps_of_unknown_images_are_refused(tmp_path: Path) -> None:
    manifest, columns, *_ = _dataset(tmp_path, n=10)
    columns["image_id"] = [*columns["image_id"][:-1], "val/stranger.JPEG"]
    with pytest.raises(ValueError, match="ids are in the manifest"):
        evaluate_method(columns_to_table(columns), manifest, tmp_path, EvaluateParams(interval=0.1))


def test_holdout_split_is_stable_and_close_to_the_fraction() -> None:
    ids = [f"val/ILSVRC2012_val_{i:08d}.JPEG" for i in range(5000)]
    mask = holdout_mask(ids, 0.2)
    assert abs(mask.mean() - 0.2) < 0.02
    np.testing.assert_array_equal(mask, holdout_mask(list(ids), 0.2))
    assert holdout_mask(ids[:10], 0.2).tolist() == mask[:10].tolist()  # depends on the id alone


@pytest.mark.parametrize("chunk", [256, 5])  # 5: the train-fullsup maps go through in several chunks
def test_fullsup_split_picks_the_threshold_on_train_fullsup_and_reports_all_of_val(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """Choe et al.: the CAM threshold comes from train-fullsup; every val image is a test image."""
    monkeypatch.setattr("acol.stages.evaluation.CHUNK", chunk)
    manifest, columns, *_ = _dataset(tmp_path)
    full_dir = tmp_path / "fullsup"
    full_dir.mkdir()
    full_manifest, full_columns, full_maps, _, _ = _dataset(full_dir, n=24, seed=5)
    params = EvaluateParams(interval=0.05, threshold_split="fullsup")
    full = (columns_to_table(full_columns), full_manifest)
    result = evaluate_method(columns_to_table(columns), manifest, tmp_path, params, fullsup=full)
    gt_full = [scale_boxes(np.asarray(b), SIZE, SIZE) for b in full_manifest.column("boxes").to_pylist()]
    expected = select_cam_threshold(prepare_scoremap(full_maps.astype(np.float32)), gt_full, 0.05)
    assert result.metrics["best_threshold"] == expected
    assert result.metrics["num_images"] == 60 and result.metrics["num_holdout_images"] == 0
    with pytest.raises(ValueError, match=r"data\.fullsup_metadata"):
        evaluate_method(columns_to_table(columns), manifest, tmp_path, params, fullsup=None)


def test_no_held_out_image_is_an_error_not_a_default_threshold(tmp_path: Path) -> None:
    manifest, columns, *_ = _dataset(tmp_path, n=3)
    ids = manifest.column("image_id").to_pylist()
    assert not holdout_mask(ids, 0.05).any()  # 3 images, 5 %: nothing held out
    with pytest.raises(
        ValueError, match=r"evaluate\.holdout_fraction=0\.05 leaves no held-out image among the 3"
    ):
        evaluate_method(columns_to_table(columns), manifest, tmp_path, EvaluateParams(holdout_fraction=0.05))


def test_stage_threads_end_with_the_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate_method sweeps its chunks in a thread pool and closes it: no ``evaluate`` thread outlives the
    call (small chunks force several tasks on this small data), and OpenCV's thread count is restored."""
    import threading

    import cv2

    from acol.stages import evaluation as stage

    ran_in = []
    chunk = stage._Sweep.chunk

    def recording_chunk(self, part):
        ran_in.append(threading.current_thread().name)
        return chunk(self, part)

    monkeypatch.setattr(stage, "CHUNK", 3)
    monkeypatch.setattr(stage._Sweep, "chunk", recording_chunk)
    manifest, columns, *_ = _dataset(tmp_path, n=20)
    threads_before = cv2.getNumThreads()
    evaluate_method(columns_to_table(columns), manifest, tmp_path, EvaluateParams(interval=0.1))
    assert len(ran_in) == 7 and all(name.startswith("evaluate") for name in ran_in)
    assert [t.name for t in threading.enumerate() if t.name.startswith("evaluate")] == []
    assert cv2.getNumThreads() == threads_before
