"""The synthetic ILSVRC-format dataset: determinism, layout and formats, boxes vs masks, idempotence."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from acol.data.synthetic import (
    SyntheticConfig,
    class_wnids,
    generate_synthetic,
    render_image,
    split_labels,
    texture_of_class,
)

TINY = dict(num_classes=4, train_per_class=3, val_per_class=4, holdout_per_class=2, image_size=48)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticConfig]:
    config = SyntheticConfig(seed=3, **TINY)
    root = tmp_path_factory.mktemp("synthetic") / "data"
    generate_synthetic(root, config, progress=False)
    return root, config


def _read_xml(path: Path) -> tuple[str, tuple[int, int, int], list[tuple[str, list[int]]]]:
    tree = ET.parse(path).getroot()
    size = tuple(int(tree.findtext(f"size/{tag}")) for tag in ("width", "height", "depth"))
    objects = [
        (obj.findtext("name"), [int(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")])
        for obj in tree.findall("object")
    ]
    return tree.findtext("filename"), size, objects  # type: ignore[return-value]


def _solution(root: Path, split: str) -> dict[str, list[tuple[str, list[int]]]]:
    with open(root / f"LOC_{split}_solution.csv", newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["ImageId", "PredictionString"]
        rows = {}
        for image_id, prediction in reader:
            fields = prediction.split()
            assert len(fields) % 5 == 0
            rows[image_id] = [
                (fields[i], [int(v) for v in fields[i + 1 : i + 5]]) for i in range(0, len(fields), 5)
            ]
    return rows


def test_layout_and_counts(dataset: tuple[Path, SyntheticConfig]) -> None:
    root, config = dataset
    wnids = class_wnids(config.num_classes)
    assert wnids == sorted(wnids) and wnids[0] == "n90000000"
    mapping = (root / "LOC_synset_mapping.txt").read_text().splitlines()
    assert [line.split()[0] for line in mapping] == wnids
    for wnid in wnids:
        files = sorted(p.name for p in (root / "train" / wnid).iterdir())
        assert files == sorted(f"{wnid}_{i}.JPEG" for i in range(config.train_per_class))
    for split, per_class in (("val", config.val_per_class), ("holdout", config.holdout_per_class)):
        n = per_class * config.num_classes
        assert len(list((root / split).glob("*.JPEG"))) == n
        assert len(list((root / "Annotations" / "CLS-LOC" / split).glob("*.xml"))) == n
        assert len(list((root / "masks" / split).glob("*.png"))) == n
    assert (root / "val" / "ILSVRC2012_val_00000000.JPEG").is_file()
    image = cv2.imread(str(root / "val" / "ILSVRC2012_val_00000000.JPEG"))
    assert image.shape == (config.image_size, config.image_size, 3)
    # No temp files left behind by the atomic writes.
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    marker = json.loads((root / "synthetic.json").read_text())
    assert SyntheticConfig.model_validate(marker["config"]) == config
    assert marker["summary"]["images"] == {"train": 12, "val": 16, "holdout": 8}


@pytest.mark.parametrize("split", ["val", "holdout"])
def test_xml_csv_masks_agree(dataset: tuple[Path, SyntheticConfig], split: str) -> None:
    root, config = dataset
    rows = _solution(root, split)
    labels = split_labels(config, split)
    wnids = class_wnids(config.num_classes)
    assert len(rows) == len(labels)
    # Every class appears val_per_class times, shuffled over indices.
    assert np.bincount(labels).tolist() == [len(labels) // config.num_classes] * config.num_classes
    for image_id, objects in rows.items():
        index = int(image_id.rsplit("_", 1)[1])
        filename, size, xml_objects = _read_xml(root / "Annotations" / "CLS-LOC" / split / f"{image_id}.xml")
        assert filename == f"{image_id}.JPEG"
        assert size == (config.image_size, config.image_size, 3)
        assert xml_objects == objects
        assert {name for name, _ in objects} == {wnids[labels[index]]}
        mask = cv2.imread(str(root / "masks" / split / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        covered = np.zeros_like(mask, dtype=bool)
        for _, (x0, y0, x1, y1) in objects:
            inside = mask[y0 : y1 + 1, x0 : x1 + 1] > 0
            # Each box is the tight bounding box of its silhouette: every border row/column touches the mask.
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[y0 : y1 + 1, x0 : x1 + 1] = True
        assert not (mask[~covered] > 0).any(), f"{image_id}: mask pixels outside every box"
        ys, xs = np.nonzero(mask)
        boxes = np.array([b for _, b in objects])
        assert (xs.min(), ys.min(), xs.max(), ys.max()) == (
            boxes[:, 0].min(),
            boxes[:, 1].min(),
            boxes[:, 2].max(),
            boxes[:, 3].max(),
        )


def test_render_matches_files_and_parts_inside_objects(dataset: tuple[Path, SyntheticConfig]) -> None:
    root, config = dataset
    rendered = render_image(config, "val", 5)
    mask = cv2.imread(str(root / "masks" / "val" / "ILSVRC2012_val_00000005.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(rendered.mask, mask > 0)
    assert rendered.part_mask.any() and not (rendered.part_mask & ~rendered.mask).any()
    for obj in rendered.objects:
        x0, y0, x1, y1 = obj.box
        px0, py0, px1, py1 = obj.part_box
        assert x0 <= px0 <= px1 <= x1 and y0 <= py0 <= py1 <= y1
        part_area = (px1 - px0 + 1) * (py1 - py0 + 1)
        # The part alone is far from the box: a part-only box would miss at IoU 0.5.
        assert part_area / ((x1 - x0 + 1) * (y1 - y0 + 1)) < 0.5
    # The part is the class colour, saturated; the body is muted.
    hsv = cv2.cvtColor(rendered.image, cv2.COLOR_BGR2HSV)
    body = rendered.mask & ~rendered.part_mask
    assert np.median(hsv[..., 1][rendered.part_mask]) > 200 > np.median(hsv[..., 1][body])
    assert np.median(hsv[..., 1][~rendered.mask]) < 40  # grey background


def test_deterministic_and_seed_dependent(tmp_path: Path, dataset: tuple[Path, SyntheticConfig]) -> None:
    root, config = dataset
    again = tmp_path / "again"
    generate_synthetic(again, config, workers=2, progress=False)  # parallel: same bytes
    other = tmp_path / "other"
    generate_synthetic(other, config.model_copy(update={"seed": 4}), progress=False)
    names = [
        "val/ILSVRC2012_val_00000003.JPEG",
        f"train/{class_wnids(4)[1]}/{class_wnids(4)[1]}_2.JPEG",
        "masks/val/ILSVRC2012_val_00000003.png",
        "LOC_val_solution.csv",
        "synthetic.json",
    ]
    for name in names:
        assert (root / name).read_bytes() == (again / name).read_bytes(), name
    for name in [*names[:2], "LOC_val_solution.csv"]:
        assert (root / name).read_bytes() != (other / name).read_bytes(), name


def test_idempotent_and_refuses_other_config(tmp_path: Path) -> None:
    config = SyntheticConfig(seed=1, **TINY)
    root = tmp_path / "d"
    first = generate_synthetic(root, config, progress=False)
    assert first.created
    image = root / "val" / "ILSVRC2012_val_00000000.JPEG"
    image.write_bytes(b"sentinel")  # untouched by a second call with the same config
    second = generate_synthetic(root, config, progress=False)
    assert not second.created and image.read_bytes() == b"sentinel"
    assert second.images == first.images and second.boxes_per_image == first.boxes_per_image
    with pytest.raises(FileExistsError, match="another config"):
        generate_synthetic(root, config.model_copy(update={"seed": 2}), progress=False)
    # Without the marker the folder counts as incomplete and is regenerated.
    (root / "synthetic.json").unlink()
    assert generate_synthetic(root, config, progress=False).created
    assert image.read_bytes()[:2] == b"\xff\xd8"


def test_multiple_objects_and_box_stats() -> None:
    config = SyntheticConfig(num_classes=2, val_per_class=40, train_per_class=1, holdout_per_class=0)
    counts = [len(render_image(config, "val", i).objects) for i in range(80)]
    assert 1 in counts and max(counts) >= 2
    for i in range(20):
        objects = render_image(config, "val", i).objects
        boxes = [o.box for o in objects]
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):  # instances never overlap
                assert (
                    boxes[a][2] < boxes[b][0]
                    or boxes[b][2] < boxes[a][0]
                    or (boxes[a][3] < boxes[b][1] or boxes[b][3] < boxes[a][1])
                )


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValidationError, match="object_count_probs"):
        SyntheticConfig(object_count_probs=(0.5, 0.2))
    with pytest.raises(ValidationError, match="extra"):
        SyntheticConfig(num_clases=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        SyntheticConfig(body_mode="part")  # type: ignore[arg-type]


def _texture_spectrum(config: SyntheticConfig, index: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Label, median body HSV and the 2-D power spectrum of the body's value (V) channel of a train image."""
    rendered = render_image(config, "train", index)
    body = rendered.mask & ~rendered.part_mask
    hsv = cv2.cvtColor(rendered.image, cv2.COLOR_BGR2HSV).astype(np.float64)
    value = np.where(body, hsv[..., 2] - hsv[..., 2][body].mean(), 0.0)
    power = np.abs(np.fft.fft2(value)) ** 2
    return rendered.label, np.median(hsv[body], axis=0), power


