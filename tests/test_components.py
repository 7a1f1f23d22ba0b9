"""The union-find contour boxes of acol.wsol.contours against OpenCV's findContours, cut by cut."""

import cv2
import numpy as np
import pytest
from scipy import ndimage

from acol.wsol.contours import (
    _fill_holes,
    best_iou_per_cut,
    box_hits,
    box_iou_table,
    box_iou_tables,
    contour_boxes_all_cuts,
)
from acol.wsol.reference import reference_boxes, reference_iou
from acol.wsol.scoremaps import normalize_maps, quantize


def opencv_boxes(q: np.ndarray, cut: int) -> list[tuple[int, ...]]:
    """Sorted boxes of all contours of q > cut, the protocol's way (cv2.threshold + RETR_TREE)."""
    h, w = q.shape
    binary = cv2.threshold(q, cut, 255, cv2.THRESH_BINARY)[1]
    out = []
    for c in cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]:
        x, y, bw, bh = cv2.boundingRect(c)
        out.append((x, y, min(x + bw, w - 1), min(y + bh, h - 1)))
    return sorted(out)


def ours_by_cut(q: np.ndarray) -> dict[int, list[tuple[int, ...]]]:
    cuts, boxes = contour_boxes_all_cuts(q)
    out: dict[int, list] = {}
    for c, b in zip(cuts.tolist(), boxes.tolist(), strict=True):
        out.setdefault(c, []).append(tuple(b))
    return {c: sorted(v) for c, v in out.items()}


def random_small_map(rng: np.random.Generator, i: int) -> np.ndarray:
    """Families that stress the contour rules: few-level noise (holes, diagonal touches, one-pixel holes),
    full-range noise, smooth blobs, sparse spikes, rings with islands; all touch the border often."""
    h, w = (int(s) for s in rng.integers(1, 33, 2))
    kind = i % 5
    if kind == 0:
        return (rng.integers(0, int(rng.integers(2, 5)), (h, w)) * 60).astype(np.uint8)
    if kind == 1:
        return rng.integers(0, 256, (h, w)).astype(np.uint8)
    if kind == 2:
        k = int(rng.integers(2, 8))
        m = cv2.resize(rng.random((k, k)), (w, h), interpolation=cv2.INTER_CUBIC)
        return quantize(normalize_maps(m))
    if kind == 3:
        return ((rng.random((h, w)) < rng.random()) * rng.integers(1, 256, (h, w))).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - rng.uniform(0, h), xx - rng.uniform(0, w))
    ring = np.cos(r * rng.uniform(0.5, 2.5)) + 0.3 * rng.random((h, w))  # concentric rings: nested holes
    return quantize(normalize_maps(ring))


def test_hand_cases() -> None:
    # A 3x3 square with a one-pixel hole in a 7x7 map: outer box (x + w, y + h) = (2, 2, 5, 5);
    # the hole border is its 4 neighbours (2..4 on each axis): (2, 2, 4 + 1, 4 + 1) too.
    q = np.zeros((7, 7), np.uint8)
    q[2:5, 2:5] = 9
    q[3, 3] = 0
    assert ours_by_cut(q)[0] == [(2, 2, 5, 5), (2, 2, 5, 5)] == opencv_boxes(q, 0)
    # Two holes touching diagonally are two holes (background is 4-connected): 3 contours.
    q = np.full((6, 6), 5, np.uint8)
    q[2, 2] = q[3, 3] = 0
    assert ours_by_cut(q)[0] == [(0, 0, 5, 5), (1, 1, 4, 4), (2, 2, 5, 5)] == opencv_boxes(q, 0)
    # Foreground touching diagonally is one component (8-connected); it touches the border: clipped to 3.
    q = np.array([[7, 0, 0, 0], [0, 7, 0, 0], [0, 0, 7, 0], [0, 0, 0, 7]], np.uint8)
    assert ours_by_cut(q)[0] == [(0, 0, 3, 3)] == opencv_boxes(q, 0)
    # An island inside a hole: outer ring, hole, island; at cut 5 only the island remains.
    q = np.zeros((9, 9), np.uint8)
    q[1:8, 1:8], q[2:7, 2:7], q[4, 4] = 3, 0, 8
    assert ours_by_cut(q)[0] == [(1, 1, 8, 8), (1, 1, 8, 8), (4, 4, 5, 5)] == opencv_boxes(q, 0)
    assert ours_by_cut(q)[5] == [(4, 4, 5, 5)]
    # A constant or all-zero map has no contour at any cut below its maximum.
    assert contour_boxes_all_cuts(np.zeros((4, 4), np.uint8))[0].size == 0
    assert ours_by_cut(np.full((3, 5), 4, np.uint8)) == {c: [(0, 0, 4, 2)] for c in range(4)}


