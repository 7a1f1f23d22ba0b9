"""Fixture writers for the dataset-reader tests: tiny datasets in the real on-disk formats.

Import the ``wsol_metadata_dir`` fixture from the main conftest (``from tests.conftest_data import
wsol_metadata_dir``) or from a test module; the writers are plain functions returning what they wrote.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ASSETS = Path(__file__).parent / "assets"
WSOL_ARCHIVE = ASSETS / "wsol-metadata.tar.xz"

# Three sorted wnids plus one that is not in the synset file.
WNIDS = ["n01440764", "n01443537", "n01484850"]
UNKNOWN_WNID = "n09999999"
CMYK_RED = (0, 255, 255, 0)  # CMYK of pure red (255, 0, 0)
CMYK_BLUE = (255, 255, 0, 0)  # CMYK of pure blue (0, 0, 255)


def extract_wsol_metadata(dest: Path) -> Path:
    """Extract the shipped archive into ``dest`` (then holding ``ILSVRC/``, ``CUB/``); returns ``dest``."""
    with tarfile.open(WSOL_ARCHIVE, "r:xz") as tar:
        tar.extractall(dest, filter="data")
    return dest


@pytest.fixture(scope="session")
def wsol_metadata_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real WSOL metadata (ILSVRC/test, ILSVRC/val, CUB/test, CUB/val), extracted once per session."""
    return extract_wsol_metadata(tmp_path_factory.mktemp("wsol-metadata"))


