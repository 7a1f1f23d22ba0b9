"""The map store: predict_batch against plain PyTorch, boxes against the protocol's own code, Parquet round trip."""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from acol.inference.mapstore import (
    MAP_COLUMNS,
    MAPSTORE_SCHEMA,
    PARQUET_OPTIONS,
    MapStoreError,
    columns_to_table,
    maps_array,
    ok_rows,
    part_name,
    read_maps,
    read_metadata,
)
from acol.inference.predict import predict_batch
from acol.models import build_model, normalize_maps, select_class_maps
from acol.wsol.boxes import boxes_from_maps


def reference_box(raw: np.ndarray, width: int, height: int, threshold: float) -> np.ndarray:
    """wsolevaluation's steps written out: resize, normalize_scoremap, one threshold, largest contour."""
    cam = cv2.resize(raw.astype(np.float32), (224, 224), interpolation=cv2.INTER_CUBIC)
    if np.isnan(cam).any() or cam.min() == cam.max():
        cam = np.zeros_like(cam)
    else:
        cam -= cam.min()
        cam /= cam.max()
    q = (cam * 255).astype(np.uint8)
    _, binary = cv2.threshold(q, int(threshold * np.max(q)), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if not contours:
        box = np.zeros(4)
    else:
        x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
        box = np.array([x, y, min(x + w, 223), min(y + h, 223)], dtype=np.float64)
    return (box * np.array([width, height, width, height]) / 224).astype(np.float32)


def test_box_of_a_quadrant_is_hand_computable():
    # 8x8 map, top-left 4x4 ones. Upsampled x28, the 0.5 crossing of the (antisymmetric) bicubic edge lies
    # between output pixels 111 and 112; the ringing is symmetric so min-max keeps 0.5 there. boundingRect
    # gives x=0, w=112, and the protocol's box is (x, y, x + w, y + h) = (0, 0, 112, 112).
    raw = np.zeros((1, 8, 8), np.float32)
    raw[0, :4, :4] = 1
    box = boxes_from_maps(raw, np.array([224]), np.array([224]), 0.5)
    np.testing.assert_array_equal(box, [[0, 0, 112, 112]])
    # Original image 448 x 112: x scales by 2, y by 0.5.
    box = boxes_from_maps(raw, np.array([448]), np.array([112]), 0.5)
    np.testing.assert_array_equal(box, [[0, 0, 224, 56]])


def test_box_of_a_flat_and_a_full_map():
    # A constant raw map is normalized to zeros by the model (normalize_maps); zeros stay zeros through the
    # resize, and nothing is above any cut: the protocol's empty box.
    flat = np.zeros((1, 6, 6), np.float32)
    np.testing.assert_array_equal(boxes_from_maps(flat, np.array([50]), np.array([50]), 0.2), [[0, 0, 0, 0]])
    full = np.ones((1, 6, 6), np.float32)
    full[0, 5, 5] = 0  # everything but one corner is high: the box covers the frame, x1 clipped to 223
    box = boxes_from_maps(full, np.array([448]), np.array([224]), 0.2)
    np.testing.assert_array_equal(box, [[0, 0, 446, 223]])


def test_boxes_match_the_protocol_reference_on_random_maps():
    rng = np.random.default_rng(0)
    maps = rng.random((12, 7, 9)).astype(np.float32) ** 3  # several blobs: the largest contour matters
    widths, heights = rng.integers(20, 500, 12), rng.integers(20, 500, 12)
    for threshold in (0.1, 0.35, 0.6):
        got = boxes_from_maps(maps, widths, heights, threshold)
        want = np.stack(
            [reference_box(m, w, h, threshold) for m, w, h in zip(maps, widths, heights, strict=True)]
        )
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def acol_model():
    torch.manual_seed(0)
    return build_model("small", 4, "acol", head_channels=8)


def _batch(n: int = 3, size: int = 32) -> tuple[torch.Tensor, np.ndarray]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=generator), np.array([0, 2, 3][:n])


