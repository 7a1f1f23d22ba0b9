"""A stage's output files are replaced as one set: killed between any two of its writes, the stage leaves its
previous set whole (README: "never a mix"). The train stage writes model.pt and history.csv (in `fit`), talks to
MLflow, then writes model_card.json; each step is made to fail here in turn.
"""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest

from acol.distributed.train import TrainOutcome, write_history_csv

REPO = Path(__file__).resolve().parents[1]
OLD = {"model.pt": b"old weights", "history.csv": "epoch,loss\n1,9.0\n", "model_card.json": '{"old": true}',
       ".gitignore": "/model.pt\n"}  # fmt: skip


class Killed(BaseException):
    """Stands for SIGKILL at that line: nothing after it runs (BaseException: no handler swallows it)."""


def _old_set(out: Path) -> None:
    out.mkdir(parents=True)
    for name, content in OLD.items():
        path = out / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)


def _fake_fit(*args: Any, **_kwargs: Any) -> TrainOutcome:
    """`fit` as the stage calls it (params, method, manifests, root, out): writes the new weights + history."""
    out = Path(args[5])
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.pt").write_bytes(b"new weights")
    history = [{"epoch": 1, "loss": 0.5}]
    return TrainOutcome(out / "model.pt", write_history_csv(history, out / "history.csv"), {"loss": 0.5},
                        history, 0, "train-acol-x", "ckpt", ["a", "b"])  # fmt: skip


def _kill(*_args: Any, **_kwargs: Any) -> None:
    raise Killed


def _stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manifests: dict[str, Path], kill_at: str | None
) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("ACOL_PIPELINE_RUN", f"test-{tmp_path.name}")
    monkeypatch.chdir(tmp_path)
    import acol.distributed.train
    import acol.stages.train

    main = runpy.run_path(str(REPO / "pipelines" / "train.py"), run_name="pipelines_train")["main"]
    monkeypatch.setattr(acol.distributed.train, "fit", _fake_fit)
    if kill_at == "card":
        # after model.pt and history.csv were written
        monkeypatch.setattr(acol.stages.train, "write_json_atomic", _kill)
    elif kill_at == "mlflow":
        import mlflow

        monkeypatch.setattr(mlflow, "log_artifact", _kill)  # the tracking server lost between the writes
    out = tmp_path / "train" / "acol"
    _old_set(out)
    argv = ["--method", "acol", "--out", str(out), "--set", "tracking.log_system_metrics=false",
            "--train-manifest", str(manifests["train"]), "--val-manifest", str(manifests["val"])]  # fmt: skip
    if kill_at is None:
        main(argv)
    else:
        with pytest.raises(Killed):
            main(argv)
    return out


@pytest.mark.parametrize("kill_at", ["card", "mlflow"])
def test_train_killed_between_its_writes_keeps_the_previous_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_dataset: dict[str, Path], kill_at: str
) -> None:
    out = _stage(tmp_path, monkeypatch, tiny_dataset, kill_at)
    found = {p.name: p.read_bytes() for p in out.iterdir()}
    assert found == {k: v if isinstance(v, bytes) else v.encode() for k, v in OLD.items()}
    assert sorted(p.name for p in out.parent.iterdir()) == ["acol"]  # no half-written copy beside it


def test_train_finished_replaces_the_whole_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_dataset: dict[str, Path]
) -> None:
    out = _stage(tmp_path, monkeypatch, tiny_dataset, None)
    assert (out / "model.pt").read_bytes() == b"new weights"
    assert (out / "history.csv").read_text().startswith("epoch,loss")
    assert '"old"' not in (out / "model_card.json").read_text()
    assert (out / ".gitignore").read_text() == OLD[".gitignore"]  # DVC's file stays
    assert sorted(p.name for p in out.parent.iterdir()) == ["acol"]
