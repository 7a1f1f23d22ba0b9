"""Model registry aliases: every evaluated version becomes `candidate`; the best one on a metric, `champion`.

A version's evaluation metrics are stored as tags on the version itself, so a later comparison (a new
training run, or the scheduled re-evaluation) reads them without searching runs.
"""

from __future__ import annotations

import logging
from typing import Any

from acol.wsol.metrics import lower_is_better

__all__ = ["METRIC_TAG_PREFIX", "record_and_promote", "version_metrics"]

METRIC_TAG_PREFIX = "metric."
log = logging.getLogger(__name__)


def version_metrics(name: str, version: str) -> dict[str, float]:
    """The metrics recorded on a model version's tags (`metric.<key>`)."""
    from mlflow import MlflowClient

    tags = MlflowClient().get_model_version(name, version).tags
    return {k[len(METRIC_TAG_PREFIX) :]: float(v) for k, v in tags.items() if k.startswith(METRIC_TAG_PREFIX)}


def record_and_promote(name: str, version: str, metrics: dict[str, Any], metric: str) -> dict[str, Any]:
    """Tag `version` with its metrics, alias it `candidate`, and `champion` if it beats the current champion.

    Which way is better is `acol.wsol.metrics.lower_is_better`: errors and losses lower, accuracies higher.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if metric not in metrics:
        raise KeyError(f"evaluate.champion_metric: {metric!r} is not among the metrics {sorted(metrics)}")
    client = MlflowClient()
    for key, value in metrics.items():
        if isinstance(value, int | float):
            client.set_model_version_tag(name, version, f"{METRIC_TAG_PREFIX}{key}", str(value))
    client.set_registered_model_alias(name, "candidate", version)
    new = float(metrics[metric])
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        champion = None
    previous = version_metrics(name, champion.version).get(metric) if champion is not None else None
    better = previous is None or (new < previous if lower_is_better(metric) else new > previous)
    if champion is not None and str(champion.version) == str(version):  # MLflow returns an int version
        better = True  # re-evaluating the champion itself keeps it
    if better:
        client.set_registered_model_alias(name, "champion", version)
    log.info("%s v%s: %s=%.3f (champion before: %s) -> %s", name, version, metric, new, previous,
             "champion" if better else "candidate")  # fmt: skip
    return {"name": name, "version": version, "champion": better, "previous_champion_value": previous}
