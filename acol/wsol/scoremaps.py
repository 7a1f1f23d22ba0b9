"""Localization score maps: resize, normalize and quantize them as the WSOL protocol does.

Conventions follow Choe et al. 2020 (clovaai/wsolevaluation, ``inference.py`` and ``evaluation.py``):
a raw class activation map is resized to 224x224 with bicubic interpolation (``cv2.INTER_CUBIC``), then
min-max normalized per map to [0, 1]; the box evaluator quantizes it as ``(map * 255).astype(uint8)``.
Maps are ``(H, W)`` or a batch ``(N, H, W)``, rows are y and columns are x.
"""

from __future__ import annotations

import cv2
import numba
import numpy as np

RESIZE_LENGTH = 224  # the evaluation resolution of the protocol (both sides)


def _check_maps(maps: np.ndarray, name: str = "maps") -> np.ndarray:
    arr = np.asarray(maps)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (H, W) or (N, H, W); got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{name} must be a float array; got dtype {arr.dtype}")
    return arr


def _resizable(maps: np.ndarray) -> np.ndarray:
    """`maps` checked, float16 raised to float32: OpenCV resizes float32 and float64 only."""
    arr = _check_maps(maps)
    return arr.astype(np.float32) if arr.dtype == np.float16 else arr


def resize_maps(maps: np.ndarray, size: int = RESIZE_LENGTH) -> np.ndarray:
    """Resize (H, W) or (N, H, W) float maps to (size, size) bicubic, as wsolevaluation does.

    float32/float64 are kept (OpenCV resizes both natively); float16 is computed in float32.
    """
    arr = _resizable(maps)
    if arr.ndim == 2:
        return cv2.resize(arr, (size, size), interpolation=cv2.INTER_CUBIC)
    out = np.empty((arr.shape[0], size, size), dtype=arr.dtype)
    for i in range(arr.shape[0]):  # OpenCV resizes one 2-D image per call, straight into the batch (no copy)
        _resize_into(arr[i], out[i])
    return out


def _resize_into(raw: np.ndarray, dst: np.ndarray) -> None:
    """Bicubic ``raw`` into the C-contiguous ``dst`` in place (no copy of a returned array)."""
    if cv2.resize(raw, dst.shape[::-1], dst=dst, interpolation=cv2.INTER_CUBIC) is not dst:
        raise RuntimeError("cv2.resize did not write into the given buffer")


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


@numba.njit(cache=True, nogil=True)
def _normalize_quantize(values: np.ndarray, out: np.ndarray, scale: np.floating) -> None:
    """``out`` := quantize(normalize_maps(values)) of one flat map, in the map's own precision, bit for bit:
    ``max(x - lo) == max(x) - lo`` as rounding is monotone, and each value sees the same three roundings."""
    lo, hi, nan = values[0], values[0], False
    for v in values:
        lo, hi, nan = min(lo, v), max(hi, v), nan or v != v
    span = hi - lo
    if nan or not np.isfinite(lo) or not np.isfinite(span) or span == 0:  # normalize_maps' zero rows
        out[:] = 0
        return
    for k in range(values.size):
        out[k] = np.uint8((values[k] - lo) / span * scale)


def prepare_quantized(raw: np.ndarray, size: int = RESIZE_LENGTH) -> np.ndarray:
    """``quantize(prepare_scoremap(raw))`` as (N, size, size) uint8, bit for bit, for (H, W) or (N, H, W) maps.

    Why: the box metrics need only the quantized maps; resizing each map into one reused buffer and
    normalizing + quantizing it in one compiled pass costs a fifth of the three NumPy passes over the batch.
    """
    arr = _resizable(raw)
    batch = arr.reshape((-1, *arr.shape[-2:]))
    out = np.empty((len(batch), size, size), np.uint8)
    buffer = np.empty((size, size), batch.dtype)
    scale = batch.dtype.type(255)
    for i in range(len(batch)):
        _resize_into(batch[i], buffer)
        _normalize_quantize(buffer.reshape(-1), out[i].reshape(-1), scale)
    return out


def prepare_scoremap(raw: np.ndarray, size: int = RESIZE_LENGTH) -> np.ndarray:
    """Resize to (size, size) bicubic, then min-max normalize: what the evaluator applies to a raw map.

    A map already at (size, size) that attains 0 and 1 comes back unchanged (OpenCV copies same-size input).
    """
    return normalize_maps(resize_maps(raw, size))
