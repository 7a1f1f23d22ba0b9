"""Numba kernels: the WSOL boxes of a quantized map at every cut (all contours, or the largest), by union-find.

Why: the protocol (``acol.wsol.reference``) calls ``cv2.findContours(q > c, RETR_TREE,
CHAIN_APPROX_SIMPLE)`` once per CAM threshold. For a uint8 map ``q`` (H, W) the contours of ``q > c`` are,
as checked against OpenCV 5 on thousands of maps in ``tests/test_components.py``:

* one outer border per 8-connected foreground component; its bounding rect is the component's pixel
  extent ``[x0, x1] x [y0, y1]`` (OpenCV pads the image with zeros, so foreground on the image border is
  traced like any other), giving the box ``(x0, y0, min(x1 + 1, W - 1), min(y1 + 1, H - 1))``;
* one hole border per hole, a 4-connected background component (``q <= c``) not touching the image
  border; the border runs through the foreground pixels 4-adjacent to the hole, so its rect is the hole's
  extent grown by one pixel: box ``(x0 - 1, y0 - 1, min(x1 + 2, W - 1), min(y1 + 2, H - 1))``.

Foreground components only grow and merge as the cut decreases, holes only grow and merge as it increases,
so one sweep of each over the pixels sorted by value (union-find with per-root bounding boxes) gives the
boxes at all 256 cuts. The hole sweep visits only the hole pixels: with ``filled`` the map with its holes
filled (below), pixel p lies in a hole exactly at the cuts ``q[p] <= c < filled[p]``, and a hole reaches the
border, all of it at once, at its ``filled`` level. Boxes are ``(x0, y0, x1, y1)`` int, inclusive, as in ``acol.wsol.boxes``; IoUs are
computed with the same integer areas and one float64 division as the reference, so they are bit-identical.

The single largest contour (``max(contours, key=cv2.contourArea)``, classic MaxBoxAcc) comes from a third
sweep, over ``filled``, the map with its holes filled (``_fill_holes``): the 8-connected components of
``filled > c`` are the top-level components F of ``q > c`` with their holes. The outer border of F runs
through pixel centres; within each unit cell between 4 centres it encloses 1 if all 4 are in F, 1/2 if 3
are, 0 otherwise, so its ``contourArea`` is a sum over cells, kept per root as pixels join. A nested contour
(hole, island) encloses no more than the outer border around it, and OpenCV lists contours depth-first,
a parent before its children and top-level siblings last-found first, so the first largest contour is the
outer border of the F of largest area, ties going to the latest raster-first pixel. Checked against
``findContours`` + ``max(key=cv2.contourArea)`` at every cut of 1,000 maps (``tests/test_components.py``).

Cost (what makes it fast): pixels are counting-sorted by value; each added pixel reads its 8 neighbours into
a ring mask and joins one neighbour per run of consecutive "in" neighbours around the ring (a lookup table),
usually one ``find``; only roots carry a size and a box. A map wanted in both modes is filled once
(`box_iou_tables`). Its cost per map against the per-threshold ``findContours`` loop is measured by
``benchmarks/profile_evaluate.py`` (figures in benchmarks/README.md).
"""

from __future__ import annotations

import numba
import numpy as np

_NJIT = {"cache": True, "nogil": True}
# The named parts of the sweeps are inlined into them in Numba IR: one function each to LLVM, as when they
# were written inline (calls per level with a dozen array arguments cost time).
_INLINE = {**_NJIT, "inline": "always"}
_RING_DY = np.array([0, -1, -1, -1, 0, 1, 1, 1], np.int64)  # ring index -> dy (E, NE, N, NW, W, SW, S, SE)
_RING_DX = np.array([1, 1, 0, -1, -1, -1, 0, 1], np.int64)  # ring index -> dx
_RING_LATER = np.array([1, 0, 0, 0, 0, 1, 1, 1], np.int64)  # 1: after the pixel in raster order


@numba.njit(**_NJIT)
def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:  # path halving
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(**_NJIT)
def _join(parent: np.ndarray, size: np.ndarray, box: np.ndarray, rp: int, nb: int) -> int:
    """Merge the set of root ``rp`` with the set of ``nb`` (union by size); return the surviving root."""
    rn = _find(parent, nb)
    if rn == rp:
        return rp
    if size[rp] < size[rn]:
        rp, rn = rn, rp
    parent[rn] = rp
    size[rp] += size[rn]
    box[rp, 0] = min(box[rp, 0], box[rn, 0])
    box[rp, 1] = min(box[rp, 1], box[rn, 1])
    box[rp, 2] = max(box[rp, 2], box[rn, 2])
    box[rp, 3] = max(box[rp, 3], box[rn, 3])
    return rp


