"""The model registry: names and comparison keys, promotion under concurrent evaluations, and the evaluate stage
that registers each evaluated model (its files replaced as one set)."""

from __future__ import annotations

import json
import os
import runpy
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from acol.config import load_params

pytest.importorskip("mlflow")

REPO = Path(__file__).resolve().parents[1]
METRIC = "maxboxacc_v2"
KEY = {"acol.dataset": "synthetic", "acol.backbone": "small", "acol.method": "cam", "acol.protocol": "holdout",
       "acol.image_size": "32", "acol.iou_thresholds": "30,50,70"}  # fmt: skip


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A client of a fresh sqlite store (versions are created without artifacts: only tags and aliases matter)."""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return MlflowClient()


def _versions(client: Any, name: str, n: int) -> list[str]:
    client.create_registered_model(name)
    return [str(client.create_model_version(name, source=f"file:///nowhere/{i}").version) for i in range(n)]


def _champion(client: Any, name: str) -> str:
    return str(client.get_model_version_by_alias(name, "champion").version)


def test_registered_name_separates_backbones_and_protocols() -> None:
    from acol.tracking.stage_runs import registered_model_name

    def name(*overrides: str) -> str:
        return registered_model_name(
            load_params("absent.yaml", ["tracking.registered_model=wsol", *overrides]), "acol"
        )

    assert name() == "wsol-small-acol-holdout"
    assert name("model.backbone=vgg16", "evaluate.threshold_split=fullsup") == "wsol-vgg16-acol-fullsup"
    assert len({name(), name("model.backbone=resnet50"), name("evaluate.threshold_split=fullsup")}) == 3


def test_comparison_key_from_the_card_and_its_evaluation() -> None:
    from acol.tracking.registry import comparison_key

    card = {"method": "cam", "backbone": "small", "model": {"backbone": "vgg16"},
            "evaluation": {"dataset": "synthetic", "protocol": "holdout", "image_size": 32,
                           "iou_thresholds": [30, 50, 70], "interval": 0.05}}  # fmt: skip
    assert comparison_key(card) == KEY  # the card's top-level backbone is the one the weights are
    with pytest.raises(KeyError, match="evaluation"):
        comparison_key({"method": "cam", "backbone": "small"})


def test_promotion_keeps_the_best_version_when_two_evaluations_interleave(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """v1 (55) and v2 (60) are promoted at once over v0 (50): v2's whole promotion runs inside v1's window
    between reading the champion and setting it. The better one must end as champion (the old rule ended
    with v1: it had read v0 as the champion, and wrote last)."""
    from mlflow import MlflowClient

    from acol.tracking.registry import record_and_promote

    name = "race"
    v0, v1, v2 = _versions(client, name, 3)
    record_and_promote(name, v0, {METRIC: 50.0}, METRIC, key=KEY)
    original = MlflowClient.set_registered_model_alias
    pending = [lambda: record_and_promote(name, v2, {METRIC: 60.0}, METRIC, key=KEY)]

    def interleaved(self: Any, model: str, alias: str, version: str) -> None:
        if alias == "champion" and pending:
            pending.pop()()  # the other evaluation, start to end, before this write lands
        original(self, model, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", interleaved)
    first = record_and_promote(name, v1, {METRIC: 55.0}, METRIC, key=KEY)
    assert not pending  # the interleaving happened
    assert _champion(client, name) == v2 and not first["champion"]
    assert str(client.get_model_version_by_alias(name, "candidate").version) in (v1, v2)


def test_promotion_reads_every_comparable_version(client: Any) -> None:
    """The champion is the best version with the same key and a recorded metric, lower errors winning."""
    from acol.tracking.registry import record_and_promote

    name = "best"
    v0, v1, v2 = _versions(client, name, 3)
    assert record_and_promote(name, v0, {METRIC: 50.0, "top1_loc_error": 40.0}, METRIC, key=KEY)["champion"]
    assert not record_and_promote(name, v1, {METRIC: 50.0}, METRIC, key=KEY)["champion"]  # a tie keeps v0
    got = record_and_promote(name, v2, {METRIC: 49.0, "top1_loc_error": 30.0}, "top1_loc_error", key=KEY)
    assert got["champion"] and got["previous_champion_value"] == 40.0 and _champion(client, name) == v2
    tags = client.get_model_version(name, v2).tags
    assert {k: tags[k] for k in KEY} == KEY and tags[f"metric.{METRIC}"] == "49.0"


def test_a_champion_with_another_key_is_refused_naming_both(client: Any) -> None:
    from acol.tracking.registry import RegistryError, record_and_promote

    name = "keys"
    v0, v1 = _versions(client, name, 2)
    record_and_promote(name, v0, {METRIC: 50.0}, METRIC, key=KEY)
    other = {**KEY, "acol.image_size": "224"}
    with pytest.raises(RegistryError, match=r"keys v1 .*acol.image_size.: .32.*acol.image_size.: .224"):
        record_and_promote(name, v1, {METRIC: 99.0}, METRIC, key=other)
    assert _champion(client, name) == v0
    assert "metric.maxboxacc_v2" not in client.get_model_version(name, v1).tags  # refused before tagging


def test_a_champion_without_the_metric_tag_is_an_error_naming_it(client: Any) -> None:
    from acol.config import ParamsError
    from acol.tracking.registry import RegistryError, record_and_promote

    name = "untagged"
    v0, v1 = _versions(client, name, 2)
    for tag, value in KEY.items():
        client.set_model_version_tag(name, v0, tag, value)
    client.set_registered_model_alias(name, "champion", v0)
    with pytest.raises(RegistryError, match=r"untagged v1 .*metric\.maxboxacc_v2") as raised:
        record_and_promote(name, v1, {METRIC: 40.0}, METRIC, key=KEY)
    assert isinstance(raised.value, ParamsError)  # a user error: one line and exit status 2 from a stage
    assert _champion(client, name) == v0


# --- the evaluate stage: registers the model it evaluated, replaces its files as one set ------------------

STAGE_OVERRIDES = ["model.head_channels=8", "train.image_size=32", "tracking.log_system_metrics=false",
                   "evaluate.interval=0.05", "tracking.registered_model=ev"]  # fmt: skip
OLD_SET = {"box_acc.csv": "old box\n", "pr_curve.csv": "old pr\n", "evaluation.json": '{"old": true}\n'}


@pytest.fixture(scope="module")
def trained(tiny_dataset: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What train and extract leave for evaluate@acol (small backbone, erase threshold 0.6), once."""
    from acol.data.manifest import manifest_classes, read_manifest
    from acol.distributed.extract import ExtractionJob, extract_plain
    from acol.models import build_model

    base = tmp_path_factory.mktemp("trained")
    params = load_params(base / "none.yaml", [*STAGE_OVERRIDES, f"data.root={tiny_dataset['root']}"])
    classes = manifest_classes(read_manifest(tiny_dataset["val"]))
    torch.manual_seed(0)
    model = build_model("small", len(classes), "acol", head_channels=8, erase_threshold=0.6)
    train = base / "outputs" / "train" / "acol"
    train.mkdir(parents=True)
    torch.save(model.state_dict(), train / "model.pt")
    card = {"method": "acol", "backbone": "small", "num_classes": len(classes), "classes": classes,
            "model": {**params.model.model_dump(mode="json"), "erase_threshold": 0.6},
            "train": params.train.model_dump(mode="json"), "mlflow_run_id": "the-train-run"}  # fmt: skip
    (train / "model_card.json").write_text(json.dumps(card))
    out = base / "outputs" / "extract" / "acol"
    extract_plain(
        ExtractionJob(
            params, "acol", tiny_dataset["val"], tiny_dataset["root"], train / "model.pt", card, out
        )
    )
    return base


