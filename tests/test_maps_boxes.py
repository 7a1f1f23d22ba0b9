"""Maps, boxes and the fast per-threshold box search against the plain protocol loop."""

import cv2
import numpy as np
import pytest

from acol.wsol.boxes import (
    best_iou_per_threshold,
    boxes_at_thresholds,
    boxes_from_mask,
    iou,
    scale_boxes,
)
from acol.wsol.reference import reference_boxes, reference_iou
from acol.wsol.scoremaps import normalize_maps, prepare_quantized, prepare_scoremap, quantize, resize_maps


def smooth_map(rng: np.random.Generator, k: int) -> np.ndarray:
    return normalize_maps(cv2.resize(rng.random((k, k)), (224, 224), interpolation=cv2.INTER_CUBIC))


def test_iou_hand_computed() -> None:
    # (0,0,2,2) has 9 px, (1,1,3,3) 9 px, overlap (1..2)x(1..2) = 4 px -> 4 / 14; with (2,2,4,4): 1 / 17.
    a = np.array([[0, 0, 2, 2]])
    b = np.array([[1, 1, 3, 3], [2, 2, 4, 4], [5, 5, 6, 6]])
    np.testing.assert_allclose(iou(a, b), [[4 / 14, 1 / 17, 0.0]])
    # 8/27: (0,0,1,3) is 2x4 = 8 px inside (0,0,2,8), 3x9 = 27 px
    np.testing.assert_allclose(iou(np.array([[0, 0, 1, 3]]), np.array([[0, 0, 2, 8]])), [[8 / 27]])
    np.testing.assert_allclose(
        iou(np.array([[0, 0, 2, 5]]), np.array([[0, 2, 2, 8]])), [[12 / 27]]
    )  # 18 + 21 - 12 = 27
    rng = np.random.default_rng(1)
    x = np.sort(rng.integers(0, 50, (20, 2, 2)), axis=1).transpose(0, 2, 1).reshape(20, 4)[:, [0, 2, 1, 3]]
    np.testing.assert_array_equal(iou(x[:10], x[10:]), reference_iou(x[:10], x[10:]))


