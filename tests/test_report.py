"""The HTML report: built from fake stage outputs for the tiny dataset, plus hand-computed helper cases."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from acol.data.manifest import read_manifest
from acol.inference.mapstore import columns_to_table, part_name
from acol.stages.plots import overlay_map
from acol.stages.report import (
    PUBLISHED,
    MethodInputs,
    ReportError,
    ReportInputs,
    best_ious,
    best_methods,
    box_region_means,
    build_report,
    gallery_indices,
    metric_direction,
)

MAP = 12  # map grid of the fake maps (the tiny images are 48x48)

METRICS = {
    "acol": {"method": "acol", "num_images": 16, "top1_cls_error": 12.5, "top5_cls_error": 0.0,
             "top1_loc_error": 31.25, "top5_loc_error": 25.0, "gt_known_loc": 81.25, "maxboxacc": 77.7,
             "maxboxacc_v2": 61.23, "maxboxacc_v2_iou30": 90.0, "maxboxacc_v2_iou50": 62.5,
             "maxboxacc_v2_iou70": 31.2, "pxap": 70.11, "best_threshold": 0.35, "erase_threshold": 0.6,
             "backbone": "small"},
    "cam": {"method": "cam", "num_images": 16, "top1_cls_error": 6.25, "top5_cls_error": 0.0,
            "top1_loc_error": 43.75, "top5_loc_error": 37.5, "gt_known_loc": 68.75, "maxboxacc": 70.0,
            "maxboxacc_v2": 55.1, "maxboxacc_v2_iou30": 85.0, "maxboxacc_v2_iou50": 56.2,
            "maxboxacc_v2_iou70": 24.1, "pxap": 66.0, "best_threshold": 0.25, "erase_threshold": None,
            "backbone": "small"},
}  # fmt: skip


def _fake_maps(manifest, method: str, shift: int) -> dict:
    """Maps of one method: fused high on the GT box, A on its left half, B on its right half (ACoL only)."""
    n = manifest.num_rows
    boxes = [np.asarray(b[0]) for b in manifest.column("boxes").to_pylist()]
    gt = np.full((n, MAP, MAP), 0.05, np.float32)
    a = np.full((n, MAP, MAP), 0.05, np.float32)
    b = np.full((n, MAP, MAP), 0.05, np.float32)
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes) / 4):  # 48 px -> 12 cells
        c0, r0, c1, r1 = int(x0), int(y0), int(x1) + 1, int(y1) + 1
        mid = (c0 + c1) // 2
        gt[i, r0:r1, c0:c1] = 1.0
        a[i, r0:r1, c0:mid] = 1.0
        b[i, r0:r1, mid:c1] = 0.8
    pred = (
        np.asarray(boxes, np.float32) + np.arange(n, dtype=np.float32)[:, None] * shift
    )  # worse down the list
    pred = np.clip(pred, 0, 47)
    errors = [None] * n
    errors[-1] = "truncated: image file is truncated"  # one unreadable image
    return {
        "image_id": manifest.column("image_id").to_pylist(),
        "label": manifest.column("class_index").to_numpy(),
        "error": errors,
        "top5_classes": np.tile(np.arange(4, dtype=np.int32), (n, 1)),
        "top5_scores": np.full((n, 4), 0.25, np.float32),
        "map_height": np.full(n, MAP),
        "map_width": np.full(n, MAP),
        "map_gt": gt.reshape(n, -1),
        "map_top1": gt.reshape(n, -1),
        "map_a_gt": a.reshape(n, -1),
        "map_b_gt": b.reshape(n, -1) if method == "acol" else None,
        "pred_box": pred,
    }


def _write_outputs(tmp: Path, manifest_path: Path, with_pr: bool = True, with_pxap: bool = True) -> dict:
    manifest = read_manifest(manifest_path)
    thresholds = np.round(np.arange(0, 1, 0.05), 2)
    dirs = {"evaluate": tmp / "evaluate", "train": tmp / "train", "extract": tmp / "extract"}
    for k, method in enumerate(("acol", "cam")):
        ev, tr, ex = (dirs[d] / method for d in ("evaluate", "train", "extract"))
        for d in (ev, tr, ex / "maps"):
            d.mkdir(parents=True)
        metrics = dict(METRICS[method])
        if not with_pxap:
            metrics["pxap"] = None
        (ev / "evaluation.json").write_text(json.dumps(metrics))
        bump = 1 - np.abs(thresholds - 0.3 - 0.05 * k)
        pd.DataFrame({"threshold": thresholds, "iou30": 90 * bump, "iou50": 60 * bump, "iou70": 30 * bump,
                      "single_iou50": 55 * bump}).to_csv(ev / "box_acc.csv", index=False)  # fmt: skip
        if with_pr:
            recall = np.linspace(1, 0, len(thresholds))
            pd.DataFrame({"threshold": thresholds, "precision": 0.3 + 0.6 * (1 - recall) ** (0.5 + k),
                          "recall": recall}).to_csv(ev / "pr_curve.csv", index=False)  # fmt: skip
        epochs = np.arange(1, 6)
        pd.DataFrame({"epoch": epochs, "loss": 2.0 / epochs, "acc_a": 20 + 10 * epochs,
                      "acc_b": 15 + 10 * epochs if method == "acol" else np.nan, "val_top1": 25 + 9 * epochs,
                      "val_top5": 60 + 7 * epochs, "val_loss": 2.2 / epochs, "lr": 0.01 / epochs,
                      "seconds": 3.0}).to_csv(tr / "history.csv", index=False)  # fmt: skip
        pq.write_table(
            columns_to_table(_fake_maps(manifest, method, shift=1 + k)), ex / "maps" / part_name(0)
        )
    summary = tmp / "summary.json"
    summary.write_text(json.dumps({"train_images": 32, "val_images": 16, "classes": ["a", "b", "c", "d"],
                                   "boxes": {"mean_area_fraction": 0.11}, "problems_by_kind": {}}))  # fmt: skip
    return {**dirs, "summary": summary}


def _inputs(out: dict, tiny_dataset: dict, **kw) -> ReportInputs:
    return ReportInputs.from_dirs(
        out["evaluate"], out["train"], out["extract"], manifest=tiny_dataset["val"], summary=out["summary"],
        dataset_root=tiny_dataset["root"], gallery_size=3, **kw,
    )  # fmt: skip


def _embedded_pngs(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)]


def test_full_report(tmp_path: Path, tiny_dataset: dict) -> None:
    out = _write_outputs(tmp_path, tiny_dataset["val"])
    inputs = _inputs(out, tiny_dataset)
    assert list(inputs.methods) == ["acol", "cam"]
    index = build_report(inputs, tmp_path / "report")
    text = index.read_text()
    for method, metrics in METRICS.items():  # every number of both JSONs is in the table
        for key, value in metrics.items():
            if isinstance(value, float):
                assert f">{value:.2f}</td>" in text, (method, key)
    assert "<td class=best>61.23</td>" in text  # ACoL's MaxBoxAccV2 is higher
    assert "<td class=best>6.25</td>" in text  # CAM's top-1 cls error is lower
    assert "<td class=best>0.00</td>" not in text  # a tie is not highlighted
    assert "not ours" in text and "45.14" in text and "arxiv.org/abs/1804.06962" in text
    assert "ACoL 61.23 vs CAM 55.10 (+6.13 points), ACoL is better than CAM" in text
    assert "Top-1 classification error: ACoL 12.50 vs CAM 6.25 (+6.25 points), ACoL is worse than CAM" in text
    # B's fake map lies on the right half of each box, exactly where A (left half) is below 0.6
    assert "B does respond more to the object parts that A leaves out" in text
    assert "<td class='k'>boxes.mean_area_fraction</td><td>0.11</td>" in text
    assert "<td class='k'>classes</td><td>a, b, c, d</td>" in text
    assert "<td class='k'>problems_by_kind</td><td>none</td>" in text
    pngs = _embedded_pngs(text)
    names = sorted(p.name for p in index.parent.glob("*.png"))
    assert names == ["box_accuracy.png", "gallery_best.png", "gallery_random.png", "gallery_worst.png",
                     "pr_curve.png", "training.png"]  # fmt: skip
    assert len(pngs) == len(names)
    for data in pngs:
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[0] > 100
    assert {(index.parent / n).read_bytes() for n in names} == set(pngs)  # the files are the embedded images
    errors_row = re.search(r"<td class='k'>errors</td><td>(\d+)</td><td>(\d+)</td>", text)
    assert errors_row and errors_row.groups() == ("1", "1")
    assert "error: truncated" in text


def test_rebuild_replaces_folder_and_optional_inputs(tmp_path: Path, tiny_dataset: dict) -> None:
    out = _write_outputs(tmp_path, tiny_dataset["val"], with_pr=False, with_pxap=False)
    report = tmp_path / "report"
    report.mkdir()
    (report / "stale.png").write_bytes(b"old")
    index = build_report(_inputs(out, tiny_dataset), report)
    text = index.read_text()
    assert not (report / "stale.png").exists() and not (report / "pr_curve.png").exists()
    assert "No pixel PR curve" in text
    row = re.search(r"<td class=k>pxap ↑</td>(.*?)</tr>", text)
    assert row and row.group(1) == "<td>—</td><td>—</td>"
    assert "PxAP:" not in text  # no comparison sentence without numbers
    assert not list(tmp_path.glob(".report.*"))  # no temp folder left behind


def test_missing_required_inputs_name_the_file(tmp_path: Path, tiny_dataset: dict) -> None:
    out = _write_outputs(tmp_path, tiny_dataset["val"])
    (out["evaluate"] / "cam" / "evaluation.json").unlink()
    with pytest.raises(ReportError, match=r"cam/evaluation\.json: required report input not found"):
        build_report(_inputs(out, tiny_dataset), tmp_path / "report")
    assert not (tmp_path / "report").exists()
    (out["evaluate"] / "cam" / "evaluation.json").write_text("[1, 2]")
    with pytest.raises(ReportError, match=r"cam/evaluation\.json: expected a JSON object"):
        build_report(_inputs(out, tiny_dataset), tmp_path / "report")
    bad = MethodInputs(metrics=out["evaluate"] / "acol" / "evaluation.json", box_acc=tmp_path / "b.csv")
    pd.DataFrame({"thr": [0.1], "iou50": [1.0]}).to_csv(bad.box_acc, index=False)
    with pytest.raises(ReportError, match=r"b\.csv: missing column\(s\) \['threshold'\]"):
        build_report(ReportInputs(methods={"acol": bad}), tmp_path / "report")
    with pytest.raises(ReportError, match="no method subfolders"):
        ReportInputs.from_dirs(tmp_path / "train" / "acol", tmp_path, tmp_path, None, None, None)


def test_pipeline_main_logs_artifacts(tmp_path: Path, tiny_dataset: dict, monkeypatch) -> None:
    import mlflow

    out = _write_outputs(tmp_path, tiny_dataset["val"])
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  root: {tiny_dataset['root']}\ntracking:\n  log_system_metrics: false\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("ACOL_PIPELINE_RUN", "test-report")
    monkeypatch.chdir(tmp_path)  # a sqlite store's artifacts go to ./mlruns
    argv = ["--params", str(params), "--evaluate-dir", str(out["evaluate"]), "--train-dir",
            str(out["train"]), "--extract-dir", str(out["extract"]), "--manifest", str(tiny_dataset["val"]),
            "--summary", str(out["summary"]), "--out", str(tmp_path / "report")]  # fmt: skip
    spec = importlib.util.spec_from_file_location(
        "pipelines_report", Path(__file__).parents[1] / "pipelines" / "report.py"
    )
    assert spec and spec.loader
    report_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report_cli)
    report_cli.main(argv)
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`acol.stage` = 'report'")
    assert len(runs) == 1
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs.run_id[0], "report")}
    assert {"report/index.html", "report/training.png"} <= artifacts


def test_box_region_means_hand_computed() -> None:
    # 4x4 map of an 8x8 image; cell centres at pixels 0.5, 2.5, 4.5, 6.5; box [0, 0, 3, 3] holds cells 0-1.
    m = np.full((1, 4, 4), 0.25)
    m[0, :2, :2] = 1.0
    assert box_region_means(m, [np.array([[0, 0, 3, 3]])], np.array([8]), np.array([8])) == (1.0, 0.25)
    # two boxes, non-square image: 4 rows x 2 cols map of a 4 (w) x 8 (h) image
    m = np.arange(8, dtype=float).reshape(1, 4, 2)  # x centres 0.5, 2.5; y centres 0.5, 2.5, 4.5, 6.5
    boxes = [np.array([[0, 0, 1, 1], [2, 6, 3, 7]])]  # cell (0, 0) and cell (3, 1)
    inside, outside = box_region_means(m, boxes, np.array([4]), np.array([8]))
    assert inside == pytest.approx((0 + 7) / 2) and outside == pytest.approx((1 + 2 + 3 + 4 + 5 + 6) / 6)


def test_gallery_indices_and_ious() -> None:
    ious = np.array([0.5, np.nan, 0.9, 0.1, 0.5, 0.7])
    picks = gallery_indices(ious, 2, seed=3)
    assert picks["best"].tolist() == [2, 5] and picks["worst"].tolist() == [3, 0]
    assert len(picks["random"]) == 2 and 1 not in picks["random"]
    assert all(1 not in gallery_indices(ious, 10)[k] for k in ("best", "worst", "random"))
    # pred 10x10 at the origin vs GT 5x10 (inside it) and a far box: IoU 50 / 100
    got = best_ious(
        [np.array([0, 0, 9, 9]), None], [np.array([[0, 0, 4, 9], [50, 50, 60, 60]]), np.zeros((1, 4))]
    )
    assert got[0] == pytest.approx(0.5) and np.isnan(got[1])


def test_metric_direction_and_best() -> None:
    assert (
        metric_direction("top1_loc_error") == "lower" and metric_direction("maxboxacc_v2_iou70") == "higher"
    )
    assert metric_direction("best_threshold") is None and metric_direction("num_images") is None
    assert best_methods("gt_known_loc", {"acol": 70.0, "cam": 60.0}) == {"acol"}
    assert best_methods("top5_loc_error", {"acol": 40.0, "cam": 30.0}) == {"cam"}
    assert best_methods("pxap", {"acol": None, "cam": 30.0}) == set()
    assert best_methods("erase_threshold", {"acol": 0.6, "cam": 0.7}) == set()
    assert all(p.source.startswith("https://") and 0 < p.value < 100 for p in PUBLISHED)


def test_overlay_map_blends_jet() -> None:
    black = np.zeros((6, 8, 3), np.uint8)
    out = overlay_map(black, np.zeros((3, 4)))
    # jet(0) is RGB (0, 0, 128); half of it over black
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8 and out[0, 0].tolist() == [0, 0, 64]
    hot = overlay_map(black, np.ones((3, 4)), alpha=1.0)
    assert hot[0, 0].tolist() == [128, 0, 0]  # jet(1) is dark red
    with pytest.raises(ValueError, match="uint8 RGB"):
        overlay_map(black.astype(np.float32), np.zeros((3, 4)))


def test_gallery_boxes_at_best_threshold(tmp_path: Path, tiny_dataset: dict) -> None:
    """With a best threshold, the report's boxes come from the top-1 maps at it, not the stored pred_box."""
    from acol.stages.report import _gt_lookup, _read_map_info
    from acol.wsol.boxes import boxes_from_maps

    out = _write_outputs(tmp_path, tiny_dataset["val"])
    gt = _gt_lookup(read_manifest(tiny_dataset["val"]))
    folder = out["extract"] / "acol" / "maps"
    stored = _read_map_info(folder, gt)
    redrawn = _read_map_info(folder, gt, 0.5)
    table = pq.read_table(folder / part_name(0))
    first = table.slice(0, 1).to_pylist()[0]
    _, width, height = gt[first["image_id"]]
    want = boxes_from_maps(
        np.asarray(first["map_top1"], np.float32).reshape(1, MAP, MAP),
        np.array([width]),
        np.array([height]),
        0.5,
    )[0]
    got = np.asarray(redrawn.table.column("pred_box").to_pylist()[0])
    np.testing.assert_allclose(got, want)
    assert not np.allclose(
        got, stored.table.column("pred_box").to_pylist()[0]
    )  # the fake pred_box is shifted
    assert redrawn.table.column("pred_box").to_pylist()[-1] is None  # the unreadable image has no box
    assert np.isnan(redrawn.ious[-1])
    # the stored boxes drift further off down the list; the redrawn ones follow the maps (the GT boxes)
    assert np.nanmean(redrawn.ious) > np.nanmean(stored.ious)


