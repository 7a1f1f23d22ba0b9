"""The train-fullsup split (Choe et al. 2020) enters the pipeline as a manifest read from WSOL metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from acol.config import DataParams
from acol.data.manifest import manifest_classes, manifest_from_records
from acol.data.readers.wsol_metadata import write_wsol_metadata
from acol.stages.prepare import index_fullsup

CLASSES = ["n01440764", "n01443537", "n01484850"]


def test_no_folder_gives_an_empty_manifest_with_the_classes() -> None:
    table, problems = index_fullsup(DataParams(), CLASSES)
    assert table.num_rows == 0 and problems == [] and manifest_classes(table) == CLASSES


def test_wsol_metadata_folder_becomes_a_manifest_in_the_val_class_order(tmp_path: Path) -> None:
    root = tmp_path / "data"
    records = []
    for k in range(3):
        image_id = f"val2/{k}/0.jpeg"
        (root / image_id).parent.mkdir(parents=True)
        (root / image_id).write_bytes(b"not read here")
        records.append(
            {"image_id": image_id, "class_index": k, "width": 40, "height": 30, "boxes": [[1, 2, 20, 25]]}
        )
    write_wsol_metadata(manifest_from_records(records, CLASSES, "wsol"), tmp_path / "meta")
    data = DataParams(root=str(root), fullsup_metadata=str(tmp_path / "meta"))
    table, problems = index_fullsup(data, CLASSES)
    assert problems == [] and manifest_classes(table) == CLASSES
    assert table.column("image_id").to_pylist() == [r["image_id"] for r in records]
    assert table.column("class_id").to_pylist() == CLASSES
    assert table.column("boxes").to_pylist()[2] == [[1.0, 2.0, 20.0, 25.0]]

    (root / "val2/1/0.jpeg").unlink()
    with pytest.raises(FileNotFoundError, match=r"data\.fullsup_metadata: 1 of its images .*val2/1/0\.jpeg"):
        index_fullsup(data, CLASSES)
    with pytest.raises(FileNotFoundError, match=r"data\.fullsup_metadata"):
        index_fullsup(DataParams(root=str(root), fullsup_metadata=str(tmp_path / "absent")), CLASSES)


def test_cub_ids_get_the_images_prefix_of_the_cub_reader(tmp_path: Path) -> None:
    image_id = "001.Black_footed_Albatross/1.jpg"  # CUBV2 ids are relative to CUB_200_2011/images
    (tmp_path / "data/images/001.Black_footed_Albatross").mkdir(parents=True)
    (tmp_path / "data/images" / image_id).write_bytes(b"x")
    record = {"image_id": image_id, "class_index": 0, "width": 9, "height": 9, "boxes": [[0, 0, 5, 5]]}
    write_wsol_metadata(manifest_from_records([record], CLASSES, "wsol"), tmp_path / "meta")
    data = DataParams(source="cub", root=str(tmp_path / "data"), fullsup_metadata=str(tmp_path / "meta"))
    table, _ = index_fullsup(data, CLASSES)
    assert table.column("image_id").to_pylist() == [f"images/{image_id}"]
