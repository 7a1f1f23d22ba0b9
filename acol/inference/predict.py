"""Model -> map-store columns: decode a batch of files, run the model, take its maps, boxes and top-k.

Why one module: the Ray Data engine and the plain DataLoader engine (`acol.distributed.extract`) and the
tests all call these same steps, so the two engines can only differ in scheduling.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

from acol.cpu_isa import pin_cpu_isa
from acol.data.errors import DataError
from acol.data.images import read_image
from acol.data.paths import resolve_inside
from acol.data.transforms import eval_transform, to_float_tensor
from acol.inference.mapstore import MAP_DTYPE
from acol.inference.model_card import model_from_card
from acol.models import ModelSpec, WSOLModel, normalize_maps, select_class_maps
from acol.wsol.boxes import boxes_from_maps

__all__ = [
    "TOP_K",
    "BatchDecoder",
    "DecodingMapPredictor",
    "ForwardOptions",
    "MapPredictor",
    "decode_batch",
    "keep_freed_memory",
    "malloc_env",
    "predict_batch",
    "stored_precision",
]

TOP_K = 5

# glibc's malloc: blocks at least this large are no longer mapped afresh per allocation, and freed memory at the
# top of the heap is kept (the largest value `mallopt` takes, a C int).
_KEEP_BYTES = 2**31 - 1
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
# The same at a process's start, plus one arena: a thread's own arena maps every block larger than its heap
# (64 MiB) afresh whatever the threshold, and Ray Data calls an actor's batches from a thread, not the main one.
_MALLOC_TUNABLES = f"glibc.malloc.mmap_threshold={_KEEP_BYTES}:glibc.malloc.trim_threshold={_KEEP_BYTES}:glibc.malloc.arena_max=1"


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse in this process (main thread); False where libc is not glibc.

    Why: glibc maps each block above its threshold afresh and unmaps it at free(), so every large activation
    of every batch was faulted in page by page and zeroed again by the kernel: nearly as much system CPU as
    the model's own user CPU (benchmarks/README.md, "Where the system CPU went"). Kept, the next batch reuses
    the same memory; the process's resident memory stays at its peak instead.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))


def malloc_env() -> dict[str, str]:
    """`keep_freed_memory` for a process about to start (a Ray actor), every thread included: its
    ``GLIBC_TUNABLES``, after any the caller set (a later setting of the same name wins, so theirs do)."""
    own = os.environ.get("GLIBC_TUNABLES", "")
    return {"GLIBC_TUNABLES": f"{_MALLOC_TUNABLES}:{own}" if own else _MALLOC_TUNABLES}


def stored_precision(maps: torch.Tensor) -> np.ndarray:
    """`maps` as NumPy in the map store's precision (`MAP_DTYPE`): what the boxes and the evaluation see."""
    return maps.float().cpu().numpy().astype(MAP_DTYPE, copy=False)


def _flat_stored(maps: torch.Tensor) -> np.ndarray:
    """(B, h, w) float maps -> (B, h*w) NumPy in the stored precision."""
    return stored_precision(maps.flatten(1))


