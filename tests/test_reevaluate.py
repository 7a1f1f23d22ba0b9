"""Scheduled re-evaluation: the comparison rule by hand, then end to end against a real local `mlflow server`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from acol.config import load_params
from acol.stages.reevaluate import (
    REGRESSION_EXIT_CODE,
    ReevaluationError,
    ReevaluationReport,
    compare_metrics,
    reevaluate,
)
from tests.services import mlflow_server

REPO = Path(__file__).resolve().parents[1]


def _by_name(comparisons):
    return {c.name: c for c in comparisons}


def test_compare_metrics_hand_cases():
    recorded = {"maxboxacc_v2": 60.0, "top1_loc_error": 40.0, "pxap": 50.0, "gt_known_loc": 70.0,
                "maxboxacc_v2_iou50": 80.0, "num_images": 10.0, "best_threshold": 0.3}  # fmt: skip
    current = {"maxboxacc_v2": 58.5, "top1_loc_error": 40.5, "pxap": 51.0, "gt_known_loc": 69.0,
               "maxboxacc_v2_iou50": 78.0, "num_images": 5, "best_threshold": 0.9, "method": "cam"}  # fmt: skip
    got = _by_name(compare_metrics(recorded, current, tolerance=1.0))
    # counts and thresholds are not quality metrics; strings are skipped
    assert set(got) == {"maxboxacc_v2", "top1_loc_error", "pxap", "gt_known_loc", "maxboxacc_v2_iou50"}
    assert got["maxboxacc_v2"].drop == pytest.approx(1.5) and got["maxboxacc_v2"].regressed
    assert (
        got["top1_loc_error"].drop == pytest.approx(0.5) and not got["top1_loc_error"].regressed
    )  # error up
    assert got["pxap"].drop == pytest.approx(-1.0) and not got["pxap"].regressed  # improved
    assert (
        got["gt_known_loc"].drop == pytest.approx(1.0) and not got["gt_known_loc"].regressed
    )  # at tolerance
    assert got["maxboxacc_v2_iou50"].regressed


def test_compare_metrics_errors_and_nan():
    # an error metric that fell is an improvement; one that rose past the tolerance is a regression
    got = _by_name(compare_metrics({"top1_cls_error": 30.0, "top5_loc_error": 10.0},
                                   {"top1_cls_error": 20.0, "top5_loc_error": 12.5}, 2.0))  # fmt: skip
    assert got["top1_cls_error"].drop == -10.0 and not got["top1_cls_error"].regressed
    assert got["top5_loc_error"].drop == 2.5 and got["top5_loc_error"].regressed
    nan = compare_metrics({"maxboxacc": 50.0}, {"maxboxacc": math.nan}, 100.0)[0]
    assert nan.regressed and math.isinf(nan.drop)
    assert compare_metrics({"maxboxacc": 50.0}, {"pxap": 40.0}, 1.0) == []  # nothing in common
    with pytest.raises(ValueError, match="tolerance"):
        compare_metrics({}, {}, -1.0)


def test_report_names_the_regressed_metric(tmp_path):
    report = ReevaluationReport(
        model_name="wsol-cam", model_version="3", alias="champion", method="cam", tolerance=1.0,
        manifest="val.parquet", data_version="abc", trained_data_version=None,
        metrics={"num_images": 10, "failed_images": 0},
        comparisons=compare_metrics({"maxboxacc_v2": 60.0, "pxap": 50.0}, {"maxboxacc_v2": 55.0, "pxap": 50.0}, 1.0),
    )  # fmt: skip
    assert not report.passed and [c.name for c in report.regressions] == ["maxboxacc_v2"]
    assert "REGRESSION" in report.summary() and "maxboxacc_v2 60.00 -> 55.00 (-5.00)" in report.summary()
    data = report.to_json()
    assert data["passed"] is False and data["comparisons"][0]["name"] == "maxboxacc_v2"
    assert "| maxboxacc_v2 | 60.00 | 55.00 | +5.00 | REGRESSED |" in report.to_markdown()
    json.dumps(data)  # JSON-ready


OVERRIDES = [
    "model.head_channels=8",
    "train.image_size=32",
    "tracking.log_system_metrics=false",
    "evaluate.interval=0.05",
    "reevaluate.tolerance=1.0",
]


@pytest.mark.slow
def test_reevaluate_end_to_end(tiny_dataset, tmp_path, monkeypatch):
    """Register a fresh CAM model, record its metrics, re-evaluate (passes), tamper a metric (exit 3)."""
    import mlflow
    from mlflow import MlflowClient

    from acol.data.manifest import manifest_classes, read_manifest
    from acol.distributed.extract import ExtractionJob, extract_plain
    from acol.inference.mapstore import read_maps
    from acol.models import build_model
    from acol.stages.evaluation import evaluate_method
    from acol.tracking import stage_runs as tracking
    from acol.tracking.mlflow_model import log_model
    from acol.tracking.registry import record_and_promote

    root, val = tiny_dataset["root"], tiny_dataset["val"]
    params = load_params(tmp_path / "none.yaml", [*OVERRIDES, f"data.root={root}"])
    with mlflow_server(tmp_path) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("ACOL_PIPELINE_RUN", "reevaluate-test")
        tracking.configure(params)
        classes = manifest_classes(read_manifest(val))
        torch.manual_seed(0)
        model = build_model("small", len(classes), "cam", head_channels=8)
        weights = tmp_path / "model.pt"
        torch.save(model.state_dict(), weights)
        card = {"method": "cam", "backbone": "small", "num_classes": len(classes), "classes": classes,
                "model": params.model.model_dump(mode="json"), "data_version": "trained-on"}  # fmt: skip
        (tmp_path / "model_card.json").write_text(json.dumps(card))
        with mlflow.start_run():  # what the train stage logs: the model as its state dict and card
            version = log_model(model, "cam", params, torch.zeros(1, 3, 32, 32), card)
        name = tracking.registered_model_name(params, "cam")
        client = MlflowClient()

        with pytest.raises(ReevaluationError, match=r"@champion does not resolve"):
            reevaluate(params, "cam", val, root, tmp_path / "r0", engine="plain")
        client.set_registered_model_alias(name, "champion", version)
        with pytest.raises(ReevaluationError, match="no recorded metrics"):
            reevaluate(params, "cam", val, root, tmp_path / "r0", engine="plain")

        # The evaluate stage's record, computed the same way from the same weights.
        extract_plain(ExtractionJob(params, "cam", val, root, weights, card, tmp_path / "baseline"))
        baseline = evaluate_method(read_maps(tmp_path / "baseline" / "maps"), read_manifest(val), root,
                                   params.evaluate).metrics  # fmt: skip
        record_and_promote(name, version, baseline, "maxboxacc_v2", key={"acol.backbone": "small"})

        report = reevaluate(params, "cam", val, root, tmp_path / "r1", engine="plain")
        assert report.passed, report.summary()
        assert report.model_version == version and report.trained_data_version == "trained-on"
        compared = {c.name for c in report.comparisons}
        assert {"maxboxacc_v2", "pxap", "top1_loc_error"} <= compared
        assert all(c.drop == 0.0 for c in report.comparisons)  # same weights, same data: same numbers
        run = client.get_run(report.mlflow_run_id)
        assert run.data.tags["model_name"] == name and run.data.tags["model_version"] == version
        assert run.data.tags["regression"] == "false" and run.data.tags["acol.stage"] == "reevaluate"
        assert run.data.metrics["maxboxacc_v2"] == pytest.approx(baseline["maxboxacc_v2"])
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"report.json", "report.md"}
        assert json.loads((tmp_path / "r1" / "report.json").read_text())["passed"] is True

        # Tamper the recorded value upward: the CLI exits with the regression code and names the metric.
        client.set_model_version_tag(name, version, "metric.maxboxacc_v2", str(baseline["maxboxacc_v2"] + 5))
        cmd = [sys.executable, "pipelines/reevaluate.py", "--method", "cam", "--manifest", str(val),
               "--root", str(root), "--out", str(tmp_path / "r2"), "--engine", "plain",
               "--fullsup-manifest", "outputs/prepare/fullsup.parquet",
               "--params", str(tmp_path / "none.yaml"), *(a for o in OVERRIDES for a in ("--set", o))]  # fmt: skip
        done = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=180, env=dict(os.environ)
        )
        assert done.returncode == REGRESSION_EXIT_CODE, done.stdout + done.stderr[-3000:]
        assert "REGRESSION beyond 1 points: maxboxacc_v2" in done.stdout
        saved = json.loads((tmp_path / "r2" / "report.json").read_text())
        assert saved["passed"] is False and [c["name"] for c in saved["comparisons"] if c["regressed"]] == [
            "maxboxacc_v2"
        ]


# --- re-evaluation with the settings recorded on the version (its card's `evaluation` section) ------------

RECORDED = {"image_size": 32, "interval": 0.05, "holdout_fraction": 0.25}  # what the version was evaluated at
NOW = ["train.image_size=48", "evaluate.interval=0.1", "evaluate.holdout_fraction=0.5"]  # params.yaml today


def _evaluation(protocol: str) -> dict:
    return {"dataset": "synthetic", "protocol": protocol, "iou_thresholds": [30, 50, 70], "cam_threshold": 0.5,
            "champion_metric": "maxboxacc_v2", "metrics": {}, "train_run_id": None, **RECORDED}  # fmt: skip


def _recorded_params(root, protocol: str):
    return load_params(
        "absent.yaml",
        ["model.head_channels=8", "tracking.log_system_metrics=false", f"data.root={root}",
         f"train.image_size={RECORDED['image_size']}", f"evaluate.interval={RECORDED['interval']}",
         f"evaluate.holdout_fraction={RECORDED['holdout_fraction']}", f"evaluate.threshold_split={protocol}"],
    )  # fmt: skip


def _register(params, card: dict, metrics: dict, tmp_path) -> tuple[str, str]:
    """Log the model of `card` (weights tmp_path/model.pt) as a new version, tag `metrics`, alias champion."""
    import mlflow
    from mlflow import MlflowClient

    from acol.models import build_model
    from acol.tracking import stage_runs as tracking
    from acol.tracking.mlflow_model import log_model

    model = build_model("small", card["num_classes"], "cam", head_channels=8)
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    tracking.configure(params)
    with mlflow.start_run():
        version = log_model(model, "cam", params, torch.zeros(1, 3, 32, 32), card)
    name = tracking.registered_model_name(params, "cam")
    client = MlflowClient()
    for key, value in metrics.items():
        if isinstance(value, int | float):
            client.set_model_version_tag(name, version, f"metric.{key}", str(value))
    client.set_registered_model_alias(name, "champion", version)
    return name, version


def _weights_and_card(tmp_path, val, protocol: str | None) -> dict:
    from acol.data.manifest import manifest_classes, read_manifest
    from acol.models import build_model

    classes = manifest_classes(read_manifest(val))
    torch.manual_seed(0)
    torch.save(build_model("small", len(classes), "cam", head_channels=8).state_dict(), tmp_path / "model.pt")
    card = {"method": "cam", "backbone": "small", "num_classes": len(classes), "classes": classes,
            "model": {"backbone": "small", "head_channels": 8}}  # fmt: skip
    return {**card, "evaluation": _evaluation(protocol)} if protocol else card


def _baseline(params, root, val, card, tmp_path, fullsup_manifest=None):
    """The evaluate stage's numbers at the recorded settings: the oracle a faithful re-evaluation equals."""
    from acol.data.manifest import read_manifest
    from acol.distributed.extract import ExtractionJob, extract_plain
    from acol.inference.mapstore import read_maps
    from acol.stages.evaluation import evaluate_method

    job = ExtractionJob(params, "cam", val, root, tmp_path / "model.pt", card, tmp_path / "base")
    extract_plain(job)
    fullsup = None
    if fullsup_manifest is not None:
        extract_plain(replace(job, manifest=fullsup_manifest, out_dir=tmp_path / "base_fs"))
        fullsup = (read_maps(tmp_path / "base_fs" / "maps"), read_manifest(fullsup_manifest))
    maps = read_maps(tmp_path / "base" / "maps")
    return evaluate_method(maps, read_manifest(val), root, params.evaluate, fullsup).metrics, maps


