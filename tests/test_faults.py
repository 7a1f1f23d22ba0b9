"""Fault injection: a dead tracking server, a stage killed mid-write, a crash at the rename, a killed worker.

Chosen behaviour for an unreachable MLflow server: every stage script calls
`acol.tracking.stage_runs.check_tracking_server()` right after parsing its params, so the stage fails with
`TrackingServerError` (naming the URI) before it reads data, starts Ray or writes anything, instead of after an
hour of training. The tests here inject each fault and check what is left on disk: the previous complete
output, or none, never a partial file where a later stage reads.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from acol.config import load_params
from acol.data.manifest import manifest_classes, manifest_from_records, read_manifest, write_manifest
from acol.distributed.extract import ExtractionJob, extract_plain
from acol.inference.mapstore import read_maps
from acol.models import build_model
from acol.stages.cli import run_stage
from acol.tracking.stage_runs import TrackingServerError, check_tracking_server

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"


class ExpensiveWorkStarted(AssertionError):
    """Raised by the patched data/Ray/model entry points: the stage got past its tracking check."""


def _boom(*_args, **_kwargs):
    raise ExpensiveWorkStarted("expensive work started before the tracking server was checked")


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_files(folder: Path, classes: list[str], method: str = "acol", seed: int = 0) -> tuple[Path, Path]:
    """A random small model's state dict and a matching model card, as the train stage writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_model("small", len(classes), method, head_channels=8)
    torch.save(model.state_dict(), folder / "model.pt")
    card = {"method": method, "backbone": "small", "num_classes": len(classes), "classes": classes}
    card["model"] = {"head_channels": 8, "erase_threshold": 0.6}
    (folder / "model_card.json").write_text(json.dumps(card))
    return folder / "model.pt", folder / "model_card.json"


# --- tracking server down ---------------------------------------------------------------------------------

# script -> (arguments besides --params/--out, library entry points that do the stage's real work)
STAGES = {
    "prepare": ([], ["acol.stages.prepare.index_dataset"]),
    "train": (["--method", "acol", "--train-manifest", "{tmp}/train.parquet", "--val-manifest", "{tmp}/val.parquet"],
              ["acol.distributed.train.fit"]),
    "extract": (["--method", "acol", "--manifest", "{tmp}/val.parquet", "--model", "{tmp}/model/model.pt",
                 "--model-card", "{tmp}/model/model_card.json"],
                ["acol.distributed.extract.extract", "acol.distributed.extract.extract_plain"]),
    "evaluate": (["--method", "acol", "--maps", "{tmp}/maps", "--manifest", "{tmp}/val.parquet", "--model",
                  "{tmp}/model/model.pt", "--model-card", "{tmp}/model/model_card.json"],
                 ["acol.stages.evaluation.evaluate_method", "acol.inference.mapstore.read_maps"]),
    "report": (["--evaluate-dir", "{tmp}/evaluate", "--train-dir", "{tmp}/train", "--extract-dir", "{tmp}/extract",
                "--manifest", "{tmp}/val.parquet", "--summary", "{tmp}/summary.json"],
               ["acol.stages.report.build_report"]),
    "reevaluate": (["--method", "acol", "--manifest", "{tmp}/val.parquet", "--fullsup-manifest",
                    "{tmp}/fullsup.parquet"], ["acol.stages.reevaluate.reevaluate"]),
}  # fmt: skip


def _patch_expensive(monkeypatch: pytest.MonkeyPatch, targets: list[str]) -> None:
    import ray

    from acol.stages.report import ReportInputs

    for target in targets:
        monkeypatch.setattr(target, _boom)
    monkeypatch.setattr(ReportInputs, "from_dirs", classmethod(_boom))
    monkeypatch.setattr(ray, "init", _boom)