def test_predict_batch_matches_plain_pytorch(acol_model):
    images, labels = _batch()
    widths, heights = np.array([100, 40, 64]), np.array([50, 80, 64])
    acol_model.train()  # predict_batch must switch to eval (BatchNorm statistics)
    cols = predict_batch(acol_model, images, labels, widths, heights, 0.2)
    assert not acol_model.training
    with torch.no_grad():
        # The protocol's two maps: the GT class's from a pass erased by the GT class, the top-1 class's from
        # a pass erased by the top-1 class (official ACoL code; Choe et al. wsol/method/acol.py).
        lab = torch.as_tensor(labels)
        out = acol_model(images, lab)
        probs = torch.softmax(out.logits, 1)
        scores, classes = probs.topk(4, dim=1)
        assert (classes[:, 0] != lab).any()  # a misclassified image, where the two passes differ
        by_top1 = acol_model(images, classes[:, 0])
        ref_a = normalize_maps(select_class_maps(out.maps_a, lab)).flatten(1).numpy()
        ref_b = normalize_maps(select_class_maps(out.maps_b, lab)).flatten(1).numpy()
        ref_top1 = torch.maximum(
            normalize_maps(select_class_maps(by_top1.maps_a, classes[:, 0])),
            normalize_maps(select_class_maps(by_top1.maps_b, classes[:, 0])),
        )
        ref_top1 = ref_top1.flatten(1).numpy()
    assert cols["top5_classes"].dtype == np.int32 and cols["top5_classes"].shape == (3, 4)  # k = min(5, K)
    np.testing.assert_array_equal(cols["top5_classes"], classes.numpy())
    np.testing.assert_allclose(cols["top5_scores"], scores.numpy(), rtol=1e-6)
    assert (np.diff(cols["top5_scores"], axis=1) <= 0).all()
    assert cols["map_gt"].dtype == np.float32 and cols["map_gt"].shape == (3, 64)  # 32 / stride 4 = 8x8
    np.testing.assert_array_equal(cols["map_height"], [8, 8, 8])
    np.testing.assert_array_equal(cols["map_a_gt"], ref_a)
    np.testing.assert_array_equal(cols["map_b_gt"], ref_b)
    np.testing.assert_array_equal(cols["map_top1"], ref_top1)
    # The fused map is max(A, B), exactly: the maps are stored as computed (float32).
    np.testing.assert_array_equal(cols["map_gt"], np.maximum(ref_a, ref_b))
    assert cols["map_gt"].min() >= 0 and cols["map_gt"].max() <= 1
    # The box comes from the stored top-1 map, so readers can recompute it.
    want = np.stack(
        [reference_box(m.reshape(8, 8), w, h, 0.2) for m, w, h in zip(ref_top1, widths, heights, strict=True)]
    )
    np.testing.assert_array_equal(cols["pred_box"], want)


def test_labels_change_only_the_gt_maps(acol_model):
    images, labels = _batch()
    a = predict_batch(acol_model, images, labels, [32] * 3, [32] * 3, 0.2)
    b = predict_batch(acol_model, images, (labels + 1) % 4, [32] * 3, [32] * 3, 0.2)
    for name in ("top5_classes", "top5_scores", "map_top1", "pred_box"):
        np.testing.assert_array_equal(a[name], b[name])  # no label leaks into the prediction
    assert not np.array_equal(a["map_gt"], b["map_gt"])


def test_predict_batch_cam_has_no_branch_b():
    torch.manual_seed(0)
    model = build_model("small", 7, "cam", head_channels=8)
    images, labels = _batch(2)
    cols = predict_batch(model, images, labels, [32, 32], [32, 32], 0.2)
    assert cols["map_b_gt"] is None
    assert cols["top5_classes"].shape == (2, 5)
    np.testing.assert_array_equal(cols["map_gt"], cols["map_a_gt"])


