"""Bad input through the stage scripts: broken data is counted (or refused when strict), bad params and weight
files fail before any work with the file or key named, and paths that leave the dataset root are refused.

The readers' own cases live in test_readers / test_images / test_manifest / test_models / test_config; here
they go through `pipelines/*.py` and on into the summary and the report.
"""

from __future__ import annotations

import ast
import json
import re
import runpy
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from acol.config import ParamsError
from acol.data.dataset import ManifestDataset
from acol.data.errors import DataError
from acol.data.manifest import manifest_classes, read_manifest
from acol.data.paths import UnsafePathError
from acol.models import WeightsError, build_model
from acol.stages.cli import run_stage
from acol.stages.report import MethodInputs, ReportInputs, build_report
from tests.conftest_data import WNIDS, write_ilsvrc

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"

# Every bad entry of `write_ilsvrc` (plus one hostile CSV row), counted by kind, per val annotation format.
EXPECTED = {
    "csv": {
        "problems_by_kind": {"unknown wnid": 2, "bad box": 2, "class mismatch": 1, "missing annotation": 1,
                             "missing image": 1, "empty file": 1, "truncated": 1, "unsafe path": 1},
        "val_ids": [1, 2, 3, 4, 13, 14],  # RGB, grayscale, CMYK, PNG named .JPEG; 13/14 are fine in the CSV
    },
    "xml": {
        "problems_by_kind": {"unknown wnid": 2, "bad box": 2, "missing annotation": 1, "malformed XML": 1,
                             "class mismatch": 1, "missing image": 1, "empty file": 1, "truncated": 1,
                             "size mismatch": 1},
        "val_ids": [1, 2, 3, 4],
    },
}  # fmt: skip


def _run_script(name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch, debug: bool = True) -> None:
    """``pipelines/<name>.py`` in this process; `debug`: input errors raise (typed) instead of exit 2."""
    monkeypatch.setenv("ACOL_DEBUG", "1" if debug else "0")
    main = runpy.run_path(str(PIPELINES / f"{name}.py"), run_name=f"pipelines_{name}")["main"]
    run_stage(lambda: main(argv))


@pytest.fixture
def mlflow_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a sqlite store puts artifacts in ./mlruns: not the repository's
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("ACOL_PIPELINE_RUN", f"bad-input-{tmp_path.name}")


@pytest.fixture(scope="module")
def ilsvrc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_ilsvrc(tmp_path_factory.mktemp("bad_ilsvrc"))["root"]
    with (root / "LOC_val_solution.csv").open("a") as f:  # an entry that climbs out of the dataset root
        f.write(f"../../outside,{WNIDS[0]} 2 3 20 25\n")
    return root


def _prepare_argv(root: Path, out: Path, tmp_path: Path, mode: str, *extra: str) -> list[str]:
    val = ["data.val_solution=LOC_val_solution.csv"]
    if mode == "xml":
        val = ["data.val_solution=null", "data.val_xml_dir=Annotations/CLS-LOC/val"]
    sets = ["data.source=ilsvrc", f"data.root={root}", "data.mask_dir=null", *val, *extra]
    return [
        "--params",
        str(tmp_path / "absent.yaml"),
        "--out",
        str(out),
        *(a for s in sets for a in ("--set", s)),
    ]


