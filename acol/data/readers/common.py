"""What the ILSVRC and CUB readers share: probing image headers on threads and checking a box against its image.

Why a module of its own: both readers use these, and neither should reach into the other's private names.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from acol.data.errors import DataError
from acol.data.images import image_size, read_image
from acol.data.paths import resolve_inside

__all__ = ["IN_FLIGHT_PER_THREAD", "Box", "bounded_map", "box_problem", "probe_images"]

Box = list[float]

# images probed ahead per thread: enough to keep the threads busy; what is queued is bounded, where submitting
# every image at once held a future per image (memory that grew with the dataset: benchmarks/README.md)
IN_FLIGHT_PER_THREAD = 16

_T = TypeVar("_T")
_R = TypeVar("_R")


def box_problem(box: Box, width: int, height: int) -> str | None:
    """Why an ``[x0, y0, x1, y1]`` box does not fit a ``width`` x ``height`` image, or None when it does."""
    x0, y0, x1, y1 = box
    if not np.isfinite(box).all():
        return f"bad box: {box} has a missing or non-numeric coordinate"
    if x1 < x0 or y1 < y0:
        return f"bad box: {box} has x1 < x0 or y1 < y0"
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        return f"bad box: {box} outside the {width}x{height} image"
    return None


def probe_images(
    root: Path, image_ids: list[str], verify: bool, num_threads: int
) -> list[tuple[int, int] | DataError]:
    """Header size of each image, or the error; with ``verify`` every image is fully decoded too."""

    def probe(rel: str) -> tuple[int, int] | DataError:
        try:
            path = resolve_inside(root, rel)
            if verify:
                h, w = read_image(path).shape[:2]
                return (w, h)
            return image_size(path)
        except DataError as e:
            return e

    threads = max(1, num_threads)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(bounded_map(pool, probe, image_ids, threads * IN_FLIGHT_PER_THREAD))


def bounded_map(pool: Executor, fn: Callable[[_T], _R], items: Iterable[_T], limit: int) -> Iterator[_R]:
    """``pool.map(fn, items)`` (results in order) with at most `limit` items submitted and not yet yielded."""
    pending: deque[Future[_R]] = deque()
    for item in items:
        if len(pending) >= limit:
            yield pending.popleft().result()
        pending.append(pool.submit(fn, item))
    while pending:
        yield pending.popleft().result()
