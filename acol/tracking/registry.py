"""Model registry aliases: every evaluated version becomes `candidate`; the best comparable one, `champion`.

A version's evaluation metrics (``metric.<key>``) and its comparison key (``acol.dataset``, ``acol.backbone``,
``acol.method``, ``acol.protocol``, ``acol.image_size``, ``acol.iou_thresholds``) are tags on the version itself,
so a later comparison (a new evaluation, or the scheduled re-evaluation) reads them without searching runs.

Why the promotion is a loop: two evaluations can run at once. Each tags its version first, then reads every
version's tags and the alias, and moves the alias to the best version until a read finds it there. Whichever
writes last re-reads after its write and so corrects a stale write, and a version tagged later is seen by its
own evaluation: the alias ends on the best version whatever the interleaving.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from acol.config import ParamsError
from acol.wsol.metric_direction import lower_is_better

__all__ = [
    "CHAMPION",
    "KEY_TAGS",
    "METRIC_TAG_PREFIX",
    "RegistryError",
    "check_champion",
    "comparison_key",
    "record_and_promote",
    "version_metrics",
]

METRIC_TAG_PREFIX = "metric."
CHAMPION, CANDIDATE = "champion", "candidate"
KEY_TAGS = (
    "acol.dataset",
    "acol.backbone",
    "acol.method",
    "acol.protocol",
    "acol.image_size",
    "acol.iou_thresholds",
)
_MAX_ROUNDS = 20  # each round is one read and at most one write; more means something keeps moving the alias
_ABSENT = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")  # no such model / alias (REST vs sqlite)
log = logging.getLogger(__name__)


class RegistryError(ParamsError):
    """The registry holds a champion these params cannot be compared with; the message names both versions.

    A `ParamsError` (a user error: one line, exit status 2 from a stage): the fix is a setting, e.g. another
    ``tracking.registered_model`` or moving the ``champion`` alias.
    """


def comparison_key(card: Mapping[str, Any]) -> dict[str, str]:
    """The comparison key of a model card with its ``evaluation`` section, as version tags.

    Numbers of two versions compare only when these agree: the data, the architecture that made the maps,
    where the CAM threshold was chosen, the input size and the IoU thresholds MaxBoxAccV2 averages. The grid
    step (``interval``) and ``holdout_fraction`` are recorded in the card but not compared.
    """
    if "evaluation" not in card:
        raise KeyError(
            "model card has no 'evaluation' section: the evaluate stage adds it before registering"
        )
    evaluation = card["evaluation"]
    return {
        "acol.dataset": str(evaluation["dataset"]),
        "acol.backbone": str(card["backbone"]),
        "acol.method": str(card["method"]),
        "acol.protocol": str(evaluation["protocol"]),
        "acol.image_size": str(int(evaluation["image_size"])),
        "acol.iou_thresholds": ",".join(str(int(t)) for t in evaluation["iou_thresholds"]),
    }


def version_metrics(name: str, version: str) -> dict[str, float]:
    """The metrics recorded on a model version's tags (`metric.<key>`)."""
    from mlflow import MlflowClient

    return _metrics(MlflowClient().get_model_version(name, version).tags)


def _metrics(tags: Mapping[str, str]) -> dict[str, float]:
    return {k[len(METRIC_TAG_PREFIX) :]: float(v) for k, v in tags.items() if k.startswith(METRIC_TAG_PREFIX)}


def _key(tags: Mapping[str, str], key: Mapping[str, str]) -> dict[str, str]:
    """The comparison-key tags of a version: `KEY_TAGS` and any other name `key` uses."""
    return {k: tags[k] for k in (*KEY_TAGS, *(k for k in key if k not in KEY_TAGS)) if k in tags}