@numba.njit(**_NJIT)
def _box_iou_max(x0: int, y0: int, x1: int, y1: int, gt: np.ndarray) -> float:
    """Max IoU of one inclusive box with the (k, 4) GT boxes, the reference's arithmetic (0 if degenerate)."""
    best = 0.0
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    for g in range(gt.shape[0]):
        iw = min(x1, gt[g, 2]) - max(x0, gt[g, 0]) + 1
        ih = min(y1, gt[g, 3]) - max(y0, gt[g, 1]) + 1
        inter = max(iw, 0) * max(ih, 0)
        denom = area + (gt[g, 2] - gt[g, 0] + 1) * (gt[g, 3] - gt[g, 1] + 1) - inter
        v = 0.0 if denom <= 0 else inter / float(denom)
        if v > best:
            best = v
    return best


@numba.njit(**_NJIT)
def _grow(rec_cut: np.ndarray, rec_box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    new_cut = np.empty(2 * len(rec_cut) + 16, np.int64)
    new_box = np.empty((2 * len(rec_cut) + 16, 4), np.int64)
    new_cut[: len(rec_cut)] = rec_cut
    new_box[: len(rec_cut)] = rec_box
    return new_cut, new_box


@numba.njit(**_NJIT)
def _ring_lut(four: bool) -> np.ndarray:
    """(256, 5) int64: for an 8-bit mask of the neighbours already in, the count and ring indices (0..7) of
    the neighbours to join, one per run of consecutive set bits around the ring.

    Ring order (dy, dx): 0 E (0, 1), 1 NE (-1, 1), 2 N (-1, 0), 3 NW (-1, -1), 4 W (0, -1), 5 SW (1, -1),
    6 S (1, 0), 7 SE (1, 1). Ring neighbours are 4-adjacent to each other, so the neighbours of one run are
    already in one set: joining one of them joins all. With ``four`` (4-connectivity) only the 4-neighbours
    (even indices) are joined: a run with none, only diagonals, is not connected to the pixel.
    """
    lut = np.zeros((256, 5), np.int64)
    for m in range(256):
        if m == 255:
            lut[m, 0], lut[m, 1] = 1, 0
            continue
        for k in range(8):
            if not (m >> k) & 1 or (m >> ((k + 7) % 8)) & 1:
                continue  # not the first set bit of a run
            j = k
            while (m >> j) & 1:
                if not four or j % 2 == 0:
                    lut[m, 0] += 1
                    lut[m, lut[m, 0]] = j
                    break
                j = (j + 1) % 8
    return lut


@numba.njit(**_NJIT)
def _in_mask(qf: np.ndarray, h: int, w: int, y: int, x: int, v: int, holes: bool) -> int:
    """8-bit ring mask of the neighbours of pixel (y, x) (value v) already in the growing set.

    Pixels are added level by level, in raster order within a level, so a neighbour is in when its value is
    strictly on the "in" side of v, or equal to v and earlier in raster order (the N row and W: ring 1..4).
    Foreground: q >= v is in; holes: q <= v is in. Outside the image nothing is in. Branch-free inside.
    """
    m = 0
    interior = 0 < y < h - 1 and 0 < x < w - 1
    for k in range(8):
        yy, xx = y + _RING_DY[k], x + _RING_DX[k]
        if interior or (0 <= yy < h and 0 <= xx < w):
            val = np.int64(qf[yy * w + xx])
            inside = val <= v - _RING_LATER[k] if holes else val >= v + _RING_LATER[k]
            m |= np.int64(inside) << k
    return m


@numba.njit(**_INLINE)
def _add_level(
    qf: np.ndarray,
    h: int,
    w: int,
    order: np.ndarray,
    starts: np.ndarray,
    v: int,
    holes: bool,
    parent: np.ndarray,
    size: np.ndarray,
    box: np.ndarray,
    roots: np.ndarray,
    lut: np.ndarray,
    n_roots: int,
) -> int:
    """Add the pixels of value v to the union-find sets of a `_sweep`; return the new count in ``roots``."""
    for k in range(starts[v], starts[v + 1]):
        # Add pixel p, then merge it with the sets of its neighbours already in (one per ring run).
        # Written inline: a call per pixel with array arguments costs more than the work (refcounts).
        # Holes: every 4-neighbour already in (q <= v) is a hole pixel of the same hole, so it was swept.
        y, x = order[k] >> 16, order[k] & 0xFFFF
        p = y * w + x
        m = _in_mask(qf, h, w, y, x, v, holes)
        n_join = lut[m, 0]
        if n_join == 0:  # a new set; only roots carry a size and a box
            parent[p] = p
            size[p] = 1
            box[p, 0], box[p, 1], box[p, 2], box[p, 3] = x, y, x, y
            roots[n_roots] = p
            n_roots += 1
            continue
        root = _find(parent, p + (_RING_DY[lut[m, 1]] * w + _RING_DX[lut[m, 1]]))
        parent[p] = root
        size[root] += 1
        box[root, 0], box[root, 1] = min(box[root, 0], x), min(box[root, 1], y)
        box[root, 2], box[root, 3] = max(box[root, 2], x), max(box[root, 3], y)
        for j in range(2, n_join + 1):
            root = _join(parent, size, box, root, p + (_RING_DY[lut[m, j]] * w + _RING_DX[lut[m, j]]))
    return n_roots


@numba.njit(**_INLINE)
def _live_roots(parent: np.ndarray, roots: np.ndarray, n_roots: int) -> int:
    """Keep in ``roots`` only the sets still roots (a set merged into another never is one again)."""
    m = 0
    for k in range(n_roots):
        r = roots[k]
        if parent[r] == r:
            roots[m] = r
            m += 1
    return m


@numba.njit(**_INLINE)
def _live_holes(parent: np.ndarray, roots: np.ndarray, n_roots: int, filled: np.ndarray, cut: int) -> int:
    """Keep in ``roots`` only the hole sets still roots and still enclosed at ``cut`` (``filled`` > cut): a hole
    reaches the border at its ``filled`` level, all at once, and stays joined to it at every higher cut."""
    m = 0
    for k in range(n_roots):
        r = roots[k]
        if parent[r] == r and filled[r] > cut:
            roots[m] = r
            m += 1
    return m


@numba.njit(**_INLINE)
def _score_cut(
    cut: int,
    h: int,
    w: int,
    holes: bool,
    gt: np.ndarray,
    best: np.ndarray,
    box: np.ndarray,
    roots: np.ndarray,
    n_roots: int,
    record: bool,
    rec_cut: np.ndarray,
    rec_box: np.ndarray,
    n_rec: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Raise ``best[cut]`` to the best IoU of the contour boxes of the live roots; with ``record`` append them."""
    score = best[cut]
    for k in range(n_roots):
        r = roots[k]
        if holes:
            x0, y0 = box[r, 0] - 1, box[r, 1] - 1
            x1, y1 = min(box[r, 2] + 2, w - 1), min(box[r, 3] + 2, h - 1)
        else:
            x0, y0 = box[r, 0], box[r, 1]
            x1, y1 = min(box[r, 2] + 1, w - 1), min(box[r, 3] + 1, h - 1)
        if gt.shape[0] > 0:
            score = max(score, _box_iou_max(x0, y0, x1, y1, gt))
        if record:
            if n_rec == len(rec_cut):
                rec_cut, rec_box = _grow(rec_cut, rec_box)
            rec_cut[n_rec] = cut
            rec_box[n_rec, 0], rec_box[n_rec, 1], rec_box[n_rec, 2], rec_box[n_rec, 3] = x0, y0, x1, y1
            n_rec += 1
    best[cut] = score
    return rec_cut, rec_box, n_rec


@numba.njit(**_NJIT)
def _sweep(
    qf: np.ndarray,
    h: int,
    w: int,
    order: np.ndarray,
    starts: np.ndarray,
    qmax: int,
    holes: bool,
    gt: np.ndarray,
    needed: np.ndarray,
    best: np.ndarray,
    parent: np.ndarray,
    size: np.ndarray,
    box: np.ndarray,
    roots: np.ndarray,
    lut: np.ndarray,
    record: bool,
    rec_cut: np.ndarray,
    rec_box: np.ndarray,
    n_rec: int,
    filled: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One sweep over the cuts c = 0..qmax-1: foreground (8-conn., c descending) or holes (4-conn., ascending).

    Foreground uses 8-connectivity over every pixel. Holes use 4-connectivity over the hole pixels only
    (``q < filled``, see `_sort_holes`): a hole set is listed at the cuts below its ``filled`` level.

    ``qf`` is the map flattened (H*W,); ``order`` the swept pixels (``y << 16 | x``) sorted by value, raster
    order within a value, value v at ``order[starts[v]:starts[v + 1]]``. At each needed cut, ``best[c]`` is
    raised to the best IoU of any box with ``gt``; with ``record`` the boxes are appended to ``rec_cut`` /
    ``rec_box`` (grown as needed).
    """
    n_roots = 0  # roots[:n_roots]: every set created so far that may still be a root
    for step in range(qmax):
        v = step if holes else qmax - step  # holes: background q <= c, c = v; foreground: q >= v, c = v - 1
        cut = v if holes else v - 1
        n_roots = _add_level(qf, h, w, order, starts, v, holes, parent, size, box, roots, lut, n_roots)
        if not (needed[cut] or record):
            continue
        if holes:
            n_roots = _live_holes(parent, roots, n_roots, filled, cut)
        else:
            n_roots = _live_roots(parent, roots, n_roots)
        rec_cut, rec_box, n_rec = _score_cut(
            cut, h, w, holes, gt, best, box, roots, n_roots, record, rec_cut, rec_box, n_rec
        )
    return rec_cut, rec_box, n_rec


@numba.njit(**_NJIT)
def _fill_holes(q: np.ndarray, filled: np.ndarray, link: np.ndarray) -> None:
    """``filled`` (H*W,) := q with every hole filled: the least, over 4-paths to the image border, of the
    path's maximum of q (a priority flood from the border, one bucket per value; ``link`` is its lists).

    Why: ``filled > c`` is exactly the union of the top-level components of ``q > c`` with their holes
    (a pixel is outside them iff a 4-path of ``q <= c`` joins it to the border).
    """
    h, w = q.shape
    head = np.full(256, -1, np.int64)
    filled[:] = 255
    seen = np.zeros(h * w, np.bool_)
    for y in range(h):
        for x in range(w):
            if y == 0 or x == 0 or y == h - 1 or x == w - 1:
                p, v = y * w + x, q[y, x]
                seen[p] = True
                link[p], head[v] = head[v], p
    for v in range(256):
        while head[v] >= 0:
            p = head[v]
            head[v] = link[p]
            filled[p] = v
            y, x = p // w, p % w
            for k in range(0, 8, 2):  # the 4-neighbours
                yy, xx = y + _RING_DY[k], x + _RING_DX[k]
                if 0 <= yy < h and 0 <= xx < w and not seen[yy * w + xx]:
                    n = yy * w + xx
                    seen[n] = True
                    nv = max(v, np.int64(q[yy, xx]))
                    link[n], head[nv] = head[nv], n


@numba.njit(**_NJIT)
def _area_lut() -> np.ndarray:
    """(256,) int64: twice the growth of ``cv2.contourArea`` when a pixel joins with ring mask m.

    The outer border runs through pixel centres; in each unit cell between 4 centres it encloses 1 when all
    4 are in, 1/2 (a triangle) when 3 are, nothing with 2 or fewer (a straight or diagonal edge, a vertex).
    A new pixel raises its 4 cells by one corner each: +1/2 for a cell that had 2 or 3 corners in.
    """
    lut = np.zeros(256, np.int64)
    for m in range(256):
        for c in range(0, 8, 2):  # cells NE (ring 0 1 2), NW (2 3 4), SW (4 5 6), SE (6 7 0)
            n_in = ((m >> c) & 1) + ((m >> (c + 1)) & 1) + ((m >> ((c + 2) % 8)) & 1)
            lut[m] += n_in >= 2
    return lut


@numba.njit(**_INLINE)
def _add_level_largest(
    filled: np.ndarray,
    h: int,
    w: int,
    order: np.ndarray,
    starts: np.ndarray,
    v: int,
    work: tuple,
    largest: tuple,
    n_roots: int,
) -> int:
    """Add the pixels of value v of ``filled`` (8-conn.), carrying each root's area and raster-first pixel."""
    _, _, parent, size, box, roots, lut8, _ = work
    area, first, area_lut, _, _ = largest
    for k in range(starts[v], starts[v + 1]):
        y, x = order[k] >> 16, order[k] & 0xFFFF
        p = y * w + x
        m = _in_mask(filled, h, w, y, x, v, False)
        n_join = lut8[m, 0]
        if n_join == 0:
            parent[p], size[p], area[p], first[p] = p, 1, 0, p
            box[p, 0], box[p, 1], box[p, 2], box[p, 3] = x, y, x, y
            roots[n_roots] = p
            n_roots += 1
            continue
        root = _find(parent, p + (_RING_DY[lut8[m, 1]] * w + _RING_DX[lut8[m, 1]]))
        parent[p] = root
        size[root] += 1
        area[root] += area_lut[m]  # all corners of a cell in the set are in one component
        first[root] = min(first[root], p)  # levels come high to low, not in raster order
        box[root, 0], box[root, 1] = min(box[root, 0], x), min(box[root, 1], y)
        box[root, 2], box[root, 3] = max(box[root, 2], x), max(box[root, 3], y)
        for j in range(2, n_join + 1):
            nb = p + (_RING_DY[lut8[m, j]] * w + _RING_DX[lut8[m, j]])
            rn = _find(parent, nb)
            if rn != root:
                a, f = area[root] + area[rn], min(first[root], first[rn])
                root = _join(parent, size, box, root, nb)
                area[root], first[root] = a, f
    return n_roots


@numba.njit(**_INLINE)
def _largest_root(
    parent: np.ndarray, roots: np.ndarray, n_roots: int, area: np.ndarray, first: np.ndarray
) -> tuple[int, int]:
    """Drop merged sets from ``roots``; return the new count and the root of largest area, ties to the latest
    raster-first pixel (OpenCV's first largest contour)."""
    m = 0
    pick = -1
    for k in range(n_roots):
        r = roots[k]
        if parent[r] == r:
            roots[m] = r
            m += 1
            if pick < 0 or area[r] > area[pick] or (area[r] == area[pick] and first[r] > first[pick]):
                pick = r
    return m, pick


@numba.njit(**_NJIT)
def _largest_sweep(
    filled: np.ndarray,
    h: int,
    w: int,
    order: np.ndarray,
    starts: np.ndarray,
    qmax: int,
    gt: np.ndarray,
    needed: np.ndarray,
    best: np.ndarray,
    work: tuple,
    largest: tuple,
) -> None:
    """Largest-contour IoU at each needed cut c < qmax: 8-connected components of ``filled > c``.

    Each component is a top-level component of ``q > c`` with its holes; per root it carries its box,
    twice its outer border's ``cv2.contourArea`` (``area``, from ``_area_lut``) and its raster-first pixel
    (``first``). OpenCV lists contours depth-first, a parent before its children, siblings latest-found
    first; a nested contour's area is at most its parent's, so the first largest contour is the outer border
    of the top-level component of largest area and, among equals, the latest raster-first pixel.
    """
    parent, box, roots = work[2], work[4], work[5]
    area, first = largest[0], largest[1]
    n_roots = 0
    for step in range(qmax):
        v = qmax - step  # filled >= v, the cut c = v - 1
        n_roots = _add_level_largest(filled, h, w, order, starts, v, work, largest, n_roots)
        cut = v - 1
        if not needed[cut]:
            continue
        n_roots, pick = _largest_root(parent, roots, n_roots, area, first)
        x1, y1 = min(box[pick, 2] + 1, w - 1), min(box[pick, 3] + 1, h - 1)
        best[cut] = _box_iou_max(box[pick, 0], box[pick, 1], x1, y1, gt)


@numba.njit(**_NJIT)
def _best_largest_per_cut(
    q: np.ndarray,
    gt: np.ndarray,
    needed: np.ndarray,
    best: np.ndarray,
    work: tuple,
    largest: tuple,
    filled_ready: bool = False,
) -> int:
    """Fill ``best`` (256,) with the IoU of the largest contour's box at each needed cut c < qmax.

    ``filled_ready``: ``largest[3]`` already holds this map with its holes filled (`_best_per_cut` left it)."""
    order, starts = work[0], work[1]
    filled, link = largest[3], largest[4]
    h, w = q.shape
    if not filled_ready:
        _fill_holes(q, filled, link)
    qmax = _sort_by_value(filled.reshape(h, w), order, starts)
    best[:] = -1.0
    _largest_sweep(filled, h, w, order, starts, qmax, gt, needed, best, work, largest)
    return qmax


@numba.njit(**_NJIT)
def _sort_by_value(q: np.ndarray, order: np.ndarray, starts: np.ndarray) -> int:
    """Counting sort of the pixels of (H, W) ``q`` by value into ``order`` as ``y << 16 | x`` (raster order
    within a value: the sweeps rely on it; packed coordinates spare a division per pixel); returns q.max()."""
    counts = np.zeros(256, np.int64)
    h, w = q.shape
    for y in range(h):
        for x in range(w):
            counts[q[y, x]] += 1
    starts[0] = 0
    qmax = 0
    for v in range(256):
        starts[v + 1] = starts[v] + counts[v]
        if counts[v]:
            qmax = v
    fill = starts[:256].copy()
    for y in range(h):
        for x in range(w):
            v = q[y, x]
            order[fill[v]] = y << 16 | x
            fill[v] += 1
    return qmax


@numba.njit(**_NJIT)
def _sort_holes(q: np.ndarray, filled: np.ndarray, order: np.ndarray, starts: np.ndarray) -> None:
    """`_sort_by_value` of the hole pixels only: ``q < filled``, the pixels that some cut encloses in a hole
    (pixel p is in a hole exactly at the cuts q[p] <= c < filled[p]); in CAM-like maps a minority of the
    pixels, so the hole sweep is a fraction of a full one."""
    counts = np.zeros(256, np.int64)
    h, w = q.shape
    for y in range(h):
        for x in range(w):
            if q[y, x] < filled[y * w + x]:
                counts[q[y, x]] += 1
    starts[0] = 0
    for v in range(256):
        starts[v + 1] = starts[v] + counts[v]
    fill = starts[:256].copy()
    for y in range(h):
        for x in range(w):
            v = q[y, x]
            if v < filled[y * w + x]:
                order[fill[v]] = y << 16 | x
                fill[v] += 1


@numba.njit(**_NJIT)
def _best_per_cut(
    q: np.ndarray,
    gt: np.ndarray,
    needed: np.ndarray,
    best: np.ndarray,
    work: tuple,
    largest: tuple,
    record: bool,
) -> tuple[int, np.ndarray, np.ndarray, int]:
    """Fill ``best`` (256,) with the best multi-contour IoU at each needed cut c < qmax; return qmax.

    Leaves the map with its holes filled in ``largest[3]``, for a `_best_largest_per_cut` of the same map."""
    order, starts, parent, size, box, roots, lut8, lut4 = work
    filled = largest[3]
    h, w = q.shape
    qf = q.ravel()
    _fill_holes(q, filled, largest[4])
    qmax = _sort_by_value(q, order, starts)
    best[:] = -1.0
    rec_cut = np.empty(0, np.int64)
    rec_box = np.empty((0, 4), np.int64)
    n_rec = 0
    for holes in (False, True):
        if holes:
            _sort_holes(q, filled, order, starts)
        rec_cut, rec_box, n_rec = _sweep(
            qf, h, w, order, starts, qmax, holes, gt, needed, best,
            parent, size, box, roots, lut4 if holes else lut8, record, rec_cut, rec_box, n_rec, filled,
        )  # fmt: skip
    return qmax, rec_cut, rec_box, n_rec


@numba.njit(**_NJIT)
def _workspace(n: int) -> tuple:
    return (
        np.empty(n, np.int32),  # order: pixel indices sorted by value
        np.empty(257, np.int64),  # starts: order[starts[v]:starts[v + 1]] holds value v
        np.empty(n + 1, np.int32),  # parent (union-find)
        np.empty(n + 1, np.int32),  # size of each root's set
        np.empty((n + 1, 4), np.int32),  # box: x0, y0, x1, y1 pixel extent of each root's set
        np.empty(n, np.int32),  # roots: sets created so far that may still be roots
        _ring_lut(False),  # 8-connectivity joins per ring mask
        _ring_lut(True),  # 4-connectivity joins per ring mask
    )


@numba.njit(**_NJIT)
def _largest_workspace(n: int) -> tuple:
    return (
        np.empty(n + 1, np.int64),  # area: twice the outer border's contourArea of each root's set
        np.empty(n + 1, np.int32),  # first: raster-first pixel of each root's set
        _area_lut(),  # twice the area growth per ring mask
        np.empty(n, np.uint8),  # filled: the map with its holes filled
        np.empty(n, np.int32),  # link: the priority flood's bucket lists
    )


@numba.njit(**_NJIT)
def _empty_iou(gt: np.ndarray) -> float:
    return _box_iou_max(0, 0, 0, 0, gt)  # the protocol's box where no contour is found


@numba.njit(**_NJIT)
def _best_iou_per_cut_kernel(q: np.ndarray, gt: np.ndarray, needed: np.ndarray, multi: bool) -> np.ndarray:
    best = np.empty(256, np.float64)
    if multi:
        qmax, _, _, _ = _best_per_cut(
            q, gt, needed, best, _workspace(q.size), _largest_workspace(q.size), False
        )
    else:
        qmax = _best_largest_per_cut(q, gt, needed, best, _workspace(q.size), _largest_workspace(q.size))
    best[qmax:] = _empty_iou(gt)
    return best


@numba.njit(**_NJIT)
def _boxes_all_cuts_kernel(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    best = np.empty(256, np.float64)
    needed = np.zeros(256, np.bool_)
    gt = np.empty((0, 4), np.int64)
    work, largest = _workspace(q.size), _largest_workspace(q.size)
    _, rec_cut, rec_box, n_rec = _best_per_cut(q, gt, needed, best, work, largest, True)
    return rec_cut[:n_rec].copy(), rec_box[:n_rec].copy()


@numba.njit(**_NJIT)
def _box_hits_kernel(
    qmaps: np.ndarray,
    gt_flat: np.ndarray,
    gt_offsets: np.ndarray,
    thresholds: np.ndarray,
    fracs: np.ndarray,
    multi: bool,
) -> np.ndarray:
    n_img, h, w = qmaps.shape
    hits = np.zeros((len(fracs), len(thresholds)), np.int64)
    work = _workspace(h * w)
    largest = _largest_workspace(h * w)
    best = np.empty(256, np.float64)
    needed = np.empty(256, np.bool_)
    cuts = np.empty(len(thresholds), np.int64)
    for i in range(n_img):
        q = qmaps[i]
        qmax = 0
        for v in q.ravel():
            qmax = max(qmax, int(v))
        needed[:] = False
        for t in range(len(thresholds)):
            c = int(np.floor(thresholds[t] * float(qmax)))  # the protocol's int(t * max(image))
            cuts[t] = c
            if c < qmax:
                needed[c] = True
        gt = gt_flat[gt_offsets[i] : gt_offsets[i + 1]]
        if multi:
            _best_per_cut(q, gt, needed, best, work, largest, False)
        else:
            _best_largest_per_cut(q, gt, needed, best, work, largest)
        empty = _empty_iou(gt)
        for t in range(len(thresholds)):
            b = best[cuts[t]] if cuts[t] < qmax else empty
            for k in range(len(fracs)):
                if b >= fracs[k]:
                    hits[k, t] += 1
    return hits


@numba.njit(**_NJIT)
def _iou_tables_kernel(
    qmaps: np.ndarray,
    gt_flat: np.ndarray,
    gt_offsets: np.ndarray,
    multi_rows: np.ndarray,
    largest_rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(multi-contour table, largest-contour table), each (N, 256); rows not asked for hold -1. A map asked
    for both is filled once (`_best_per_cut` leaves its filled form for `_best_largest_per_cut`)."""
    n_img, h, w = qmaps.shape
    multi_table = np.full((n_img, 256), -1.0)
    largest_table = np.full((n_img, 256), -1.0)
    work = _workspace(h * w)
    largest = _largest_workspace(h * w)
    needed = np.ones(256, np.bool_)
    for i in range(n_img):
        q = qmaps[i]
        gt = gt_flat[gt_offsets[i] : gt_offsets[i + 1]]
        empty = _empty_iou(gt)
        if multi_rows[i]:
            qmax, _, _, _ = _best_per_cut(q, gt, needed, multi_table[i], work, largest, False)
            multi_table[i, qmax:] = empty
        if largest_rows[i]:
            qmax = _best_largest_per_cut(q, gt, needed, largest_table[i], work, largest, multi_rows[i])
            largest_table[i, qmax:] = empty
    return multi_table, largest_table


def _check_gt(gt_boxes: np.ndarray, name: str) -> np.ndarray:
    gt = np.ascontiguousarray(gt_boxes, dtype=np.int64).reshape(-1, 4)
    if (gt < 0).any() or (gt[:, 2] < gt[:, 0]).any() or (gt[:, 3] < gt[:, 1]).any():
        raise ValueError(f"{name} must be non-negative x0y0x1y1 boxes with x0 <= x1 and y0 <= y1")
    return gt


def _check_offsets(gt_offsets: np.ndarray, n_maps: int) -> np.ndarray:
    offsets = np.ascontiguousarray(gt_offsets, dtype=np.int64)
    if offsets.shape != (n_maps + 1,) or (np.diff(offsets) < 1).any() or offsets[0] != 0:
        raise ValueError(
            f"gt_offsets must be (N + 1,) increasing from 0 with >= 1 box per map; got {offsets}"
        )
    return offsets


def _check_layout(
    qmaps: np.ndarray, gt_flat: np.ndarray, gt_offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked (N, H, W) uint8 maps, (G, 4) GT boxes and (N + 1,) offsets of the batch kernels."""
    arr = _check_q(qmaps, 3)
    offsets = _check_offsets(gt_offsets, len(arr))
    gt = _check_gt(gt_flat, "gt_flat")
    if offsets[-1] != len(gt):
        raise ValueError(f"gt_offsets end at {offsets[-1]} but gt_flat holds {len(gt)} boxes")
    return arr, gt, offsets


def _check_q(q: np.ndarray, ndim: int) -> np.ndarray:
    arr = np.asarray(q)
    if arr.dtype != np.uint8 or arr.ndim != ndim or 0 in arr.shape or max(arr.shape[-2:]) >= 1 << 15:
        raise ValueError(
            f"quantized maps must be uint8 with {ndim} dims, sides in [1, 32767]; got {arr.dtype} {arr.shape}"
        )
    return np.ascontiguousarray(arr)


def best_iou_per_cut(
    q: np.ndarray, gt_boxes: np.ndarray, cuts: np.ndarray | None = None, multi_contour: bool = True
) -> np.ndarray:
    """Best IoU (256,) float64 of any multi-contour box of ``q > c`` with a GT box, for c = 0..255; with
    ``multi_contour=False`` the IoU of the box of the largest contour (the protocol's ``max(contours,
    key=cv2.contourArea)``, first of equals in OpenCV's order).

    ``q`` (H, W) uint8; ``gt_boxes`` (k >= 1, 4) int x0y0x1y1 inclusive. Cuts c >= q.max() (empty mask) hold
    the IoU of the protocol's (0, 0, 0, 0) box. With ``cuts`` given, only those cuts are filled (the others
    below q.max() are left at -1), which saves the IoU work of unused cuts.
    """
    arr = _check_q(q, 2)
    gt = _check_gt(gt_boxes, "gt_boxes")
    if len(gt) == 0:
        raise ValueError("gt_boxes must hold at least one box")
    needed = np.ones(256, dtype=bool)
    if cuts is not None:
        needed[:] = False
        c = np.asarray(cuts, dtype=np.int64)
        needed[c[(c >= 0) & (c < 256)]] = True
    return _best_iou_per_cut_kernel(arr, gt, needed, multi_contour)


def contour_boxes_all_cuts(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All multi-contour boxes of ``q > c`` for every cut c < q.max(): cuts (M,) int64 and boxes (M, 4) int64.

    Order within a cut is not OpenCV's (compare as sets); for tests and inspection.
    """
    return _boxes_all_cuts_kernel(_check_q(q, 2))


def box_hits(
    qmaps: np.ndarray,
    gt_flat: np.ndarray,
    gt_offsets: np.ndarray,
    thresholds: np.ndarray,
    iou_fracs: np.ndarray,
    multi_contour: bool = True,
) -> np.ndarray:
    """(K, T) int64: number of maps whose best multi-contour IoU (or, with ``multi_contour=False``, the
    largest contour's IoU) at CAM threshold t reaches ``iou_fracs[k]``.

    ``qmaps`` (N, H, W) uint8; GT boxes of map i are ``gt_flat[gt_offsets[i]:gt_offsets[i + 1]]`` ((G, 4)
    int, each map >= 1 box); the cut of threshold t is ``floor(t * q.max())`` as in the protocol. Releases
    the GIL, so threads can share a batch.
    """
    arr, gt, offsets = _check_layout(qmaps, gt_flat, gt_offsets)
    return _box_hits_kernel(
        arr,
        gt,
        offsets,
        np.ascontiguousarray(thresholds, dtype=np.float64),
        np.ascontiguousarray(iou_fracs, dtype=np.float64),
        bool(multi_contour),
    )


def box_iou_table(
    qmaps: np.ndarray, gt_flat: np.ndarray, gt_offsets: np.ndarray, multi_contour: bool = True
) -> np.ndarray:
    """(N, 256) float64: row i is ``best_iou_per_cut`` of map i at every cut, with the same GT layout as
    ``box_hits``.

    Why: one sweep per map serves every question asked later of the same maps (the accuracy curve of any
    subset, the threshold chosen on one part, each image's hit at that threshold) without sweeping again.
    Releases the GIL.
    """
    arr, gt, offsets = _check_layout(qmaps, gt_flat, gt_offsets)
    rows = np.ones(len(arr), np.bool_)
    multi, largest = _iou_tables_kernel(arr, gt, offsets, rows & multi_contour, rows & (not multi_contour))
    return multi if multi_contour else largest


def box_iou_tables(
    qmaps: np.ndarray, gt_flat: np.ndarray, gt_offsets: np.ndarray, multi_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Both ``box_iou_table`` kinds in one pass: (multi-contour (N, 256), rows ``multi_rows`` only, the
    others -1; largest-contour (N, 256), every row).

    Why: both need the map with its holes filled (the hole sweep runs over the hole pixels only), so a map
    swept in both modes is filled once. Releases the GIL.
    """
    arr, gt, offsets = _check_layout(qmaps, gt_flat, gt_offsets)
    multi_rows = np.asarray(multi_rows, dtype=bool)
    if multi_rows.shape != (len(arr),):
        raise ValueError(f"multi_rows must be ({len(arr)},) bool; got shape {multi_rows.shape}")
    return _iou_tables_kernel(arr, gt, offsets, multi_rows, np.ones(len(arr), np.bool_))