HOSTILE = "<script>alert(1)</script>"


def test_values_from_files_are_escaped(tmp_path: Path, tiny_dataset: dict) -> None:
    """A class id, image id, method name, metric key or value from the inputs is text, never markup."""
    manifest = read_manifest(tiny_dataset["val"])
    data = _fake_maps(manifest, "cam", shift=1)
    data["image_id"] = [f"{HOSTILE}/{i}.png" for i in range(manifest.num_rows)]
    data["error"] = [f"{HOSTILE}: unreadable"] * manifest.num_rows
    maps = tmp_path / "maps"
    maps.mkdir()
    pq.write_table(columns_to_table(data), maps / part_name(0))
    metrics = tmp_path / "evaluation.json"
    metrics.write_text(json.dumps({"top1_loc_error": 40.0, "backbone": HOSTILE, HOSTILE: 1.0}))
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"classes": [HOSTILE, "b"], HOSTILE: {"x": 1}}))
    inputs = ReportInputs(methods={HOSTILE: MethodInputs(metrics=metrics, maps=maps)}, summary=summary)
    text = build_report(inputs, tmp_path / "report").read_text()
    assert "<script" not in text
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"<h1>WSOL report: {escaped}</h1>" in text  # method name
    assert f"<th>{escaped}</th>" in text
    assert f"<td>{escaped}</td>" in text  # metric value (backbone)
    assert f"<td class=k>{escaped}</td>" in text  # metric key
    assert f"<td>{escaped}, b</td>" in text  # class ids
    assert f"<td class='k'>{escaped}.x</td>" in text  # summary key
    assert f"<td class='k'>error: {escaped}</td>" in text  # map store error of a hostile image id


