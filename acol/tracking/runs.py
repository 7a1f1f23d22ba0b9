"""MLflow helpers shared by every stage (`acol.tracking.stage_runs`, re-exported here), and `log_model`.

`log_model` logs and registers a trained model, so it imports the model code (acol.models through
acol.inference); the stages that register no model (prepare, report) import `acol.tracking.stage_runs`
instead, which has everything else, so that a model edit does not rerun them (their DVC deps list every module
they import: tests/test_layout.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acol.config import Params
from acol.tracking.stage_runs import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    PIPELINE_RUN_ENV,
    PIPELINE_TAG,
    TrackingServerError,
    check_tracking_server,
    configure,
    data_version,
    filter_literal,
    flatten_params,
    git_commit,
    log_datasets,
    manifest_dataset,
    pipeline_run_id,
    registered_model_name,
    stage_run,
    tracking_uri,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "PIPELINE_RUN_ENV",
    "PIPELINE_TAG",
    "TrackingServerError",
    "check_tracking_server",
    "configure",
    "data_version",
    "filter_literal",
    "flatten_params",
    "git_commit",
    "log_datasets",
    "log_model",
    "manifest_dataset",
    "pipeline_run_id",
    "registered_model_name",
    "stage_run",
    "tracking_uri",
]


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

    Stored without pickle (`acol.tracking.mlflow_model`): the state dict and `card` (the model card: ``method``,
    ``backbone``, ``classes``, ``model`` params, ``evaluation`` when evaluated...), which rebuild the `WSOLModel`,
    a few lines of code for ``mlflow.pyfunc`` and a copy of the ``acol`` package (``code_paths``), so that the
    version loads where acol is not installed. The card gets ``serving`` (`serving_settings`: the CAM threshold
    of its boxes and the input size). `example_input` is a (B, 3, S, S) float32 tensor of normalized images;
    its first image, as PNG, is the input example of the signature (`serving_signature`).
    """
    import tempfile

    import mlflow
    import mlflow.pyfunc
    import pandas as pd
    import torch

    from acol.inference.localize import encode_png
    from acol.tracking import mlflow_model as mm

    model = model.module if hasattr(model, "module") else model
    model = model.cpu().eval()
    example = torch.as_tensor(example_input, dtype=torch.float32).cpu()
    if example.ndim != 4 or example.shape[1] != 3:
        raise ValueError(f"log_model: example_input must be (B, 3, H, W), got {tuple(example.shape)}")
    if card.get("method", method) != method or "classes" not in card:
        raise ValueError(f"log_model: the card must be for method {method!r} and list its classes")
    full_card = {**card, "method": method, "serving": mm.serving_settings(dict(card), params)}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        code = folder / "wsol_model.py"
        code.write_text(mm.MODEL_CODE)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(code),  # a model from code: MLflow stores the file, pickles nothing
            artifacts=mm.artifacts_for(folder, state, full_card),
            code_paths=[mm.copy_package(folder / "code")],
            signature=mm.serving_signature(),
            input_example=pd.DataFrame({mm.IMAGE_COLUMN: [encode_png(example[0])]}),
            registered_model_name=registered_model_name(params, method),
            pip_requirements=_pip_requirements(),
        )
    if info.registered_model_version is None:
        raise RuntimeError(f"MLflow did not register {registered_model_name(params, method)}")
    return str(info.registered_model_version)