def test_iou_rejects_bad_boxes() -> None:
    with pytest.raises(ValueError, match="x0 <= x1"):
        iou(np.array([[5, 0, 2, 2]]), np.array([[0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="shape"):
        iou(np.zeros((2, 3)), np.zeros((1, 4)))


def test_scale_boxes_truncates_like_protocol() -> None:
    out = scale_boxes(np.array([[111, 108, 441, 193]]), 500, 375)
    expected = [
        int(111 * 224.0 / 500),
        int(108 * 224.0 / 375),
        int(441 * 224.0 / 500),
        int(193 * 224.0 / 375),
    ]
    np.testing.assert_array_equal(out, [expected])
    assert out.dtype == np.int64


def test_normalize_quantize_and_degenerate_maps() -> None:
    m = np.array([[1.0, 3.0], [5.0, 2.0]])
    np.testing.assert_allclose(normalize_maps(m), [[0, 0.5], [1, 0.25]])
    batch = np.stack([m, np.full((2, 2), 7.0), np.array([[np.nan, 1], [2, 3]])]).astype(np.float32)
    out = normalize_maps(batch)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[1:], 0)
    assert normalize_maps(m.astype(np.float64)).dtype == np.float64
    infinite = np.stack([m, m, m]).astype(np.float32)
    infinite[0, 0, 0], infinite[1, 1, 1] = np.inf, -np.inf
    np.testing.assert_array_equal(normalize_maps(infinite)[:2], 0)
    # bit-identical to wsolevaluation's normalize_scoremap, one map at a time: cam -= min; cam /= max
    maps = np.random.default_rng(0).random((6, 9, 7)).astype(np.float32) * 3 - 1
    for got, cam in zip(normalize_maps(maps), maps.copy(), strict=True):
        cam -= cam.min()
        cam /= cam.max()
        np.testing.assert_array_equal(got, cam)
    assert quantize(np.array([[0.0, 0.5, 1.0]])).tolist() == [[0, 127, 255]]
    # float32 arithmetic: 0.2f * 255 = 51.000004 -> 51, computed in the map's own precision
    assert quantize(np.array([[0.2]], np.float32))[0, 0] == int(np.float32(0.2) * np.float32(255))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quantize(np.array([[1.5]]))


def test_resize_and_prepare() -> None:
    rng = np.random.default_rng(0)
    raw = rng.random((3, 14, 14)).astype(np.float32)
    out = resize_maps(raw)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    np.testing.assert_array_equal(out[1], cv2.resize(raw[1], (224, 224), interpolation=cv2.INTER_CUBIC))
    prepared = prepare_scoremap(raw[0].astype(np.float64))
    assert prepared.min() == 0 and prepared.max() == 1 and prepared.dtype == np.float64
    np.testing.assert_array_equal(prepare_scoremap(prepared), prepared)  # idempotent at 224 with 0 and 1


def _protocol_quantized(raw: np.ndarray) -> np.ndarray:
    """wsolevaluation's chain, one map at a time: bicubic to 224, cam -= min, cam /= max, (cam * 255) to uint8."""
    cam = cv2.resize(
        raw.astype(np.float32) if raw.dtype == np.float16 else raw, (224, 224), interpolation=cv2.INTER_CUBIC
    )
    with np.errstate(invalid="ignore", over="ignore"):
        cam -= cam.min()
        cam /= cam.max()
    if not np.isfinite(
        cam
    ).all():  # constant, NaN or infinite maps: zeros, the project's documented convention
        return np.zeros((224, 224), np.uint8)
    return (cam * cam.dtype.type(255)).astype(np.uint8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_prepare_quantized_is_the_protocol_chain_bit_for_bit(dtype: type) -> None:
    rng = np.random.default_rng(7)
    for k in (7, 14, 28, 224):
        raw = (rng.random((40, k, k)) ** 2 * rng.uniform(-50, 50, (40, 1, 1))).astype(dtype)
        raw[0], raw[1, 2, 3], raw[2, 0, 0], raw[3, 1, 1] = 3.0, np.nan, np.inf, -np.inf
        got = prepare_quantized(raw)
        assert got.dtype == np.uint8 and got.shape == (40, 224, 224)
        for i in range(len(raw)):
            np.testing.assert_array_equal(got[i], _protocol_quantized(raw[i]), err_msg=f"{k}x{k} map {i}")
        np.testing.assert_array_equal(got, quantize(prepare_scoremap(raw)))
    np.testing.assert_array_equal(prepare_quantized(raw[5]), got[5:6])  # one (H, W) map is a batch of one


def test_boxes_from_mask_known_blob() -> None:
    mask = np.zeros((224, 224), np.uint8)
    mask[10:20, 30:60] = 1  # rows 10..19, cols 30..59 -> box (30, 10, 60, 20) as x + w, y + h
    mask[100:103, 100:102] = 1
    np.testing.assert_array_equal(boxes_from_mask(mask, multi_contour=False), [[30, 10, 60, 20]])
    assert sorted(boxes_from_mask(mask, True).tolist()) == [[30, 10, 60, 20], [100, 100, 102, 103]]
    mask[200:, 200:] = 1  # touches the border: x1, y1 clipped to 223
    assert [200, 200, 223, 223] in boxes_from_mask(mask, True).tolist()
    np.testing.assert_array_equal(boxes_from_mask(np.zeros((5, 5)), True), [[0, 0, 0, 0]])


def test_boxes_at_thresholds_match_reference() -> None:
    rng = np.random.default_rng(3)
    thresholds = np.arange(0, 1, 0.05)
    for k in (3, 9):
        m = smooth_map(rng, k)
        for multi in (True, False):
            ours = boxes_at_thresholds(m, thresholds, multi)
            ref = reference_boxes(m, thresholds, multi)
            for a, b in zip(ours, ref, strict=True):
                np.testing.assert_array_equal(a, b)


def random_gt(rng: np.random.Generator) -> np.ndarray:
    n = int(rng.integers(1, 4))
    xy = np.sort(rng.integers(0, 224, (n, 2, 2)), axis=2)  # (n, [x, y], [lo, hi])
    boxes = np.stack([xy[:, 0, 0], xy[:, 1, 0], xy[:, 0, 1], xy[:, 1, 1]], axis=1)
    boxes[0, 2:] = 223 if rng.random() < 0.5 else boxes[0, 2:]  # often touching the border
    return boxes


@pytest.mark.parametrize("multi", [True, False])
@pytest.mark.parametrize("interval", [0.01, 0.003])
def test_best_iou_identical_to_reference(multi: bool, interval: float) -> None:
    rng = np.random.default_rng(int(interval * 1000) + multi)
    thresholds = np.arange(0, 1, interval)
    maps = [smooth_map(rng, int(rng.integers(2, 24))) for _ in range(6)]
    maps.append(np.zeros((224, 224)))  # constant/NaN maps normalize to zeros
    spiky = np.zeros((224, 224))
    spiky[5, 5] = spiky[100, 200] = spiky[223, 0] = 1.0  # tied single-pixel contours (area 0)
    spiky[50:53, 50:53], spiky[51, 51] = 0.8, 0.0  # ring with a hole
    maps.append(spiky)
    for m in maps:
        gt = random_gt(rng)
        ref = np.array([reference_iou(b, gt).max() for b in reference_boxes(m, thresholds, multi)])
        np.testing.assert_array_equal(best_iou_per_threshold(m, gt, thresholds, multi), ref)


def test_empty_box_can_match_tiny_gt_at_origin() -> None:
    # The protocol's empty box (0, 0, 0, 0) covers one pixel; against GT (0, 0, 0, 1) IoU = 1/2.
    best = best_iou_per_threshold(np.zeros((224, 224)), np.array([[0, 0, 0, 1]]), np.array([0.0, 0.5]), True)
    np.testing.assert_array_equal(best, [0.5, 0.5])


def test_multi_contour_noisy_and_ring_maps_identical_at_fine_step() -> None:
    # Many components and nested holes at the full protocol step: the union-find path must still agree.
    rng = np.random.default_rng(12)
    thresholds = np.arange(0, 1, 0.001)
    noisy = normalize_maps(cv2.resize(rng.random((75, 75)), (224, 224), interpolation=cv2.INTER_NEAREST))
    yy, xx = np.mgrid[:224, :224]
    rings = normalize_maps(np.cos(np.hypot(yy - 90.0, xx - 130.0) / 6.0) + 0.2 * rng.random((224, 224)))
    for m in (noisy, rings):
        gt = random_gt(rng)
        ref = np.array([reference_iou(b, gt).max() for b in reference_boxes(m, thresholds, True)])
        np.testing.assert_array_equal(best_iou_per_threshold(m, gt, thresholds, True), ref)


def test_best_iou_rejects_negative_thresholds() -> None:
    with pytest.raises(ValueError, match="thresholds must be >= 0"):
        best_iou_per_threshold(np.zeros((8, 8)), np.array([[0, 0, 1, 1]]), np.array([-0.1, 0.5]), True)