def test_template_is_strict() -> None:
    """Every variable the template uses must be given: a missing one fails the render, not a blank section."""
    import jinja2

    from acol.stages.report import render_html

    context = {"methods": ["acol"], "shows": ["s"], "metric_rows": [], "published": [], "curves": [],
               "has_pr_curve": False, "galleries": [], "summary": None, "extraction": None}  # fmt: skip
    assert "<h1>WSOL report: acol</h1>" in render_html(context)
    for key in context:
        with pytest.raises(jinja2.UndefinedError):
            render_html({k: v for k, v in context.items() if k != key})
    row = {"key": "pxap", "cells": [{"text": "1.00", "best": False}]}  # no "arrow"
    with pytest.raises(jinja2.UndefinedError, match="arrow"):
        render_html({**context, "metric_rows": [row]})


# --- published numbers beside a run whose params match a preset ---


def _params(*settings: str):
    """params.yaml with `-S`-style settings applied, as `dvc exp run -S` would."""
    import yaml

    from acol.config import Params, apply_overrides

    raw = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    return Params.model_validate(apply_overrides(raw, list(settings)))


def _preset_settings(name: str) -> list[str]:
    from acol.presets import dvc_set_args

    return dvc_set_args(name)[1::2]


def _published_table(text: str) -> str:
    return text.split("<div class='published'>")[1].split("</div>")[0]


