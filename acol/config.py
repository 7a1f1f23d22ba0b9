"""Typed, validated pipeline parameters: params.yaml parses into one frozen `Params` object.

Each section belongs to one stage. Unknown keys, wrong types and impossible values stop a stage before it does
any work, with a message that names the dotted key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from acol.data.synthetic import SyntheticConfig

__all__ = [
    "ParamsError",
    "DataParams",
    "ModelParams",
    "TrainParams",
    "ExtractParams",
    "EvaluateParams",
    "TrackingParams",
    "ReevaluateParams",
    "RayParams",
    "Params",
    "load_params",
    "apply_overrides",
    "resolve_paths",
]


class ParamsError(ValueError):
    """params.yaml (or an override) is invalid; the message names the key and the allowed values."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    source: Literal["synthetic", "ilsvrc", "cub"] = "synthetic"
    root: str = "data/synthetic"  # dataset root; generated here when source is synthetic
    synthetic: SyntheticConfig = SyntheticConfig()  # the generator's own validated config
    synsets: str = "LOC_synset_mapping.txt"  # ILSVRC: relative to root
    val_solution: str | None = "LOC_val_solution.csv"  # ILSVRC val boxes: this CSV ...
    val_xml_dir: str | None = None  # ... or a folder of per-image VOC XML files (relative to root)
    mask_dir: str | None = None  # optional foreground masks <mask_dir>/<image id stem>.png for PxAP
    # train-fullsup split (Choe et al. 2020): a WSOL metadata folder (image_ids.txt, class_labels.txt,
    # image_sizes.txt, localization.txt) whose image ids are relative to root, e.g. ImageNetV2's val2/...
    fullsup_metadata: str | None = None
    verify_images: bool = True  # decode every image while indexing, recording the ones that fail
    strict: bool = False  # any bad entry stops prepare instead of being recorded and skipped


class ModelParams(_Section):
    backbone: str = "small"  # small | vgg16 | resnet50 | inception_v3 | googlenet (docs/models.md)
    head_channels: int = Field(1024, ge=1)  # width of the 3x3 convs in each head (paper: 1024)
    erase_threshold: float = Field(0.6, gt=0.0, le=1.0)  # ACoL: erase where A's normalized map >= this
    large_feature_map: bool | None = None  # 28x28 (True) or 14x14 at 224; None: the architecture's default
    backbone_weights: str | None = (
        None  # local torchvision state dict (e.g. ImageNet VGG16), never downloaded
    )

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        from acol.models import list_backbones

        if value not in list_backbones():
            raise ValueError(f"unknown backbone; allowed: {list_backbones()}")
        return value


class TrainParams(_Section):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)  # global batch, split over the workers
    lr: float = Field(0.01, gt=0.0)  # backbone learning rate
    head_lr_mult: float = Field(10.0, gt=0.0)  # heads learn this many times faster (paper: 10)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    nesterov: bool = False  # SGD with Nesterov momentum (the official ACoL code)
    bias_lr_mult: float = Field(1.0, gt=0.0)  # biases learn this many times faster (official ACoL code: 2)
    # cosine: to zero over all epochs; step: x lr_decay_factor every lr_decay_epochs (Choe et al.); constant
    lr_schedule: Literal["cosine", "step", "constant"] = "cosine"
    lr_decay_epochs: int = Field(3, ge=1)
    lr_decay_factor: float = Field(0.1, gt=0.0, le=1.0)
    image_size: int = Field(64, ge=32)  # training crop size
    transform: Literal["acol", "choe"] = "acol"  # training augmentation protocol (acol.data.transforms)
    num_workers: int = Field(1, ge=1)  # Ray Train workers
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    loader_workers: int = Field(0, ge=0)  # DataLoader processes per Ray worker
    # training input: "loader" decodes in each Ray Train worker (DataLoader); "ray_data" streams decoded,
    # augmented images from Ray Data tasks, which may run on CPU-only nodes (acol.distributed.ingest)
    input: Literal["loader", "ray_data"] = "loader"
    amp: bool = False  # bf16 autocast on GPUs
    # true: cuDNN's deterministic kernels, no autotuning (for repeatable GPU runs and resumes); false:
    # `cudnn.benchmark` picks the fastest kernels per shape. No effect on the CPU (no cuDNN there).
    deterministic: bool = False
    max_failures: int = Field(2, ge=-1)  # Ray Train FailureConfig: restarts from the last checkpoint
    checkpoints_to_keep: int = Field(2, ge=1)
    storage_path: str = "outputs/ray"  # where Ray Train keeps checkpoints: every node must see it
    seed: int = 0


