"""What DVC shows: the project's dvc.yaml with the metrics folder the metrics stage writes, read back by `dvc`.

The oracle is DVC's own ``dvc metrics show`` / ``dvc metrics diff`` / ``dvc exp show``: their tables have only
the compared numbers (no run id, path or param), a row per metric and a column per method, and fit an 80-column
terminal (the files per stage and method made 172 columns; 1,640 when they also held run ids, paths and params).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from acol.distributed.train import HISTORY_COLUMNS, write_history_csv
from acol.stages.metrics import MetricsInputError, collect_metrics, write_metrics
from acol.tracking.dvc_metrics import METRIC_NAMES, METRICS_DIR, metric_table

REPO = Path(__file__).resolve().parents[1]
METHODS = ("acol", "cam")
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
# CAM's: other numbers, no masks (PxAP absent), and its errors higher
CAM_RECORD = {**RECORD, "method": "cam", "maxboxacc_v2": 50.004, "top1_loc_error": 49.996, "pxap": None}
LAST_EPOCH = {"epoch": 8, "loss": 0.017061944079399108, "acc_a": 1.0, "acc_b": 0.9992, "lr": 0.0,
              "val_loss": 0.0088, "val_top1": 1.0, "val_top5": 1.0, "seconds": 40.19, "samples_per_second": 65.58}  # fmt: skip
# metric_table's inputs for both methods
_BOTH = ({"acol": RECORD, "cam": CAM_RECORD}, {"acol": LAST_EPOCH, "cam": LAST_EPOCH})


def test_each_metric_is_a_row_with_a_value_per_method() -> None:
    table = metric_table(*_BOTH)
    assert list(table) == list(METRIC_NAMES)  # in display order; every one present (acol has PxAP)
    # rounded by hand: 56.442... -> 56.44, 50.004 -> 50.0
    assert table["MaxBoxAccV2"] == {"acol": 56.44, "cam": 50.0}
    assert table["top1_loc_err"] == {"acol": 40.15, "cam": 50.0}
    assert table["MaxBoxAccV2_IoU70"] == {"acol": 19.45, "cam": 19.45}
    assert table["PxAP"] == {"acol": 71.05}  # no masks for cam: left out, not null
    assert table["train_loss"] == {"acol": 0.0171, "cam": 0.0171}
    assert table["train_acc"]["acol"] == 100.0 and table["train_img_per_s"]["cam"] == 65.6
    # a history row read from CSV holds text; an empty cell (CAM's acc_b) or NaN is no number
    as_text = {k: str(v) for k, v in LAST_EPOCH.items()} | {"acc_a": "", "loss": "nan"}
    from_csv = metric_table({"cam": CAM_RECORD}, {"cam": as_text})
    assert "train_acc" not in from_csv and "train_loss" not in from_csv and "PxAP" not in from_csv
    assert from_csv["train_img_per_s"] == {"cam": 65.6}


def _stage_inputs(root: Path, records: dict[str, dict], epochs: int = 2) -> tuple[Path, Path]:
    """evaluate/<method>/evaluation.json and train/<method>/history.csv as the stages write them."""
    for method, record in records.items():
        (root / "evaluate" / method).mkdir(parents=True)
        (root / "evaluate" / method / "evaluation.json").write_text(json.dumps(record))
        # the last row counts; earlier ones have other numbers
        rows = [
            {**LAST_EPOCH, "epoch": e, "loss": LAST_EPOCH["loss"] * (epochs + 1 - e)}
            for e in range(1, epochs + 1)
        ]
        write_history_csv(rows, root / "train" / method / "history.csv")  # as the train stage writes it
    return root / "evaluate", root / "train"


def test_metrics_stage_writes_a_file_per_metric_and_replaces_the_folder(tmp_path: Path) -> None:
    evaluate_dir, train_dir = _stage_inputs(tmp_path, {"acol": RECORD, "cam": CAM_RECORD})
    (evaluate_dir / ".cam.tmp-x1").mkdir()  # what an interrupted evaluate leaves: not a method
    out = tmp_path / "metrics"
    out.mkdir()
    (out / "IoU30.json").write_text("{}")  # a file of an earlier layout: gone with the old folder
    write_metrics(collect_metrics(evaluate_dir, train_dir, METHODS), out)
    files = {p.stem: json.loads(p.read_text()) for p in out.iterdir()}
    assert set(files) == set(METRIC_NAMES)
    assert files["MaxBoxAccV2"] == {"acol": 56.44, "cam": 50.0}
    assert files["train_loss"] == {"acol": 0.0171, "cam": 0.0171}  # the last epoch's, not the first's
    assert files["PxAP"] == {"acol": 71.05}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".metrics")]  # no temp folder left


def test_metrics_show_the_methods_of_params_not_every_folder(tmp_path: Path) -> None:
    """`methods: [cam]` after a run of both: the acol folder is an earlier run's, not a column of this one."""
    evaluate_dir, train_dir = _stage_inputs(tmp_path, {"acol": RECORD, "cam": CAM_RECORD})
    table = collect_metrics(evaluate_dir, train_dir, ["cam"])
    assert table["MaxBoxAccV2"] == {"cam": 50.0} and "PxAP" not in table  # PxAP was acol's alone