def predict_batch(
    model: WSOLModel,
    images: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    widths: np.ndarray | Sequence[int],
    heights: np.ndarray | Sequence[int],
    box_threshold: float,
    *,
    amp: bool = False,
) -> dict[str, np.ndarray | None]:
    """Run the model once (eval mode, inference mode) and return the map-store columns of a batch.

    images: (B, 3, S, S) float, normalized, on the model's device (or moved there); labels (B,) ground-truth
    class indices; widths/heights (B,) original image sizes. ``amp`` runs the forward under bf16 autocast.
    Returns NumPy arrays: ``top5_classes`` (B, k) int32, ``top5_scores`` (B, k) float32, ``map_height``,
    ``map_width`` (B,) int32, ``map_gt``, ``map_top1``, ``map_a_gt`` (B, h*w) `MAP_DTYPE`, ``map_b_gt`` the same
    or None (CAM), ``pred_box`` (B, 4) float32 (see `boxes_from_maps`).
    """
    model.eval()
    # The forward erases with the labels (the GT-class maps); `localization_maps` of the top-1 class runs B
    # again erased by the top-1 class, so the predicted box never depends on the label. Both run under the
    # forward's autocast: B run again is then the forward's B in the same precision, and an image's maps
    # depend on that image alone (outside it, bf16 gave a float32 B to a whole batch whenever one image's
    # top-1 differed from its label). Maps are normalized and scores computed in float32.
    device = next(model.parameters()).device
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    with torch.inference_mode():
        images = images.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(images, labels_t)
            probs = torch.softmax(out.logits.float(), dim=1)
            scores, classes = probs.topk(min(TOP_K, probs.shape[1]), dim=1)
            map_gt = model.localization_maps(out, labels_t)  # (B, h, w)
            map_top1 = model.localization_maps(out, classes[:, 0])
        map_a = normalize_maps(select_class_maps(out.maps_a, labels_t).float())
        map_b = None
        if out.maps_b is not None:
            map_b = normalize_maps(select_class_maps(out.maps_b, labels_t).float())
    b, h, w = map_gt.shape
    top1 = _flat_stored(map_top1)
    return {
        "top5_classes": classes.to(torch.int32).cpu().numpy(),
        "top5_scores": scores.cpu().numpy().astype(np.float32),
        "map_height": np.full(b, h, dtype=np.int32),
        "map_width": np.full(b, w, dtype=np.int32),
        "map_gt": _flat_stored(map_gt),
        "map_top1": top1,
        "map_a_gt": _flat_stored(map_a),
        "map_b_gt": None if map_b is None else _flat_stored(map_b),
        "pred_box": boxes_from_maps(
            top1.reshape(b, h, w), np.asarray(widths), np.asarray(heights), box_threshold
        ),
    }


def _split_eval_transform(size: int) -> tuple[Callable, Callable]:
    """`eval_transform(size)` as (uint8 resize, float normalize): composed, they are exactly the original."""
    steps = eval_transform(size).transforms
    if not isinstance(steps[0], v2.Resize):
        raise RuntimeError("eval_transform no longer starts with Resize; update _split_eval_transform")
    return steps[0], v2.Compose(steps[1:])


def decode_batch(
    batch: dict[str, np.ndarray], root: str, size: int, threads: int = 1
) -> dict[str, np.ndarray]:
    """Read, decode and resize the images of a batch: adds ``image`` (B, 3, S, S) uint8 and ``error`` (B,).

    ``error`` is "" when fine, else "<kind>: <reason>"; a failed image gets a zero placeholder. ``threads`` > 1
    decodes that many images at once (OpenCV, PIL and torch release the GIL); each image's bytes are the same.
    """
    resize, _ = _split_eval_transform(size)
    ids = [str(i) for i in batch["image_id"]]
    images = np.zeros((len(ids), 3, size, size), dtype=np.uint8)
    errors = np.full(len(ids), "", dtype=object)

    def decode_one(k: int) -> None:
        try:
            pixels = read_image(resolve_inside(root, ids[k]))
            images[k] = resize(to_float_tensor(pixels)).numpy()
        except DataError as e:
            errors[k] = e.reason
        except Exception as e:  # a run over 1M images must not stop on one odd file; it is recorded
            errors[k] = f"unexpected: {type(e).__name__}: {e}"

    if threads > 1 and len(ids) > 1:
        with ThreadPoolExecutor(min(threads, len(ids))) as pool:
            list(pool.map(decode_one, range(len(ids))))
    else:
        for k in range(len(ids)):
            decode_one(k)
    return {**batch, "image": images, "error": errors}


class BatchDecoder:
    """Ray Data callable class around `decode_batch`, for an actor pool: its worker lives the whole run.

    Why: as a task per batch, decode ran in whatever worker Ray had idle, and Ray recycles idle workers above
    its soft limit (one per CPU, and Ray Data's own actors count), so with decode paced by inference most
    batches started a fresh worker that imported torch again: measured at 224 on 2 cores, Ray at 0.61 of the
    plain loop with a new decode worker every few seconds (0.94 with this actor and a passive OpenMP wait).
    """

    def __init__(self, root: str, size: int) -> None:
        self.root, self.size = root, size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return decode_batch(batch, self.root, self.size)