def test_boxes_identical_to_opencv_at_every_cut() -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for i in range(1000):
        q = random_small_map(rng, i)
        ours = ours_by_cut(q)
        qmax = int(q.max())
        assert set(ours) == set(range(qmax)), "one entry per cut below the maximum"
        # Masks only change at the values present; check those cuts and one in between.
        values = np.unique(q)
        cuts = set(values[values < qmax].tolist()) | {int(rng.integers(0, max(qmax, 1)))} if qmax else set()
        for c in cuts:
            assert ours[c] == opencv_boxes(q, c), (i, c, q)
            checked += 1
    assert checked > 5_000


def opencv_largest_box(q: np.ndarray, cut: int) -> np.ndarray:
    """The protocol's single box: the first contour of largest ``cv2.contourArea`` (metrics_reference)."""
    h, w = q.shape
    binary = cv2.threshold(q, cut, 255, cv2.THRESH_BINARY)[1]
    x, y, bw, bh = cv2.boundingRect(
        max(cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0], key=cv2.contourArea)
    )
    return np.array([[x, y, min(x + bw, w - 1), min(y + bh, h - 1)]])


def test_largest_contour_hand_cases() -> None:
    # Tied areas go to the contour OpenCV lists first: top-level siblings last-found first.
    q = np.zeros((8, 8), np.uint8)
    q[1, 1] = q[1, 5] = q[5, 1] = 9  # three single pixels, area 0 each: the one found last, (1, 5, 2, 6)
    np.testing.assert_array_equal(best_iou_per_cut(q, np.array([[1, 5, 2, 6]]), multi_contour=False)[0], 1.0)
    # A diamond ring around a one-pixel hole: outer border and hole border both have area 2; the parent wins,
    # and its tail (a zero-area spike) widens its box beyond the hole's.
    q = np.zeros((6, 6), np.uint8)
    q[0, 2] = q[1, 1] = q[1, 3] = q[2, 2] = q[3, 2] = 5
    np.testing.assert_array_equal(opencv_largest_box(q, 0), [[1, 0, 4, 4]])
    np.testing.assert_array_equal(best_iou_per_cut(q, np.array([[1, 0, 4, 4]]), multi_contour=False)[0], 1.0)
    # A 3x3 blob (area 4) beats a 1x9 line (area 0) and a hole-free 2x2 (area 1) whatever the order.
    q = np.zeros((9, 12), np.uint8)
    q[0, :9], q[3:5, 0:2], q[5:8, 6:9] = 3, 3, 3
    np.testing.assert_array_equal(best_iou_per_cut(q, np.array([[6, 5, 9, 8]]), multi_contour=False)[0], 1.0)


def test_largest_contour_identical_to_opencv_at_every_cut() -> None:
    # IoU 1 with the reference's box means the very same box; every cut of 1,000 maps of every kind.
    rng = np.random.default_rng(1)
    checked = 0
    for i in range(1000):
        q = random_small_map(rng, i)
        values = np.unique(q)
        for c in values[values < q.max()].tolist():
            ref = opencv_largest_box(q, c)
            assert best_iou_per_cut(q, ref, cuts=np.array([c]), multi_contour=False)[c] == 1.0, (i, c, q)
            checked += 1
    assert checked > 5_000


@pytest.mark.parametrize("multi", [True, False])
@pytest.mark.parametrize("interval", [0.001, 0.01, 0.03])
def test_best_iou_per_cut_matches_protocol_loop(interval: float, multi: bool) -> None:
    rng = np.random.default_rng(int(interval * 1000))
    thresholds = np.arange(0, 1, interval)
    n = 4 if interval == 0.001 else 8
    maps = [
        normalize_maps(cv2.resize(rng.random((k, k)), (224, 224), interpolation=cv2.INTER_CUBIC))
        for k in rng.integers(2, 29, n)
    ]
    maps.append(normalize_maps(cv2.resize(rng.random((56, 56)), (224, 224), interpolation=cv2.INTER_NEAREST)))
    maps.append(np.zeros((224, 224)))
    for m in maps:
        gt = np.sort(rng.integers(0, 224, (int(rng.integers(1, 4)), 2, 2)), axis=2)
        gt = np.stack([gt[:, 0, 0], gt[:, 1, 0], gt[:, 0, 1], gt[:, 1, 1]], axis=1)
        ref = np.array([reference_iou(b, gt).max() for b in reference_boxes(m, thresholds, multi)])
        q = quantize(m)
        cuts = np.floor(thresholds * float(q.max())).astype(np.int64)
        np.testing.assert_array_equal(
            best_iou_per_cut(q, gt, multi_contour=multi)[cuts], ref
        )  # bit-identical


def test_empty_mask_uses_the_protocol_box() -> None:
    # Cuts >= max give the box (0, 0, 0, 0), one pixel: IoU 1/2 with GT (0, 0, 0, 1).
    q = np.zeros((10, 10), np.uint8)
    q[5, 5] = 4
    best = best_iou_per_cut(q, np.array([[0, 0, 0, 1]]))
    np.testing.assert_array_equal(best[:4], 0.0)  # box (5, 5, 6, 6) does not touch the GT
    np.testing.assert_array_equal(best[4:], 0.5)
    # Only the cuts asked for are filled below the maximum.
    part = best_iou_per_cut(q, np.array([[5, 5, 6, 6]]), cuts=np.array([2]))
    assert part[2] == 1.0 and part[0] == -1.0 and part[4] == 0.0


