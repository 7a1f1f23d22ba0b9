"""A user's mistake ends a stage with one line on stderr and exit status 2; ``--debug`` shows the traceback.

Bad params for every stage: tests/test_bad_input.py. Here: a missing input for every stage that reads one, the
real processes (stderr as the user sees it), and that unexpected errors keep their traceback.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from acol.config import ParamsError
from acol.stages.cli import run_stage

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"

# stage -> (argv naming a missing input under /nonexistent, what the one line must say)
MISSING = {
    "prepare": (["--set", "data.root=/nonexistent/data"], "error: data.root: dataset folder /nonexistent/data does not exist"),
    "train": (["--method", "cam", "--train-manifest", "/nonexistent/train.parquet", "--val-manifest",
               "/nonexistent/val.parquet"], "error: data_version: manifest not found: /nonexistent/train.parquet"),
    "extract": (["--method", "cam", "--manifest", "/nonexistent/val.parquet", "--model", "/nonexistent/model.pt",
                 "--model-card", "/nonexistent/card.json"], "error: model weights not found: /nonexistent/model.pt"),
    "evaluate": (["--method", "cam", "--maps", "/nonexistent/maps", "--model-card", "/nonexistent/card.json",
                  "--manifest", "/nonexistent/val.parquet", "--model", "/nonexistent/model.pt"],
                 "error: No such file or directory: /nonexistent/card.json"),
    "report": (["--evaluate-dir", "/nonexistent/evaluate", "--train-dir", "/nonexistent/train", "--extract-dir",
                "/nonexistent/extract", "--manifest", "/nonexistent/val.parquet", "--summary",
                "/nonexistent/summary.json"], "error: /nonexistent/evaluate: evaluate folder not found"),
}  # fmt: skip


@pytest.fixture
def stage_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("ACOL_PIPELINE_RUN", f"cli-errors-{tmp_path.name}")
    monkeypatch.delenv("ACOL_DEBUG", raising=False)
    return tmp_path


@pytest.mark.parametrize("name", list(MISSING))
def test_a_missing_input_is_one_line_and_exit_2(
    name: str, stage_cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, line = MISSING[name]
    main = runpy.run_path(str(PIPELINES / f"{name}.py"), run_name=f"pipelines_{name}")["main"]
    with pytest.raises(SystemExit) as exit_:
        run_stage(lambda: main([*argv, "--out", str(stage_cwd / "out")]))
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert err.splitlines()[-1] == line and "Traceback" not in err
    assert not (stage_cwd / "out").exists()


def _script(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        [sys.executable, str(PIPELINES / "synthesize.py"), *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_real_process_prints_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    bad = ["--set", "data.synthetic.num_classes=many", "--out", str(tmp_path / "data")]
    plain = _script(bad, tmp_path, ACOL_DEBUG="0")
    assert plain.returncode == 2
    assert plain.stderr == (
        "error: invalid parameters in params.yaml: data.synthetic.num_classes: Input should be a valid integer, "
        "unable to parse string as an integer (got 'many')\n"
    )
    for args, env in (([*bad, "--debug"], {"ACOL_DEBUG": "0"}), (bad, {"ACOL_DEBUG": "1"})):
        debug = _script(args, tmp_path, **env)
        assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
        assert "acol.config.ParamsError: invalid parameters in params.yaml:" in debug.stderr
    assert not (tmp_path / "data").exists()


def test_unexpected_errors_keep_their_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ACOL_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["stage.py"])

    def broken() -> None:
        raise KeyError("a bug, not the user's input")

    with pytest.raises(KeyError, match="a bug"):
        run_stage(broken)

    def bad_params() -> None:
        raise ParamsError(
            "invalid parameters in p.yaml:\n  train.lr: bad (got 'x')\n  train.epochs: bad (got 0)"
        )

    with pytest.raises(SystemExit) as exit_:
        run_stage(bad_params)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "error: invalid parameters in p.yaml: train.lr: bad (got 'x'); train.epochs: bad (got 0)\n"
    )


def test_a_stage_status_passes_through(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["stage.py"])
    run_stage(lambda: None)  # success: returns, the script ends with status 0
    with pytest.raises(SystemExit) as exit_:
        run_stage(lambda: 3)  # e.g. reevaluate's regression code
    assert exit_.value.code == 3

    def missing() -> None:
        open("/nonexistent/input.csv")  # noqa: SIM115

    with pytest.raises(SystemExit):
        run_stage(missing)
    assert capsys.readouterr().err == "error: No such file or directory: /nonexistent/input.csv\n"


def test_an_unreachable_tracking_server_is_one_line_and_exit_2(
    stage_cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`TrackingServerError` is a user error (a URI to fix) but was missing from the CLI's old table of names:
    the stage ended with a traceback and status 1. Now every `UserError` is recognised by its class."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////nonexistent/folder/mlflow.db")
    monkeypatch.setattr(sys, "argv", ["pipelines/prepare.py", "--out", str(stage_cwd / "out")])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(PIPELINES / "prepare.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert err.splitlines()[-1] == (
        "error: MLflow tracking database folder /nonexistent/folder does not exist "
        "(URI sqlite:////nonexistent/folder/mlflow.db)"
    )
    assert "Traceback" not in err
    assert not (stage_cwd / "out").exists()


@pytest.mark.parametrize(
    ("module", "name", "builtin"),
    [
        ("acol.config", "ParamsError", ValueError),
        ("acol.cpu_isa", "CpuIsaError", ValueError),
        ("acol.data.errors", "DataError", ValueError),
        ("acol.data.images", "ImageDecodeError", ValueError),
        ("acol.data.paths", "UnsafePathError", ValueError),
        ("acol.models.factory", "WeightsError", ValueError),
        ("acol.inference.mapstore", "MapStoreError", ValueError),
        ("acol.stages.report", "ReportError", ValueError),
        ("acol.stages.metrics", "MetricsInputError", ValueError),
        ("acol.tracking.registry", "RegistryError", ValueError),
        ("acol.distributed.session", "RaySessionError", RuntimeError),
        ("acol.tracking.stage_runs", "TrackingServerError", RuntimeError),
    ],
)
def test_every_user_error_is_a_user_error_and_keeps_its_builtin_base(
    module: str, name: str, builtin: type[Exception]
) -> None:
    """The CLI's one-line exit 2 follows the class; callers that catch ValueError or RuntimeError still do."""
    import importlib

    from acol.errors import UserError

    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, UserError) and issubclass(cls, builtin)


def test_a_stage_imports_the_acol_of_the_checkout_it_runs_in(tmp_path: Path) -> None:
    """`dvc exp run --temp` (and queued experiments) run each stage in a copy of the repository: its stage must
    import that copy's `acol`, not the one the editable install points at (which may hold other code)."""
    copy = tmp_path / "exp-copy"
    (copy / "scripts").mkdir(parents=True)
    (copy / "pipelines").mkdir()
    (copy / "acol").mkdir()
    (copy / "scripts" / "run_stage.sh").write_bytes((REPO / "scripts" / "run_stage.sh").read_bytes())
    (copy / "acol" / "__init__.py").write_text("")
    (copy / "pipelines" / "which.py").write_text("import acol\nprint(acol.__file__)\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        ["sh", "scripts/run_stage.sh", "pipelines/which.py"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == copy / "acol" / "__init__.py"
