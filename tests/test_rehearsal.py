"""The real path rehearsed (`acol.stages.rehearse`): a published preset on data in its real on-disk layout, with
torchvision-format weights where the preset expects them, through the README's `dvc exp run` command: Ray Train
on 2 workers with one killed and resumed, extraction, the preset's threshold protocol, registration, the
scheduled re-evaluation, the served model and the report. Only amounts are shrunk; each assertion below is a
thing the synthetic default cannot show (the oracle: the preset's own settings and the layout's annotations).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acol.presets import preset_overrides
from acol.stages.rehearse import Rehearsal, rehearse

pytestmark = pytest.mark.slow
PRESETS = [
    "acol-paper-vgg16-ilsvrc",
    "choe-resnet50-cam-cub",
]  # an ACoL-paper preset; a Choe one with fullsup


@pytest.fixture(scope="module", params=PRESETS)
def rehearsal(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Rehearsal:
    return rehearse(request.param, tmp_path_factory.mktemp(request.param))


def _method(rehearsal: Rehearsal) -> str:
    (method,) = preset_overrides(rehearsal.preset)["methods"]
    return method


def test_training_ran_the_presets_model_and_resumed_after_a_worker_died(rehearsal: Rehearsal) -> None:
    preset, card = preset_overrides(rehearsal.preset), rehearsal.facts[f"train@{_method(rehearsal)}"]
    assert card["backbone"] == preset["model.backbone"] and card["model"]["head_channels"] == 1024
    assert card["train"]["image_size"] == 224 and card["train"]["num_workers"] == 2
    assert card["train"]["optimizer"] == preset["train.optimizer"] and card["epochs"] == 2
    assert rehearsal.facts["killed"], "no worker was killed"
    assert card["restarts"] == 1  # resumed from the epoch-1 checkpoint, not started again
    weights = Path(card["model"]["backbone_weights"])
    assert weights.is_absolute() and weights.is_file()  # the preset's relative path, found by the workers


def test_evaluation_follows_the_presets_protocol_and_registers_like_with_like(rehearsal: Rehearsal) -> None:
    preset, method = preset_overrides(rehearsal.preset), _method(rehearsal)
    protocol = preset.get("evaluate.threshold_split", "holdout")
    record = rehearsal.facts[f"evaluate@{method}"]
    assert record["backbone"] == preset["model.backbone"]  # the model that made the maps, not params' default
    extracted = json.loads((rehearsal.repo / f"outputs/extract_fullsup/{method}/summary.json").read_text())
    assert (extracted["rows"] > 0) == (protocol == "fullsup")  # the threshold split's maps exist where used
    assert (record["num_holdout_images"] > 0) == (protocol == "holdout")
    registered = rehearsal.facts["registered"]
    assert (
        registered["name"]
        == f"{preset['tracking.registered_model']}-{preset['model.backbone']}-{method}-{protocol}"
    )
    assert registered["champion"] == registered["version"] == "1"
    tags = registered["tags"]
    assert tags["acol.protocol"] == protocol and tags["acol.image_size"] == "224"
    assert tags["acol.dataset"] == preset["data.source"]


def test_the_scheduled_reevaluation_uses_the_versions_settings(rehearsal: Rehearsal) -> None:
    report = rehearsal.facts["reevaluate"]
    assert report["exit"] == 0 and report["passed"]  # same data, same model: no regression
    settings = report["settings"]
    assert settings["image_size"] == 224 and settings["interval"] == 0.001
    assert settings["protocol"] == preset_overrides(rehearsal.preset).get(
        "evaluate.threshold_split", "holdout"
    )


def test_the_served_model_gives_classes_and_boxes_in_image_pixels(rehearsal: Rehearsal) -> None:
    served = rehearsal.facts["served"]
    classes = json.loads((rehearsal.repo / "outputs/prepare/summary.json").read_text())["classes"]
    assert len(served["classes"]) == 2 and set(served["classes"]) <= set(classes)
    assert served["scores"] == sorted(served["scores"], reverse=True)
    for x0, y0, x1, y1 in served["boxes"]:
        assert 0 <= x0 <= x1 < served["width"] and 0 <= y0 <= y1 < served["height"]


def test_the_report_and_metrics_show_the_presets_method(rehearsal: Rehearsal) -> None:
    assert (rehearsal.repo / "outputs/report/index.html").stat().st_size > 0
    metric = json.loads((rehearsal.repo / "metrics/MaxBoxAccV2.json").read_text())
    assert list(metric) == [_method(rehearsal)]
    assert "dvc stage train@" + _method(rehearsal) in rehearsal.summary()