def _run_script(name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``pipelines/<name>.py``'s `main` as its ``__main__`` does, in this process (the patches apply)."""
    main = runpy.run_path(str(PIPELINES / f"{name}.py"), run_name=f"pipelines_{name}")["main"]
    run_stage(lambda: main(argv))


@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_checks_the_tracking_server_before_any_work(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _closed_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("ACOL_DEBUG", "1")  # the error itself, not run_stage's one line and exit 2
    args, targets = STAGES[name]
    _patch_expensive(monkeypatch, targets)
    _model_files(tmp_path / "model", ["n01"])  # a card the evaluate stage reads before its tracking check
    out = tmp_path / "out"
    paths = [a.format(tmp=tmp_path) for a in args]
    argv = [*paths, "--params", str(tmp_path / "absent.yaml"), "--out", str(out)]
    with pytest.raises(TrackingServerError, match=rf"127\.0\.0\.1:{port} is unreachable"):
        _run_script(name, argv, monkeypatch)
    assert not out.exists()  # nothing written


def test_a_hung_server_times_out_instead_of_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts the connection and never answers ("slow") fails the check after `timeout`."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)  # the kernel completes the handshake; nobody ever reads or answers
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.getsockname()[1]}")
        with pytest.raises(TrackingServerError, match="unreachable"):
            check_tracking_server(timeout=0.5)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "ACOL_PIPELINE_RUN": f"faults-{tmp_path.name}", **extra}
    env.pop("ACOL_EPOCH_HOOK", None)
    env.pop("RAY_ADDRESS", None)  # never join another test's cluster
    return env


