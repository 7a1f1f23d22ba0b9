"""MLflow helpers shared by every stage: one parent run per pipeline run, one child run per stage.

Conventions (the pipeline contract):

- Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db`` (MLflow's own default, made
  absolute so that Ray workers, whose working directory differs, write to the same database).
- Experiment: ``params.tracking.experiment``.
- Parent run: one per pipeline id, which is ``ACOL_PIPELINE_RUN`` if set, else ``<git commit>-<sha256 of
  params.yaml>`` (12 hex digits each); found by the tag ``acol.pipeline_run`` or created.
- Stage runs (`stage_run`) are children of it, tagged ``acol.stage``, ``acol.method``, ``acol.git_commit``,
  ``acol.data_version``, ``acol.pipeline_run`` and logging the params flattened (``model.backbone``, ...).
- Registered model name: ``f"{params.tracking.registered_model}-{method}"``.

Importing this module starts nothing: MLflow is imported inside the functions that need it.

Logging a model (`acol.tracking.mlflow_model.log_model`) is not here: it needs the model code (acol.models
through acol.inference), and the stages that log no model (prepare, report) import this module alone, so that
their DVC deps, which list every module they import, leave the model code out (tests/test_layout.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acol.config import Params
from acol.cpu_isa import CPU_ISA_ENV
from acol.errors import UserError

if TYPE_CHECKING:
    import mlflow

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
    "manifest_dataset",
    "pipeline_run_id",
    "registered_model_name",
    "stage_run",
    "tracking_uri",
]

PIPELINE_RUN_ENV = "ACOL_PIPELINE_RUN"
# The experiment tag MLflow 3 reads to choose an experiment's view; "genai_development" is the other kind.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
PIPELINE_TAG = "acol.pipeline_run"
log = logging.getLogger(__name__)
_SHORT = 12  # hex digits kept of each hash: plenty to tell runs apart, short enough to read


class TrackingServerError(UserError, RuntimeError):
    """The MLflow tracking server cannot be reached; raised before any expensive work starts."""


def tracking_uri() -> str:
    """The pipeline's tracking URI; a relative sqlite path is made absolute (Ray workers have another cwd)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip() or "sqlite:///mlflow.db"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def configure(params: Params) -> str:
    """Point MLflow at `tracking_uri()` and the experiment of `params`; returns the experiment id.

    The experiment is tagged as a model-training one (`EXPERIMENT_KIND`), so that MLflow 3's UI opens it in
    its training-runs view instead of guessing the GenAI view (traces, token usage).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri())
    experiment = mlflow.set_experiment(params.tracking.experiment)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def registered_model_name(params: Params, method: str) -> str:
    """``<tracking.registered_model>-<backbone>-<method>-<evaluate.threshold_split>``, e.g.
    ``wsol-ilsvrc-vgg16-acol-holdout``.

    Why: versions of one name compete for `champion`; a ResNet-50 must not be ranked against a VGG16, nor a
    threshold chosen on val against one chosen on train-fullsup. The rest of the comparison key (dataset,
    image size, IoU thresholds) is tagged on each version and checked by `acol.tracking.registry`.
    """
    parts = (params.tracking.registered_model, params.model.backbone, method, params.evaluate.threshold_split)
    return "-".join(parts)


def git_commit(cwd: str | Path | None = None) -> str:
    """HEAD of the repository at `cwd`, ``-dirty`` when tracked files changed; "unknown" outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def _sha256_file(path: Path, digest: Any) -> None:
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def data_version(paths: Sequence[str | os.PathLike[str]]) -> str:
    """Short sha256 of the contents of `paths` (in the given order): equal manifests give equal versions."""
    digest = hashlib.sha256()
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"data_version: manifest not found: {path}")
        file_digest = hashlib.sha256()
        _sha256_file(path, file_digest)
        digest.update(file_digest.digest())  # fixed-size per-file digests: ["ab"] and ["a", "b"] differ
    return digest.hexdigest()[:_SHORT]


