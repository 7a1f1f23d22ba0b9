"""A registered version as a service: image bytes in, top-k classes, boxes and maps out, without acol installed.

The oracle is extraction itself (`decode_batch` + `MapPredictor`, the map store's path) run on the same JPEG
file with the same weights: its ``map_gt`` for each class, the box of that map at the version's threshold, and
its ``pred_box`` for the top-1 class.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from acol.config import Params, load_params
from acol.data.images import image_size
from acol.inference.localize import decode_images, localize
from acol.inference.model_card import spec_from_card
from acol.inference.predict import ForwardOptions, MapPredictor, decode_batch
from acol.models import build_model
from acol.tracking import mlflow_model as mm
from acol.tracking import stage_runs as tracking
from acol.wsol.boxes import boxes_from_maps

CLASSES = ["n1", "n2", "n3"]
SIZE, THRESHOLD = 32, 0.5  # the card's evaluation: input size and the CAM threshold it was evaluated at
CARD = {"method": "acol", "backbone": "small", "num_classes": 3, "classes": CLASSES,
        "model": {"head_channels": 8, "erase_threshold": 0.6}, "train": {"image_size": 64},
        "evaluation": {"cam_threshold": THRESHOLD, "image_size": SIZE}}  # fmt: skip
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("small", 3, "acol", head_channels=8).eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the module's sqlite store and artifacts: creating the schema costs seconds."""
    return tmp_path_factory.mktemp("mlflow")