def _columns(ids: list[str], errors: list[str | None], h: int = 2, w: int = 3) -> dict:
    n = len(ids)
    rng = np.random.default_rng(len(ids))
    maps = rng.random((n, h * w)).astype(np.float32)
    return {
        "image_id": np.array(ids, dtype=object),
        "label": np.arange(n),
        "error": np.array([e or "" for e in errors], dtype=object),
        "top5_classes": np.tile(np.arange(2, dtype=np.int32), (n, 1)),
        "top5_scores": np.full((n, 2), 0.5, np.float32),
        "map_height": np.full(n, h),
        "map_width": np.full(n, w),
        "map_gt": maps,
        "map_top1": maps,
        "map_a_gt": maps,
        "pred_box": np.tile(np.array([1, 2, 3, 4], np.float32), (n, 1)),
    }


def test_error_rows_are_null_and_maps_round_trip(tmp_path):
    cols = _columns(["b", "c"], [None, "empty file: 0 bytes"])
    table = columns_to_table(cols, {"method": "cam"})
    assert table.schema.equals(MAPSTORE_SCHEMA)  # metadata aside
    row = table.to_pylist()[1]
    assert row["error"] == "empty file: 0 bytes"
    for name in ("map_gt", "map_top1", "map_a_gt", "map_b_gt", "pred_box", "top5_classes", "map_height"):
        assert row[name] is None, name
    assert table.column("map_b_gt").null_count == 2  # not given (CAM): null everywhere
    first = columns_to_table(_columns(["a"], [None]), {"method": "cam"})
    pq.write_table(table, tmp_path / part_name(0))
    pq.write_table(first, tmp_path / part_name(1))
    back = read_maps(tmp_path)
    assert back.column("image_id").to_pylist() == ["a", "b", "c"]  # sorted across parts
    with pytest.raises(MapStoreError, match="null rows"):
        maps_array(back, "map_gt")
    good = ok_rows(back)
    arr = maps_array(good, "map_gt")
    assert arr.shape == (2, 2, 3) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr[1], cols["map_gt"][0].astype(np.float32).reshape(2, 3))
    assert read_metadata(tmp_path) == {"method": "cam"}
    assert read_maps(tmp_path, columns=["label"]).column_names == ["image_id", "label"]


def test_read_maps_errors_name_the_problem(tmp_path):
    with pytest.raises(MapStoreError, match="not found"):
        read_maps(tmp_path / "nope")
    with pytest.raises(MapStoreError, match="no part"):
        read_maps(tmp_path)
    pq.write_table(pa.table({"image_id": ["a"], "label": pa.array([1], pa.int64())}), tmp_path / part_name(0))
    with pytest.raises(MapStoreError, match=r"part-00000.parquet: column 'label' has type int64"):
        read_maps(tmp_path)
    with pytest.raises(MapStoreError, match="not a map column"):
        maps_array(columns_to_table(_columns(["a"], [None])), "label")
    mixed = pa.concat_tables(
        [columns_to_table(_columns(["a"], [None])), columns_to_table(_columns(["b"], [None], h=3, w=2))]
    )
    with pytest.raises(MapStoreError, match="different map grids"):
        maps_array(mixed, "map_gt")


# --- the stored precision (float32) and the Parquet encoding of the map values ---

LEGACY_OPTIONS = {
    "compression": "zstd",
    "compression_level": 3,
    "write_statistics": False,
}  # the float16 writer's
NOT_FLOAT16 = np.float32(0.1234567)  # float16 keeps 11 significant bits: it rounds this to 0.12347


def _write_store(folder, columns: dict, options: dict, half: bool = False) -> None:
    """One part; ``half`` writes it as the float16 store did: list<float16> maps, pyarrow's default encodings."""
    table = columns_to_table(columns, {"method": "cam"})
    if half:
        for name in MAP_COLUMNS:
            i = table.schema.get_field_index(name)
            rows = [None if m is None else np.asarray(m, np.float16) for m in table.column(name).to_pylist()]
            table = table.set_column(
                i, pa.field(name, pa.list_(pa.float16())), pa.array(rows, pa.list_(pa.float16()))
            )
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / part_name(0), **options)


