"""Typed, validated pipeline parameters: params.yaml parses into one frozen `Params` object.

Each section belongs to one stage. Unknown keys, wrong types and impossible values stop a stage before it does
any work, with a message that names the dotted key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from acol.errors import UserError

__all__ = [
    "BACKBONES",
    "BOX_METRIC_PREFIXES",
    "METHODS",
    "SHADOW_ONLY_FIELDS",
    "TEXTURE_PATTERNS",
    "ParamsError",
    "SyntheticConfig",
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


# The synthetic generator's body textures (acol.data.synthetic), here because the config's validation counts
# them: 5 stripe patterns, each the same distribution under a horizontal flip (training flips images, so a
# pattern and its mirror image must be one class): horizontal stripes, vertical stripes, diagonal stripes
# (+-45 degrees, sign drawn per image), a checkerboard and a 45-degree checkerboard.
TEXTURE_PATTERNS: tuple[str, ...] = ("stripes-0", "stripes-90", "stripes-45", "checker", "checker-45")
_TEXTURE_PATTERNS = len(TEXTURE_PATTERNS)
# SyntheticConfig fields of the shadow_ilsvrc layout only (the toy layout takes none of them)
SHADOW_ONLY_FIELDS: tuple[str, ...] = (
    "shadow_metadata",
    "num_val_images",
    "shadow_classes",
    "shadow_fullsup_metadata",
)
# What `model.backbone` and `methods` accept: literals, so that validating params imports no model code (and
# every stage's DVC deps stay free of acol/models); tests/test_config.py checks they equal acol.models' table.
BACKBONES: tuple[str, ...] = ("googlenet", "inception_v3", "resnet50", "small", "vgg16")
METHODS: tuple[str, ...] = ("acol", "cam", "acol_a", "has", "cutmix", "adl", "spg")
# the evaluate stage's metrics that need GT boxes (a mask-only dataset, OpenImages, has none of them)
BOX_METRIC_PREFIXES: tuple[str, ...] = ("maxboxacc", "gt_known_loc", "top1_loc", "top5_loc", "best_threshold")


class ParamsError(UserError, ValueError):
    """params.yaml (or an override) is invalid; the message names the key and the allowed values."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(BaseModel):
    """Everything that determines the dataset; the same config gives byte-identical files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # "toy" (default): the small square dataset below. "shadow_ilsvrc": the real ILSVRC val set's shape, the
    # image sizes, boxes and labels of `shadow_metadata` (a WSOL metadata folder such as ILSVRC/test), 1,000
    # classes; see acol/data/shadow_ilsvrc.py and docs/synthetic.md.
    layout: Literal["toy", "shadow_ilsvrc"] = "toy"
    shadow_metadata: str | None = None  # shadow_ilsvrc: the WSOL metadata folder (image_ids.txt, ...)
    num_val_images: int | None = Field(None, ge=1)  # shadow_ilsvrc: only the first N val images; None = all
    # shadow_ilsvrc: keep only classes 0..N-1 (wnids, train and val of those; val capped at val_per_class per
    # class); None = all 1,000 (val_per_class not applied: the real val set has 50 per class).
    shadow_classes: int | None = Field(None, ge=2, le=1000)
    # shadow_ilsvrc: a WSOL metadata folder of ImageNetV2 "train-fullsup" (ILSVRC/val); when set, the first
    # holdout_per_class of its images per kept class are drawn at their ids (val2/<class>/<n>.jpeg) and a
    # metadata folder of them is written (acol.data.shadow_ilsvrc.FULLSUP_METADATA).
    shadow_fullsup_metadata: str | None = None
    num_classes: int = Field(10, ge=2, le=1000)  # toy: <= 36, even pairs every class; shadow_ilsvrc: 1000
    train_per_class: int = Field(125, ge=0)  # trains both methods in a few minutes on 2 CPU cores
    val_per_class: int = Field(50, ge=1)  # evaluation split (boxes + masks)
    holdout_per_class: int = Field(10, ge=0)  # Choe's "train-fullsup": threshold/HP selection; 0 = skip
    image_size: int = Field(64, ge=32, le=512)  # square images; 64 px = 16x16 maps for the stride-4 backbone
    seed: int = Field(0, ge=0)
    # Objects per image: probabilities of 1, 2, 3 same-class objects (real ILSVRC val: 77% / 12% / 4% ...,
    # mean 1.6). Capped at 3: a 64 px image holds few objects whose part survives erasing, and placements that
    # do not fit are dropped, so realized counts are lower (about 87% / 13% / 0.3%, see docs/synthetic.md).
    object_count_probs: tuple[float, ...] = (0.8, 0.14, 0.06)
    # Body ellipse semi-axes as fractions of the image side for a single object (several objects are scaled by
    # `multi_object_scale`): long axis 0.26-0.40 gives boxes of ~15-45% of the image (real val median 21%).
    body_long_range: tuple[float, float] = (0.26, 0.40)
    body_short_range: tuple[float, float] = (0.16, 0.26)
    multi_object_scale: float = Field(0.6, gt=0.0, le=1.0)
    # Part side as a fraction of the image side (0.22 = 14 px at 64 px, 3.5 feature cells at stride 4): large
    # enough that erasing the top cells of A's map removes it rather than leaking it into neighbouring cells,
    # small enough (about 10-20% of the box) that a box around the part alone has IoU < 0.5.
    part_size: float = Field(0.22, gt=0.0, lt=0.5)
    # "texture" (default): every body has ONE neutral colour (hue/saturation/value below, the same for all
    # classes) and a class-specific texture: one of 5 flip-invariant stripe patterns x one of
    # `texture_periods_px` (10 classes = 5 x 2). The part is the easy cue; the body's cue is hard but fully
    # class-specific (what branch B must learn once the part is erased; see docs/synthetic.md).
    # "pair": body hue shared by classes 2p, 2p+1 with random-orientation stripes (the body narrows 10 classes
    # to 2); "class": one body hue per class (the body alone suffices: a control where CAM has every reason
    # to use it).
    body_mode: Literal["texture", "pair", "class"] = "texture"
    body_saturation: int = Field(110, ge=0, le=255)  # pair/class: muted next to the parts (255)
    stripe_period_px: int = Field(6, ge=2)  # pair/class body texture (value stripes, random orientation)
    stripe_contrast: int = Field(40, ge=0, le=120)  # pair/class: peak-to-peak value; 0 disables the stripes
    # texture mode: the shared body colour (OpenCV HSV, hue in [0, 180)): a muted brown, no class hue.
    texture_body_hsv: tuple[int, int, int] = (15, 70, 140)
    texture_periods_px: tuple[float, ...] = (4.0, 8.0)  # > 8/7 apart: training upscales images by 8/7
    texture_contrast: int = Field(60, ge=0, le=120)  # texture mode: peak-to-peak value of the pattern
    clutter_count: tuple[int, int] = (2, 6)  # grey (saturation 0) rectangles/ellipses: no class signal
    noise_std: float = Field(6.0, ge=0.0)  # per-pixel Gaussian noise, so no region is a flat colour
    object_gap_px: int = Field(2, ge=0)  # minimum gap between the boxes of two objects of one image
    jpeg_quality: int = Field(95, ge=50, le=100)

    @model_validator(mode="after")
    def _check(self) -> SyntheticConfig:
        if self.layout == "shadow_ilsvrc":
            if self.num_classes != 1000 or self.shadow_metadata is None:
                raise ValueError(
                    "layout='shadow_ilsvrc' needs num_classes=1000 and shadow_metadata (a folder)"
                )
            if self.shadow_fullsup_metadata is not None and self.holdout_per_class < 1:
                raise ValueError(
                    "shadow_fullsup_metadata needs holdout_per_class >= 1 (fullsup images per class)"
                )
            return self
        if self.num_classes > 36 or any(getattr(self, name) is not None for name in SHADOW_ONLY_FIELDS):
            raise ValueError(
                f"layout='toy' takes num_classes <= 36 and none of {', '.join(SHADOW_ONLY_FIELDS)}"
            )
        if self.train_per_class < 1:
            raise ValueError("layout='toy' needs train_per_class >= 1 (0 is for shadow_ilsvrc val-only runs)")
        probs = self.object_count_probs
        if not probs or any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError(f"object_count_probs must be non-negative and sum to 1, got {probs}")
        for name in ("body_long_range", "body_short_range"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high < 0.5:
                raise ValueError(f"{name} must satisfy 0 < low <= high < 0.5, got {(low, high)}")
        if self.body_mode == "texture":
            periods = self.texture_periods_px
            if not periods or any(p < 2 for p in periods):
                raise ValueError(f"texture_periods_px must be non-empty, each >= 2 px, got {periods}")
            if self.num_classes > _TEXTURE_PATTERNS * len(periods):
                raise ValueError(
                    f"body_mode='texture' gives {_TEXTURE_PATTERNS} patterns x {len(periods)} periods = "
                    f"{_TEXTURE_PATTERNS * len(periods)} distinct textures < num_classes={self.num_classes}; "
                    "add texture_periods_px"
                )
            hue, sat, val = self.texture_body_hsv
            if not (0 <= hue < 180 and 0 <= sat <= 255 and 0 <= val <= 255):
                raise ValueError(
                    f"texture_body_hsv must be (hue < 180, sat, val <= 255), got {(hue, sat, val)}"
                )
        if self.clutter_count[0] < 0 or self.clutter_count[0] > self.clutter_count[1]:
            raise ValueError(f"clutter_count must be 0 <= low <= high, got {self.clutter_count}")
        return self


class DataParams(_Section):
    source: Literal["synthetic", "ilsvrc", "cub", "openimages"] = "synthetic"
    root: str = "data/synthetic"  # dataset root; generated here when source is synthetic
    # openimages: wsolevaluation's metadata/OpenImages folder (train/, val/, test/); train trains, test is
    # evaluated (PxAP on its instance and ignore masks, no boxes), val is train-fullsup (fullsup_metadata)
    metadata: str | None = None
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

    @model_validator(mode="after")
    def _metadata_for_openimages(self) -> DataParams:
        if (self.source == "openimages") != (self.metadata is not None):
            raise ValueError(
                "data.metadata is the OpenImages metadata folder: set it with source openimages only"
            )
        return self


class ModelParams(_Section):
    backbone: str = "small"  # small | vgg16 | resnet50 | inception_v3 | googlenet (docs/models.md)
    head_channels: int = Field(1024, ge=1)  # width of the 3x3 convs in each head (paper: 1024)
    erase_threshold: float = Field(0.6, gt=0.0, le=1.0)  # ACoL: erase where A's normalized map >= this
    large_feature_map: bool | None = None  # 28x28 (True) or 14x14 at 224; None: the architecture's default
    # ADL and SPG (the defaults of Choe et al.'s config.py; acol/models/spec.py has them too, a test keeps
    # them equal): ADL's drop-mask probability and threshold (x the attention's maximum)
    adl_drop_rate: float = Field(0.75, ge=0.0, le=1.0)
    adl_threshold: float = Field(0.9, ge=0.0, le=1.0)
    # SPG's (high, low) seed thresholds: B2 from the class map (1), B1 from B2 (2), C from B1 and B2 (3)
    spg_threshold_1h: float = Field(0.7, ge=0.0, le=1.0)
    spg_threshold_1l: float = Field(0.01, ge=0.0, le=1.0)
    spg_threshold_2h: float = Field(0.5, ge=0.0, le=1.0)
    spg_threshold_2l: float = Field(0.05, ge=0.0, le=1.0)
    spg_threshold_3h: float = Field(0.7, ge=0.0, le=1.0)
    spg_threshold_3l: float = Field(0.1, ge=0.0, le=1.0)
    backbone_weights: str | None = (
        None  # local torchvision state dict (e.g. ImageNet VGG16), never downloaded
    )

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if value not in BACKBONES:
            raise ValueError(f"unknown backbone; allowed: {sorted(BACKBONES)}")
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
    # HaS (method has): hide each grid_size x grid_size pixel patch of a training image (fill 0, the normalized
    # mean) with probability drop_rate; 0 hides nothing. Defaults: Choe et al. config.py (--has_grid_size,
    # --has_drop_rate), whose wsol/method/has.py takes grid_size as the patch side in pixels.
    has_grid_size: int = Field(4, ge=0)
    has_drop_rate: float = Field(0.5, ge=0.0, le=1.0)
    # CutMix (method cutmix): mix a batch with probability cutmix_prob, lam ~ Beta(cutmix_beta, cutmix_beta);
    # beta 0 mixes nothing. Defaults: Choe et al. config.py (--cutmix_beta, --cutmix_prob).
    cutmix_beta: float = Field(1.0, ge=0.0)
    cutmix_prob: float = Field(1.0, ge=0.0, le=1.0)


class ExtractParams(_Section):
    batch_size: int = Field(64, ge=1)
    num_actors: int = Field(1, ge=1)  # inference actors in the Ray Data pool
    use_gpu: bool = False
    # CPUs Ray reserves per inference actor (its torch threads: the value rounded up) and per decode actor.
    # Decode actors feed GPU runs only (on one machine, cpus_per_actor + decode_cpus <= its CPUs keeps both
    # running at once); on CPU runs the inference actors decode their own batches on their threads.
    cpus_per_actor: float = Field(1.5, gt=0.0)
    decode_cpus: float = Field(0.5, gt=0.0)
    decode_actors: int = Field(
        1, ge=1
    )  # most JPEG-decode actors on GPU runs (Ray Data scales the pool from 1 up to this)
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
        if not value or len(set(value)) != len(value) or not set(value) <= set(METHODS):
            raise ValueError(f"a non-empty list of distinct methods; allowed: {list(METHODS)}")
        return value

    @model_validator(mode="after")
    def _champion_measured(self) -> Params:
        """OpenImages has masks and no boxes: a box metric as the champion metric would never be measured."""
        metric = self.evaluate.champion_metric
        if self.data.source == "openimages" and metric.startswith(BOX_METRIC_PREFIXES):
            raise ValueError(
                f"evaluate.champion_metric {metric!r} is a box metric, which OpenImages (masks, no boxes) does not "
                "measure: use pxap"
            )
        return self


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
                    "metadata": _absolute(data.metadata, base),
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