def use_store(store: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point MLflow (this process and, through the environment, its children) at `store`; its URI."""
    import mlflow

    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.chdir(store)  # an experiment's artifacts go under the folder it was created in
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    # an experiment an earlier test made active lives in another store: use this store's own
    mlflow.set_experiment("test-serving")
    return uri


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 75x50 JPEG: a bright rectangle on noise (boxes in a non-square image test the scaling back)."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 60, (50, 75, 3), dtype=np.uint8)
    pixels[10:35, 40:70] = (230, 200, 40)
    path = tmp_path_factory.mktemp("images") / "object.jpg"
    path.write_bytes(cv2.imencode(".jpg", pixels)[1].tobytes())
    return path


def extraction_oracle(model: torch.nn.Module, jpeg: Path, tmp: Path, top_k: int) -> dict[str, Any]:
    """What extraction computes for `jpeg`: top-k, each class's map (``map_gt``) and box, the top-1 pred_box."""
    weights = tmp / "oracle.pt"
    torch.save(model.state_dict(), weights)
    spec = spec_from_card(CARD, Params(), "acol", CLASSES)
    predictor = MapPredictor(spec, str(weights), ForwardOptions(size=SIZE, box_threshold=THRESHOLD))
    width, height = image_size(jpeg)

    def extract(label: int) -> dict[str, np.ndarray]:  # map_gt is the map of class `label`
        batch = {"image_id": np.array([jpeg.name]), "class_index": np.array([label]),
                 "width": np.array([width]), "height": np.array([height])}  # fmt: skip
        return predictor(decode_batch(batch, str(jpeg.parent), SIZE))

    first = extract(0)
    classes = first["top5_classes"][0][:top_k].tolist()
    rows = [extract(c) for c in classes]
    maps = np.stack([r["map_gt"][0].reshape(r["map_height"][0], r["map_width"][0]) for r in rows])
    return {
        "class_indices": classes,
        "scores": first["top5_scores"][0][:top_k],
        "maps": maps.astype(np.float32),
        "boxes": boxes_from_maps(maps, np.full(top_k, width), np.full(top_k, height), THRESHOLD),
        "pred_box": first["pred_box"][0],
        "width": width,
        "height": height,
    }


def check_row(row: dict[str, Any], oracle: dict[str, Any], with_maps: bool) -> None:
    """A served row against the oracle: same classes, boxes and maps (bit for bit), scores to float precision."""
    assert (row["width"], row["height"]) == (oracle["width"], oracle["height"])
    assert list(row["class_indices"]) == oracle["class_indices"]
    assert list(row["classes"]) == [CLASSES[c] for c in oracle["class_indices"]]
    np.testing.assert_allclose(row["scores"], oracle["scores"], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(row["boxes"], dtype=np.float32), oracle["boxes"])
    np.testing.assert_array_equal(np.asarray(row["boxes"][0], dtype=np.float32), oracle["pred_box"])
    if with_maps:
        served = np.asarray(row["maps"], dtype=np.float32)
        np.testing.assert_array_equal(served.view(np.uint32), oracle["maps"].view(np.uint32))
    else:
        assert "maps" not in row or row["maps"] is None


def test_serving_settings_take_the_evaluated_threshold_and_size() -> None:
    """evaluation wins over the card's extract/train sections, which win over params (the documented order)."""
    params = Params()
    older = {**CARD, "evaluation": None, "extract": {"box_threshold": 0.3}}
    bare = {"method": "acol", "classes": CLASSES}
    settings = [mm.serving_settings(card, params) for card in (CARD, older, bare)]
    assert [(s["cam_threshold"], s["cam_threshold_from"], s["image_size"]) for s in settings] == [
        (THRESHOLD, "evaluation.cam_threshold", SIZE),
        (0.3, "card extract.box_threshold", 64),
        (params.extract.box_threshold, "params extract.box_threshold", params.train.image_size),
    ]
    with pytest.raises(ValueError, match="cam_threshold"):
        mm.serving_settings({**CARD, "evaluation": {"cam_threshold": 1.5}}, params)


def test_a_masks_only_evaluation_serves_boxes_at_the_extraction_threshold() -> None:
    """OpenImages has no boxes to choose a CAM threshold on (evaluation's cam_threshold is None): the served
    boxes use the card's extraction threshold, as for a card without an evaluation."""
    card = {
        **CARD,
        "evaluation": {"cam_threshold": None, "image_size": 32},
        "extract": {"box_threshold": 0.3},
    }
    settings = mm.serving_settings(card, Params())
    assert (settings["cam_threshold"], settings["cam_threshold_from"], settings["image_size"]) == (
        0.3,
        "card extract.box_threshold",
        32,
    )


def test_localize_gives_extraction_classes_boxes_and_maps(
    model: torch.nn.Module, jpeg: Path, tmp_path: Path
) -> None:
    """Each top-k class gets extraction's map of that class and its box, scaled to the 75x50 image."""
    oracle = extraction_oracle(model, jpeg, tmp_path, top_k=3)
    (row,) = localize(model, decode_images([jpeg.read_bytes()]), SIZE, THRESHOLD, 3, True, CLASSES)
    check_row(row, oracle, with_maps=True)
    assert len({tuple(box) for box in row["boxes"]}) == 3  # each class its own map and box
    assert len(row["maps"]) == 3 and np.asarray(row["maps"]).shape[1:] == oracle["maps"].shape[1:]
    (short,) = localize(model, decode_images([jpeg.read_bytes()]), SIZE, THRESHOLD, top_k=9)
    assert short["class_indices"] == oracle["class_indices"]  # top_k is capped at the class count
    assert short["classes"] == [str(c) for c in oracle["class_indices"]] and "maps" not in short


def test_pyfunc_takes_bytes_or_base64_and_rejects_bad_input(
    model: torch.nn.Module, jpeg: Path, tmp_path: Path
) -> None:
    """`WSOLPyfunc` on the files a version holds: images (bytes, or base64 text) in, rows out; raw arrays
    still give logits (versions logged before the image signature); bad images and top_k are MLflow errors."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    card = {**CARD, "serving": mm.serving_settings(CARD, Params())}
    pyfunc = mm.WSOLPyfunc()
    pyfunc.load_context(SimpleNamespace(artifacts=mm.artifacts_for(tmp_path, model.state_dict(), card)))
    data = jpeg.read_bytes()
    frame = pd.DataFrame({"image": [data, base64.b64encode(data).decode()]})
    out = pyfunc.predict(None, frame, {"top_k": 2})
    oracle = extraction_oracle(model, jpeg, tmp_path, top_k=2)
    for row in out.to_dict("records"):
        check_row(row, oracle, with_maps=False)
    example = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        np.testing.assert_array_equal(pyfunc.predict(None, example.numpy()), model(example).logits.numpy())
    with pytest.raises(MlflowException, match="cannot decode the input: image 1: truncated"):
        pyfunc.predict(None, pd.DataFrame({"image": [data, data[: len(data) // 2]]}))
    with pytest.raises(MlflowException, match="top_k >= 1"):
        pyfunc.predict(None, frame, {"top_k": 0})


def test_versions_logged_before_the_image_signature_still_give_logits(
    model: torch.nn.Module, tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version in the earlier format (tensor signature, no acol code, no ``serving`` in its card) loads
    where acol is installed, and ``predict`` still maps (B, 3, S, S) images to logits."""
    import mlflow
    from mlflow.models import infer_signature

    use_store(store, monkeypatch)
    example = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        logits = model(example).logits.numpy()
    code = tmp_path / "wsol_model.py"
    code.write_text(mm.MODEL_CODE)
    card = {k: v for k, v in CARD.items() if k != "evaluation"}
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(code), artifacts=mm.artifacts_for(tmp_path, model.state_dict(), card),
            signature=infer_signature(example.numpy(), logits), registered_model_name="old-format",
        )  # fmt: skip
    loaded = mlflow.pyfunc.load_model(f"models:/old-format/{info.registered_model_version}")
    np.testing.assert_array_equal(loaded.predict(example.numpy()), logits)


