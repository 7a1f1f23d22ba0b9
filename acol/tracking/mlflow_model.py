"""The registered model as MLflow stores it: a state dict, its model card and acol's code; nothing pickled.

Why: MLflow's PyTorch flavour either pickles the whole module (loading it runs whatever code the pickle names,
and MLflow warns so) or exports ``forward`` only ("pt2": `localization_maps` would be lost). The model is
logged instead as an MLflow *model from code* (`mlflow.pyfunc`): its artifacts are ``weights`` (a plain state
dict, read with ``torch.load(weights_only=True)``) and ``model_card`` (the build arguments: method, backbone,
classes, ``model`` params, and the ``serving`` settings of `serving_settings`); its code is `MODEL_CODE`,
which builds a `WSOLPyfunc` from this module, and the ``acol`` package itself travels with it (MLflow's
``code_paths``), so a version loads and serves where acol is not installed.

`log_model` logs and registers one (the evaluate stage registers the model it evaluated). Three ways to load
a version, none unpickling code: `download_version` (weights and card; what re-evaluation
uses, then `acol.distributed.extract` builds the model), `load_version` (the `WSOLModel` itself), or
``mlflow.pyfunc.load_model("models:/<name>/<version>")`` / ``mlflow models serve`` (`WSOLPyfunc.predict`:
encoded images in, top-k classes, boxes and maps out).

Importing this module only imports MLflow (and NumPy and pandas, which MLflow imports); nothing runs.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from torch import nn

    from acol.config import Params

__all__ = [
    "CARD_ARTIFACT",
    "IMAGE_COLUMN",
    "MODEL_CODE",
    "WEIGHTS_ARTIFACT",
    "WSOLPyfunc",
    "build_from_card",
    "copy_package",
    "download_version",
    "load_version",
    "log_model",
    "serving_settings",
    "serving_signature",
]

WEIGHTS_ARTIFACT, CARD_ARTIFACT = "weights", "model_card"
_FILES = {WEIGHTS_ARTIFACT: "model.pt", CARD_ARTIFACT: "model_card.json"}
IMAGE_COLUMN = "image"  # the input column of encoded images
# The code file MLflow stores with the model and runs to load it (models from code): a few lines, no pickle.
MODEL_CODE = "from mlflow.models import set_model\n\nfrom acol.tracking.mlflow_model import WSOLPyfunc\n\nset_model(WSOLPyfunc())\n"


def build_from_card(card: dict[str, Any], weights: str | os.PathLike[str]) -> Any:
    """The `WSOLModel` a card describes, with `weights` loaded (``weights_only``), on the CPU, in eval mode."""
    from acol.config import Params
    from acol.inference.model_card import model_from_card, spec_from_card

    if "method" not in card or "classes" not in card:
        raise ValueError(
            f"model card needs 'method' and 'classes' to rebuild the model; it has {sorted(card)}"
        )
    return model_from_card(spec_from_card(card, Params(), card["method"], list(card["classes"])), weights)


def serving_settings(card: dict[str, Any], params: Params | None = None) -> dict[str, Any]:
    """Threshold and input size a served version uses, and where each came from (recorded in its card).

    ``cam_threshold``: ``card["evaluation"]["cam_threshold"]`` (the threshold the version was evaluated
    with), else ``card["extract"]["box_threshold"]``, else ``params.extract.box_threshold`` (the boxes the
    map store writes). ``image_size``: ``card["evaluation"]["image_size"]``, else ``card["train"]["image_size"]``,
    else ``params.train.image_size``. `params` defaults to the `Params` defaults (an old card, no params).
    """
    if params is None:
        from acol.config import Params

        params = Params()
    evaluation, extract, train = (card.get(k) or {} for k in ("evaluation", "extract", "train"))
    if evaluation.get("cam_threshold") is not None:  # None: a masks-only dataset chose no threshold
        threshold, source = evaluation["cam_threshold"], "evaluation.cam_threshold"
    elif "box_threshold" in extract:
        threshold, source = extract["box_threshold"], "card extract.box_threshold"
    else:
        threshold, source = params.extract.box_threshold, "params extract.box_threshold"
    size = evaluation.get("image_size", train.get("image_size", params.train.image_size))
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"cam_threshold ({source}) must be in [0, 1], got {threshold}")
    return {"cam_threshold": float(threshold), "cam_threshold_from": source, "image_size": int(size)}


def serving_signature() -> Any:
    """The pyfunc signature: a binary ``image`` column (base64 in JSON), params ``top_k`` and ``return_map``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    from acol.inference.localize import TOP_K

    floats, longs = Array(DataType.double), Array(DataType.long)
    outputs = [ColSpec(DataType.long, "width"), ColSpec(DataType.long, "height")]
    outputs += [ColSpec(longs, "class_indices"), ColSpec(Array(DataType.string), "classes")]
    outputs += [ColSpec(floats, "scores"), ColSpec(Array(floats), "boxes")]
    outputs.append(ColSpec(Array(Array(floats)), "maps", required=False))
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, IMAGE_COLUMN)]),
        outputs=Schema(outputs),
        params=ParamSchema(
            [ParamSpec("top_k", DataType.long, TOP_K), ParamSpec("return_map", DataType.boolean, False)]
        ),
    )


