"""What DVC shows: the project's dvc.yaml with metrics files as the stages write them, read back by `dvc` itself.

The oracle is DVC's own ``dvc metrics show``: its table has only the compared numbers (no run id, path or
param), every metrics file in dvc.yaml is one the stages write with `acol.tracking.dvc_metrics`, and it fits a wide
terminal (measured: 172 columns on the pipeline's real outputs, 1,640 before).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from acol.tracking.dvc_metrics import EVALUATION_KEYS, evaluation_metrics, training_metrics

REPO = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]

# An evaluation record and a last history row shaped like the real ones (see outputs/evaluate/*/evaluation.json).
RECORD = {
    "method": "acol", "backbone": "small", "num_images": 401, "num_holdout_images": 99, "failed_images": 0,
    "top1_cls_error": 0.0, "top5_cls_error": 0.0, "top1_loc_error": 40.14962593516209,
    "top5_loc_error": 40.14962593516209, "gt_known_loc": 59.85037406483791, "best_threshold": 0.66,
    "maxboxacc": 60.598503740648376, "maxboxacc_v2": 56.44222776392352, "maxboxacc_v2_iou30": 89.27680798004988,
    "maxboxacc_v2_iou50": 60.598503740648376, "maxboxacc_v2_iou70": 19.45137157107232, "pxap": 71.04606988937098,
    "map_a_in_mask": 0.529852569103241, "map_fused_out_mask": 0.19801631569862366, "erase_threshold": 0.6,
}  # fmt: skip
LAST_EPOCH = {"epoch": 8, "loss": 0.017061944079399108, "acc_a": 1.0, "acc_b": 0.9992, "lr": 0.0,
              "val_loss": 0.0088, "val_top1": 1.0, "val_top5": 1.0, "seconds": 40.19, "samples_per_second": 65.58}  # fmt: skip


def test_metrics_are_the_compared_numbers_rounded() -> None:
    shown = evaluation_metrics(RECORD)
    assert list(shown) == list(EVALUATION_KEYS.values())
    assert shown["MaxBoxAccV2"] == 56.44 and shown["loc_err@1"] == 40.15 and shown["PxAP"] == 71.05
    assert "PxAP" not in evaluation_metrics({**RECORD, "pxap": None})  # no masks: left out, not null
    assert training_metrics(LAST_EPOCH) == {"loss": 0.0171, "acc": 100.0, "img/s": 65.6}


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC repository with this project's dvc.yaml and every metrics file the stages write."""
    work = tmp_path_factory.mktemp("dvc_metrics")
    shutil.copy2(REPO / "dvc.yaml", work / "dvc.yaml")
    shutil.copy2(REPO / "params.yaml", work / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    subprocess.run([*DVC, "init", "-q"], cwd=work, check=True)
    stages = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
    declared = []
    for stage in stages.values():
        items = stage.get("foreach", [None])
        body = stage.get("do", stage)
        for item in items:
            for entry in body.get("metrics", []):
                name = next(iter(entry)) if isinstance(entry, dict) else entry
                declared.append(name.replace("${item}", item) if item else name)
    for name in declared:
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = {"train": training_metrics(LAST_EPOCH), "evaluate": evaluation_metrics(RECORD)}
        path.write_text(json.dumps(writer[Path(name).parts[1]]))
    return work


def test_dvc_metrics_show_fits_a_terminal(dvc_repo: Path) -> None:
    table = subprocess.run(
        [*DVC, "metrics", "show"], cwd=dvc_repo, capture_output=True, text=True, check=True
    ).stdout
    lines = table.splitlines()
    header = lines[0].split()
    assert header[0] == "Path" and len(lines) == 5  # train and evaluate, for acol and cam
    expected = {*EVALUATION_KEYS.values(), "loss", "acc", "img/s"}
    assert set(header[1:]) == expected  # nothing else: no run id, path, param or count
    width = max(map(len, lines))
    print(f"dvc metrics show: {len(lines)} lines, {width} columns")
    assert width <= 175
    assert "mlflow_run_id" not in table and "data/synthetic" not in table


def test_compare_turns_dvc_exp_show_around(dvc_repo: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`python -m acol.stages.compare` on DVC's own ``exp show --json``: every method's numbers, narrow."""
    from acol.stages.compare import METRIC_ROWS, main

    subprocess.run(["git", "add", "-A"], cwd=dvc_repo, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "metrics"],
        cwd=dvc_repo,
        check=True,
    )
    monkeypatch.chdir(dvc_repo)
    assert main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()  # the workspace and the commit (its branch name), each with acol and cam
    assert len(header) == 4 and header[:2] == ["workspace"] * 2 and header[2] == header[3] != "workspace"
    assert lines[1].split() == ["acol", "cam", "acol", "cam"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert list(rows) == list(METRIC_ROWS)
    shown = {**evaluation_metrics(RECORD), **training_metrics(LAST_EPOCH)}
    for name, values in rows.items():
        assert {float(v) for v in values} == {shown[name]}, name  # the file's number in every column
    print(f"compare: {len(lines)} lines, {max(map(len, lines))} columns")
    assert max(map(len, lines)) <= 80


def test_compare_reads_experiments_under_their_commit() -> None:
    from acol.stages.compare import columns_from_exp_show, render

    def row(rev: str, name: str | None, maxbox: float) -> dict:
        data = {"metrics": {"outputs/evaluate/acol/metrics.json": {"data": {"MaxBoxAccV2": maxbox}}}}
        return {"rev": rev, "name": name, "data": data, "error": None, "experiments": None}

    head = row("abc1234def", "main", 50.0)
    head["experiments"] = [{"name": "seed-1", "revs": [row("ffff", "seed-1", 55.5)]}]
    failed = {"rev": "dead", "name": "broken", "data": None, "error": {"msg": "x"}, "experiments": None}
    columns = columns_from_exp_show([row("workspace", None, 49.0), head, failed])
    assert [(c.experiment, c.method, c.metrics["MaxBoxAccV2"]) for c in columns] == [
        ("workspace", "acol", 49.0),
        ("main", "acol", 50.0),
        ("seed-1", "acol", 55.5),
    ]
    table = render(columns).splitlines()
    assert table[2].split() == ["MaxBoxAccV2", "49", "50", "55.5"] and table[3].split() == [
        "IoU30",
        "-",
        "-",
        "-",
    ]


def test_compare_help_prints_its_usage_instead_of_failing(capsys) -> None:
    """`--help` would reach `dvc exp show --json --help`, whose text is not JSON: the tool answers itself."""
    from acol.stages.compare import main

    assert main(["--help"]) == 0
    assert "python -m acol.stages.compare -A" in capsys.readouterr().out
