"""Image decoding: every input becomes (H, W, 3) uint8 RGB with the right colours, or a named error."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from acol.data.errors import DataError
from acol.data.images import ImageDecodeError, decode_image, image_size, read_image
from tests.conftest_data import cmyk_red_blue, gradient_rgb, jpeg_bytes, png_bytes


def test_png_decodes_exactly_in_rgb_order() -> None:
    img = np.random.default_rng(0).integers(0, 256, size=(7, 11, 3), dtype=np.uint8)
    out = decode_image(png_bytes(img), "x.png")
    assert out.dtype == np.uint8 and out.shape == (7, 11, 3)
    np.testing.assert_array_equal(out, img)  # lossless: also proves RGB, not BGR


def test_jpeg_close_to_source() -> None:
    img = gradient_rgb(40, 30)
    out = decode_image(jpeg_bytes(img), "x.jpg")
    assert out.shape == (30, 40, 3)
    assert np.abs(out.astype(int) - img).max() <= 6


def test_grayscale_becomes_three_equal_channels() -> None:
    gray = gradient_rgb(20, 10)[..., 1]
    out = decode_image(jpeg_bytes(gray), "g.jpg")
    assert out.shape == (10, 20, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert np.abs(out[..., 0].astype(int) - gray).max() <= 4


def test_cmyk_jpeg_colours() -> None:
    out = decode_image(jpeg_bytes(cmyk_red_blue(32, 16), "CMYK"), "cmyk.jpg")
    assert out.shape == (16, 32, 3)
    # Away from the seam (chroma blocks blur it), red is red and blue is blue.
    np.testing.assert_allclose(out[:, :8].reshape(-1, 3).mean(0), [255, 0, 0], atol=6)
    np.testing.assert_allclose(out[:, 24:].reshape(-1, 3).mean(0), [0, 0, 255], atol=6)


def test_png_with_jpeg_name(tmp_path: Path) -> None:
    img = gradient_rgb(9, 5)
    path = tmp_path / "n02105855_2933.JPEG"
    path.write_bytes(png_bytes(img))
    np.testing.assert_array_equal(read_image(path), img)
    assert image_size(path) == (9, 5)


def test_rgba_and_palette_png() -> None:
    rgba = np.dstack([gradient_rgb(6, 4), np.full((4, 6), 7, np.uint8)])
    np.testing.assert_array_equal(decode_image(png_bytes(rgba), "a.png"), rgba[..., :3])
    buf = io.BytesIO()
    Image.fromarray(gradient_rgb(6, 4)).convert("P").save(buf, "PNG")
    assert decode_image(buf.getvalue(), "p.png").shape == (4, 6, 3)


@pytest.mark.parametrize("frac", [0.2, 0.5, 0.9, 0.999])
def test_truncated_jpeg_is_an_error(frac: float) -> None:
    data = jpeg_bytes(gradient_rgb(64, 48))
    with pytest.raises(ImageDecodeError, match="truncated") as e:
        decode_image(data[: int(len(data) * frac)], "cut.jpg")
    assert e.value.path == "cut.jpg" and isinstance(e.value, DataError)


def test_jpeg_without_final_marker_only_is_truncated() -> None:
    data = jpeg_bytes(gradient_rgb(64, 48))
    assert data.endswith(b"\xff\xd9")
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[:-2], "noeoi.jpg")


def test_truncated_detected_even_if_pil_made_lenient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = jpeg_bytes(gradient_rgb(64, 48))
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 2], "cut.jpg")


def test_trailing_bytes_after_jpeg_end_are_accepted() -> None:
    img = gradient_rgb(40, 30)
    out = decode_image(jpeg_bytes(img) + b"garbage appended by a camera", "tail.jpg")
    assert out.shape == (30, 40, 3)


def test_truncated_png_is_an_error() -> None:
    data = png_bytes(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 2], "cut.png")


def test_empty_and_non_image() -> None:
    with pytest.raises(ImageDecodeError, match="empty file"):
        decode_image(b"", "zero.JPEG")
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(b"<html>404 not found</html>", "page.JPEG")


def test_exif_orientation_is_ignored() -> None:
    # Boxes refer to the stored grid: a JPEG tagged "rotate 90" must keep its stored (H, W).
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(gradient_rgb(40, 20)).save(buf, "JPEG", exif=exif.tobytes())
    assert decode_image(buf.getvalue(), "rot.jpg").shape == (20, 40, 3)


def test_image_size_reads_header(tmp_path: Path) -> None:
    path = tmp_path / "a.JPEG"
    noise = np.random.default_rng(2).integers(0, 256, size=(123, 157, 3), dtype=np.uint8)
    path.write_bytes(jpeg_bytes(noise))
    assert image_size(path) == (157, 123)  # (width, height)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert image_size(path) == (157, 123)  # header intact: size still known
    with pytest.raises(ImageDecodeError, match="truncated"):
        read_image(path)


def test_image_size_and_read_errors_name_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "zero.JPEG"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError) as e:
        image_size(empty)
    assert e.value.path == str(empty) and e.value.reason == "empty file: 0 bytes"
    with pytest.raises(ImageDecodeError, match="missing image"):
        image_size(tmp_path / "nope.JPEG")
    with pytest.raises(ImageDecodeError, match="missing image"):
        read_image(tmp_path / "nope.JPEG")
    text = tmp_path / "t.JPEG"
    text.write_text("hello")
    with pytest.raises(ImageDecodeError, match="not an image"):
        image_size(text)