def test_float32_maps_survive_the_store_bit_for_bit(tmp_path):
    """A value float16 cannot hold (and random float32 maps) read back with the same bits."""
    assert np.float16(NOT_FLOAT16).astype(np.float32) != NOT_FLOAT16  # the test would catch float16 storage
    cols = _columns(["a", "b", "c"], [None, None, None])
    maps = cols["map_gt"].copy()
    maps[0, 0] = NOT_FLOAT16
    cols.update(map_gt=maps, map_top1=maps[::-1].copy(), map_a_gt=maps / 3)
    _write_store(tmp_path, cols, PARQUET_OPTIONS)
    back = read_maps(tmp_path)
    for name in ("map_gt", "map_top1", "map_a_gt"):
        assert back.schema.field(name).type == pa.list_(pa.float32())
        got = maps_array(back, name).reshape(3, -1)
        np.testing.assert_array_equal(got.view(np.uint32), cols[name].astype(np.float32).view(np.uint32))
    assert maps_array(back, "map_gt")[0, 0, 0] == NOT_FLOAT16


def test_map_values_are_byte_stream_split_without_a_dictionary(tmp_path):
    """The writer's options, read from the file: the map values BYTE_STREAM_SPLIT and no dictionary page."""
    _write_store(tmp_path, _columns(["a", "b"], [None, None]), PARQUET_OPTIONS)
    row_group = pq.ParquetFile(tmp_path / part_name(0)).metadata.row_group(0)
    chunks = {row_group.column(i).path_in_schema: row_group.column(i) for i in range(row_group.num_columns)}
    for name in MAP_COLUMNS:
        chunk = chunks[f"{name}.list.element"]
        assert "BYTE_STREAM_SPLIT" in chunk.encodings, (name, chunk.encodings)
        assert not {"RLE_DICTIONARY", "PLAIN_DICTIONARY"} & set(chunk.encodings), (name, chunk.encodings)
        assert not chunk.has_dictionary_page, name
    assert "RLE_DICTIONARY" in chunks["error"].encodings  # the other columns keep pyarrow's default


def test_a_legacy_float16_store_reads_as_float32(tmp_path):
    """A store as the float16 code wrote it reads back as float32 holding the float16 values; a store of a
    legacy part and a float32 part reads as one table."""
    cols = _columns(["a", "b", "c"], [None, "empty file: 0 bytes", None])
    cols["map_gt"][0, 0] = NOT_FLOAT16
    _write_store(tmp_path / "old", cols, LEGACY_OPTIONS, half=True)
    schema = pq.read_schema(tmp_path / "old" / part_name(0))
    assert all(schema.field(name).type == pa.list_(pa.float16()) for name in MAP_COLUMNS)
    back = read_maps(tmp_path / "old")
    assert all(back.schema.field(name).type == pa.list_(pa.float32()) for name in MAP_COLUMNS)
    assert back.column("map_gt").null_count == 1 and back.column("map_b_gt").null_count == 3
    got = maps_array(ok_rows(back), "map_gt").reshape(2, -1)
    want = cols["map_gt"][[0, 2]].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got, want)
    assert got[0, 0] == np.float32(np.float16(NOT_FLOAT16)) != NOT_FLOAT16
    new = columns_to_table(_columns(["d"], [None]), {"method": "cam"})
    pq.write_table(new, tmp_path / "old" / part_name(1), **PARQUET_OPTIONS)
    both = read_maps(tmp_path / "old", columns=["map_gt", "map_height", "map_width", "error"])
    assert both.column("image_id").to_pylist() == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(maps_array(ok_rows(both), "map_gt")[:2].reshape(2, -1), want)


def test_a_map_column_of_another_type_is_rejected_naming_the_file(tmp_path):
    table = columns_to_table(_columns(["a"], [None]))
    i = table.schema.get_field_index("map_top1")
    wide = table.column(i).cast(pa.list_(pa.float64()))
    pq.write_table(table.set_column(i, pa.field("map_top1", wide.type), wide), tmp_path / part_name(0))
    with pytest.raises(MapStoreError, match=r"part-00000.parquet: column 'map_top1' has type list<.*double>"):
        read_maps(tmp_path)
