"""The evaluation CLI on a tiny metadata folder with saved score maps."""

import json

import numpy as np
import pytest

from acol.data.readers.wsol_metadata import read_wsol_localization as read_wsol_metadata
from acol.stages.score_npy import main


def write_meta(root, ids, sizes, loc_lines) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "image_ids.txt").write_text("\n".join(ids))  # last line without newline, as in the real files
    (root / "class_labels.txt").write_text("\n".join(f"{i},0" for i in ids) + "\n")
    (root / "image_sizes.txt").write_text(
        "\n".join(f"{i},{w},{h}" for i, (w, h) in zip(ids, sizes, strict=True)) + "\n"
    )
    (root / "localization.txt").write_text("\n".join(loc_lines) + "\n")


def test_cli_box_metrics_and_json(tmp_path, capsys) -> None:
    ids = ["val/a.JPEG", "val/b.JPEG"]
    # image a: 448x448, box (120, 100, 240, 200) -> (60, 50, 120, 100) at 224; b has two boxes, one wrong.
    write_meta(
        tmp_path / "meta",
        ids,
        [(448, 448), (224, 224)],
        ["val/a.JPEG,120,100,240,200", "val/b.JPEG,0,0,5,5", "val/b.JPEG,10,10,40,40"],
    )
    maps = tmp_path / "maps" / "val"
    maps.mkdir(parents=True)
    m = np.zeros((224, 224), np.float32)
    m[50:100, 60:120] = 1.0
    np.save(maps / "a.JPEG.npy", m)  # wsolevaluation's np.save(<id>) form
    small = np.zeros((14, 14))  # raw low-resolution map, resized and normalized by the evaluator
    small[3:13, 3:13] = 5.0
    np.save(maps / "b.npy", small)  # replaced-extension form
    out = tmp_path / "res" / "r.json"
    res = main(
        [
            "--metadata",
            str(tmp_path / "meta"),
            "--scoremaps",
            str(tmp_path / "maps"),
            "--iou",
            "50",
            "--interval",
            "0.5",
            "--json",
            str(out),
        ]
    )
    assert res["metric"] == "MaxBoxAcc"
    assert res["max_box_acc"]["50"] == 50.0  # a right, b's blob (about 48..208) matches neither GT box
    assert json.loads(out.read_text())["curves"]["50"] == [50.0, 50.0]
    assert "MaxBoxAcc IoU 50: 50.0000" in capsys.readouterr().out
    assert not list(out.parent.glob(".*tmp"))  # atomic write left no temp file


def test_cli_missing_scoremap_names_file_and_id(tmp_path) -> None:
    write_meta(tmp_path / "meta", ["x/c.jpg"], [(10, 10)], ["x/c.jpg,1,1,5,5"])
    (tmp_path / "maps").mkdir()
    with pytest.raises(FileNotFoundError, match=r"'x/c\.jpg'.*c\.jpg\.npy"):
        main(["--metadata", str(tmp_path / "meta"), "--scoremaps", str(tmp_path / "maps")])


def test_metadata_errors_name_the_file(tmp_path) -> None:
    write_meta(tmp_path / "m", ["a.jpg"], [(10, 10)], ["a.jpg,1,1,5"])
    with pytest.raises(ValueError, match=r"localization\.txt:1"):
        read_wsol_metadata(tmp_path / "m")
    write_meta(tmp_path / "n", ["a.jpg", "b.jpg"], [(10, 10), (3, 3)], ["a.jpg,1,1,5,5"])
    with pytest.raises(ValueError, match=r"no annotation for image id 'b\.jpg'"):
        read_wsol_metadata(tmp_path / "n")


def test_cli_pxap_with_masks(tmp_path) -> None:
    import cv2

    write_meta(tmp_path / "meta", ["i/a.jpg"], [(64, 64)], ["i/a.jpg,m/a1.png,m/ign.png"])
    (tmp_path / "masks" / "m").mkdir(parents=True)
    fg = np.zeros((64, 64), np.uint8)
    fg[:32] = 255
    ign = np.zeros((64, 64), np.uint8)
    ign[32:40] = 255
    cv2.imwrite(str(tmp_path / "masks" / "m" / "a1.png"), fg)
    cv2.imwrite(str(tmp_path / "masks" / "m" / "ign.png"), ign)
    (tmp_path / "maps" / "i").mkdir(parents=True)
    m = np.zeros((224, 224))
    m[:112] = 1.0
    m[112:140] = 0.9  # in the ignore band: must not cost precision
    np.save(tmp_path / "maps" / "i" / "a.jpg.npy", m)
    res = main(
        [
            "--metadata",
            str(tmp_path / "meta"),
            "--scoremaps",
            str(tmp_path / "maps"),
            "--masks",
            str(tmp_path / "masks"),
        ]
    )
    assert res["pxap"] == pytest.approx(100.0)
