"""Robust image decoding: every image comes out as (H, W, 3) uint8 RGB, or raises `ImageDecodeError`.

Real datasets hold grayscale and CMYK JPEGs, PNGs saved under a ``.JPEG`` name, zero-byte and truncated files.
OpenCV decodes fastest (about 2x PIL here) and, since OpenCV 5, refuses a truncated JPEG or PNG (returns None)
instead of filling the rest with grey; CMYK comes out right in both. So OpenCV decodes, and when it fails PIL
(strict: ``LOAD_TRUNCATED_IMAGES`` off) decides: it decodes what OpenCV would not (rare JPEGs with
recoverable warnings) or names the reason ("truncated", "not an image"). A JPEG whose data does not end
with the EOI marker is also checked by PIL, so an OpenCV build that decodes truncated files cannot slip a
half-grey image through.

The EXIF orientation tag is ignored on purpose: ILSVRC and CUB boxes and sizes refer to the stored pixel grid.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from acol.data.errors import DataError

__all__ = ["ImageDecodeError", "decode_image", "image_size", "read_image"]

_CV2_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"


class ImageDecodeError(DataError):
    """An undecodable image; reason: "empty file", "truncated", "not an image" or "missing image"."""


def _ends_with_eoi(data: bytes) -> bool:
    # Some encoders pad after EOI with zeros or newlines; trailing junk beyond that goes to PIL to judge.
    return data.rstrip(b"\x00\r\n ").endswith(_JPEG_EOI)


def _decode_pil(data: bytes, source: str) -> np.ndarray:
    """Strict PIL decode to (H, W, 3) uint8 RGB; raises `ImageDecodeError` with the reason."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rgb = im.convert("RGB")
    except UnidentifiedImageError:
        raise ImageDecodeError(source, "not an image: unrecognized or corrupt header") from None
    except OSError as e:
        if "truncated" in str(e).lower():
            raise ImageDecodeError(source, f"truncated: {e}") from None
        raise ImageDecodeError(source, f"not an image: {e}") from None
    except (ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(source, f"not an image: {e}") from None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def decode_image(data: bytes, source: str) -> np.ndarray:
    """Decode encoded image bytes to an (H, W, 3) uint8 RGB array.

    ``source`` names the file in errors. Grayscale, palette, RGBA (alpha dropped) and CMYK inputs all become
    RGB; the format is sniffed from the bytes, not the file name. Raises `ImageDecodeError` for zero-byte,
    truncated or non-image data.
    """
    if len(data) == 0:
        raise ImageDecodeError(source, "empty file: 0 bytes")
    is_jpeg = data.startswith(_JPEG_SOI)
    if is_jpeg and not _ends_with_eoi(data):
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            # Someone switched PIL to lenient mode; it would decode the missing part as grey.
            raise ImageDecodeError(source, "truncated: JPEG data does not end with the end-of-image marker")
        try:
            return _decode_pil(data, source)
        except ImageDecodeError as e:
            # Without its end marker, any decode failure of a JPEG is a cut-off file.
            reason = (
                e.reason
                if e.reason.startswith("truncated")
                else f"truncated: no end-of-image marker ({e.reason})"
            )
            raise ImageDecodeError(source, reason) from None
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _CV2_FLAGS)
    if arr is None or arr.ndim != 3 or arr.shape[2] != 3:
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            raise ImageDecodeError(
                source, "not an image: OpenCV could not decode it (PIL is in lenient mode)"
            )
        return _decode_pil(data, source)
    return arr


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read and decode one image file to (H, W, 3) uint8 RGB; errors name ``path``."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImageDecodeError(str(path), f"missing image: {e.strerror or e}") from None
    return decode_image(data, str(path))


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of the stored pixel grid, read from the header only (no pixel decode).

    Raises `ImageDecodeError` for a missing, zero-byte or unrecognized file; a truncated file whose header is
    intact still reports its size (use `read_image` to check the pixels).
    """
    try:
        empty = os.path.getsize(path) == 0
        if not empty:
            with Image.open(path) as im:
                width, height = im.size
    except FileNotFoundError:
        raise ImageDecodeError(str(path), "missing image: no such file") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(str(path), "not an image: unrecognized or corrupt header") from None
    except (OSError, ValueError, SyntaxError) as e:
        kind = "truncated" if "truncated" in str(e).lower() else "not an image"
        raise ImageDecodeError(str(path), f"{kind}: {e}") from None
    if empty:
        raise ImageDecodeError(str(path), "empty file: 0 bytes")
    return int(width), int(height)
