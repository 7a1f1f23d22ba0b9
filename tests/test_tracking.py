"""acol.tracking.stage_runs and mlflow_model.log_model: parent/child stage runs, flattened params, data versions, model registry, server checks."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from acol.config import Params, load_params
from acol.tracking import stage_runs as tracking

pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the module: creating the schema costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def params(mlflow_db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Params:
    monkeypatch.chdir(tmp_path)  # a sqlite store puts artifacts in ./mlruns: not the repository's
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db)
    monkeypatch.setenv(tracking.PIPELINE_RUN_ENV, f"test-{tmp_path.name}")  # a fresh pipeline per test
    return load_params(
        tmp_path / "absent.yaml", ["tracking.log_system_metrics=false", "tracking.experiment=t"]
    )


def test_stage_runs_share_one_parent_per_pipeline(params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    with tracking.stage_run("prepare", params) as prepare:
        pass
    with tracking.stage_run("train", params, method="acol", tags={"extra": "x"}) as train:
        pass
    client = MlflowClient()
    first, second = client.get_run(prepare.info.run_id), client.get_run(train.info.run_id)
    parent_id = first.data.tags["mlflow.parentRunId"]
    assert second.data.tags["mlflow.parentRunId"] == parent_id
    parent = client.get_run(parent_id)
    assert parent.data.tags[tracking.PIPELINE_TAG] == first.data.tags[tracking.PIPELINE_TAG]
    assert second.data.tags["acol.stage"] == "train"
    assert second.data.tags["acol.method"] == "acol"
    assert second.data.tags["extra"] == "x"
    assert second.info.run_name == "train@acol"
    assert "acol.git_commit" in second.data.tags

    monkeypatch.setenv(tracking.PIPELINE_RUN_ENV, "another-pipeline")
    with tracking.stage_run("prepare", params) as other:
        pass
    assert client.get_run(other.info.run_id).data.tags["mlflow.parentRunId"] != parent_id


def test_stage_run_logs_flat_params_and_data_version(params: Params, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(b"manifest bytes")
    with tracking.stage_run("prepare", params, data_paths=[manifest]) as run:
        pass
    logged = MlflowClient().get_run(run.info.run_id).data
    assert logged.params == tracking.flatten_params(params)
    assert logged.tags["acol.data_version"] == tracking.data_version([manifest])


def test_stage_run_marks_failed_and_reraises(params: Params) -> None:
    from mlflow.tracking import MlflowClient

    with pytest.raises(RuntimeError, match="boom"), tracking.stage_run("train", params, method="cam") as run:
        raise RuntimeError("boom")
    assert MlflowClient().get_run(run.info.run_id).info.status == "FAILED"


def test_flatten_params_dotted_strings() -> None:
    flat = tracking.flatten_params(Params())
    assert flat["model.backbone"] == "small"
    assert flat["train.lr"] == "0.01"
    assert flat["data.synthetic.num_classes"] == "10"
    assert flat["data.mask_dir"] == "None"
    assert flat["evaluate.iou_thresholds"] == "[30, 50, 70]"
    assert all(isinstance(v, str) for v in flat.values())

    def leaves(model) -> int:  # a plain count of the leaf fields of the pydantic tree
        return sum(leaves(v) if isinstance(v, BaseModel) else 1 for v in dict(model).values())

    assert len(flat) == leaves(Params())


def test_data_version_stable_and_content_based(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b"train rows")
    b.write_bytes(b"val rows")
    c.write_bytes(b"train rows")  # same content as a, other name
    version = tracking.data_version([a, b])
    reference = hashlib.sha256(
        hashlib.sha256(b"train rows").digest() + hashlib.sha256(b"val rows").digest()
    ).hexdigest()[:12]
    assert version == reference
    assert tracking.data_version([a, b]) == version
    assert tracking.data_version([c, b]) == version
    assert tracking.data_version([b, a]) != version
    b.write_bytes(b"val rowz")
    assert tracking.data_version([a, b]) != version
    with pytest.raises(FileNotFoundError, match=r"missing\.parquet"):
        tracking.data_version([tmp_path / "missing.parquet"])


def test_pipeline_run_id_from_env_or_params_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tracking.PIPELINE_RUN_ENV, "nightly-42")
    assert tracking.pipeline_run_id() == "nightly-42"
    monkeypatch.delenv(tracking.PIPELINE_RUN_ENV)
    params_file = tmp_path / "params.yaml"
    params_file.write_text("train:\n  epochs: 2\n")
    first = tracking.pipeline_run_id(params_file)
    assert first == tracking.pipeline_run_id(params_file)
    assert first.endswith(hashlib.sha256(params_file.read_bytes()).hexdigest()[:12])
    params_file.write_text("train:\n  epochs: 3\n")
    assert tracking.pipeline_run_id(params_file) != first


def test_tracking_uri_default_is_absolute_sqlite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert tracking.tracking_uri() == "http://tracking:5000"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_fast_with_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(tracking.TrackingServerError, match=f"{uri}.*unreachable"):
        tracking.check_tracking_server(timeout=2)


def test_any_http_answer_counts_as_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert tracking.check_tracking_server(timeout=5) == uri
    finally:
        server.shutdown()


def test_sqlite_in_missing_folder_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/nowhere/mlflow.db")
    with pytest.raises(tracking.TrackingServerError, match="nowhere"):
        tracking.check_tracking_server()


def test_log_model_registers_versions_that_load_without_unpickling(
    params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The registered model is a state dict plus its card: no pickle file, no pickle warning, and it loads (as
    the `WSOLModel`, and as an MLflow pyfunc) while every pickle loader is disabled."""
    import pickle

    import cloudpickle
    import mlflow.pyfunc
    from mlflow.artifacts import download_artifacts

    from acol.models import build_model
    from acol.tracking.mlflow_model import load_version, log_model

    torch.manual_seed(0)
    model = build_model("small", 3, "cam", head_channels=8)
    card = {"method": "cam", "backbone": "small", "num_classes": 3, "classes": ["n1", "n2", "n3"],
            "model": {"head_channels": 8, "erase_threshold": 0.6}}  # fmt: skip
    example = torch.randn(2, 3, 32, 32)
    versions = []
    with caplog.at_level("WARNING"):
        for _ in range(2):
            with tracking.stage_run("train", params, method="cam"):
                versions.append(log_model(model, "cam", params, example, card))
    assert not [r.getMessage() for r in caplog.records if "pickle" in r.getMessage().lower()]
    assert versions[1] == str(int(versions[0]) + 1)
    name = tracking.registered_model_name(params, "cam")
    assert name == f"{params.tracking.registered_model}-small-cam-holdout"  # backbone, method, protocol
    files = {
        p.name
        for p in Path(download_artifacts(f"models:/{name}/{versions[1]}", dst_path=str(tmp_path))).rglob("*")
    }
    assert {"model.pt", "model_card.json", "MLmodel"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pickle"))]

    def refuse(*_args, **_kwargs):
        raise AssertionError("a pickle was loaded")

    for module in (pickle, cloudpickle):
        monkeypatch.setattr(module, "load", refuse)
        monkeypatch.setattr(module, "loads", refuse)
    rebuilt = load_version(name, versions[1], tmp_path / "acol")
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{versions[1]}")
    with torch.inference_mode():
        expected = model(example).logits
        assert torch.equal(rebuilt(example).logits, expected)
    # an array still gives the logits (the served signature is images as bytes: tests/test_serving.py)
    np.testing.assert_array_equal(
        pyfunc.unwrap_python_model().predict(None, example.numpy()), expected.numpy()
    )
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        log_model(model, "cam", params, torch.zeros(3, 32, 32), card)


@pytest.mark.parametrize("pipeline_id", ["it's-a-run", 'say "hi"', "x' or tags.y = '1"])
def test_pipeline_ids_with_quotes_find_their_own_parent(
    params: Params, monkeypatch: pytest.MonkeyPatch, pipeline_id: str
) -> None:
    """``ACOL_PIPELINE_RUN`` goes into a filter string: quoted so that two stages of one pipeline share one
    parent whose tag is exactly the id (unquoted, a quote broke the filter or matched another pipeline)."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv(tracking.PIPELINE_RUN_ENV, pipeline_id)
    with tracking.stage_run("prepare", params) as first:
        pass
    with tracking.stage_run("train", params, method="acol") as second:
        pass
    client = MlflowClient()
    parent = client.get_run(first.data.tags["mlflow.parentRunId"])
    assert client.get_run(second.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.data.tags[tracking.PIPELINE_TAG] == pipeline_id


def test_pipeline_ids_that_cannot_be_searched_are_refused_by_name() -> None:
    for bad in ["both ' and \"", "ends in \\", "two\nlines", ""]:
        with pytest.raises(ValueError, match=tracking.PIPELINE_RUN_ENV):
            tracking.filter_literal(bad, tracking.PIPELINE_RUN_ENV)
    assert tracking.filter_literal("abc-1", "X") == "'abc-1'"


def test_experiment_opens_in_the_model_training_view(params: Params) -> None:
    from mlflow.tracking import MlflowClient

    with tracking.stage_run("prepare", params):
        pass
    experiment = MlflowClient().get_experiment_by_name(params.tracking.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_manifests_are_logged_as_datasets_with_source_and_digest(params: Params, tmp_path: Path) -> None:
    """The UI's Dataset column and ``datasets.digest`` filters: one dataset per manifest, digest = its version."""
    from mlflow.tracking import MlflowClient

    train, val = tmp_path / "train.parquet", tmp_path / "val.parquet"
    train.write_bytes(b"train rows")
    val.write_bytes(b"val rows")
    with tracking.stage_run("train", params, method="acol", data_paths=[train, val]) as run:
        pass
    inputs = MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    logged = {d.dataset.name: d for d in inputs}
    assert sorted(logged) == ["train", "val"]
    for name, path, context in (("train", train, "training"), ("val", val, "validation")):
        assert logged[name].dataset.digest == tracking.data_version([path])
        assert str(path.resolve()) in logged[name].dataset.source
        assert {t.key: t.value for t in logged[name].tags}["mlflow.data.context"] == context
    digest = tracking.data_version([val])
    found = MlflowClient().search_runs(
        [run.info.experiment_id], filter_string=f"datasets.digest = '{digest}'"
    )
    assert [r.info.run_id for r in found] == [run.info.run_id]


def test_parent_run_spans_its_stages_and_fails_with_one(params: Params) -> None:
    import time

    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    with tracking.stage_run("prepare", params) as first:
        parent_id = client.get_run(first.info.run_id).data.tags["mlflow.parentRunId"]
        assert client.get_run(parent_id).info.status == "RUNNING"  # the pipeline runs with its stage
        time.sleep(0.2)
    with tracking.stage_run("train", params, method="acol") as second:
        time.sleep(0.2)
    parent, runs = (
        client.get_run(parent_id).info,
        [client.get_run(r.info.run_id).info for r in (first, second)],
    )
    assert parent.status == "FINISHED"
    assert parent.start_time <= runs[0].start_time and parent.end_time >= runs[1].end_time
    assert parent.end_time - parent.start_time >= 400  # milliseconds: both stages, not the 17 ms of before

    with pytest.raises(RuntimeError), tracking.stage_run("evaluate", params, method="acol"):
        raise RuntimeError("stage failed")
    assert client.get_run(parent_id).info.status == "FAILED"
    with tracking.stage_run("report", params):  # another stage succeeding does not hide the failure
        pass
    assert client.get_run(parent_id).info.status == "FAILED"
    with tracking.stage_run("evaluate", params, method="acol"):  # the failed stage, rerun, succeeds
        pass
    assert client.get_run(parent_id).info.status == "FINISHED"


def test_champion_and_candidate_on_real_registered_versions(params: Params) -> None:
    """The promotion rule on registered versions: the first evaluated takes `champion`; a better second takes it
    over; a worse third only becomes `candidate`; for an error metric lower is better."""
    from mlflow.tracking import MlflowClient

    from acol.models import build_model
    from acol.tracking.mlflow_model import log_model
    from acol.tracking.registry import record_and_promote

    model = build_model("small", 2, "cam", head_channels=4)
    card = {"method": "cam", "backbone": "small", "num_classes": 2, "classes": ["n1", "n2"],
            "model": {"head_channels": 4, "erase_threshold": 0.6}}  # fmt: skip
    params = params.model_copy(
        update={"tracking": params.tracking.model_copy(update={"registered_model": "promo"})}
    )
    with tracking.stage_run("train", params, method="cam"):
        versions = [log_model(model, "cam", params, torch.zeros(1, 3, 16, 16), card) for _ in range(4)]
    name = tracking.registered_model_name(params, "cam")
    client = MlflowClient()
    key = {"acol.dataset": "synthetic", "acol.backbone": "small", "acol.method": "cam"}

    def aliases() -> tuple[str, str]:
        return tuple(
            str(client.get_model_version_by_alias(name, a).version) for a in ("champion", "candidate")
        )

    first = record_and_promote(name, versions[0], {"maxboxacc_v2": 50.0}, "maxboxacc_v2", key=key)
    assert first["champion"] and aliases() == (versions[0], versions[0])
    better = record_and_promote(name, versions[1], {"maxboxacc_v2": 60.0}, "maxboxacc_v2", key=key)
    assert better["champion"] and better["previous_champion_value"] == 50.0
    assert aliases() == (versions[1], versions[1])
    worse = record_and_promote(name, versions[2], {"maxboxacc_v2": 55.0}, "maxboxacc_v2", key=key)
    assert not worse["champion"] and aliases() == (versions[1], versions[2])
    assert client.get_model_version(name, versions[2]).tags["metric.maxboxacc_v2"] == "55.0"
    again = record_and_promote(
        name, versions[1], {"maxboxacc_v2": 59.0}, "maxboxacc_v2", key=key
    )  # re-evaluated
    assert again["champion"] and aliases() == (versions[1], versions[1])  # the champion itself keeps it
    # an error metric: 40 % beats the champion's 45 %, so lower wins
    client.set_model_version_tag(name, versions[1], "metric.top1_loc_error", "45.0")
    lower = record_and_promote(
        name, versions[3], {"maxboxacc_v2": 1.0, "top1_loc_error": 40.0}, "top1_loc_error", key=key
    )
    assert lower["champion"] and aliases() == (versions[3], versions[3])
    with pytest.raises(KeyError, match="champion_metric"):
        record_and_promote(name, versions[3], {"maxboxacc_v2": 1.0}, "pxap", key=key)


def test_the_repository_store_guard_sees_what_a_sqlite_store_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The conftest guard's view (`tracking_store_entries`) against MLflow itself: a run with an artifact in a
    sqlite store, from a working folder, lands in that folder's mlruns/ and is seen; the store's db too."""
    from mlflow import MlflowClient

    from tests.conftest import tracking_store_entries

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = tracking_store_entries(work)
    assert before == frozenset()
    client = MlflowClient("sqlite:///mlflow.db")  # a client of its own: no global MLflow state
    run = client.create_run(client.create_experiment("guard"))
    client.log_text(run.info.run_id, "x", "note.txt")
    assert (work / "mlruns").is_dir()  # MLflow's default artifact root: ./mlruns of the working folder
    new = tracking_store_entries(work) - before
    assert any(name.endswith("/" + run.info.run_id) for name in new), new
    assert any(name.startswith("mlflow.db@") for name in new), new