# The serving process's stand-in for pip's `uvicorn` script in a clean environment (the venv has no pip), which
# also proves the point: it refuses to start where acol can be imported before the model adds its own copy.
UVICORN = """#!{python}
import importlib.util, sys
if importlib.util.find_spec("acol") is not None:
    sys.exit("acol is importable here: not a clean environment")
from uvicorn.main import main
sys.exit(main())
"""
# Load and predict in the clean environment; print the rows, where acol came from, and the distributions of
# what acol's own code imported (an import hook: optional imports of MLflow or torch are theirs, not acol's).
LOAD = """
import builtins, importlib.util, json, sys
from importlib.metadata import packages_distributions
assert importlib.util.find_spec("acol") is None, "acol is importable before loading"
imported, plain_import = set(), builtins.__import__
def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and str((globals or {}).get("__name__", "")).startswith("acol"):
        imported.add(name.split(".")[0])
    return plain_import(name, globals, locals, fromlist, level)
builtins.__import__ = recording_import
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"image": [open(sys.argv[2], "rb").read()]}), params={"top_k": 2})
import acol
names = packages_distributions()
dists = sorted({d for top in imported - {"acol"} for d in names.get(top, [])})  # acol: the code_paths copy
print(json.dumps({"rows": out.to_dict("records"), "acol": acol.__file__, "dists": dists}))
"""


def clean_venv(root: Path) -> tuple[Path, dict[str, str]]:
    """A venv without acol that sees this one's packages (a path .pth: torch is not installed twice), its env."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    (
        root / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages" / "deps.pth"
    ).write_text(f"{SITE_PACKAGES}\n")
    uvicorn = root / "bin" / "uvicorn"
    uvicorn.write_text(UVICORN.format(python=root / "bin" / "python"))
    uvicorn.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{root / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin"
    return root / "bin" / "python", env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_closure(requirements: list[str]) -> set[str]:
    """The distributions `requirements` install here: each one and, recursively, its own requirements."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [(Requirement(r), "") for r in requirements if r.strip()]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        try:
            requires = distribution(req.name).requires or []
        except PackageNotFoundError:  # not installed here, so not what a load here imported
            continue
        for wanted in {"", *req.extras} if normalized(req.name) not in seen else req.extras:
            todo += [(Requirement(r), wanted) for r in requires]
        seen.add(normalized(req.name))
    return seen


