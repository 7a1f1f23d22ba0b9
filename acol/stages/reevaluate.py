"""Scheduled re-evaluation: does the registered model (by alias) still localize as well as when it was promoted?

A cron job (Kubernetes CronJob, or a crontab line on one machine) runs `reevaluate` on the *current* validation
manifest: it resolves ``models:/<registered_model_name>@<alias>`` to a version, fetches that version's
weights, extracts maps (`acol.distributed.extract`), evaluates them (`acol.stages.evaluation.evaluate_method`) and
compares with the metrics recorded on the version's tags when the evaluate stage promoted it
(`acol.tracking.registry.version_metrics`). It extracts and evaluates with the settings those numbers were made
with, from the version's model card (``evaluation``: image size, threshold protocol, grid step, held-out
fraction, IoU thresholds), not today's params.yaml; a ``fullsup`` version's threshold is chosen on the
train-fullsup manifest again. A metric that got worse by more than ``params.reevaluate.tolerance`` points
is a regression: the report says which, and ``pipelines/reevaluate.py`` exits with `REGRESSION_EXIT_CODE`.

Why: the data drifts (a new val manifest, re-annotated boxes, a changed decoder), the model does not; this
catches the day the champion stops being good without retraining anything.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from acol.config import Params
from acol.io import write_json_atomic, write_text_atomic
from acol.models import METHODS
from acol.wsol.metric_direction import lower_is_better

__all__ = [
    "COMPARED_METRICS",
    "REGRESSION_EXIT_CODE",
    "MetricComparison",
    "ReevaluationError",
    "ReevaluationReport",
    "compare_metrics",
    "fetch_model",
    "lower_is_better",
    "recorded_settings",
    "reevaluate",
    "run",
    "write_report",
    "METHODS",
    "ENGINES",
    "ReevaluatePaths",
]

log = logging.getLogger(__name__)

Engine = Literal["ray", "plain"]
ENGINES: tuple[Engine, ...] = ("ray", "plain")  # the extraction engines (`acol.stages.extract`)
REGRESSION_EXIT_CODE = 3  # distinct from 1 (a crash) and 2 (bad command line): "the model got worse"
# Metrics in percent points that say how good the model is; counts, thresholds and map means are not compared.
COMPARED_METRICS = (
    "maxboxacc",
    "maxboxacc_v2",
    "gt_known_loc",
    "pxap",
    "top1_loc_error",
    "top5_loc_error",
    "top1_cls_error",
    "top5_cls_error",
)
_COMPARED_PREFIXES = ("maxboxacc_v2_iou",)  # one per IoU threshold: maxboxacc_v2_iou30, ...


class ReevaluationError(RuntimeError):
    """Re-evaluation cannot run (no such alias, no recorded metrics, weights missing); the message says which."""


def _compared(name: str) -> bool:
    return name in COMPARED_METRICS or name.startswith(_COMPARED_PREFIXES)


@dataclass(frozen=True)
class MetricComparison:
    """One metric, recorded at promotion vs now; ``drop`` > 0 means worse (points, whatever the direction)."""

    name: str
    recorded: float
    current: float
    drop: float
    regressed: bool


def compare_metrics(
    recorded: Mapping[str, float], current: Mapping[str, Any], tolerance: float
) -> list[MetricComparison]:
    """Compare the metrics both sides have (sorted by name); a drop above `tolerance` points is a regression.

    A current value that is NaN (e.g. nothing left to evaluate) counts as a regression of infinite size.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 points, got {tolerance}")
    out = []
    for name in sorted(set(recorded) & set(current)):
        if not _compared(name) or not isinstance(current[name], int | float):
            continue
        old, new = float(recorded[name]), float(current[name])
        drop = (new - old) if lower_is_better(name) else (old - new)
        if math.isnan(drop):
            drop = math.inf
        # The tolerance is compared with a rounded drop: 1.0000000001 is float noise, not a regression.
        out.append(MetricComparison(name, old, new, drop, round(drop, 9) > tolerance))
    return out