@pytest.mark.parametrize("multi", [True, False])
def test_box_iou_table_rows_are_best_iou_per_cut(multi: bool) -> None:
    rng = np.random.default_rng(4)
    q = quantize(
        normalize_maps(
            np.stack(
                [cv2.resize(rng.random((5, 5)), (64, 48), interpolation=cv2.INTER_CUBIC) for _ in range(4)]
            )
        )
    )
    q[1] //= 2  # a map whose maximum is below 255: cuts from its max on hold the empty box's IoU
    gts = [np.array([[3, 4, 40, 30]]), np.array([[0, 0, 63, 47], [5, 5, 9, 9]]), np.array([[20, 1, 60, 20]])]
    gts.append(np.array([[1, 1, 2, 2]]))
    offsets = np.concatenate(([0], np.cumsum([len(g) for g in gts])))
    table = box_iou_table(q, np.concatenate(gts), offsets, multi)
    assert table.shape == (4, 256)
    for row, m, g in zip(table, q, gts, strict=True):
        np.testing.assert_array_equal(row, best_iou_per_cut(m, g, multi_contour=multi))
    with pytest.raises(ValueError, match="gt_offsets"):
        box_iou_table(q, np.concatenate(gts), offsets[:-1], multi)


def test_box_hits_counts_per_threshold() -> None:
    rng = np.random.default_rng(3)
    maps = normalize_maps(
        np.stack(
            [cv2.resize(rng.random((6, 6)), (224, 224), interpolation=cv2.INTER_CUBIC) for _ in range(5)]
        )
    )
    q = quantize(maps)
    gts = [np.array([[30, 40, 150, 200]]), np.array([[0, 0, 223, 223], [10, 10, 20, 20]])] * 2
    gts.append(np.array([[100, 0, 223, 120]]))
    offsets = np.concatenate(([0], np.cumsum([len(g) for g in gts])))
    thresholds, fracs = np.arange(0, 1, 0.01), np.array([0.3, 0.5, 0.7])
    hits = box_hits(q, np.concatenate(gts), offsets, thresholds, fracs)
    expected = np.zeros((3, len(thresholds)), np.int64)
    for m, g in zip(maps, gts, strict=True):
        ref = np.array([reference_iou(b, g).max() for b in reference_boxes(m, thresholds, True)])
        expected += ref[None, :] >= fracs[:, None]
    np.testing.assert_array_equal(hits, expected)
    assert hits[0, 0] >= hits[2, 0]
    with pytest.raises(ValueError, match="gt_offsets"):
        box_hits(q, np.concatenate(gts), offsets[:-1], thresholds, fracs)
    with pytest.raises(ValueError, match="uint8"):
        box_hits(maps, np.concatenate(gts), offsets, thresholds, fracs)
    with pytest.raises(ValueError, match="at least one box"):
        best_iou_per_cut(q[0], np.zeros((0, 4)))
    with pytest.raises(ValueError, match="gt_boxes must be non-negative"):
        best_iou_per_cut(q[0], np.array([[5, 5, 2, 9]]))


def test_fill_holes_is_the_union_of_filled_cuts() -> None:
    """filled > c must be (q > c) with its holes filled, at every cut: SciPy's binary_fill_holes (its default
    cross: a hole is background with no 4-path to the border) is the oracle, cut by cut."""
    rng = np.random.default_rng(11)
    for i in range(300):
        q = random_small_map(rng, i)
        filled = np.empty(q.size, np.uint8)
        _fill_holes(q, filled, np.empty(q.size, np.int32))
        expected = sum(ndimage.binary_fill_holes(q > c).astype(np.int64) for c in range(255))
        np.testing.assert_array_equal(filled.reshape(q.shape), expected, err_msg=f"map {i} {q.shape}")


def test_both_tables_in_one_pass_equal_each_table_alone() -> None:
    """box_iou_tables fills a map's holes once for both modes: rows must equal box_iou_table's, bit for bit."""
    rng = np.random.default_rng(5)
    maps = np.stack(
        [quantize(normalize_maps(cv2.resize(rng.random((k, k)), (64, 48)))) for k in rng.integers(2, 9, 40)]
    )
    gt = np.array([[int(rng.integers(0, 30)), int(rng.integers(0, 20)), 40, 30] for _ in range(40)])
    offsets = np.arange(41)
    multi_rows = rng.random(40) < 0.6
    multi, largest = box_iou_tables(maps, gt, offsets, multi_rows)
    np.testing.assert_array_equal(multi[multi_rows], box_iou_table(maps, gt, offsets, True)[multi_rows])
    np.testing.assert_array_equal(multi[~multi_rows], -1.0)
    np.testing.assert_array_equal(largest, box_iou_table(maps, gt, offsets, False))