@pytest.mark.parametrize("mode", ["csv", "xml"])
def test_prepare_stage_counts_every_bad_input_and_goes_on(
    mode: str, ilsvrc_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_env: None
) -> None:
    out = tmp_path / "prepare"
    _run_script("prepare", _prepare_argv(ilsvrc_root, out, tmp_path, mode), monkeypatch)

    summary = json.loads((out / "summary.json").read_text())
    expected = EXPECTED[mode]["problems_by_kind"]
    assert summary["problems_by_kind"] == expected
    assert summary["problems"] == len(summary["problem_list"]) == sum(expected.values())
    listed = {
        (Path(p["path"].split(":")[0]).name, p["reason"].split(":")[0]) for p in summary["problem_list"]
    }
    assert ("ILSVRC2012_val_00000009.JPEG", "empty file") in listed
    assert ("ILSVRC2012_val_00000010.JPEG", "truncated") in listed
    assert ("ILSVRC2012_val_00000008.JPEG", "missing image") in listed  # annotated, not on disk
    assert ("n09999999", "unknown wnid") in listed  # the train folder of a wnid not in the synsets
    if mode == "xml":
        assert ("ILSVRC2012_val_00000013.xml", "malformed XML") in listed
    else:
        unsafe = [p for p in summary["problem_list"] if p["reason"].startswith("unsafe path")]
        assert [p["path"] for p in unsafe] == ["val/../../outside.JPEG"]

    val = read_manifest(out / "val.parquet")
    want = [f"val/ILSVRC2012_val_{n:08d}.JPEG" for n in EXPECTED[mode]["val_ids"]]
    assert val.column("image_id").to_pylist() == want  # the grayscale, CMYK and PNG-named-.JPEG files are in
    assert set(zip(val.column("width").to_pylist(), val.column("height").to_pylist(), strict=True)) == {
        (40, 30)
    }
    train = read_manifest(out / "train.parquet")
    assert manifest_classes(train) == WNIDS and train.num_rows == 6  # the unknown wnid's folder is left out

    import mlflow

    runs = mlflow.search_runs(experiment_names=["acol"], filter_string="tags.`acol.stage` = 'prepare'")
    assert runs["metrics.problems"].tolist() == [sum(expected.values())]


def test_report_shows_the_problem_counts(
    ilsvrc_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_env: None
) -> None:
    out = tmp_path / "prepare"
    _run_script("prepare", _prepare_argv(ilsvrc_root, out, tmp_path, "csv"), monkeypatch)
    ev = tmp_path / "evaluate"
    ev.mkdir()
    (ev / "metrics.json").write_text(
        json.dumps({"method": "acol", "maxboxacc_v2": 50.0, "gt_known_loc": 60.0})
    )
    pd.DataFrame(
        {"threshold": [0.1, 0.2], "iou30": [0.5, 0.6], "iou50": [0.4, 0.5], "iou70": [0.1, 0.2]}
    ).to_csv(ev / "box_acc.csv", index=False)
    inputs = ReportInputs(
        methods={"acol": MethodInputs(metrics=ev / "metrics.json", box_acc=ev / "box_acc.csv")},
        summary=out / "summary.json",
    )
    text = build_report(inputs, tmp_path / "report").read_text()
    for kind, count in EXPECTED["csv"]["problems_by_kind"].items():
        assert f"<td class='k'>problems_by_kind.{kind}</td><td>{count}</td>" in text, kind
    assert "<td class='k'>problems</td><td>10</td>" in text


def test_strict_prepare_fails_on_the_first_problem_naming_the_file(
    ilsvrc_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_env: None
) -> None:
    out = tmp_path / "prepare"
    with pytest.raises(DataError, match=r"train/n09999999: unknown wnid: n09999999 is not in"):
        _run_script(
            "prepare", _prepare_argv(ilsvrc_root, out, tmp_path, "csv", "data.strict=true"), monkeypatch
        )
    assert not out.exists()


# --- params and weight files --------------------------------------------------------------------------------

