"""Localization score maps: resize, normalize and quantize them as the WSOL protocol does.

Conventions follow Choe et al. 2020 (clovaai/wsolevaluation, ``inference.py`` and ``evaluation.py``):
a raw class activation map is resized to 224x224 with bicubic interpolation (``cv2.INTER_CUBIC``), then
min-max normalized per map to [0, 1]; the box evaluator quantizes it as ``(map * 255).astype(uint8)``.
Maps are ``(H, W)`` or a batch ``(N, H, W)``, rows are y and columns are x.
"""

from __future__ import annotations

import cv2
import numpy as np

RESIZE_LENGTH = 224  # the evaluation resolution of the protocol (both sides)


def _check_maps(maps: np.ndarray, name: str = "maps") -> np.ndarray:
    arr = np.asarray(maps)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (H, W) or (N, H, W); got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{name} must be a float array; got dtype {arr.dtype}")
    return arr


def resize_maps(maps: np.ndarray, size: int = RESIZE_LENGTH) -> np.ndarray:
    """Resize (H, W) or (N, H, W) float maps to (size, size) bicubic, as wsolevaluation does.

    float32/float64 are kept (OpenCV resizes both natively); float16 is computed in float32.
    """
    arr = _check_maps(maps)
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if arr.ndim == 2:
        return cv2.resize(arr, (size, size), interpolation=cv2.INTER_CUBIC)
    out = np.empty((arr.shape[0], size, size), dtype=arr.dtype)
    for i in range(arr.shape[0]):  # OpenCV resizes one 2-D image per call
        out[i] = cv2.resize(arr[i], (size, size), interpolation=cv2.INTER_CUBIC)
    return out


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Min-max normalize each map to [0, 1] (a new array, input dtype kept).

    Same arithmetic as wsolevaluation's ``normalize_scoremap`` (``cam -= min; cam /= max``), so results are
    bit-identical. A constant map, or one with a NaN (or an infinity, which would give NaNs), becomes zeros.
    """
    arr = _check_maps(maps)
    batch = arr.reshape((-1, *arr.shape[-2:])).astype(arr.dtype, copy=True)  # (N, H, W)
    with np.errstate(invalid="ignore"):  # NaN / inf rows give NaNs here; they are zeroed below
        mins = batch.min(axis=(1, 2))
        batch -= mins[:, None, None]
        maxs = batch.max(axis=(1, 2))
    # min is NaN or -inf, or max (after the shift) NaN or +inf, exactly when a row holds a non-finite value
    zero = ~np.isfinite(mins) | ~np.isfinite(maxs) | (maxs == 0)
    batch[zero] = 0
    np.divide(batch, maxs[:, None, None], out=batch, where=~zero[:, None, None])  # in place: no row copies
    return batch.reshape(arr.shape)


def quantize(maps: np.ndarray) -> np.ndarray:
    """floor(map * 255) as uint8, computed in the map's own precision (``(map * 255).astype(np.uint8)``).

    Maps must be normalized to [0, 1] (the box evaluator's input); values outside raise ValueError.
    """
    arr = _check_maps(maps)
    if np.isnan(arr).any() or (arr < 0).any() or (arr > 1).any():
        raise ValueError("maps to quantize must be in [0, 1] without NaN (normalize them first)")
    return (arr * arr.dtype.type(255)).astype(np.uint8)


def prepare_scoremap(raw: np.ndarray, size: int = RESIZE_LENGTH) -> np.ndarray:
    """Resize to (size, size) bicubic, then min-max normalize: what the evaluator applies to a raw map.

    A map already at (size, size) that attains 0 and 1 comes back unchanged (OpenCV copies same-size input).
    """
    return normalize_maps(resize_maps(raw, size))