@dataclass
class ReevaluationReport:
    """What one re-evaluation found; `passed` is what the exit code reports."""

    model_name: str
    model_version: str
    alias: str
    method: str
    tolerance: float
    manifest: str
    data_version: str  # of the manifest evaluated now
    trained_data_version: str | None  # of the manifests the version was trained on (model card), if known
    metrics: dict[str, Any]  # everything evaluate_method reported now
    comparisons: list[MetricComparison] = field(default_factory=list)
    mlflow_run_id: str | None = None
    # how the maps were made and evaluated now: `recorded_settings` ("source": "version" or "params")
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def regressions(self) -> list[MetricComparison]:
        return [c for c in self.comparisons if c.regressed]

    @property
    def passed(self) -> bool:
        return not self.regressions

    def summary(self) -> str:
        """One line for logs and exit messages, naming every regressed metric."""
        head = f"{self.model_name} v{self.model_version} (@{self.alias})"
        if self.passed:
            return f"{head}: no metric fell by more than {self.tolerance:g} points ({len(self.comparisons)} compared)"
        worse = ", ".join(
            f"{c.name} {c.recorded:.2f} -> {c.current:.2f} (-{c.drop:.2f})" for c in self.regressions
        )
        return f"{head}: REGRESSION beyond {self.tolerance:g} points: {worse}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        data["summary"] = self.summary()
        data["comparisons"] = [
            {**asdict(c), "drop": None if math.isinf(c.drop) else c.drop} for c in self.comparisons
        ]
        return data

    def to_markdown(self) -> str:
        lines = [
            f"# Re-evaluation of {self.model_name} v{self.model_version} (@{self.alias})",
            "",
            f"**{'PASSED' if self.passed else 'FAILED'}**: {self.summary()}",
            "",
            f"- method: {self.method}; manifest: `{self.manifest}` (data version {self.data_version}; "
            f"trained on {self.trained_data_version or 'unknown'})",
            f"- images evaluated: {self.metrics.get('num_images')}, failed to read: "
            f"{self.metrics.get('failed_images')}",
            f"- MLflow run: {self.mlflow_run_id or '-'}",
            f"- settings: {_describe(self.settings)}",
            "",
            "| metric | recorded | now | drop (points) | |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for c in self.comparisons:
            flag = "REGRESSED" if c.regressed else "ok"
            lines.append(f"| {c.name} | {c.recorded:.2f} | {c.current:.2f} | {c.drop:+.2f} | {flag} |")
        return "\n".join(lines) + "\n"


def _describe(settings: Mapping[str, Any]) -> str:
    if not settings:
        return "-"
    source = (
        "recorded on the version" if settings.get("source") == "version" else "params.yaml (none recorded)"
    )
    return ", ".join(f"{k} {v}" for k, v in settings.items() if k != "source") + f" ({source})"


def write_report(report: ReevaluationReport, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``report.json`` and ``report.md`` in `out_dir` (atomic writes); returns both paths."""
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / "report.json", report.to_json())
    write_text_atomic(out_dir / "report.md", report.to_markdown())
    return out_dir / "report.json", out_dir / "report.md"


def _resolve(name: str, alias: str) -> Any:
    """The ModelVersion behind ``name@alias``; a missing model or alias is a `ReevaluationError`."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as e:
        raise ReevaluationError(
            f"models:/{name}@{alias} does not resolve ({e.message}); train and evaluate the method first, "
            "or set reevaluate.alias"
        ) from None


def fetch_model(name: str, version: str, dest: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """Weights (state dict, ``dest/model.pt``) and model card of a registered version.

    Both are the registered model's own artifacts (`acol.tracking.mlflow_model`): the state dict loads with
    ``weights_only=True`` and the card gives the architecture, so no pickled code is ever loaded. A version
    without them (logged another way) is a `ReevaluationError` naming it.
    """
    from mlflow.exceptions import MlflowException

    from acol.tracking.mlflow_model import download_version

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model_path = dest / "model.pt"
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        try:
            weights, card = download_version(name, version, tmp)
        except (MlflowException, FileNotFoundError) as e:
            raise ReevaluationError(f"cannot fetch models:/{name}/{version}: {e}") from None
        os.replace(weights, model_path)
    return model_path, card


def reevaluate(
    params: Params,
    method: str,
    manifest: str | os.PathLike[str],
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    engine: Literal["ray", "plain"] = "ray",
    fullsup_manifest: str | os.PathLike[str] | None = None,
) -> ReevaluationReport:
    """Re-evaluate `registered_model_name` ``@<reevaluate.alias>`` on `manifest`; log and report it.

    Maps and metrics are made with the version's recorded settings (`recorded_settings`); a version evaluated
    with ``threshold_split: fullsup`` needs `fullsup_manifest` (its maps go to ``out_dir/extract_fullsup/``).
    Writes ``out_dir/model/`` (fetched weights), ``out_dir/extract/`` (maps, as the extract stage),
    ``out_dir/report.json`` and ``report.md``. Logs an MLflow stage run ``reevaluate@<method>`` tagged
    ``model_name`` / ``model_version`` (the link to the version) with the metrics, ``drop.<metric>`` per
    compared metric, ``regression`` true/false and the report as artifacts. With ``engine="ray"`` on a
    cluster, `out_dir`, `manifest` and `root` must be on storage every node sees.
    """
    from acol.tracking import stage_runs as tracking

    tracking.configure(params)
    name = tracking.registered_model_name(params, method)
    alias = params.reevaluate.alias
    version, recorded = _recorded_metrics(name, alias)
    out_dir = Path(out_dir)
    log.info("re-evaluating %s v%s (@%s) on %s", name, version.version, alias, manifest)
    model_path, card = fetch_model(name, str(version.version), out_dir / "model")
    card = {**card, "method": card.get("method") or method}
    used, settings = recorded_settings(params, card, f"{name} v{version.version}")
    fullsup = _fullsup_path(settings, fullsup_manifest, f"{name} v{version.version}")
    inputs = _Inputs(manifest, root, model_path, card, out_dir, fullsup)
    metrics = _extract_and_evaluate(used, method, inputs, engine)
    report = ReevaluationReport(
        model_name=name,
        model_version=str(version.version),
        alias=alias,
        method=method,
        tolerance=params.reevaluate.tolerance,
        manifest=str(manifest),
        data_version=tracking.data_version([manifest]),
        trained_data_version=card.get("data_version"),
        metrics=metrics,
        comparisons=compare_metrics(recorded, metrics, params.reevaluate.tolerance),
        settings=settings,
    )
    _log_and_write(report, used, manifest, out_dir)
    (log.info if report.passed else log.error)("%s", report.summary())
    return report


def _recorded_metrics(name: str, alias: str) -> tuple[Any, dict[str, float]]:
    """The version behind ``name@alias`` and the metrics tagged on it; none to compare is an error."""
    from acol.tracking.registry import version_metrics

    version = _resolve(name, alias)
    recorded = version_metrics(name, version.version)
    if not any(_compared(k) for k in recorded):
        raise ReevaluationError(
            f"{name} v{version.version} has no recorded metrics (model version tags metric.<name>); "
            "the evaluate stage records them when it promotes a version"
        )
    return version, recorded


def recorded_settings(params: Params, card: Mapping[str, Any], label: str) -> tuple[Params, dict[str, Any]]:
    """`params` with the image size and evaluate settings the version's numbers were made with, and those.

    Read from the card's ``evaluation`` section (the evaluate stage writes it when it registers the version);
    a key it lacks keeps the params value. A card without it (a version registered before) keeps params.yaml's
    settings, with a warning: its recorded numbers may then not be comparable.
    """
    evaluation = card.get("evaluation")
    if not isinstance(evaluation, Mapping):
        log.warning("%s has no evaluation record in its model card (registered before it was kept): "
                    "re-evaluating with params.yaml's settings, which may differ", label)  # fmt: skip
        evaluation = {}
    ev = params.evaluate
    size = int(evaluation.get("image_size", params.train.image_size))
    updates = {
        "threshold_split": str(evaluation.get("protocol", ev.threshold_split)),
        "interval": float(evaluation.get("interval", ev.interval)),
        "holdout_fraction": float(evaluation.get("holdout_fraction", ev.holdout_fraction)),
        "iou_thresholds": tuple(int(t) for t in evaluation.get("iou_thresholds", ev.iou_thresholds)),
    }
    used = params.model_copy(
        update={
            "train": params.train.model_copy(update={"image_size": size}),
            "evaluate": ev.model_copy(update=updates),
        }
    )
    source = "version" if evaluation else "params"
    settings = {"source": source, "image_size": size, "protocol": updates.pop("threshold_split"), **updates}
    settings["iou_thresholds"] = list(settings["iou_thresholds"])
    log.info("%s: settings from the %s: %s", label, source, _describe(settings))
    return used, settings


def _fullsup_path(
    settings: Mapping[str, Any], fullsup_manifest: str | os.PathLike[str] | None, label: str
) -> Path | None:
    """The train-fullsup manifest a ``fullsup`` version needs (None for ``holdout``); missing is an error."""
    if settings["protocol"] != "fullsup":
        return None
    if fullsup_manifest is None:
        raise ReevaluationError(f"{label} chose its CAM threshold on train-fullsup: pass its manifest")
    path = Path(fullsup_manifest)
    if not path.is_file():
        raise FileNotFoundError(
            f"train-fullsup manifest not found: {path} ({label} was evaluated with threshold_split fullsup; "
            "the prepare stage writes it from data.fullsup_metadata, or pass --fullsup-manifest)"
        )
    return path


@dataclass(frozen=True)
class _Inputs:
    """What one re-evaluation reads and where it writes (`_extract_and_evaluate`)."""

    manifest: str | os.PathLike[str]
    root: str | os.PathLike[str]
    model_path: Path
    card: dict[str, Any]
    out_dir: Path
    fullsup_manifest: Path | None


def _extract_and_evaluate(
    params: Params, method: str, inputs: _Inputs, engine: Literal["ray", "plain"]
) -> dict[str, Any]:
    """Maps into ``out_dir/extract`` (and ``extract_fullsup``) as the extract stage makes them, then the
    evaluate stage's metrics."""
    from acol.data.manifest import read_manifest
    from acol.distributed.extract import ExtractionJob, extract, extract_plain
    from acol.inference.mapstore import read_maps
    from acol.stages.evaluation import EVALUATED_COLUMNS, evaluate_method

    run = extract if engine == "ray" else extract_plain

    def maps(manifest: str | os.PathLike[str], folder: str) -> Any:
        out = inputs.out_dir / folder
        run(ExtractionJob(params, method, manifest, inputs.root, inputs.model_path, inputs.card, out))
        return read_maps(out / "maps", EVALUATED_COLUMNS)

    fullsup = None
    if inputs.fullsup_manifest is not None:
        table = read_manifest(inputs.fullsup_manifest)
        if table.num_rows == 0:
            raise ReevaluationError(
                f"train-fullsup manifest {inputs.fullsup_manifest} is empty: set data.fullsup_metadata and rerun "
                "the prepare stage"
            )
        fullsup = (maps(inputs.fullsup_manifest, "extract_fullsup"), table)
    val = maps(inputs.manifest, "extract")
    result = evaluate_method(val, read_manifest(inputs.manifest), inputs.root, params.evaluate, fullsup)
    return result.metrics


def _log_and_write(
    report: ReevaluationReport, params: Params, manifest: str | os.PathLike[str], out_dir: Path
) -> None:
    """The MLflow stage run (metrics, ``drop.*``, ``regression`` tag, artifacts) and the report files."""
    import mlflow

    from acol.tracking import stage_runs as tracking

    tags = {
        "model_name": report.model_name,
        "model_version": report.model_version,
        "model_alias": report.alias,
    }
    with tracking.stage_run(
        "reevaluate", params, method=report.method, tags=tags, data_paths=[manifest]
    ) as mlrun:
        report.mlflow_run_id = mlrun.info.run_id
        numbers = {k: float(v) for k, v in report.metrics.items() if isinstance(v, int | float)}
        numbers.update({f"drop.{c.name}": c.drop for c in report.comparisons if math.isfinite(c.drop)})
        mlflow.log_metrics(numbers)
        mlflow.set_tag("regression", str(not report.passed).lower())
        json_path, md_path = write_report(report, out_dir)
        mlflow.log_artifact(str(json_path))
        mlflow.log_artifact(str(md_path))
        mlflow.log_artifact(str(out_dir / "extract" / "summary.json"), artifact_path="extract")


# ------------------------------------------------------------------------------------------------------ stage


@dataclass(frozen=True)
class ReevaluatePaths:
    """What a scheduled re-evaluation reads and where it writes."""

    manifest: Path  # the val manifest to use now
    fullsup_manifest: Path  # read for a version evaluated with threshold_split fullsup
    out: Path  # model/, extract/, report.json, report.md
    root: str | None = None  # the dataset root; None: params data.root


def run(params: Params, method: str, paths: ReevaluatePaths, engine: Engine = "ray") -> int:
    """The job: re-evaluate, print the summary; returns the exit status: 0 passed, `REGRESSION_EXIT_CODE` on
    a regression, 1 when it could not run. The tracking server is checked first."""
    from acol.tracking import stage_runs as tracking

    tracking.check_tracking_server()
    root = paths.root or params.data.root
    try:
        report = reevaluate(
            params,
            method,
            paths.manifest,
            root,
            paths.out,
            engine=engine,
            fullsup_manifest=paths.fullsup_manifest,
        )
    except ReevaluationError as e:
        logging.getLogger("reevaluate").error("%s", e)
        return 1
    print(report.summary())
    print(f"report: {paths.out / 'report.md'}")
    return 0 if report.passed else REGRESSION_EXIT_CODE