def _ok_images(images: np.ndarray | torch.Tensor, ok: np.ndarray) -> torch.Tensor:
    """The uint8 images of the rows that decoded. A tensor (the plain engine's loader, pinned for a GPU) is
    used as it is when every row decoded: a copy would lose the pinning that makes its transfer asynchronous."""
    if isinstance(images, torch.Tensor):
        return images if ok.all() else images[torch.from_numpy(ok)]
    return torch.from_numpy(np.ascontiguousarray(images[ok]))


@dataclass(frozen=True)
class ForwardOptions:
    """How a `MapPredictor` runs the model: one object from the extraction (or a caller) to the actors.

    ``size`` is the square input size (the decode step's resize), ``box_threshold`` the box step's; ``amp``
    runs the forward under bf16 autocast and ``channels_last`` lays the model and images out NHWC. The last
    three change the maps' last bits, so extraction's resume fingerprint records them.
    """

    size: int
    box_threshold: float
    device: str = "cpu"
    amp: bool = False
    channels_last: bool = False


class MapPredictor:
    """Ray Data callable class: loads the model once, maps a numpy batch dict to the map-store columns."""

    def __init__(
        self,
        spec: ModelSpec,
        model_path: str,
        options: ForwardOptions,
        num_threads: int | None = None,
    ) -> None:
        pin_cpu_isa()  # before this actor's first kernel
        keep_freed_memory()  # the batches' activations reuse memory instead of faulting it in again
        if num_threads is not None:  # Ray sets OMP_NUM_THREADS to the actor's whole CPUs (1 for 1.5)
            torch.set_num_threads(num_threads)
        self.device = torch.device(options.device)
        self.model = model_from_card(spec, model_path, self.device, options.channels_last)
        self.normalize = _split_eval_transform(options.size)[1]
        self.box_threshold = options.box_threshold
        self.amp = options.amp
        self.channels_last = options.channels_last

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = np.asarray(batch["error"], dtype=object)
        ok = errors == ""
        out: dict[str, Any] = {
            "image_id": batch["image_id"],
            "label": np.asarray(batch["class_index"], dtype=np.int32),
            "width": batch["width"],
            "height": batch["height"],
            "error": errors,
        }
        if ok.any():
            images = self.normalize(_ok_images(batch["image"], ok).to(self.device, non_blocking=True))
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            cols = predict_batch(
                self.model,
                images,
                np.asarray(batch["class_index"])[ok],
                np.asarray(batch["width"])[ok],
                np.asarray(batch["height"])[ok],
                self.box_threshold,
                amp=self.amp,
            )
        else:  # all failed: shapes from a zero image, so every batch has the same columns
            cols = predict_batch(
                self.model,
                self.normalize(torch.zeros((1, *batch["image"].shape[1:]), dtype=torch.uint8)),
                np.zeros(1),
                np.ones(1),
                np.ones(1),
                self.box_threshold,
            )
        for name, values in cols.items():
            if values is None:  # CAM has no branch B: the column is left out and written as null
                continue
            full = np.zeros((len(errors), *values.shape[1:]), dtype=values.dtype)
            if ok.any():
                full[ok] = values
            out[name] = full
        return out


class DecodingMapPredictor(MapPredictor):
    """`MapPredictor` that decodes its own batches (`decode_batch` on the actor's threads) first.

    Why: where the model runs on CPUs, its threads take the cores a separate decode actor would use, and the
    two contend (an OpenMP region waits for its slowest thread); decoding in turn, on all the actor's threads,
    measured faster (benchmarks/README.md). With GPUs, decode actors feed them instead.
    """

    def __init__(
        self,
        spec: ModelSpec,
        model_path: str,
        options: ForwardOptions,
        root: str,
        num_threads: int | None = None,
    ) -> None:
        super().__init__(spec, model_path, options, num_threads)
        self.root, self.size = root, options.size
        self.decode_threads = torch.get_num_threads()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return super().__call__(decode_batch(batch, self.root, self.size, self.decode_threads))