_MODEL = ["--model", "/nonexistent/model.pt", "--model-card", "/nonexistent/model_card.json"]
STAGE_ARGS = {  # the paths are never read: the params fail first
    "synthesize": [],
    "prepare": [],
    "train": ["--method", "acol", "--train-manifest", "/nonexistent/train.parquet", "--val-manifest",
              "/nonexistent/val.parquet"],
    "extract": ["--method", "acol", "--manifest", "/nonexistent/val.parquet", *_MODEL],
    "evaluate": ["--method", "acol", "--maps", "/nonexistent/maps", "--manifest", "/nonexistent/val.parquet",
                 *_MODEL],
    "report": ["--evaluate-dir", "/nonexistent/evaluate", "--train-dir", "/nonexistent/train", "--extract-dir",
               "/nonexistent/extract", "--manifest", "/nonexistent/val.parquet", "--summary",
               "/nonexistent/summary.json"],
    "reevaluate": ["--method", "acol", "--manifest", "/nonexistent/val.parquet", "--fullsup-manifest",
                   "/nonexistent/fullsup.parquet"],
}  # fmt: skip


@pytest.mark.parametrize("name", list(STAGE_ARGS))
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("train:\n  lr: fast\n", r"train\.lr"),
        ("model:\n  backbone: vgg17\n", r"model\.backbone.*vgg16"),
        ("trian:\n  epochs: 2\n", r"trian"),
        ("- a list\n", r"expected a mapping"),
    ],
)
def test_every_stage_refuses_a_bad_params_file_naming_file_and_key(
    name: str,
    content: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    params = tmp_path / "bad_params.yaml"
    params.write_text(content)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # never reached: params come first
    out = tmp_path / "out"
    with pytest.raises(ParamsError, match=message) as error:
        _run_script(name, [*STAGE_ARGS[name], "--params", str(params), "--out", str(out)], monkeypatch)
    assert "bad_params.yaml" in str(error.value)
    assert not out.exists()
    # Without --debug: the same message on one line of stderr, exit status 2, no traceback.
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        _run_script(name, [*STAGE_ARGS[name], "--params", str(params), "--out", str(out)], monkeypatch, False)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err) and "bad_params.yaml" in err and "Traceback" not in err


def _bad_weights(folder: Path, kind: str) -> Path:
    path = folder / f"{kind}.pt"
    good = build_model("small", 4, "acol", head_channels=8)
    if kind == "truncated":
        torch.save(good.state_dict(), path)
        path.write_bytes(path.read_bytes()[:1000])
    elif kind == "not_a_state_dict":
        torch.save({"epoch": 3, "note": "a training log, no tensors"}, path)
    elif kind == "other_architecture":
        torch.save(build_model("small", 4, "cam", head_channels=8).state_dict(), path)
    elif kind == "other_class_count":
        torch.save(build_model("small", 7, "acol", head_channels=8).state_dict(), path)
    return path


@pytest.mark.parametrize("kind", ["truncated", "not_a_state_dict", "other_architecture", "other_class_count"])
def test_extract_stage_refuses_bad_weights_before_ray_starts(
    kind: str, tiny_dataset: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_env: None
) -> None:
    import ray

    def no_ray(*_a, **_k):
        raise AssertionError("Ray was started before the weights were checked")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_ray)
    model = _bad_weights(tmp_path, kind)
    card = tmp_path / "model_card.json"
    card.write_text(json.dumps({"method": "acol", "backbone": "small", "num_classes": 4,
                                "classes": manifest_classes(read_manifest(tiny_dataset["val"])),
                                "model": {"head_channels": 8, "erase_threshold": 0.6}}))  # fmt: skip
    out = tmp_path / "extract" / "acol"
    argv = ["--method", "acol", "--params", str(tmp_path / "absent.yaml"), "--manifest", str(tiny_dataset["val"]),
            "--root", str(tiny_dataset["root"]), "--model", str(model), "--model-card", str(card), "--out", str(out)]  # fmt: skip
    with pytest.raises(WeightsError, match=rf"{kind}\.pt"):
        _run_script("extract", argv, monkeypatch)
    assert list((tmp_path / "extract").iterdir()) == []  # no output and no temp folder