def _image_bytes(value: Any) -> bytes:
    """A cell of the image column: bytes (MLflow decodes the JSON's base64 for a binary column) or base64."""
    if isinstance(value, str):
        return base64.b64decode(value)
    return bytes(value)


class WSOLPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc face of a registered version: encoded images in, top-k classes with boxes (and maps) out.

    ``predict`` takes a DataFrame with an ``image`` column (encoded JPEG/PNG/...) and returns one row per
    image (`acol.inference.localize.localize`). A (B, 3, S, S) float array still gives (B, K) logits, as
    versions logged before the ``image`` signature do.
    """

    def load_context(self, context: Any) -> None:
        self.card = json.loads(Path(context.artifacts[CARD_ARTIFACT]).read_text())
        self.model = build_from_card(self.card, context.artifacts[WEIGHTS_ARTIFACT])
        self.settings = self.card.get("serving") or serving_settings(self.card)  # "serving": set at logging

    # The hint is the one MLflow accepts without inferring a signature from it (a union would warn).
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        import torch

        if isinstance(model_input, pd.DataFrame):
            return self._localize(model_input, params or {})
        with torch.inference_mode():
            images = torch.as_tensor(np.asarray(model_input), dtype=torch.float32)
            return self.model(images).logits.numpy()

    def _localize(self, frame: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
        """Rows of `localize` for the images of `frame`; a bad image or param is the caller's error (400)."""
        from mlflow.exceptions import MlflowException

        from acol.data.errors import DataError
        from acol.inference.localize import TOP_K, decode_images, localize

        top_k = int(params.get("top_k", TOP_K))
        if IMAGE_COLUMN not in frame.columns or top_k < 1:
            raise MlflowException.invalid_parameter_value(
                f"input needs a column {IMAGE_COLUMN!r} of encoded images and top_k >= 1 (got {top_k})"
            )
        try:
            pixels = decode_images([_image_bytes(v) for v in frame[IMAGE_COLUMN]])
        except (DataError, binascii.Error) as error:
            raise MlflowException.invalid_parameter_value(f"cannot decode the input: {error}") from None
        size, threshold = self.settings["image_size"], self.settings["cam_threshold"]
        return_map = bool(params.get("return_map", False))
        rows = localize(self.model, pixels, size, threshold, top_k, return_map, self.card["classes"])
        return pd.DataFrame(rows)


def copy_package(dest: str | os.PathLike[str]) -> str:
    """A copy of the ``acol`` package (sources and data files, no caches) in `dest`, for ``code_paths``."""
    source = Path(__file__).resolve().parents[1]
    target = Path(dest) / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return str(target)


def artifacts_for(folder: Path, state_dict: dict[str, Any], card: dict[str, Any]) -> dict[str, str]:
    """Write the state dict and card into `folder` as the model's artifacts; returns MLflow's artifacts dict."""
    import torch

    torch.save(state_dict, folder / _FILES[WEIGHTS_ARTIFACT])
    (folder / _FILES[CARD_ARTIFACT]).write_text(json.dumps(card, indent=2))
    return {key: str(folder / name) for key, name in _FILES.items()}