def gradient_rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth (H, W, 3) uint8 image: compresses well and survives JPEG nearly unchanged."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=3)
    yy, xx = np.mgrid[0:height, 0:width]
    img = base[None, None, :] + (xx[..., None] * 40 // max(width, 1)) + (yy[..., None] * 20 // max(height, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg_bytes(image: np.ndarray, mode: str | None = None, quality: int = 95) -> bytes:
    """Encode an (H, W, 3) RGB, (H, W) gray or (H, W, 4) CMYK array (``mode="CMYK"``) as JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image, mode).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def cmyk_red_blue(width: int = 32, height: int = 16) -> np.ndarray:
    """(H, W, 4) CMYK array: left half pure red, right half pure blue."""
    img = np.zeros((height, width, 4), dtype=np.uint8)
    img[:, : width // 2] = CMYK_RED
    img[:, width // 2 :] = CMYK_BLUE
    return img


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _voc_xml(name: str, size: tuple[int, int], objects: list[tuple[str, list[float]]]) -> str:
    objs = "".join(
        f"<object><name>{w}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{b[0]:g}</xmin><ymin>{b[1]:g}</ymin><xmax>{b[2]:g}</xmax><ymax>{b[3]:g}</ymax></bndbox>"
        "</object>"
        for w, b in objects
    )
    return (
        f"<annotation><folder>val</folder><filename>{name}</filename><source><database>ILSVRC_2012</database>"
        f"</source><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
        f"<segmented>0</segmented>{objs}</annotation>"
    )


def write_ilsvrc(root: Path) -> dict:
    """A tiny ILSVRC 2012 download with the real quirks; returns paths and the expected outcome.

    Images are 40x30 (w x h) unless said otherwise. Val entries (``ILSVRC2012_val_000000NN``):
    01 RGB, one box; 02 grayscale, two boxes, one touching the border (x1 = width); 03 CMYK; 04 PNG bytes
    under a .JPEG name; 05 box outside the image; 06 x1 < x0; 07 unknown wnid; 08 annotated, missing on
    disk; 09 zero bytes; 10 truncated JPEG (header intact: only ``verify_images`` finds it); 11 objects of
    two classes; 12 on disk without annotation; 13 malformed XML (fine in the CSV); 14 XML size 50x30 but
    the file is 40x30 (fine in the CSV).
    """
    w, h = 40, 30
    val = root / "val"
    val.mkdir(parents=True, exist_ok=True)
    a, b, c = WNIDS
    ann: dict[int, tuple[str, list[tuple[str, list[float]]]]] = {
        1: ("rgb", [(a, [2, 3, 20, 25])]),
        2: ("gray", [(b, [0, 0, 40, 30]), (b, [5, 5, 10, 12])]),
        3: ("cmyk", [(c, [1, 1, 30, 20])]),
        4: ("png", [(a, [4, 4, 39, 29])]),
        5: ("rgb", [(a, [2, 3, 50, 25])]),
        6: ("rgb", [(a, [20, 3, 10, 25])]),
        7: ("rgb", [(UNKNOWN_WNID, [2, 3, 20, 25])]),
        8: ("none", [(b, [2, 3, 20, 25])]),
        9: ("empty", [(b, [2, 3, 20, 25])]),
        10: ("truncated", [(c, [2, 3, 20, 25])]),
        11: ("rgb", [(a, [2, 3, 20, 25]), (b, [1, 1, 5, 5])]),
        13: ("rgb", [(c, [3, 3, 9, 9])]),
        14: ("rgb", [(c, [3, 3, 9, 9])]),
    }
    full = jpeg_bytes(gradient_rgb(w, h, 1))
    noisy = jpeg_bytes(np.random.default_rng(5).integers(0, 256, size=(h, w, 3), dtype=np.uint8))
    kinds = {
        "rgb": full,
        "gray": jpeg_bytes(gradient_rgb(w, h, 2)[..., 0]),
        "cmyk": jpeg_bytes(cmyk_red_blue(w, h), "CMYK"),
        "png": png_bytes(gradient_rgb(w, h, 3)),
        "empty": b"",
        "truncated": noisy[: len(noisy) // 2],  # pixels cut off, header intact
    }
    for n, (kind, _) in ann.items():
        if kind in kinds:
            _write(val / f"ILSVRC2012_val_{n:08d}.JPEG", kinds[kind])
    _write(val / "ILSVRC2012_val_00000012.JPEG", full)

    synsets = root / "LOC_synset_mapping.txt"
    # Written unsorted on purpose: indices must follow the sorted wnids.
    synsets.write_text(f"{c} great white shark\n{a} tench, Tinca tinca\n{b} goldfish, Carassius auratus\n")
    rows = [
        f"ILSVRC2012_val_{n:08d},"
        + " ".join(f"{wn} {x0:g} {y0:g} {x1:g} {y1:g}" for wn, (x0, y0, x1, y1) in objs)
        for n, (_, objs) in ann.items()
    ]
    solution = root / "LOC_val_solution.csv"
    solution.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    xml_dir = root / "Annotations" / "CLS-LOC" / "val"
    xml_dir.mkdir(parents=True, exist_ok=True)
    for n, (_, objs) in ann.items():
        name = f"ILSVRC2012_val_{n:08d}"
        text = _voc_xml(name, (50 if n == 14 else w, h), objs)
        (xml_dir / f"{name}.xml").write_text(text[:60] if n == 13 else text)

    train = root / "train"
    for i, wnid in enumerate(WNIDS):
        for k in range(2):
            _write(train / wnid / f"{wnid}_{k}.JPEG", jpeg_bytes(gradient_rgb(w + k, h, 10 * i + k)))
    _write(train / UNKNOWN_WNID / f"{UNKNOWN_WNID}_0.JPEG", full)
    train_solution = root / "LOC_train_solution.csv"
    train_solution.write_text(
        f"ImageId,PredictionString\n{a}_1,{a} 1 2 30 20 {a} 0 0 41 30\n{b}_7,{b} 1 1 5 5\n"
    )
    return {
        "root": root,
        "synsets": synsets,
        "solution_csv": solution,
        "train_solution_csv": train_solution,
        "xml_dir": xml_dir,
        "size": (w, h),
        "annotations": ann,
    }


# CUB-200-2011 entries. Ids 1 and 3 are real test images: path, class, size and box (x, y, w, h) agree with
# the WSOL CUB/test metadata (boxes 60,27,385,331 and 144,40,477,205). Ids 2 (train) and 4 (box wider than
# the image) are made up.
CUB_IMAGES = [
    # (image id, path, class id, x, y, w, h, is_train, width, height)
    (
        1,
        "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg",
        1,
        60.0,
        27.0,
        325.0,
        304.0,
        0,
        500,
        335,
    ),
    (
        2,
        "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg",
        1,
        139.0,
        30.0,
        153.0,
        264.0,
        1,
        500,
        361,
    ),
    (3, "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg", 2, 144.0, 40.0, 333.0, 165.0, 0, 500, 375),
    (4, "002.Laysan_Albatross/Laysan_Albatross_0003_1033.jpg", 2, 10.0, 10.0, 600.0, 20.0, 0, 500, 300),
]


def write_cub(root: Path, missing_image: bool = False) -> Path:
    """A CUB_200_2011 folder with the four `CUB_IMAGES` (id 4's box is wider than its image); returns it.

    Images are flat grey JPEGs of the listed sizes (a few hundred bytes each).
    """
    cub = root / "CUB_200_2011"
    cub.mkdir(parents=True, exist_ok=True)
    (cub / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    (cub / "images.txt").write_text("".join(f"{i} {p}\n" for i, p, *_ in CUB_IMAGES))
    (cub / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c, *_ in CUB_IMAGES))
    (cub / "bounding_boxes.txt").write_text(
        "".join(f"{r[0]} {r[3]} {r[4]} {r[5]} {r[6]}\n" for r in CUB_IMAGES)
    )
    (cub / "train_test_split.txt").write_text("".join(f"{r[0]} {r[7]}\n" for r in CUB_IMAGES))
    for r in CUB_IMAGES:
        if missing_image and r[0] == 3:
            continue
        _write(cub / "images" / r[1], jpeg_bytes(np.full((r[9], r[8], 3), 128, dtype=np.uint8), quality=50))
    return cub