def _champion(client: Any, name: str) -> Any | None:
    """The version behind ``name@champion``, or None when the model or the alias does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as e:
        if e.error_code in _ABSENT:
            return None
        raise


def _check(name: str, champion: Any, key: Mapping[str, str], metric: str) -> float:
    """The champion's `metric`; RegistryError if its key differs from `key` or it has no such metric tag."""
    theirs = _key(champion.tags, key)
    if theirs != dict(key):
        raise RegistryError(
            f"{name} v{champion.version} (the champion) has comparison key {theirs or 'none'}, the version "
            f"being promoted {dict(key)}: their numbers do not compare. Use another tracking.registered_model, "
            f"or move the '{CHAMPION}' alias to a version with this key"
        )
    recorded = _metrics(champion.tags)
    if metric not in recorded:
        raise RegistryError(
            f"{name} v{champion.version} (the champion) has no tag {METRIC_TAG_PREFIX}{metric}, so nothing can be "
            f"compared with it: re-run its evaluation, tag it, or delete the '{CHAMPION}' alias"
        )
    return recorded[metric]


def check_champion(
    name: str, key: Mapping[str, str], metric: str, version: str | None = None
) -> float | None:
    """The current champion's `metric` (None without one); RegistryError if it cannot be compared with `key`.

    Why separate: the evaluate stage calls it before registering, so a refused version is never created.
    `version` itself as the champion is not checked: its tags are being recorded again.
    """
    from mlflow import MlflowClient

    champion = _champion(MlflowClient(), name)
    if champion is None:
        return None
    if str(champion.version) == str(version):  # MLflow may return an int version
        return _metrics(champion.tags).get(metric)
    return _check(name, champion, key, metric)


def _all_versions(client: Any, name: str) -> list[Any]:
    versions, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            return versions


def _best(client: Any, name: str, key: Mapping[str, str], metric: str, champion: str | None) -> str | None:
    """The version with the best `metric` among those with `key`; ties keep the champion, then the oldest."""
    sign = -1.0 if lower_is_better(metric) else 1.0
    scored = []
    for v in _all_versions(client, name):
        value = _metrics(v.tags).get(metric, math.nan) if _key(v.tags, key) == dict(key) else math.nan
        if not math.isnan(value):  # untagged (not evaluated yet), NaN, or another key: not a contender
            scored.append((sign * value, str(v.version) == champion, -int(v.version), str(v.version)))
    return max(scored)[3] if scored else champion


def _converge(client: Any, name: str, key: Mapping[str, str], metric: str) -> None:
    """Move `champion` to the best comparable version until a read finds it there."""
    for _ in range(_MAX_ROUNDS):
        current = _champion(client, name)
        if current is not None:
            _check(name, current, key, metric)  # someone may have moved the alias meanwhile
        held = None if current is None else str(current.version)
        best = _best(client, name, key, metric, held)
        if best == held:
            return
        client.set_registered_model_alias(name, CHAMPION, best)
    raise RuntimeError(f"{name}: the '{CHAMPION}' alias kept moving for {_MAX_ROUNDS} rounds; promote again")


def record_and_promote(
    name: str, version: str, metrics: Mapping[str, Any], metric: str, *, key: Mapping[str, str]
) -> dict[str, Any]:
    """Tag `version` with its metrics and comparison `key`, alias it `candidate`, and make the best comparable
    version `champion` (see the module docstring); returns whether `version` is the champion now.

    Which way is better is `acol.wsol.metric_direction.lower_is_better`: errors and losses lower, accuracies higher.
    A champion with another key, or without the metric's tag, is a `RegistryError` (nothing is tagged then).
    """
    from mlflow import MlflowClient

    if metric not in metrics:
        raise KeyError(f"evaluate.champion_metric: {metric!r} is not among the metrics {sorted(metrics)}")
    client = MlflowClient()
    previous = check_champion(name, key, metric, version)
    for tag, value in metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            client.set_model_version_tag(name, version, f"{METRIC_TAG_PREFIX}{tag}", str(value))
    for tag, value in key.items():  # last: a version with its key is a complete one
        client.set_model_version_tag(name, version, tag, value)
    client.set_registered_model_alias(name, CANDIDATE, version)
    _converge(client, name, key, metric)
    now = _champion(client, name)
    champion = now is not None and str(now.version) == str(version)  # MLflow may return an int version
    log.info("%s v%s: %s=%.3f (champion before: %s) -> %s", name, version, metric, float(metrics[metric]),
             previous, CHAMPION if champion else CANDIDATE)  # fmt: skip
    return {"name": name, "version": version, "champion": champion, "previous_champion_value": previous}