def download_version(name: str, version: str, dest: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """Weights file and card of registered version `version` of `name`, downloaded into `dest`.

    Raises FileNotFoundError naming the version when it lacks them (a version logged before this format).
    """
    from mlflow.artifacts import download_artifacts

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    folder = Path(download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dest)))
    weights, card = (
        folder / "artifacts" / _FILES[WEIGHTS_ARTIFACT],
        folder / "artifacts" / _FILES[CARD_ARTIFACT],
    )
    if not (weights.is_file() and card.is_file()):
        raise FileNotFoundError(
            f"models:/{name}/{version} has no artifacts/{_FILES[WEIGHTS_ARTIFACT]} and "
            f"artifacts/{_FILES[CARD_ARTIFACT]}: it was not logged by acol.tracking.mlflow_model.log_model (retrain it)"
        )
    return weights, json.loads(card.read_text())


def load_version(name: str, version: str, dest: str | os.PathLike[str]) -> Any:
    """The `WSOLModel` of a registered version, rebuilt from its card and state dict (no code unpickled)."""
    weights, card = download_version(name, version, dest)
    return build_from_card(card, weights)


def _pip_requirements() -> list[str]:
    """Pinned requirements of the logged model: what its code (acol, shipped in the version) imports to load
    and predict, at the installed versions (tests/test_serving.py checks them against a load and predict).

    Given rather than inferred: MLflow's inference runs the model in a subprocess, and misses what acol imports.
    """
    from importlib.metadata import PackageNotFoundError, version

    # torch and the model; the eval transform (torchvision, PIL); decoding and boxes (OpenCV, numba); the
    # card's Params (pydantic, PyYAML); the pyfunc's DataFrame (pandas)
    packages = ("torch", "torchvision", "numpy", "pillow", "opencv-python-headless", "numba")
    pins = []
    for package in (*packages, "pydantic", "pyyaml", "pandas"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def log_model(
    model: nn.Module, method: str, params: Params, example_input: Any, card: Mapping[str, Any]
) -> str:
    """Log `model` to the active run as ``model`` and register it; returns the new registered version.

    Stored without pickle (module docstring): the state dict and `card` (the model card: ``method``,
    ``backbone``, ``classes``, ``model`` params, ``evaluation`` when evaluated...), which rebuild the `WSOLModel`,
    a few lines of code for ``mlflow.pyfunc`` and a copy of the ``acol`` package (``code_paths``), so that the
    version loads where acol is not installed. The card gets ``serving`` (`serving_settings`: the CAM threshold
    of its boxes and the input size). `example_input` is a (B, 3, S, S) float32 tensor of normalized images;
    its first image, as PNG, is the input example of the signature (`serving_signature`).
    """
    import tempfile

    import torch

    from acol.inference.localize import encode_png
    from acol.tracking.stage_runs import registered_model_name

    model = model.module if hasattr(model, "module") else model
    model = model.cpu().eval()
    example = torch.as_tensor(example_input, dtype=torch.float32).cpu()
    if example.ndim != 4 or example.shape[1] != 3:
        raise ValueError(f"log_model: example_input must be (B, 3, H, W), got {tuple(example.shape)}")
    if card.get("method", method) != method or "classes" not in card:
        raise ValueError(f"log_model: the card must be for method {method!r} and list its classes")
    full_card = {**card, "method": method, "serving": serving_settings(dict(card), params)}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        code = folder / "wsol_model.py"
        code.write_text(MODEL_CODE)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(code),  # a model from code: MLflow stores the file, pickles nothing
            artifacts=artifacts_for(folder, state, full_card),
            code_paths=[copy_package(folder / "code")],
            signature=serving_signature(),
            input_example=pd.DataFrame({IMAGE_COLUMN: [encode_png(example[0])]}),
            registered_model_name=registered_model_name(params, method),
            pip_requirements=_pip_requirements(),
        )
    if info.registered_model_version is None:
        raise RuntimeError(f"MLflow did not register {registered_model_name(params, method)}")
    return str(info.registered_model_version)