def test_train_stage_refuses_bad_backbone_weights_before_ray_starts(
    tiny_dataset: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_env: None
) -> None:
    import ray

    def no_ray(*_a, **_k):
        raise AssertionError("Ray was started before the backbone weights were checked")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_ray)
    weights = tmp_path / "vgg16-truncated.pth"
    weights.write_bytes(b"PK\x03\x04 not really a zip")
    out = tmp_path / "train"
    argv = ["--method", "acol", "--params", str(tmp_path / "absent.yaml"), "--out", str(out),
            "--train-manifest", str(tiny_dataset["train"]), "--val-manifest", str(tiny_dataset["val"]),
            "--root", str(tiny_dataset["root"]), "--set", f"model.backbone_weights={weights}",
            "--set", f"train.storage_path={tmp_path / 'ray'}"]  # fmt: skip
    with pytest.raises(WeightsError, match=r"vgg16-truncated\.pth"):
        _run_script("train", argv, monkeypatch)
    assert not out.exists()


def test_every_torch_load_uses_weights_only() -> None:
    """Checkpoints and weights are untrusted files: `torch.load` must never unpickle arbitrary objects."""
    calls = []
    for path in sorted([*(REPO / "acol").rglob("*.py"), *(REPO / "pipelines").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            func = node.func if isinstance(node, ast.Call) else None
            if isinstance(func, ast.Attribute) and func.attr == "load" and ast.unparse(func.value) == "torch":
                safe = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", safe))
    assert calls, "no torch.load found: the scan is broken"
    assert [where for where, safe in calls if not safe] == []


# --- paths outside the dataset root ---------------------------------------------------------------------------


def _hostile_manifest(tiny_dataset: dict, path: Path, image_id: str) -> pa.Table:
    """The tiny val manifest with its first id replaced, written without validation (as a tampered file)."""
    table = read_manifest(tiny_dataset["val"])
    ids = table.column("image_id").to_pylist()
    table = table.set_column(0, table.schema.field(0), pa.array([image_id, *ids[1:]], pa.string()))
    pq.write_table(table, path)
    return table


@pytest.mark.parametrize("image_id", ["../outside.JPEG", "/etc/hostname", "val/../../outside.JPEG"])
def test_paths_outside_the_root_are_refused(
    image_id: str, tiny_dataset: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_env: None
) -> None:
    manifest = tmp_path / "val.parquet"
    table = _hostile_manifest(tiny_dataset, manifest, image_id)
    with pytest.raises(UnsafePathError, match="unsafe path"):  # manifest validation
        read_manifest(manifest)
    with pytest.raises(UnsafePathError, match="unsafe path"):  # the dataset, given the table directly
        ManifestDataset(table, tiny_dataset["root"], None)[0]

    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started on a hostile manifest"))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"method": "acol"}))
    argv = ["--method", "acol", "--params", str(tmp_path / "absent.yaml"), "--manifest", str(manifest),
            "--root", str(tiny_dataset["root"]), "--model", str(_bad_weights(tmp_path, "other_architecture")),
            "--model-card", str(card), "--out", str(tmp_path / "extract" / "acol")]  # fmt: skip
    with pytest.raises(UnsafePathError, match=r"val\.parquet|unsafe path"):  # the extract stage
        _run_script("extract", argv, monkeypatch)
    assert not (tmp_path / "extract").exists()


@pytest.mark.parametrize("error_type", ["DataError", "UnsafePathError", "ImageDecodeError"])
def test_data_errors_survive_pickling(error_type: str) -> None:
    """Ray hands a worker's error to the driver by pickle: the user must get the error naming the file, not
    "DataError.__init__() missing 1 required positional argument" from Ray's deserializer."""
    import pickle

    from acol.data import errors, images, paths

    cls = {"DataError": errors.DataError, "UnsafePathError": paths.UnsafePathError,
           "ImageDecodeError": images.ImageDecodeError}[error_type]  # fmt: skip
    back = pickle.loads(pickle.dumps(cls("train/a.JPEG", "missing image")))
    assert type(back) is cls and back.path == "train/a.JPEG" and back.reason == "missing image"
    assert str(back) == "train/a.JPEG: missing image"