def test_metrics_stage_names_the_missing_record(tmp_path: Path) -> None:
    evaluate_dir, train_dir = _stage_inputs(tmp_path, {"acol": RECORD, "cam": CAM_RECORD})
    (train_dir / "cam" / "history.csv").unlink()
    with pytest.raises(MetricsInputError, match=r"train/cam/history\.csv: no training history"):
        collect_metrics(evaluate_dir, train_dir, METHODS)
    (train_dir / "cam" / "history.csv").write_text(",".join(HISTORY_COLUMNS) + "\n")
    with pytest.raises(MetricsInputError, match=r"cam/history\.csv: no epoch"):
        collect_metrics(evaluate_dir, train_dir, METHODS)
    (evaluate_dir / "cam" / "evaluation.json").unlink()
    with pytest.raises(MetricsInputError, match=r"evaluate: no evaluation\.json for cam"):
        collect_metrics(evaluate_dir, train_dir, METHODS)
    with pytest.raises(MetricsInputError, match="no such folder"):
        collect_metrics(tmp_path / "absent", train_dir, METHODS)


def test_metrics_stage_cli_says_what_is_missing_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "metrics.py"), "--evaluate-dir", str(tmp_path / "none"),
         "--train-dir", str(tmp_path / "train"), "--out", str(tmp_path / "metrics")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert (
        done.returncode == 2 and done.stderr.strip().startswith("error: ") and "Traceback" not in done.stderr
    )
    assert str(tmp_path / "none") in done.stderr


def _metrics_out() -> str:
    """The metrics stage's output folder as dvc.yaml declares it."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["metrics"]
    (entry,) = stage["metrics"]
    return next(iter(entry)) if isinstance(entry, dict) else entry


def _git(work: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=work, check=True)


def _dvc(work: Path, *args: str) -> list[str]:
    return subprocess.run(
        [*DVC, *args], cwd=work, capture_output=True, text=True, check=True
    ).stdout.splitlines()


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC repository with this project's dvc.yaml and the metrics folder the stage writes, committed."""
    work = tmp_path_factory.mktemp("dvc_metrics")
    shutil.copy2(REPO / "dvc.yaml", work / "dvc.yaml")
    shutil.copy2(REPO / "params.yaml", work / "params.yaml")
    _git(work, "init", "-q")
    subprocess.run([*DVC, "init", "-q"], cwd=work, check=True)
    assert _metrics_out() == METRICS_DIR
    inputs = _stage_inputs(work / "inputs", {"acol": RECORD, "cam": CAM_RECORD})
    write_metrics(collect_metrics(*inputs, METHODS), work / METRICS_DIR)
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", "metrics")
    return work


def test_dvc_metrics_show_is_a_row_per_metric_in_80_columns(dvc_repo: Path) -> None:
    lines = _dvc(dvc_repo, "metrics", "show")
    print("\n".join(lines))
    assert lines[0].split() == ["Path", "acol", "cam"] and len(lines) == 1 + len(METRIC_NAMES)
    rows = {Path(line.split()[0]).stem: line.split()[1:] for line in lines[1:]}
    table = metric_table(*_BOTH)
    for name, values in table.items():  # DVC prints each file's numbers under its method, "-" where none
        assert [None if v == "-" else float(v) for v in rows[name]] == [
            values.get(m) for m in ("acol", "cam")
        ], name
    assert max(map(len, lines)) <= 80
    assert not any(word in " ".join(lines) for word in ("mlflow_run_id", "data/synthetic", "backbone"))