class ExtractParams(_Section):
    batch_size: int = Field(64, ge=1)
    num_actors: int = Field(1, ge=1)  # inference actors in the Ray Data pool
    use_gpu: bool = False
    # CPUs Ray reserves per inference actor (its torch threads: the value rounded up) and per decode actor.
    # On one machine, cpus_per_actor + decode_cpus <= the machine's CPUs keeps both stages running at once.
    cpus_per_actor: float = Field(1.5, gt=0.0)
    decode_cpus: float = Field(0.5, gt=0.0)
    decode_actors: int = Field(
        1, ge=1
    )  # most JPEG-decode actors (Ray Data scales the pool from 1 up to this)
    # decoded batches Ray Data may hold ahead of inference (its object-store budget for the run): unbounded,
    # decode ran 5,900 images ahead at 224 on 2 cores, on the core inference's threads needed
    buffer_batches: int = Field(8, ge=1)
    box_threshold: float = Field(0.2, ge=0.0, lt=1.0)  # CAM threshold for the boxes written with the maps
    rows_per_file: int = Field(2048, ge=1)
    # batches the driver predicts itself while Ray starts (CPU runs only): the first maps come in seconds,
    # not after Ray's start-up; Ray computes the rest
    driver_batches: int = Field(1, ge=0)
    # bf16 autocast for the forward (GPUs: Ampere or newer); the maps differ from float32's in the last bits
    amp: bool = False
    # channels-last images and weights (faster convolutions with GPU tensor cores); float32 maps up to rounding
    channels_last: bool = False


class EvaluateParams(_Section):
    interval: float = Field(0.01, gt=0.0, lt=1.0)  # threshold grid step (0.001 for the full protocol)
    iou_thresholds: tuple[int, ...] = (30, 50, 70)
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # val images used to pick the threshold
    # where the classic metrics' CAM threshold is chosen: a held-out part of val, or the train-fullsup split
    # (data.fullsup_metadata) as Choe et al. 2020 do
    threshold_split: Literal["holdout", "fullsup"] = "holdout"
    champion_metric: str = "maxboxacc_v2"

    @field_validator("iou_thresholds")
    @classmethod
    def _iou_in_range(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(not 0 < v <= 100 for v in value):
            raise ValueError("each IoU threshold must be a percentage in (0, 100]")
        return value


class TrackingParams(_Section):
    experiment: str = "acol"
    registered_model: str = "wsol-synthetic"
    log_system_metrics: bool = True


class ReevaluateParams(_Section):
    alias: str = "champion"
    tolerance: float = Field(1.0, ge=0.0)  # allowed drop, in metric points, before the job fails


class RayParams(_Section):
    """Where train, extract and re-evaluation run Ray (`acol.distributed.session.ensure_ray`)."""

    # false: RAY_ADDRESS's cluster when set, else a private local Ray, whatever `ray start` recorded on this
    # machine; true: join the local cluster `ray start` recorded (RAY_ADDRESS still wins).
    join_local: bool = False
    # false: a stage whose workers or actors no live node can hold fails at once, naming the params; true (a
    # cluster whose autoscaler adds nodes, e.g. KubeRay with in-tree autoscaling): it warns and waits for one.
    autoscaling: bool = False


class Params(_Section):
    # the methods the pipeline trains, extracts and evaluates (dvc.yaml's foreach), and the metrics and the
    # report show; a preset runs its own method
    methods: tuple[str, ...] = ("acol", "cam")
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    extract: ExtractParams = ExtractParams()
    evaluate: EvaluateParams = EvaluateParams()
    tracking: TrackingParams = TrackingParams()
    reevaluate: ReevaluateParams = ReevaluateParams()
    ray: RayParams = RayParams()

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from acol.models import METHODS

        if not value or len(set(value)) != len(value) or not set(value) <= set(METHODS):
            raise ValueError(f"a non-empty list of distinct methods; allowed: {list(METHODS)}")
        return value


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the section at `loc` (a path of field names from `Params`) accepts, for "unknown key" errors."""
    model: Any = Params
    for part in loc:
        field = model.model_fields.get(part) if isinstance(model, type) else None
        model = field.annotation if field else None
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid parameters in {source}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(item["loc"][:-1])
            message = f"unknown key; allowed: {', '.join(allowed)}" if allowed else "unknown key"
        lines.append(f"  {key}: {message} (got {item.get('input')!r})")
    return "\n".join(lines)


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides (values parsed as YAML) to a raw params dict."""
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ParamsError(f"override {override!r} is not of the form section.key=value")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(f"override {override!r}: {part!r} is not a section")
        node[parts[-1]] = _parse_value(value)
    return raw


def _absolute(value: str | None, base: Path) -> str | None:
    """`value` made absolute against `base`; None, empty and URIs (``s3://...``) as they are."""
    if not value or "://" in value:
        return value
    return str((base / Path(value).expanduser()).resolve())


def resolve_paths(params: Params, base: str | Path) -> Params:
    """`params` with every path that names a local file or folder made absolute against `base`.

    Why: Ray Train workers and Ray jobs run in other working directories, so a relative path that the driver
    checked (``weights/vgg16.pth``) names nothing there. The paths under ``data.root`` (``data.synsets``,
    ``data.val_solution``, ``data.val_xml_dir``, ``data.mask_dir``) stay relative to the root, as documented.
    """
    base = Path(base)
    data, model, train = params.data, params.model, params.train
    return params.model_copy(
        update={
            "data": data.model_copy(
                update={
                    "root": _absolute(data.root, base),
                    "fullsup_metadata": _absolute(data.fullsup_metadata, base),
                }
            ),
            "model": model.model_copy(update={"backbone_weights": _absolute(model.backbone_weights, base)}),
            "train": train.model_copy(update={"storage_path": _absolute(train.storage_path, base)}),
        }
    )


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read, override and validate params.yaml; a missing file means all defaults."""
    path = Path(path)
    raw: dict[str, Any] = {}
    if path.exists():
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(_describe(error, str(path))) from None