def test_report_shows_the_runs_numbers_beside_the_matching_presets(
    tmp_path: Path, tiny_dataset: dict
) -> None:
    from acol.presets import match_presets
    from acol.published import for_preset, in_metric

    # Choe et al.'s VGG16 ILSVRC protocol with both methods: ACoL and CAM each match their own preset
    params = _params(*_preset_settings("choe-vgg16-acol-ilsvrc"), "methods=[acol,cam]")
    matches = match_presets(params)
    assert [(m.method, m.preset, m.differs) for m in matches] == [
        ("acol", "choe-vgg16-acol-ilsvrc", ()),
        ("cam", "choe-vgg16-cam-ilsvrc", ()),
    ]
    out = _write_outputs(tmp_path, tiny_dataset["val"])
    text = build_report(_inputs(out, tiny_dataset, presets=matches), tmp_path / "report").read_text()
    table = _published_table(text)
    assert "No preset matches" not in table
    for match in matches:
        (published,) = for_preset(match.preset)
        run = METRICS[match.method][published.metric]
        assert f"<td>{run:.2f}</td><td>{in_metric(published)}</td>" in table  # this run beside the published
        assert f"<td class='k'>{published.as_printed()}</td>\n<td class='k'>{published.status}</td>" in table
        assert f"{match.preset}<br><span class=note>full recipe</span>" in table
        assert f"{match.method}: this run&#39;s params match preset {match.preset} (full recipe)" in text
    assert table.count("<a href='https://github.com/clovaai/wsolevaluation'>") == 2