@pytest.fixture
def stage(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_dataset: dict[str, Path]):
    """A working copy of `trained` as the cwd, an old output set with DVC's .gitignore, and `main` to run."""
    shutil.copytree(trained / "outputs", tmp_path / "outputs")
    out = tmp_path / "outputs" / "evaluate" / "acol"
    out.mkdir(parents=True)
    for file, text in {**OLD_SET, ".gitignore": "/nothing\n"}.items():
        (out / file).write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("ACOL_PIPELINE_RUN", f"evaluate-{tmp_path.name}")
    # params say another backbone and erase threshold than the card: the maps are the card's model's
    argv = ["--method", "acol", "--manifest", str(tiny_dataset["val"]), "--params", "none.yaml",
            "--maps", "outputs/extract/acol/maps", "--model", "outputs/train/acol/model.pt",
            "--model-card", "outputs/train/acol/model_card.json", "--out", "outputs/evaluate/acol"]  # fmt: skip
    for override in [*STAGE_OVERRIDES, f"data.root={tiny_dataset['root']}", "model.backbone=vgg16",
                     "model.erase_threshold=0.7"]:  # fmt: skip
        argv += ["--set", override]
    main = runpy.run_path(str(REPO / "pipelines" / "evaluate.py"), run_name="pipelines_evaluate")["main"]
    return (lambda: main(argv)), out