def test_texture_mode_same_colour_class_specific_texture() -> None:
    """Texture bodies: one colour for every class; the pattern (orientation x period) tells the class."""
    config = SyntheticConfig(num_classes=10, train_per_class=2, noise_std=0.0, jpeg_quality=100)
    assert config.body_mode == "texture"  # the default
    assert len({texture_of_class(config, k) for k in range(10)}) == 10
    size = config.image_size
    freqs = np.fft.fftfreq(size)
    fy, fx = np.meshgrid(freqs, freqs, indexing="ij")
    colours = []
    for label in range(10):
        pattern, period = texture_of_class(config, label)
        for index in (2 * label, 2 * label + 1):
            got, hsv, power = _texture_spectrum(config, index)
            assert got == label
            colours.append(hsv)
            power[0, 0] = 0
            peak_y, peak_x = np.unravel_index(np.argmax(power), power.shape)
            py, px = abs(fy[peak_y, peak_x]), abs(fx[peak_y, peak_x])
            # The strongest frequency of a stripe pattern lies on its axis at 1/period cycles per pixel.
            if pattern == "stripes-0":  # horizontal stripes: the value changes along y only
                assert px == 0 and py == pytest.approx(1 / period, abs=1.5 / size)
            elif pattern == "stripes-90":
                assert py == 0 and px == pytest.approx(1 / period, abs=1.5 / size)
            elif pattern == "stripes-45":
                assert px == pytest.approx(py, abs=1.5 / size)
                assert np.hypot(px, py) == pytest.approx(1 / period, abs=2 / size)
    colours_arr = np.array(colours)
    # Hue and saturation of the body are the same whatever the class (to JPEG/rounding error).
    hue, sat = config.texture_body_hsv[:2]
    assert np.all(np.abs(colours_arr[:, 0] - hue) <= 3), colours_arr[:, 0]
    assert np.all(np.abs(colours_arr[:, 1] - sat) <= 20), colours_arr[:, 1]
    # Two images of one class share the pattern but not the phase: the texture is not a fixed template.
    a = render_image(config, "train", 0)
    b = render_image(config, "train", 1)
    assert not np.array_equal(a.image[a.mask & b.mask], b.image[a.mask & b.mask])


def test_texture_mode_needs_enough_textures() -> None:
    with pytest.raises(ValidationError, match="texture_periods_px"):
        SyntheticConfig(num_classes=12)  # 5 patterns x 2 periods = 10 textures
    assert SyntheticConfig(num_classes=12, texture_periods_px=(4.0, 6.0, 9.0)).num_classes == 12
    assert SyntheticConfig(num_classes=12, body_mode="pair").num_classes == 12