def test_report_says_a_shortened_run_is_not_the_full_recipe(tmp_path: Path, tiny_dataset: dict) -> None:
    from acol.presets import match_presets
    from acol.published import for_preset

    params = _params(*_preset_settings("acol-paper-vgg16-cub"), "train.epochs=2", "methods=[acol,cam]")
    matches = match_presets(params)
    assert [m.preset for m in matches] == ["acol-paper-vgg16-cub"]  # CAM has no ACoL-paper preset
    out = _write_outputs(tmp_path, tiny_dataset["val"])
    table = _published_table(
        build_report(_inputs(out, tiny_dataset, presets=matches), tmp_path / "report").read_text()
    )
    assert "not the full recipe: train.epochs 2 (preset 60)" in table
    rows = re.findall(r"<td class='k'>(\w+)</td><td>([^<]*)</td><td>([^<]*)</td>", table)
    want = [
        (
            p.metric,
            f"{METRICS['acol'][p.metric]:.2f}",
            str(p.value) if p.value is not None else "not confirmed",
        )
        for p in for_preset("acol-paper-vgg16-cub")
    ]
    assert rows == want and ("gt_known_loc", "81.25", "not confirmed") in rows  # "do not cite" stays out


def test_report_without_a_matching_preset_shows_no_comparison(tmp_path: Path, tiny_dataset: dict) -> None:
    from acol.presets import match_presets

    assert match_presets(_params()) == ()  # params.yaml: the synthetic default
    out = _write_outputs(tmp_path, tiny_dataset["val"])
    text = build_report(_inputs(out, tiny_dataset, presets=()), tmp_path / "report").read_text()
    table = _published_table(text)
    assert "No preset matches this run's params" in table and "match preset" not in text
    cells = re.findall(r"<td class='k'>\w+</td><td>([^<]*)</td><td>([^<]*)</td>", table)
    assert len(cells) == len(PUBLISHED) and {run for run, _ in cells} == {"—"}  # no run number beside them
    assert [value for _, value in cells] == [str(p.value) for p in PUBLISHED]