def test_dvc_metrics_diff_and_exp_show_of_one_metric_fit_80_columns(dvc_repo: Path) -> None:
    better = {**CAM_RECORD, "maxboxacc_v2": 61.0}
    inputs = _stage_inputs(dvc_repo / "inputs2", {"acol": RECORD, "cam": better})
    write_metrics(collect_metrics(*inputs, METHODS), dvc_repo / METRICS_DIR)
    try:
        diff = _dvc(dvc_repo, "metrics", "diff")
        assert diff[0].split() == ["Path", "Metric", "HEAD", "workspace", "Change"]
        assert (
            diff[1].split() == ["metrics/MaxBoxAccV2.json", "cam", "50.0", "61.0", "11.0"] and len(diff) == 2
        )
        assert max(map(len, diff)) <= 80
        # the README's recipe: every experiment, one metric of every method, drawn by DVC for an 80-column
        # terminal (COLUMNS): a table wider than that would lose columns to "…"
        keep = r"Experiment|metrics/MaxBoxAccV2\.json:.*"
        shown = subprocess.run(
            [*DVC, "exp", "show", "--no-pager", "--drop", ".*", "--keep", keep],
            cwd=dvc_repo, capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "80"},
        ).stdout  # fmt: skip
        print(shown)
        assert (
            "…" not in shown
            and "metrics/MaxBoxAccV2.json:acol" in shown
            and "metrics/MaxBoxAccV2.json:cam" in shown
        )
        assert [line.split() for line in shown.splitlines() if "workspace" in line] == [
            ["workspace", "56.44", "61"]
        ]
    finally:
        _git(dvc_repo, "checkout", "-q", "--", METRICS_DIR)


def test_compare_turns_dvc_exp_show_around(dvc_repo: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`python -m acol.stages.compare` on DVC's own ``exp show --json``: every method's numbers, narrow."""
    from acol.stages.compare import main

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
    first = lines[2 : lines.index("")] if "" in lines else lines[2:]
    rows = {line.split()[0]: line.split()[1:] for line in first}
    assert list(rows) == list(METRIC_NAMES)
    table = metric_table(*_BOTH)
    for name, values in rows.items():  # workspace and commit alike: each method's number, "-" where none
        expected = [f"{table[name][m]:g}" if m in table[name] else "-" for m in ("acol", "cam")]
        assert values == expected * 2, name
    print(f"compare: {len(lines)} lines, {max(map(len, lines))} columns")
    assert max(map(len, lines)) <= 80


def test_compare_reads_experiments_under_their_commit() -> None:
    from acol.stages.compare import columns_from_exp_show, render

    def row(rev: str, name: str | None, maxbox: float) -> dict:
        data = {"metrics": {"metrics/MaxBoxAccV2.json": {"data": {"acol": maxbox}}}}
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
        "MaxBoxAccV2_IoU30",
        "-",
        "-",
        "-",
    ]


def test_compare_help_prints_its_usage_instead_of_failing(capsys) -> None:
    """`--help` would reach `dvc exp show --json --help`, whose text is not JSON: the tool answers itself."""
    from acol.stages.compare import main

    assert main(["--help"]) == 0
    assert "python -m acol.stages.compare -A" in capsys.readouterr().out


def test_compare_shows_acol_minus_each_method_of_its_experiment() -> None:
    from acol.stages.compare import RunColumn, render

    columns = [
        RunColumn("exp1", "acol", {"MaxBoxAccV2": 60.0, "PxAP": 70.0}),
        RunColumn("exp1", "cam", {"MaxBoxAccV2": 55.5, "PxAP": 71.0}),
        RunColumn("exp1", "spg", {"MaxBoxAccV2": 61.25}),
        RunColumn("exp2", "cam", {"MaxBoxAccV2": 50.0}),  # no ACoL in exp2: no difference column
    ]
    lines = render(columns).splitlines()
    second = lines[lines.index("") + 2 :]
    assert second[0].split() == ["exp1", "exp1"] and second[1].split() == ["acol-cam", "acol-spg"]
    rows = {line.split()[0]: line.split()[1:] for line in second[2:]}
    assert rows["MaxBoxAccV2"] == ["4.5", "-1.25"] and rows["PxAP"] == ["-1", "-"]
