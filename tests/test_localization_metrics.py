"""Evaluators against the plain protocol loop and hand-computed cases."""

import cv2
import numpy as np
import pytest

from acol.data.paths import UnsafePathError
from acol.wsol.localization_metrics import (
    BoxEvaluator,
    ClassicLocEvaluator,
    IouTable,
    MaskEvaluator,
    gt_known_correct,
    iou_table,
    load_wsol_mask,
    select_cam_threshold,
    topk_correct,
)
from acol.wsol.reference import reference_box_accuracy, reference_pxap
from acol.wsol.scoremaps import normalize_maps


def smooth_maps(rng: np.random.Generator, n: int) -> np.ndarray:
    maps = [
        cv2.resize(rng.random((k, k)), (224, 224), interpolation=cv2.INTER_CUBIC)
        for k in rng.integers(2, 16, n)
    ]
    return normalize_maps(np.stack(maps))


def random_gts(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        xy = np.sort(rng.integers(0, 224, (int(rng.integers(1, 4)), 2, 2)), axis=2)
        out.append(np.stack([xy[:, 0, 0], xy[:, 1, 0], xy[:, 0, 1], xy[:, 1, 1]], axis=1))
    return out


@pytest.mark.parametrize(("multi", "interval"), [(True, 0.01), (False, 0.01), (True, 0.05), (False, 0.004)])
def test_box_evaluator_identical_to_reference(multi: bool, interval: float) -> None:
    rng = np.random.default_rng(7)
    maps = smooth_maps(rng, 10)
    maps[3] = 0.0  # degenerate (constant or NaN after normalization)
    gts = random_gts(rng, 10)
    gts[0] = np.array([[0, 0, 223, 223]])
    ev = BoxEvaluator(interval=interval, multi_contour=multi)
    ev.accumulate(maps[:4], gts[:4])  # two batches: accumulation must add up
    ev.accumulate(maps[4:], gts[4:])
    res = ev.compute()
    ref = reference_box_accuracy(maps, gts, interval, (30, 50, 70), multi)
    for k in (30, 50, 70):
        np.testing.assert_array_equal(res.curves[k], ref[k])
        assert res.max_box_acc[k] == ref[k].max()
        assert res.best_threshold[k] == res.thresholds[np.argmax(ref[k])]
    assert res.mean_max_box_acc == pytest.approx(np.mean([ref[k].max() for k in (30, 50, 70)]))
    assert res.num_images == 10


@pytest.mark.parametrize("multi", [True, False])
def test_box_evaluator_with_workers_matches_serial(multi: bool) -> None:
    rng = np.random.default_rng(11)
    maps, gts = smooth_maps(rng, 24), random_gts(rng, 24)
    serial = BoxEvaluator(interval=0.02, multi_contour=multi)
    serial.accumulate(maps, gts)
    # Threads over chunks of 5 maps.
    with BoxEvaluator(interval=0.02, multi_contour=multi, n_workers=2, chunk_size=5) as parallel:
        parallel.accumulate(maps[:13], gts[:13])
        parallel.accumulate(maps[13:], gts[13:])
        got = parallel.compute()
    for k in (30, 50, 70):
        np.testing.assert_array_equal(got.curves[k], serial.compute().curves[k])
    with pytest.raises(ValueError, match="chunk_size"):
        BoxEvaluator(chunk_size=0)


@pytest.mark.parametrize("multi", [True, False])
def test_one_iou_table_answers_every_subset_as_the_reference(multi: bool) -> None:
    """One sweep per map (``iou_table``) gives, for any subset, the reference's curves, and per image the
    protocol's GT-known hit at any threshold."""
    rng = np.random.default_rng(5)
    maps, gts = smooth_maps(rng, 16), random_gts(rng, 16)
    maps[2] = 0.0  # an empty map: every cut holds the (0, 0, 0, 0) box
    table = IouTable.concat([iou_table(maps[:9], gts[:9], multi), iou_table(maps[9:], gts[9:], multi)])
    part = np.array([0, 2, 5, 11, 15])
    ev = BoxEvaluator(interval=0.004, multi_contour=multi)
    ev.accumulate_table(table.take(part), chunk_size=2)
    ref = reference_box_accuracy(maps[part], [gts[i] for i in part], 0.004, (30, 50, 70), multi)
    for k in (30, 50, 70):
        np.testing.assert_array_equal(ev.compute().curves[k], ref[k])
    for t in (0.0, 0.37, 0.999):
        hits = table.at(np.array([t]))[:, 0] >= 0.5
        np.testing.assert_array_equal(hits, gt_known_correct(maps, gts, t, multi_contour=multi))
    with pytest.raises(ValueError, match="multi_contour"):
        BoxEvaluator(multi_contour=not multi).accumulate_table(table)
    with pytest.raises(ValueError, match="multi_contour"):
        ClassicLocEvaluator(0.5, multi_contour=not multi).accumulate_table(
            np.zeros((16, 3)), np.zeros(16), table
        )
    with pytest.raises(ValueError, match="contour modes"):
        IouTable.concat([table, iou_table(maps[:1], gts[:1], not multi)])


def test_evaluators_accumulate_from_threads() -> None:
    """The stage feeds one BoxEvaluator and one MaskEvaluator from its worker threads: totals are exact."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(9)
    maps, gts = smooth_maps(rng, 24), random_gts(rng, 24)
    masks = (rng.random((24, 224, 224)) > 0.5).astype(np.uint8)
    serial, threaded = BoxEvaluator(interval=0.05), BoxEvaluator(interval=0.05)
    serial_px, threaded_px = MaskEvaluator(0.05), MaskEvaluator(0.05)
    serial.accumulate(maps, gts)
    serial_px.accumulate(maps, masks)

    def feed(start: int) -> None:
        threaded.accumulate(maps[start : start + 3], gts[start : start + 3])
        threaded_px.accumulate(maps[start : start + 3], masks[start : start + 3])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(feed, range(0, 24, 3)))
    for k in (30, 50, 70):
        np.testing.assert_array_equal(threaded.compute().curves[k], serial.compute().curves[k])
    assert threaded.compute().num_images == 24
    assert threaded_px.compute().pxap == serial_px.compute().pxap


def test_box_evaluator_noisy_float32_maps_identical_to_reference() -> None:
    # Many small components and holes, float32 maps (quantized in float32 arithmetic), fine step.
    rng = np.random.default_rng(2)
    noise = [cv2.resize(rng.random((k, k)), (224, 224), interpolation=cv2.INTER_NEAREST) for k in (40, 112)]
    maps = normalize_maps(np.stack(noise + list(smooth_maps(rng, 2))).astype(np.float32))
    gts = random_gts(rng, 4)
    ev = BoxEvaluator(interval=0.002, multi_contour=True)
    ev.accumulate(maps, gts)
    ref = reference_box_accuracy(maps, gts, 0.002, (30, 50, 70), True)
    for k in (30, 50, 70):
        np.testing.assert_array_equal(ev.compute().curves[k], ref[k])


def test_box_evaluator_hand_case_and_errors() -> None:
    m = np.zeros((224, 224))
    m[50:100, 60:120] = 1.0  # box (60, 50, 120, 100) at every threshold
    ev = BoxEvaluator(iou_thresholds=(50,), interval=0.5, multi_contour=False)
    ev.accumulate(m[None], [np.array([[60, 50, 120, 100]])])
    ev.accumulate(m[None], [np.array([[0, 0, 10, 10]])])
    res = ev.compute()
    np.testing.assert_array_equal(res.curves[50], [50.0, 50.0])
    with pytest.raises(ValueError, match=r"gt_boxes\[0\]"):
        ev.accumulate(m[None], [np.array([[5, 5, 1, 1]])])
    with pytest.raises(ValueError, match="2 GT box arrays"):
        ev.accumulate(m[None], [np.array([[0, 0, 1, 1]])] * 2)
    with pytest.raises(RuntimeError, match="before any accumulate"):
        BoxEvaluator().compute()


def test_mask_evaluator_identical_to_reference_with_ignore() -> None:
    rng = np.random.default_rng(5)
    maps = smooth_maps(rng, 6)
    masks = (rng.random((6, 224, 224)) < 0.3).astype(np.uint8)
    masks[:, :20, :] = 255  # ignore region
    for interval in (0.01, 0.003):
        ev = MaskEvaluator(interval=interval)
        ev.accumulate(maps[:2], masks[:2])
        ev.accumulate(maps[2:], masks[2:])
        res = ev.compute()
        ref_masks = [np.where(mk == 255, 7, mk) for mk in masks]  # reference only counts 0 and 1
        assert res.pxap == reference_pxap(maps, ref_masks, interval)
        assert res.precision.shape == res.recall.shape == (len(ev.thresholds) + 2,)


def test_mask_evaluator_hand_cases() -> None:
    mask = np.zeros((1, 224, 224), np.uint8)
    mask[0, :100] = 1
    perfect = mask.astype(np.float64)
    ev = MaskEvaluator()
    ev.accumulate(perfect, mask)
    assert ev.compute().pxap == pytest.approx(100.0)
    # A constant map: one operating point with precision = foreground share, recall 1.
    flat = MaskEvaluator()
    flat.accumulate(np.full((1, 224, 224), 0.5), mask)
    assert flat.compute().pxap == pytest.approx(100 * 100 / 224)
    # Ignored pixels do not count, whatever their score.
    ign = MaskEvaluator()
    m2 = mask.copy()
    m2[0, 150:] = 255
    ign.accumulate(np.where(np.arange(224)[None, :, None] >= 150, 1.0, perfect), m2)
    assert ign.compute().pxap == pytest.approx(100.0)
    with pytest.raises(ValueError, match="values other than"):
        MaskEvaluator().accumulate(perfect, mask * 3)


def test_load_wsol_mask(tmp_path) -> None:
    a = np.zeros((50, 50), np.uint8)
    a[:10, :10] = 255
    b = np.zeros((50, 50), np.uint8)
    b[40:, 40:] = 255
    ignore = np.zeros((50, 50), np.uint8)
    ignore[:25, :25] = 255
    for name, img in {"a.png": a, "b.png": b, "ign.png": ignore}.items():
        cv2.imwrite(str(tmp_path / name), img)
    out = load_wsol_mask(tmp_path, ["a.png", "b.png"], "ign.png")
    fg = cv2.resize(np.float32(a), (224, 224), interpolation=cv2.INTER_NEAREST) > 0.5
    fg |= cv2.resize(np.float32(b), (224, 224), interpolation=cv2.INTER_NEAREST) > 0.5
    ig = (cv2.resize(np.float32(ignore), (224, 224), interpolation=cv2.INTER_NEAREST) > 0.5) & ~fg
    np.testing.assert_array_equal(out, fg.astype(np.uint8) + 255 * ig.astype(np.uint8))
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        load_wsol_mask(tmp_path, ["missing.png"], "")


def test_classic_metrics_hand_case() -> None:
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    labels = np.array([0, 0, 2, 1])  # top-1 right: 0, 2; top-2 right: 0, 1, 2, 3
    assert topk_correct(scores, labels, 1).tolist() == [True, False, True, False]
    m = np.zeros((4, 224, 224))
    m[:, 50:100, 60:120] = 1.0
    good, bad = np.array([[60, 50, 120, 100]]), np.array([[0, 0, 10, 10]])
    ev = ClassicLocEvaluator(cam_threshold=0.2)
    ev.accumulate(scores[:, :3], labels, m, [good, good, bad, good])
    res = ev.compute()
    assert res.top1_cls_error == 50.0 and res.top5_cls_error == 0.0  # k = min(5, C) = 3
    assert res.gt_known_loc_acc == 75.0
    assert res.top1_loc_error == 75.0  # only image 0: class right and box right
    assert res.top5_loc_error == 25.0  # images 0, 1, 3
    # top-5 loc the paper's way: any of the top-5 classes right with its own map's box right
    per_class_ok = np.array([True, True, False, True])  # only the GT class's box can count
    top5 = np.argsort(-scores, axis=1)[:, :5]
    paper = [(top5[i] == labels[i]).any() and per_class_ok[i] for i in range(4)]
    assert res.top5_loc_error == 100 * (1 - np.mean(paper))


def test_select_cam_threshold_picks_the_best_on_held_out() -> None:
    m = np.zeros((224, 224))
    m[40:180, 40:180] = 0.3  # low plateau: the object
    m[100:110, 100:110] = 1.0  # small peak: only reached by thresholds >= 0.3
    gt = [np.array([[40, 40, 180, 180]])]
    assert select_cam_threshold(m[None], gt, interval=0.1) == 0.0
    small_gt = [np.array([[100, 100, 110, 110]])]
    assert select_cam_threshold(m[None], small_gt, interval=0.1) == pytest.approx(0.3)


def test_iou_thresholds_are_percent_everywhere() -> None:
    """One convention (percent, as ``evaluate.iou_thresholds``): GT-known at IoU 50 agrees with BoxEvaluator's
    curve at the same CAM threshold, and a fraction is refused with a hint instead of meaning IoU >= 0.005."""
    rng = np.random.default_rng(0)
    maps = normalize_maps(rng.random((12, 224, 224)))
    gts = [np.array([[20 + i, 30, 150, 160 + i]]) for i in range(12)]
    box = BoxEvaluator((50,), interval=0.1, multi_contour=False)
    box.accumulate(maps, gts)
    curve = box.compute().curves[50]
    for t_index, t in enumerate(box.thresholds[:5]):
        assert 100 * gt_known_correct(maps, gts, float(t), iou_threshold=50).mean() == pytest.approx(
            curve[t_index]
        )
    for call in (
        lambda: gt_known_correct(maps, gts, 0.2, iou_threshold=0.5),
        lambda: ClassicLocEvaluator(0.2, iou_threshold=0.5),
        lambda: select_cam_threshold(maps, gts, 0.1, iou_threshold=0.5),
        lambda: BoxEvaluator((0.3, 0.5, 0.7)),
    ):
        with pytest.raises(
            ValueError, match=r"integer percentage in \[1, 100\].*a fraction\? IoU 0\.\d is \d0"
        ):
            call()
    assert ClassicLocEvaluator(0.2).iou_threshold == 50


def test_load_wsol_mask_refuses_paths_outside_the_root(tmp_path) -> None:
    (tmp_path / "root").mkdir()
    cv2.imwrite(str(tmp_path / "outside.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(UnsafePathError, match=r"\.\./outside\.png"):
        load_wsol_mask(tmp_path / "root", ["../outside.png"], "")
    cv2.imwrite(str(tmp_path / "root" / "in.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(UnsafePathError, match="absolute"):
        load_wsol_mask(tmp_path / "root", ["in.png"], str(tmp_path / "outside.png"))