def test_pipeline_passes_the_matching_preset(tmp_path: Path, tiny_dataset: dict, monkeypatch) -> None:
    """pipelines/report.py matches params.yaml against the presets and hands the match to the report."""
    import yaml

    from acol.config import apply_overrides

    raw = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    settings = [*_preset_settings("choe-resnet50-cam-cub"), f"data.root={tiny_dataset['root']}"]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(apply_overrides(raw, settings)))
    seen = []
    spec = importlib.util.spec_from_file_location(
        "pipelines_report_presets", Path(__file__).parents[1] / "pipelines" / "report.py"
    )
    assert spec and spec.loader
    report_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report_cli)
    from acol.stages import report as report_stage

    monkeypatch.setattr(report_stage, "build_report", lambda inputs, out: seen.append(inputs) or Path(out))
    monkeypatch.setattr(report_stage.tracking, "check_tracking_server", lambda: None)
    monkeypatch.setattr(report_stage.tracking, "stage_run", _NoRun)
    out = _write_outputs(tmp_path, tiny_dataset["val"])
    argv = ["--params", str(params), "--evaluate-dir", str(out["evaluate"]), "--train-dir",
            str(out["train"]), "--extract-dir", str(out["extract"]), "--manifest", str(tiny_dataset["val"]),
            "--summary", str(out["summary"]), "--out", str(tmp_path / "report")]  # fmt: skip
    monkeypatch.setitem(sys.modules, "mlflow", _NoMlflow())
    report_cli.main(argv)
    assert [(m.method, m.preset, m.differs) for m in seen[0].presets] == [
        ("cam", "choe-resnet50-cam-cub", ())
    ]