@pytest.mark.slow
def test_evaluate_records_the_card_model_and_registers_it_with_its_evaluation(stage, client: Any) -> None:
    main, out = stage
    main()
    record = json.loads((out / "evaluation.json").read_text())
    assert record["backbone"] == "small" and record["erase_threshold"] == 0.6  # the card's, not params'
    assert (out / ".gitignore").read_text() == "/nothing\n"  # DVC's file survived the swap
    assert (out / "pr_curve.csv").read_text() != OLD_SET["pr_curve.csv"]

    name = "ev-small-acol-holdout"
    version = client.get_model_version_by_alias(name, "champion")
    assert version.tags["metric.maxboxacc_v2"] == str(record["maxboxacc_v2"])
    assert version.tags["acol.image_size"] == "32" and version.tags["acol.backbone"] == "small"
    from acol.tracking.mlflow_model import download_version

    _, card = download_version(name, str(version.version), out.parent / "download")
    evaluation = card["evaluation"]
    assert evaluation["cam_threshold"] == record["best_threshold"]
    assert evaluation["image_size"] == 32 and evaluation["interval"] == 0.05
    assert evaluation["protocol"] == "holdout" and evaluation["train_run_id"] == "the-train-run"
    assert evaluation["metrics"]["maxboxacc_v2"] == record["maxboxacc_v2"]
    run = client.get_run(version.run_id)
    assert run.data.tags["acol.stage"] == "evaluate" and run.data.tags["model_version"] == str(
        version.version
    )


class Killed(BaseException):
    """A kill: nothing catches it but cleanup code."""


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 5])
def test_evaluate_killed_between_its_writes_keeps_the_old_set(
    stage, kill_at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kill at the k-th rename into the output (the file writes, then the folder swap without an exchange)."""
    import acol.io

    main, out = stage
    monkeypatch.setattr(acol.io, "_exchange_supported", False if kill_at > 3 else None)
    original, calls = os.replace, []

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst).resolve().is_relative_to(out.parent.resolve()):
            calls.append(dst)
            if len(calls) == kill_at:
                raise Killed
        original(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        main()
    monkeypatch.setattr(os, "replace", original)
    acol.io.recover_dir(out)  # what the next writer (or a reader's readable_path) does first
    assert {p.name: p.read_text() for p in out.iterdir() if p.name != ".gitignore"} == OLD_SET


@pytest.mark.slow
def test_evaluate_writer_failing_midway_keeps_the_old_set(stage, monkeypatch: pytest.MonkeyPatch) -> None:
    main, out = stage

    def fail(*_args: Any, **_kwargs: Any) -> None:
        raise Killed

    # evaluation.json is the last file written
    monkeypatch.setattr("acol.stages.evaluate.write_json_atomic", fail)
    with pytest.raises(Killed):
        main()
    assert {p.name: p.read_text() for p in out.iterdir() if p.name != ".gitignore"} == OLD_SET