@pytest.fixture
def sqlite_store(tmp_path, monkeypatch) -> None:
    """A store of the test's own: a sqlite store puts artifacts in ./mlruns, so the working folder too."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("ACOL_PIPELINE_RUN", f"reevaluate-{tmp_path.name}")


@pytest.mark.slow
def test_reevaluate_uses_the_settings_recorded_on_the_version(tiny_dataset, tmp_path, sqlite_store, caplog):
    """Recorded at 32 px / interval 0.05 / holdout 0.25, params.yaml now says 48 / 0.1 / 0.5: the re-evaluation
    reproduces the recorded numbers exactly (same weights, same data) from maps of the recorded size."""
    from acol.inference.mapstore import read_maps

    root, val = tiny_dataset["root"], tiny_dataset["val"]
    recorded = _recorded_params(root, "holdout")
    card = _weights_and_card(tmp_path, val, "holdout")
    baseline, base_maps = _baseline(recorded, root, val, card, tmp_path)
    _, version = _register(recorded, card, baseline, tmp_path)

    now = load_params("absent.yaml", [*OVERRIDES[:1], "tracking.log_system_metrics=false", *NOW])
    report = reevaluate(now, "cam", val, root, tmp_path / "r", engine="plain")
    assert report.model_version == version and report.passed, report.summary()
    assert report.metrics == baseline  # same weights, same data, the recorded settings: the same numbers
    maps = read_maps(tmp_path / "r" / "extract" / "maps")
    assert maps.column("map_height").to_pylist() == base_maps.column("map_height").to_pylist()
    assert report.settings["source"] == "version" and report.settings["image_size"] == 32
    assert report.settings["interval"] == 0.05 and report.settings["holdout_fraction"] == 0.25

    # A version registered before the card had an `evaluation` section: params.yaml's settings, with a warning.
    legacy = _weights_and_card(tmp_path, val, None)
    _register(recorded, legacy, baseline, tmp_path)
    with caplog.at_level("WARNING"):
        old = reevaluate(now, "cam", val, root, tmp_path / "r2", engine="plain")
    assert old.settings["source"] == "params" and old.settings["image_size"] == 48
    assert any("no evaluation record" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_reevaluate_a_fullsup_version_extracts_the_fullsup_split(tiny_dataset, tmp_path, sqlite_store):
    """A version evaluated with threshold_split fullsup: the threshold comes from the train-fullsup maps, as in
    the evaluate stage (the tiny train manifest stands in for train-fullsup)."""
    root, val, fullsup = tiny_dataset["root"], tiny_dataset["val"], tiny_dataset["train"]
    recorded = _recorded_params(root, "fullsup")
    card = _weights_and_card(tmp_path, val, "fullsup")
    baseline, _ = _baseline(recorded, root, val, card, tmp_path, fullsup)
    assert baseline["num_holdout_images"] == 0  # every val image reported: the fullsup protocol
    _register(recorded, card, baseline, tmp_path)

    now = load_params("absent.yaml", ["model.head_channels=8", "tracking.log_system_metrics=false",
                                      "evaluate.threshold_split=fullsup", *NOW])  # fmt: skip
    report = reevaluate(now, "cam", val, root, tmp_path / "r", engine="plain", fullsup_manifest=fullsup)
    assert report.passed and report.metrics == baseline
    assert report.settings["protocol"] == "fullsup"
    with pytest.raises(FileNotFoundError, match=r"absent\.parquet"):
        reevaluate(
            now,
            "cam",
            val,
            root,
            tmp_path / "r2",
            engine="plain",
            fullsup_manifest=tmp_path / "absent.parquet",
        )
