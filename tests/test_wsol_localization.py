"""`read_wsol_localization`, the score-map evaluator's view of a WSOL metadata folder, on hand-written folders.

It replaced a second, hand-split reader in `acol.stages.score_npy`; both gave identical ids, sizes and int64
boxes on the four shipped folders (tests/assets/wsol-metadata.tar.xz) before that one was removed (commit
5f31313). The cases below pin the same results against values written out by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acol.data.errors import DataError
from acol.data.readers.wsol_metadata import read_wsol_localization


def write(folder: Path, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.txt").write_text(text)
    return folder


def test_boxes_in_file_order_as_int64(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "m",
        image_ids="val/a.JPEG\nval/b.JPEG",  # the real files lack the final newline
        image_sizes="val/b.JPEG,224,200\nval/a.JPEG,448,300\n",
        localization="val/b.JPEG,10,10,40,40\nval/a.JPEG,120,100,240,200\nval/b.JPEG,0,0,5,5\n",
    )  # no class_labels.txt: an evaluator does not need it
    meta, problems = read_wsol_localization(folder)
    assert problems == [] and meta.image_ids == ["val/a.JPEG", "val/b.JPEG"]
    assert meta.sizes == {"val/a.JPEG": (448, 300), "val/b.JPEG": (224, 200)}
    assert meta.boxes["val/a.JPEG"].tolist() == [[120, 100, 240, 200]]
    assert meta.boxes["val/b.JPEG"].tolist() == [[10, 10, 40, 40], [0, 0, 5, 5]]
    assert {b.dtype for b in meta.boxes.values()} == {np.dtype(np.int64)}
    assert meta.mask_paths == {} and meta.ignore_paths == {}


def test_masks_several_lines_ignore_on_the_first(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "m",
        image_ids="i/a.jpg\ni/b.jpg\n",
        image_sizes="i/a.jpg,64,64\ni/b.jpg,32,48\n",
        localization="i/a.jpg,m/a1.png,m/a_ign.png\ni/b.jpg,m/b1.png,\ni/a.jpg,m/a2.png,\n",
    )
    meta, problems = read_wsol_localization(folder, "masks")
    assert problems == [] and meta.image_ids == ["i/a.jpg", "i/b.jpg"]
    assert meta.mask_paths == {"i/a.jpg": ["m/a1.png", "m/a2.png"], "i/b.jpg": ["m/b1.png"]}
    assert meta.ignore_paths == {"i/a.jpg": "m/a_ign.png", "i/b.jpg": ""}
    assert meta.boxes == {} and meta.sizes["i/b.jpg"] == (32, 48)


def test_strict_by_default_and_lenient_on_request(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "m",
        image_ids="a.jpg\nb.jpg\nc.jpg\n",
        image_sizes="a.jpg,10,10\nb.jpg,10,10\n",  # c has no size
        localization="a.jpg,1,1,5,5\nb.jpg,0,0,11,5\nz.jpg,0,0,1,1\n",  # b's box leaves its image
    )
    with pytest.raises(DataError, match=r"image_sizes\.txt:c\.jpg: missing size"):
        read_wsol_localization(folder)
    meta, problems = read_wsol_localization(folder, strict=False)
    assert meta.image_ids == ["a.jpg"] and list(meta.boxes) == ["a.jpg"]
    assert [(p.path.rsplit(":", 1)[-1], p.kind) for p in problems] == [
        ("c.jpg", "missing size"),
        ("b.jpg", "bad box"),
        ("z.jpg", "unknown image"),
        ("b.jpg", "missing annotation"),
    ]


@pytest.mark.parametrize(
    ("localization", "text", "line"),
    [
        ("boxes", "a.jpg,1,1,5,5\na.jpg,1,1,5\n", 2),
        ("boxes", "a.jpg,1,1,5,5\n\na.jpg,1,x,5,5\n", 3),  # a physical line number, blank lines counted
        ("masks", "a.jpg,m.png\n", 1),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, localization: str, text: str, line: int) -> None:
    folder = write(tmp_path / "m", image_ids="a.jpg", image_sizes="a.jpg,10,10", localization=text)
    with pytest.raises(DataError, match=rf"localization\.txt: malformed line: localization\.txt:{line}: "):
        read_wsol_localization(folder, localization)  # type: ignore[arg-type]


def test_missing_file_and_bad_mode(tmp_path: Path) -> None:
    folder = write(tmp_path / "m", image_ids="a.jpg", image_sizes="a.jpg,10,10")
    with pytest.raises(DataError, match=r"localization\.txt: missing file"):
        read_wsol_localization(folder)
    with pytest.raises(ValueError, match="'boxes' or 'masks'"):
        read_wsol_localization(folder, "polygons")  # type: ignore[arg-type]