@pytest.mark.slow
@pytest.mark.parametrize("name", ["train", "extract"])
def test_train_and_extract_processes_exit_fast_with_the_server_down(
    name: str, tiny_dataset: dict, tmp_path: Path
) -> None:
    """The real scripts in fresh processes: exit status 2, the URI named, no Ray started, no output."""
    model, card = _model_files(tmp_path / "model", manifest_classes(read_manifest(tiny_dataset["val"])))
    out = tmp_path / "out"
    args = {
        "train": ["--train-manifest", str(tiny_dataset["train"]), "--val-manifest", str(tiny_dataset["val"])],
        "extract": ["--manifest", str(tiny_dataset["val"]), "--model", str(model), "--model-card", str(card)],
    }[name]
    port = _closed_port()
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(PIPELINES / f"{name}.py"), "--method", "acol", *args, "--out", str(out),
         "--root", str(tiny_dataset["root"]), "--params", str(tmp_path / "absent.yaml")],
        cwd=tmp_path, env=_env(tmp_path, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    print(f"{name}: failed after {seconds:.1f} s (interpreter start and imports included)")
    assert done.returncode == 2, done.stderr[-2000:]  # a user error (acol.errors.UserError): one line
    assert f"error: MLflow tracking server http://127.0.0.1:{port} is unreachable" in done.stderr
    assert "Traceback" not in done.stderr
    assert "Started a local Ray instance" not in done.stderr  # it failed before Ray started
    assert not out.exists() and not (tmp_path / "mlflow.db").exists()


# --- a stage killed while it writes: extract --------------------------------------------------------------


@pytest.fixture(scope="module")
def big_val(tiny_dataset: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny val split repeated 4 times (64 images, hard links): long enough to be killed mid-way."""
    work = tmp_path_factory.mktemp("kill_extract")
    root = work / "data"
    val = read_manifest(tiny_dataset["val"])
    records = []
    for copy in range(4):
        for rec in val.to_pylist():
            image_id = f"val/c{copy:02d}_{Path(rec['image_id']).name}"
            (root / image_id).parent.mkdir(parents=True, exist_ok=True)
            os.link(tiny_dataset["root"] / rec["image_id"], root / image_id)
            records.append({**rec, "image_id": image_id, "mask_path": None})
    classes = manifest_classes(val)
    manifest = work / "val.parquet"
    write_manifest(manifest_from_records(records, classes, "synthetic"), manifest)
    model, card = _model_files(work / "model", classes)
    params = work / "params.yaml"
    # Batches of one at 96 px, parts of 4 rows flushed as it goes: killed after the first of 16 parts.
    params.write_text("train:\n  image_size: 96\nextract:\n  batch_size: 1\n  rows_per_file: 4\n")
    return {"work": work, "root": root, "manifest": manifest, "model": model, "card": card, "params": params,
            "n": len(records)}  # fmt: skip


def _extract_cmd(s: dict, out: Path) -> list[str]:
    return [sys.executable, str(PIPELINES / "extract.py"), "--method", "acol", "--engine", "plain",
            "--params", str(s["params"]), "--manifest", str(s["manifest"]), "--root", str(s["root"]),
            "--model", str(s["model"]), "--model-card", str(s["card"]), "--out", str(out)]  # fmt: skip


def _kill_once_writing(s: dict, out: Path, tmp_path: Path) -> None:
    """Start the extract stage and SIGKILL it (and any child) once its temp folder holds a Parquet part."""
    import psutil

    env = _env(tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = subprocess.Popen(_extract_cmd(s, out), cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(out.parent.glob(f".{out.name}.tmp-*/maps/part-*.parquet")):
            if proc.poll() is not None:
                pytest.fail(
                    f"extract ended (rc {proc.returncode}) before it could be killed: {proc.stderr.read()}"
                )
            assert time.monotonic() < deadline, "extract never started writing"
            time.sleep(0.02)
        victims = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_extract_killed_while_writing_leaves_old_output_or_none(big_val: dict, tmp_path: Path) -> None:
    out = tmp_path / "extract" / "acol"

    _kill_once_writing(big_val, out, tmp_path)  # no previous output: still none, not a partial one
    assert not out.exists()

    env = _env(tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    subprocess.run(_extract_cmd(big_val, out), cwd=tmp_path, env=env, check=True, capture_output=True)
    complete = _snapshot(out)
    resumed = json.loads(complete["summary.json"])["resumed_rows"]
    assert 4 <= resumed < big_val["n"] and resumed % 4 == 0  # the killed run's whole parts were kept
    table = read_maps(out / "maps")
    ids = table.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == big_val["n"]  # every image exactly once
    assert ids == sorted(read_manifest(big_val["manifest"]).column("image_id").to_pylist())
    assert table.column("error").null_count == big_val["n"]

    _kill_once_writing(big_val, out, tmp_path)  # killed over a complete output: that output is untouched
    assert _snapshot(out) == complete
    assert read_maps(out / "maps").num_rows == big_val["n"]
    # What a kill leaves is the dotted temp folder beside the output, never inside it (dvc tracks `maps/`).
    leftovers = [p.name for p in out.parent.iterdir() if p.name != out.name]
    assert leftovers and all(name.startswith(f".{out.name}.tmp-") for name in leftovers)

    subprocess.run(_extract_cmd(big_val, out), cwd=tmp_path, env=env, check=True, capture_output=True)
    rerun = _snapshot(out)
    assert {k: v for k, v in rerun.items() if k.startswith("maps/")} == {
        k: v for k, v in complete.items() if k.startswith("maps/")
    }  # the rerun is complete and byte-identical (summary.json differs only in its timings)
    assert json.loads(rerun["summary.json"])["rows"] == big_val["n"]
    assert json.loads(rerun["summary.json"])["resumed_rows"] >= 4  # resumed again, same bytes
    # the rerun removed the temp folder the killed run had left
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


# --- a crash at the last moment: every output keeps its previous content ------------------------------------


class RenameCrash(OSError):
    pass


def _crash_on_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `os.replace` and folder exchange fails (a crash right before the rename): an output written in
    place would still change."""

    def replace(src, dst):
        raise RenameCrash(f"injected crash before renaming {src} to {dst}")

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr("acol.io._exchange", replace)


def _stale(folder: Path, names: list[str]) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"previous complete output of " + name.encode())
    return _snapshot(folder)


def test_prepare_outputs_survive_a_crash_before_rename(
    tiny_dataset: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest_data import write_ilsvrc

    root = write_ilsvrc(tmp_path / "ilsvrc")["root"]
    out = tmp_path / "prepare"
    before = _stale(out, ["train.parquet", "val.parquet", "summary.json"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    _crash_on_rename(monkeypatch)
    argv = ["--params", str(tmp_path / "absent.yaml"), "--out", str(out), "--set", "data.source=ilsvrc",
            "--set", f"data.root={root}", "--set", "data.mask_dir=null"]  # fmt: skip
    with pytest.raises(RenameCrash):
        _run_script("prepare", argv, monkeypatch)
    assert _snapshot(out) == before  # old files intact, and no temp file left behind


def test_evaluate_outputs_survive_a_crash_before_rename(
    tiny_dataset: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    val = tiny_dataset["val"]
    model, card = _model_files(tmp_path / "model", manifest_classes(read_manifest(val)))
    params = load_params(tmp_path / "absent.yaml", ["train.image_size=48", "extract.batch_size=8"])
    extract_plain(ExtractionJob(params, "acol", val, tiny_dataset["root"], model, card, tmp_path / "extract"))
    out = tmp_path / "evaluate"
    before = _stale(out, ["evaluation.json", "box_acc.csv", "pr_curve.csv"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    _crash_on_rename(monkeypatch)
    argv = ["--method", "acol", "--params", str(tmp_path / "absent.yaml"), "--maps", str(tmp_path / "extract/maps"),
            "--manifest", str(val), "--model-card", str(card), "--model", str(model), "--out", str(out),
            "--set", f"data.root={tiny_dataset['root']}", "--set", "evaluate.interval=0.1"]  # fmt: skip
    with pytest.raises(RenameCrash):
        _run_script("evaluate", argv, monkeypatch)
    assert _snapshot(out) == before


def test_evaluate_without_masks_removes_an_earlier_pr_curve(
    tiny_dataset: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run on data without masks has no PR curve; the one an earlier run left must not stay beside its
    numbers, where the report would plot it as this run's."""
    manifest = read_manifest(tiny_dataset["val"])
    no_masks = manifest.set_column(
        manifest.schema.get_field_index("mask_path"), "mask_path", pa.nulls(manifest.num_rows, pa.string())
    )
    val = tmp_path / "val_no_masks.parquet"
    write_manifest(no_masks, val)
    model, card = _model_files(tmp_path / "model", manifest_classes(no_masks))
    params = load_params(tmp_path / "absent.yaml", ["train.image_size=48", "extract.batch_size=8"])
    extract_plain(ExtractionJob(params, "acol", val, tiny_dataset["root"], model, card, tmp_path / "extract"))
    out = tmp_path / "evaluate"
    _stale(out, ["pr_curve.csv"])
    monkeypatch.chdir(tmp_path)  # the sqlite store's artifacts (the registered model) go to ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    argv = ["--method", "acol", "--params", str(tmp_path / "absent.yaml"), "--maps", str(tmp_path / "extract/maps"),
            "--manifest", str(val), "--model-card", str(card), "--model", str(model), "--out", str(out),
            "--set", f"data.root={tiny_dataset['root']}", "--set", "evaluate.interval=0.1"]  # fmt: skip
    _run_script("evaluate", argv, monkeypatch)
    assert "pxap" not in json.loads((out / "evaluation.json").read_text())  # no masks, no PxAP
    assert sorted(p.name for p in out.iterdir()) == ["box_acc.csv", "evaluation.json"]


def test_train_and_report_writers_survive_a_crash_before_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The train stage's writers (history.csv; model_card.json and model.pt go through `acol.io` too) and the
    report folder swap: old files intact, no temp file or folder left."""
    from acol.distributed.train import write_history_csv
    from acol.io import atomic_path, write_json_atomic
    from acol.stages.report import _write_folder

    train_dir, report_dir = tmp_path / "train", tmp_path / "report"
    before = _stale(train_dir, ["history.csv", "model_card.json", "model.pt"])
    report_before = _stale(report_dir, ["index.html", "training.png"])
    _crash_on_rename(monkeypatch)
    with pytest.raises(RenameCrash):
        write_history_csv([{"epoch": 1, "loss": 1.0}], train_dir / "history.csv")
    with pytest.raises(RenameCrash):
        write_json_atomic(train_dir / "model_card.json", {"method": "acol"})
    with pytest.raises(RenameCrash), atomic_path(train_dir / "model.pt") as tmp:
        torch.save({"w": torch.zeros(2)}, tmp)
    with pytest.raises(RenameCrash):
        _write_folder(report_dir, {"index.html": b"<html>new</html>"})
    assert _snapshot(train_dir) == before
    assert _snapshot(report_dir) == report_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "train"]  # no temp folder left


# --- a training worker killed from outside, mid-run -------------------------------------------------------


def _registered_checkpoints(storage: Path) -> list[str]:
    """Checkpoints the Ray Train controller has registered (its snapshot file), not merely written by a worker.

    A checkpoint reaches the controller by polling; one written but not yet registered is not resumed from.
    """
    names: list[str] = []
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            results = json.loads(snapshot.read_text())["checkpoint_results"]
        except (ValueError, KeyError):
            continue  # being rewritten right now
        names += [r["checkpoint_dir_name"] for r in results]
    return sorted(names)


@pytest.mark.slow
def test_training_survives_a_worker_killed_from_outside(
    tiny_dataset: dict, ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL of a Ray Train worker process (found among this process's children) mid-run.

    Unlike the epoch hook of `tests/fault_injection.py` (rank 0 exits at an epoch boundary), the kill lands wherever the worker is:
    inside an epoch, its validation, or its checkpoint upload. It waits until the controller has registered two
    checkpoints: one that a worker wrote but the controller had not yet polled is not resumed from.
    """
    import mlflow
    import psutil
    from mlflow.tracking import MlflowClient

    from acol.distributed.train import fit
    from acol.tracking import stage_runs as tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("ACOL_EPOCH_HOOK", raising=False)
    epochs = 4
    params = load_params(
        tmp_path / "absent.yaml",
        ["model.head_channels=8", f"train.epochs={epochs}", "train.batch_size=4", "train.image_size=96",
         "train.num_workers=2", "train.cpus_per_worker=1", "train.max_failures=1", "tracking.experiment=faults",
         "tracking.log_system_metrics=false", f"train.storage_path={tmp_path / 'ray'}"],
    )  # fmt: skip
    tracking.configure(params)
    with mlflow.start_run() as run:
        pass

    killed: dict[str, object] = {}

    def killer() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            saved = _registered_checkpoints(tmp_path / "ray")
            if len(saved) >= 2:  # registered by the controller, not only written by the worker
                workers = [
                    p for p in psutil.Process().children(recursive=True)
                    if "RayTrainWorker" in " ".join(p.cmdline())
                ]  # fmt: skip
                if workers:
                    workers[0].send_signal(signal.SIGKILL)
                    killed.update(pid=workers[0].pid, saved=saved)
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    data = [tiny_dataset["train"], tiny_dataset["val"], tiny_dataset["root"]]
    outcome = fit(params, "acol", *data, tmp_path / "out", run_id=run.info.run_id)
    thread.join(timeout=5)

    assert killed, "no worker was killed"
    assert len(killed["saved"]) < epochs  # killed before the end, so one restart must have happened
    assert outcome.restarts == 1
    assert [row["epoch"] for row in outcome.history] == list(range(1, epochs + 1))
    client = MlflowClient()
    assert client.get_run(run.info.run_id).data.tags["restarts"] == "1"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(set(steps)) == list(range(1, epochs + 1))
    fresh = build_model("small", 4, "acol", head_channels=8)
    from acol.models import load_model_weights

    load_model_weights(fresh, outcome.model_path)
    assert all(torch.isfinite(p).all() for p in fresh.parameters())
    print(
        f"killed worker pid {killed['pid']} with checkpoints {killed['saved']} saved; restarts {outcome.restarts}"
    )


# --- the tracking server goes away in the middle of a stage ----------------------------------------------


@pytest.mark.slow
def test_tracking_server_lost_mid_stage_fails_the_stage_and_a_rerun_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chosen behaviour (README, "MLflow"): a stage whose server disappears fails with MlflowException once the
    client's HTTP retries are spent (0 here), naming the server; what the stage wrote before stays complete
    (atomic writes); its MLflow run is left RUNNING (nobody could tell the server otherwise); the rerun, once
    the server is back, logs a new run under the same parent, which ends FINISHED."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from acol.io import write_json_atomic
    from acol.tracking import stage_runs as tracking
    from tests.services import mlflow_server_process, stop_process_group

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setenv(tracking.PIPELINE_RUN_ENV, "server-lost")
    params = load_params(tmp_path / "absent.yaml", ["tracking.log_system_metrics=false"])
    output = tmp_path / "out" / "metrics.json"
    with mlflow_server_process(tmp_path) as (uri, server):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        start = time.monotonic()
        with (
            pytest.raises(MlflowException, match=r"127\.0\.0\.1"),
            tracking.stage_run("evaluate", params, method="acol") as lost,
        ):
            mlflow.log_metric("before", 1.0)
            write_json_atomic(output, {"MaxBoxAccV2": 50.0})
            stop_process_group(server)  # the server goes away in the middle of the stage
            mlflow.log_metric("after", 2.0)
        seconds = time.monotonic() - start
    assert json.loads(output.read_text()) == {"MaxBoxAccV2": 50.0}
    mlflow.end_run()  # what the process exiting would do to its local run stack

    # The server's own store, read directly (as a restarted server would serve it; saves a second start).
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    client = MlflowClient(store)
    assert client.get_run(lost.info.run_id).info.status == "RUNNING"
    assert client.get_run(lost.info.run_id).data.metrics == {"before": 1.0}
    with tracking.stage_run("evaluate", params, method="acol") as rerun:
        mlflow.log_metric("after", 2.0)
    parent = rerun.data.tags["mlflow.parentRunId"]
    assert parent == client.get_run(lost.info.run_id).data.tags["mlflow.parentRunId"]
    assert client.get_run(parent).info.status == "FINISHED"
    print(f"stage failed {seconds:.1f} s after it started, the server stopped inside it")
