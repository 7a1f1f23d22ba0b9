"""Encoded images -> top-k classes, their boxes and maps: what a served registered version answers.

Why here, and built from extraction's parts: a user's image goes through the same decode
(`acol.data.images.decode_image`), eval transform (`eval_transform`: the whole image resized to S x S), class
maps (`WSOLModel.localization_maps`: for ACoL, B erased by the class whose map is wanted) and boxes
(`acol.wsol.boxes.boxes_from_maps` on maps in the map store's precision, `MAP_DTYPE`) as `predict_batch`, so the
top-1 box of an image equals the ``pred_box`` that extraction writes at the same threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from acol.data.images import decode_image
from acol.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, to_float_tensor
from acol.inference.predict import TOP_K, stored_precision
from acol.models import WSOLModel
from acol.wsol.boxes import boxes_from_maps

__all__ = ["TOP_K", "decode_images", "encode_png", "localize"]


def decode_images(images: Sequence[bytes]) -> list[np.ndarray]:
    """JPEG/PNG/... bytes -> (H, W, 3) uint8 RGB arrays; `ImageDecodeError` names the row ("image 2")."""
    return [decode_image(bytes(data), f"image {i}") for i, data in enumerate(images)]


def _batch(pixels: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """(B, 3, size, size) normalized float batch, each image resized whole (`eval_transform`)."""
    transform = eval_transform(size)
    return torch.stack([transform(to_float_tensor(p)) for p in pixels])


def _rank_maps(model: WSOLModel, out: Any, classes: torch.Tensor) -> np.ndarray:
    """(k, B, h, w) float32 maps of each rank's class, in the precision the map store keeps them."""
    maps = [model.localization_maps(out, classes[:, j]) for j in range(classes.shape[1])]
    return stored_precision(torch.stack(maps)).astype(np.float32, copy=False)


def localize(
    model: WSOLModel,
    pixels: Sequence[np.ndarray],
    size: int,
    cam_threshold: float,
    top_k: int = TOP_K,
    return_map: bool = False,
    class_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One dict per (H, W, 3) uint8 RGB image: its top-k classes, scores, boxes and (optionally) maps.

    Keys: ``width``, ``height`` (the image's), ``class_indices``, ``classes`` (names, else the indices as
    strings), ``scores`` (softmax of branch A's logits, descending), ``boxes`` ([x0, y0, x1, y1] per class,
    floats in the image's pixels: the largest contour of the class map at ``cam_threshold``, [0, 0, 0, 0] when
    nothing is above it) and, with ``return_map``, ``maps`` (per class an h x w nested list in [0, 1], the map
    grid covering the whole image).
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    model.eval()
    widths = np.array([p.shape[1] for p in pixels])
    heights = np.array([p.shape[0] for p in pixels])
    with torch.inference_mode():
        out = model(_batch(pixels, size))  # ACoL erases by A's top-1: the rank-0 map needs no second B pass
        scores, classes = torch.softmax(out.logits.float(), dim=1).topk(min(top_k, out.logits.shape[1]))
        maps = _rank_maps(model, out, classes)
    boxes = np.stack([boxes_from_maps(m, widths, heights, cam_threshold) for m in maps], axis=1)
    names = list(class_names) if class_names is not None else None
    rows = []
    for i, (indices, probs) in enumerate(zip(classes.tolist(), scores.tolist(), strict=True)):
        row = {
            "width": int(widths[i]),
            "height": int(heights[i]),
            "class_indices": indices,
            "classes": [names[c] if names else str(c) for c in indices],
            "scores": probs,
            "boxes": boxes[i].tolist(),
        }
        if return_map:
            row["maps"] = maps[:, i].tolist()
        rows.append(row)
    return rows


def encode_png(image: torch.Tensor | np.ndarray) -> bytes:
    """PNG bytes of one (3, H, W) ImageNet-normalized float image (denormalized): a valid example input."""
    chw = np.asarray(image, dtype=np.float32)
    mean, std = np.array(IMAGENET_MEAN)[:, None, None], np.array(IMAGENET_STD)[:, None, None]
    rgb = np.clip((chw * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise RuntimeError("OpenCV could not encode the example image as PNG")
    return buffer.tobytes()