def post(port: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST `body` as JSON to the server's /invocations: (status, answer)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@contextmanager
def serving(python: Path, env: dict[str, str], model_uri: str, cwd: Path) -> Iterator[int]:
    """``mlflow models serve`` of `model_uri` with `python` on a free loopback port; stopped (its process group)
    on exit. Yields the port at once: `wait_ready` waits for it."""
    port, log = free_port(), cwd / "serve.log"
    command = [python, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    with log.open("w") as out:
        server = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)], cwd=cwd, env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield port
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn child
        server.wait(timeout=30)


def wait_ready(port: int, log: Path, timeout: float) -> None:
    """Until the server answers /ping; fails with its log after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no /ping answer within {timeout} s; server log:\n{log.read_text()[-3000:]}")


def log_version(model: torch.nn.Module, store: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Log and register `model` with `CARD` (as the evaluate stage does) in a sqlite store; its models:/ URI."""
    use_store(store, monkeypatch)
    monkeypatch.setenv(tracking.PIPELINE_RUN_ENV, "serving-test")
    overrides = ["tracking.log_system_metrics=false", "tracking.experiment=s"]
    params = load_params(store / "absent.yaml", overrides)
    with tracking.stage_run("evaluate", params, method="acol"):
        version = mm.log_model(model, "acol", params, torch.randn(1, 3, SIZE, SIZE), CARD)
    return f"models:/{tracking.registered_model_name(params, 'acol')}/{version}"


def requirements_of(model_uri: str, dest: Path) -> list[str]:
    """The version's requirements.txt lines."""
    from mlflow.artifacts import download_artifacts

    folder = Path(download_artifacts(model_uri, dst_path=str(dest)))
    return (folder / "requirements.txt").read_text().split()


@pytest.mark.slow
def test_registered_version_serves_boxes_where_acol_is_not_installed(
    model: torch.nn.Module, jpeg: Path, tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Log and register a version, then from a venv that cannot import acol: ``pyfunc.load_model`` and
    ``mlflow models serve`` (a JPEG posted as the README shows) give extraction's classes, boxes and maps;
    a bad image is a 400; and the version's requirements cover every distribution the load imported."""
    model_uri = log_version(model, store, monkeypatch)
    python, env = clean_venv(tmp_path / "venv")
    env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    no_acol = subprocess.run([python, "-c", "import acol"], cwd=tmp_path, env=env, capture_output=True)
    assert b"No module named 'acol'" in no_acol.stderr
    image = base64.b64encode(jpeg.read_bytes()).decode()
    with serving(python, env, model_uri, tmp_path) as port:  # starts while the load runs
        command = [python, "-c", LOAD, model_uri, str(jpeg)]
        loaded = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        wait_ready(port, tmp_path / "serve.log", timeout=120)
        frame = {"columns": ["image"], "data": [[image]]}
        status, served = post(port, {"dataframe_split": frame, "params": {"top_k": 3, "return_map": True}})
        bad = post(port, {"dataframe_split": {"columns": ["image"], "data": [["bm90IGFuIGltYWdl"]]}})
    result = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert Path(result["acol"]).is_relative_to(store) and "/code/acol/" in result["acol"]
    check_row(result["rows"][0], extraction_oracle(model, jpeg, tmp_path, top_k=2), with_maps=False)
    assert status == 200, served
    check_row(served["predictions"][0], extraction_oracle(model, jpeg, tmp_path, top_k=3), with_maps=True)
    assert bad[0] == 400 and "image 0: not an image" in bad[1]["message"]
    imported = {normalized(d) for d in result["dists"]}
    assert {
        "torch",
        "torchvision",
        "opencv-python-headless",
        "numba",
    } <= imported  # the hook saw acol's imports
    missing = imported - installed_closure(requirements_of(model_uri, tmp_path / "version"))
    assert not missing, f"the load imported {sorted(missing)}; the version's requirements do not install them"