class _NoRun:
    """stage_run without MLflow: the test checks what reaches the report, not the logging."""

    def __init__(self, *args, **kwargs) -> None:
        self.info = type("Info", (), {"run_id": "none"})()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


class _NoMlflow:
    @staticmethod
    def log_artifacts(*args, **kwargs) -> None:
        return None


def test_boxes_at_the_best_threshold_keep_the_maps_as_arrays(tmp_path: Path) -> None:
    """3,000 maps of 28x28 as Python floats were ~75 MB (~1.25 GB per method at ILSVRC's 50,000 at 224);
    boxed chunk by chunk from the float32 column, the peak stays a few MB, and each box is the one the map
    alone gives (`boxes_from_maps`, one image at a time: the oracle)."""
    import tracemalloc

    from acol.stages.report import _read_map_info
    from acol.wsol.boxes import boxes_from_maps

    n, side = 3000, 28
    rng = np.random.default_rng(0)
    maps = rng.random((n, side, side), dtype=np.float32)
    ids = [f"val/{i:05d}.JPEG" for i in range(n)]
    errors: list[str | None] = [None] * n
    errors[7] = "truncated: image file is truncated"
    columns = {"image_id": ids, "label": np.zeros(n, np.int64), "error": errors,
               "top5_classes": np.zeros((n, 1), np.int32), "top5_scores": np.ones((n, 1), np.float32),
               "map_height": np.full(n, side), "map_width": np.full(n, side), "map_gt": maps.reshape(n, -1),
               "map_top1": maps.reshape(n, -1), "map_a_gt": maps.reshape(n, -1), "map_b_gt": None,
               "pred_box": np.zeros((n, 4), np.float32)}  # fmt: skip
    folder = tmp_path / "maps"
    folder.mkdir()
    pq.write_table(columns_to_table(columns), folder / part_name(0))
    gt = {
        i: (np.array([[1.0, 2.0, 30.0, 40.0]]), 60 + k % 7, 50 + k % 5) for k, i in enumerate(ids) if k != 9
    }
    tracemalloc.start()
    try:
        info = _read_map_info(folder, gt, 0.4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 30 * 2**20, f"peak {peak / 2**20:.1f} MB"
    boxes = info.table.column("pred_box").to_pylist()
    assert boxes[7] is None and boxes[9] is None  # no map; no ground truth
    for k in (0, 1, 1500, 2999):
        _, width, height = gt[ids[k]]
        want = boxes_from_maps(maps[k : k + 1], np.array([width]), np.array([height]), 0.4)[0]
        np.testing.assert_array_equal(np.asarray(boxes[k], np.float32), want)


def test_acol_is_compared_with_each_other_method_of_the_run() -> None:
    """Six methods in a run: one sentence per other method, ACoL first in each; without ACoL, the first shown."""
    from acol.stages.report_analysis import _diff_sentences

    metrics = {"acol": {"maxboxacc_v2": 60.0}, "cam": {"maxboxacc_v2": 55.5}, "has": {"maxboxacc_v2": 61.25},
               "spg": {"maxboxacc_v2": 60.0}, "adl": {}}  # fmt: skip
    assert _diff_sentences("maxboxacc_v2", "MaxBoxAccV2", metrics) == [
        "MaxBoxAccV2: ACoL 60.00 vs CAM 55.50 (+4.50 points), ACoL is better than CAM on this run.",
        "MaxBoxAccV2: ACoL 60.00 vs HaS 61.25 (-1.25 points), ACoL is worse than HaS on this run.",
        "MaxBoxAccV2: ACoL 60.00 vs SPG 60.00 (+0.00 points), ACoL is equal to SPG on this run.",
    ]  # ADL has no MaxBoxAccV2: no sentence
    errors = {"cam": {"top1_loc_error": 40.0}, "cutmix": {"top1_loc_error": 42.0}}
    assert _diff_sentences("top1_loc_error", "Top-1 localization error", errors) == [
        "Top-1 localization error: CAM 40.00 vs CutMix 42.00 (-2.00 points), CAM is better than CutMix on this run."
    ]