def pipeline_run_id(params_file: str | os.PathLike[str] = "params.yaml") -> str:
    """``ACOL_PIPELINE_RUN`` if set, else ``<commit[:12]>-<sha256(params.yaml)[:12]>`` (one per pipeline)."""
    explicit = os.environ.get(PIPELINE_RUN_ENV, "").strip()
    if explicit:
        return explicit
    path = Path(params_file)
    digest = hashlib.sha256()
    if path.is_file():
        _sha256_file(path, digest)
    commit = git_commit(path.resolve().parent if path.is_file() else None)
    return f"{commit[:_SHORT]}-{digest.hexdigest()[:_SHORT]}"


def flatten_params(params: Params | Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys (``model.backbone``) to strings, as MLflow params want; lists become JSON."""
    raw = params.model_dump(mode="json") if isinstance(params, Params) else params
    flat: dict[str, str] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(list(value))
        else:
            flat[name] = str(value)
    return flat


def filter_literal(value: str, name: str) -> str:
    """`value` as a string literal of an MLflow filter string; ValueError naming `name` if it cannot be one.

    Why: MLflow's filter syntax has no escape character. A value is quoted with the quote kind it lacks; one
    holding both kinds, or ending in a backslash, cannot be written and is refused (instead of matching another
    run or failing deep inside MLflow).
    """
    if not value or "\n" in value or value.endswith("\\") or ("'" in value and '"' in value):
        raise ValueError(
            f"{name}={value!r} cannot be searched for in MLflow: use a value without both quote kinds, line "
            "breaks or a trailing backslash (e.g. letters, digits, '-', '_', '.')"
        )
    quote = '"' if "'" in value else "'"
    return f"{quote}{value}{quote}"


def _parent_run(experiment_id: str, pipeline_id: str) -> str:
    """The id of the pipeline's parent run, created the first time a stage asks (its start is that stage's)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PIPELINE_TAG}` = {filter_literal(pipeline_id, PIPELINE_RUN_ENV)} "
        "and tags.`acol.role` = 'pipeline'",
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"pipeline-{pipeline_id}",
        tags={PIPELINE_TAG: pipeline_id, "acol.role": "pipeline"},
    )
    return run.info.run_id


def _stage_key(run: Any) -> tuple[str, str]:
    return run.data.tags.get("acol.stage", ""), run.data.tags.get("acol.method", "")


def _close_parent(experiment_id: str, parent_id: str) -> str:
    """End the parent run at this moment: FAILED if the latest run of any stage (and method) failed.

    Why: the parent spans its children (it starts with the first stage and ends with the last one that
    finished), and a failed stage shows on the pipeline; a stage rerun that succeeds clears its failure.
    Returns the status set.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    children = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=10_000,
    )
    latest = {_stage_key(run): run.info.status for run in children}  # later starts overwrite earlier ones
    status = "FAILED" if "FAILED" in latest.values() else "FINISHED"
    if any(state == "RUNNING" for state in latest.values()):
        status = "RUNNING"  # another stage of the pipeline is still going (parallel stages)
    if status == "RUNNING":
        client.update_run(parent_id, status="RUNNING")
    else:
        client.set_terminated(parent_id, status=status)
    return status


@contextmanager
def stage_run(
    stage: str,
    params: Params,
    *,
    method: str | None = None,
    tags: Mapping[str, str] | None = None,
    data_paths: Sequence[str | os.PathLike[str]] = (),
    params_file: str | os.PathLike[str] = "params.yaml",
) -> Iterator[mlflow.ActiveRun]:
    """A child run of the pipeline's parent for one stage; failed (and re-raised) if the body raises.

    `data_paths` (the stage's input manifests) set the ``acol.data_version`` tag. System metrics (CPU, memory,
    GPU) are sampled when ``params.tracking.log_system_metrics``.
    """
    import mlflow

    experiment_id = configure(params)
    pipeline_id = pipeline_run_id(params_file)
    parent = _parent_run(experiment_id, pipeline_id)
    all_tags = {
        "acol.stage": stage,
        "acol.role": "stage",
        PIPELINE_TAG: pipeline_id,
        "acol.git_commit": git_commit(),
        CPU_ISA_ENV: os.environ.get(CPU_ISA_ENV, "native"),  # the kernels' level (acol.cpu_isa)
    }
    if method is not None:
        all_tags["acol.method"] = method
    if data_paths:
        all_tags["acol.data_version"] = data_version(data_paths)
    all_tags.update(tags or {})
    name = f"{stage}@{method}" if method else stage
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    MlflowClient().update_run(parent, status="RUNNING")  # the pipeline runs while any of its stages does
    try:
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name=name,
            parent_run_id=parent,
            tags=all_tags,
            log_system_metrics=params.tracking.log_system_metrics,
        ) as run:
            mlflow.log_params(flatten_params(params))
            log_datasets(stage, data_paths)
            yield run
    finally:
        try:
            _close_parent(experiment_id, parent)
        except MlflowException as e:  # the server went away: say so, keep the stage's own outcome
            log.warning("could not update pipeline run %s: %s", parent, e.message)


def _dataset_context(stage: str, path: Path) -> str:
    """MLflow's ``mlflow.data.context`` of a manifest: what the run did with it."""
    if stage == "prepare":
        return "output"
    if path.stem == "train":
        return "training"
    return "validation" if stage == "train" else "evaluation"


def manifest_dataset(path: str | os.PathLike[str]) -> Any:
    """A manifest as an `mlflow.data` dataset: its file as the source, `data_version` as the digest.

    Why: the UI's Dataset column then names the manifests a run used, and ``datasets.digest = '<version>'``
    finds every run on one version of the data. A metadata-only dataset: the rows stay in the Parquet file.
    """
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource  # type: ignore[attr-defined]

    path = Path(path).resolve()
    source = LocalArtifactDatasetSource(str(path))  # a local file (resolving the path is ambiguous in MLflow)
    return MetaDataset(source=source, name=path.stem, digest=data_version([path]))


def log_datasets(stage: str, paths: Sequence[str | os.PathLike[str]]) -> None:
    """Log the manifests `paths` as datasets of the active run (context from `_dataset_context`)."""
    import mlflow

    if paths:
        mlflow.log_inputs(
            datasets=[manifest_dataset(p) for p in paths],
            contexts=[_dataset_context(stage, Path(p)) for p in paths],
            tags_list=[None] * len(paths),
        )


def check_tracking_server(timeout: float = 5.0) -> str:
    """Fail fast (within about `timeout` seconds) when the tracking server cannot be reached; returns the URI.

    HTTP(S) URIs are probed once (any HTTP answer, even 401 or 404, means the server is there); a sqlite URI
    needs its folder to exist. Other schemes (databricks, ...) are left to MLflow. Messages show the URI with
    its password replaced by ``***`` (`acol.tracking.redact`).
    """
    from acol.tracking.redact import redact_text, redact_uri, strip_credentials

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        # urllib reads ``user:pass@`` as part of the host name; a 401 without them still means "reachable"
        probe = strip_credentials(uri).rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(probe, timeout=timeout):
                pass
        except urllib.error.HTTPError:
            pass  # the server answered
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise TrackingServerError(
                redact_text(
                    f"MLflow tracking server {redact_uri(uri)} is unreachable ({reason}); start it or fix "
                    "MLFLOW_TRACKING_URI (unset, it means sqlite:///mlflow.db in the working directory)",
                    uri,
                )
            ) from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.is_dir():
            raise TrackingServerError(
                redact_text(
                    f"MLflow tracking database folder {folder} does not exist (URI {redact_uri(uri)})", uri
                )
            )
    return uri
