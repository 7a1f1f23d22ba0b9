"""End to end: `dvc repro` of the whole DAG on a tiny configuration, in a fresh copy of the repository.

Checks the outputs (Parquet schema and row count, metrics in range, MLflow runs, params and registered models,
the report), that a second `dvc repro` does nothing, and that changing one evaluate param reruns only the
evaluate and report stages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

TINY = {
    "data.synthetic.num_classes": 4,
    "data.synthetic.train_per_class": 12,
    "data.synthetic.val_per_class": 8,
    "data.synthetic.holdout_per_class": 0,
    "model.head_channels": 16,
    "train.epochs": 1,
    "train.batch_size": 16,
    "train.cpus_per_worker": 1,
    "extract.batch_size": 16,
    "extract.rows_per_file": 20,
    "evaluate.interval": 0.05,
    "tracking.registered_model": "e2e",
}


def _set(params: dict, dotted: str, value: object) -> None:
    *sections, key = dotted.split(".")
    node = params
    for section in sections:
        node = node.setdefault(section, {})
    node[key] = value


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def pipeline_copy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh git repository with the project's files and a tiny params.yaml, after one `dvc repro`."""
    work = tmp_path_factory.mktemp("e2e") / "repo"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in listed:
        source = REPO / name
        if source.is_file() and not name.startswith(("outputs/", "data/")):
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / name)
    params = yaml.safe_load((work / "params.yaml").read_text())
    for dotted, value in TINY.items():
        _set(params, dotted, value)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    env["PYTHONPATH"] = str(work)
    git = ["git", "-c", "user.name=e2e", "-c", "user.email=e2e@example.com"]
    _run(["git", "init", "-q"], work, env)
    _run([*git, "add", "-A"], work, env)
    _run([*git, "commit", "-qm", "e2e"], work, env)
    _run([str(VENV_BIN / "dvc"), "repro"], work, env)
    return work, env


@pytest.mark.slow
def test_repro_writes_every_output(pipeline_copy: tuple[Path, dict[str, str]]) -> None:
    work, env = pipeline_copy
    out = work / "outputs"
    val_rows = pq.read_table(out / "prepare" / "val.parquet").num_rows
    assert val_rows == 4 * 8
    for method in ("acol", "cam"):
        maps = pq.read_table(out / "extract" / method / "maps")
        assert maps.num_rows == val_rows
        assert {"image_id", "label", "top5_classes", "map_gt", "map_top1", "pred_box", "error"} <= set(
            maps.column_names
        )
        assert maps.column("error").null_count == val_rows
        metrics = json.loads((out / "evaluate" / method / "evaluation.json").read_text())
        for key in ("top1_cls_error", "top1_loc_error", "gt_known_loc", "maxboxacc", "maxboxacc_v2", "pxap"):
            assert 0.0 <= metrics[key] <= 100.0, (key, metrics[key])
        shown = json.loads((work / "metrics" / "MaxBoxAccV2.json").read_text())  # the metrics stage
        assert shown[method] == round(metrics["maxboxacc_v2"], 2)
        assert json.loads((work / "metrics" / "train_img_per_s.json").read_text())[method] > 0
        assert (out / "train" / method / "model.pt").stat().st_size > 0
    html = (out / "report" / "index.html").read_text()
    assert "MaxBoxAccV2" in html or "maxboxacc_v2" in html
    # DVC's own view of the real outputs: a row per compared number, a column per method, in 80 columns
    table = _run([str(VENV_BIN / "dvc"), "metrics", "show"], work, env).splitlines()
    assert table[0].split() == ["Path", "acol", "cam"] and len(table) == 1 + 13
    assert "metrics/MaxBoxAccV2_IoU50.json" in table[4] and max(map(len, table)) <= 80
    # the extract stage kept the .gitignore DVC wrote in its folder
    assert (out / "extract" / "acol" / ".gitignore").read_text().strip() == "/maps"


@pytest.mark.slow
def test_mlflow_holds_runs_params_and_registered_models(pipeline_copy: tuple[Path, dict[str, str]]) -> None:
    import mlflow
    from mlflow import MlflowClient

    work, env = pipeline_copy
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    experiment = client.get_experiment_by_name("acol")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    stages = sorted(r.data.tags.get("acol.stage", "") for r in runs)
    for stage in ("prepare", "train", "extract", "evaluate", "report"):
        assert stage in stages, stages
    train_run = next(r for r in runs if r.data.tags.get("acol.stage") == "train")
    assert train_run.data.params["train.epochs"] == "1"
    assert "loss" in train_run.data.metrics
    stage_runs = [r for r in runs if r.data.tags.get("acol.role") == "stage"]
    parents = {r.data.tags.get("mlflow.parentRunId") for r in stage_runs}
    assert len(parents) == 1 and None not in parents  # one parent run for the whole pipeline
    assert all(r.data.tags.get("acol.data_version") for r in stage_runs)
    assert all(
        r.data.tags["acol.git_commit"] == stage_runs[0].data.tags["acol.git_commit"] for r in stage_runs
    )
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # model-training view
    parent = client.get_run(parents.pop()).info
    assert parent.status == "FINISHED"
    assert parent.start_time <= min(r.info.start_time for r in stage_runs)
    assert parent.end_time >= max(r.info.end_time for r in stage_runs)  # spans its stages
    assert {d.dataset.name for d in train_run.inputs.dataset_inputs} == {"train", "val"}
    for method in ("acol", "cam"):
        name = f"e2e-small-{method}-holdout"  # registered_model, backbone, method, threshold protocol
        version = client.get_model_version_by_alias(name, "champion")
        record = json.loads((work / "outputs" / "evaluate" / method / "evaluation.json").read_text())
        assert version.tags["metric.maxboxacc_v2"] == str(record["maxboxacc_v2"])
        assert version.tags["acol.method"] == method and version.tags["acol.protocol"] == "holdout"
        assert client.get_model_version_by_alias(name, "candidate").version == version.version
        assert client.get_run(version.run_id).data.tags["acol.stage"] == "evaluate"  # registered by evaluate


@pytest.mark.slow
def test_second_repro_does_nothing_and_a_param_reruns_only_its_stages(
    pipeline_copy: tuple[Path, dict[str, str]],
) -> None:
    work, env = pipeline_copy
    dvc = str(VENV_BIN / "dvc")
    assert "up to date" in _run([dvc, "status"], work, env)
    model = work / "outputs" / "train" / "acol" / "model.pt"
    model_mtime = model.stat().st_mtime_ns
    before = (work / "outputs" / "evaluate" / "acol" / "box_acc.csv").read_text()

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["evaluate"]["interval"] = 0.1
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = _run([dvc, "status", "--json"], work, env)
    # the report reads evaluate.interval too (a Choe preset is matched on it; published numbers beside it)
    assert sorted(json.loads(changed)) == ["evaluate@acol", "evaluate@cam", "report"]
    output = _run([dvc, "repro"], work, env)
    assert "Running stage 'evaluate@acol'" in output and "Running stage 'report'" in output
    assert "Running stage 'metrics'" in output
    assert "Running stage 'train@acol'" not in output and "Running stage 'extract@acol'" not in output
    assert model.stat().st_mtime_ns == model_mtime
    after = (work / "outputs" / "evaluate" / "acol" / "box_acc.csv").read_text()
    assert len(after.splitlines()) == 11 and after != before  # thresholds 0, 0.1, ..., 0.9 and a header
