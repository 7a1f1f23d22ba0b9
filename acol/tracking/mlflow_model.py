"""The registered model as MLflow stores it: a state dict and its model card, rebuilt by acol, never unpickled.

Why: MLflow's PyTorch flavour either pickles the whole module (loading it runs whatever code the pickle names,
and MLflow warns so) or exports ``forward`` only ("pt2": `localization_maps` would be lost). The model is
logged instead as an MLflow *model from code* (`mlflow.pyfunc`): its artifacts are ``weights`` (a plain state
dict, read with ``torch.load(weights_only=True)``) and ``model_card`` (the build arguments: method, backbone,
classes, ``model`` params); its code is `MODEL_CODE`, which builds a `WSOLPyfunc` from this module.

Three ways to load a version, none unpickling code: `download_version` (weights and card; what re-evaluation
uses, then `acol.distributed.extract` builds the model), `load_version` (the `WSOLModel` itself), or
``mlflow.pyfunc.load_model("models:/<name>/<version>")`` (``predict`` gives branch A's logits).

Importing this module only imports MLflow; nothing runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

__all__ = [
    "CARD_ARTIFACT",
    "MODEL_CODE",
    "WEIGHTS_ARTIFACT",
    "WSOLPyfunc",
    "build_from_card",
    "download_version",
    "load_version",
]

WEIGHTS_ARTIFACT, CARD_ARTIFACT = "weights", "model_card"
_FILES = {WEIGHTS_ARTIFACT: "model.pt", CARD_ARTIFACT: "model_card.json"}
# The code file MLflow stores with the model and runs to load it (models from code): a few lines, no pickle.
MODEL_CODE = "from mlflow.models import set_model\n\nfrom acol.tracking.mlflow_model import WSOLPyfunc\n\nset_model(WSOLPyfunc())\n"


def build_from_card(card: dict[str, Any], weights: str | os.PathLike[str]) -> Any:
    """The `WSOLModel` a card describes, with `weights` loaded (``weights_only``), on the CPU, in eval mode."""
    from acol.config import Params
    from acol.inference.model_card import model_from_card, model_kwargs_from_card

    if "method" not in card or "classes" not in card:
        raise ValueError(
            f"model card needs 'method' and 'classes' to rebuild the model; it has {sorted(card)}"
        )
    return model_from_card(
        model_kwargs_from_card(card, Params(), card["method"], list(card["classes"])), weights
    )


class WSOLPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc face of a registered version: ``predict`` maps (B, 3, S, S) float32 images to (B, K) logits."""

    def load_context(self, context: Any) -> None:
        card = json.loads(Path(context.artifacts[CARD_ARTIFACT]).read_text())
        self.model = build_from_card(card, context.artifacts[WEIGHTS_ARTIFACT])

    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        import torch

        with torch.inference_mode():
            images = torch.as_tensor(np.asarray(model_input), dtype=torch.float32)
            return self.model(images).logits.numpy()


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
            f"artifacts/{_FILES[CARD_ARTIFACT]}: it was not logged by acol.tracking.runs.log_model (retrain it)"
        )
    return weights, json.loads(card.read_text())


def load_version(name: str, version: str, dest: str | os.PathLike[str]) -> Any:
    """The `WSOLModel` of a registered version, rebuilt from its card and state dict (no code unpickled)."""
    weights, card = download_version(name, version, dest)
    return build_from_card(card, weights)
