"""Params presets, one per published result: each is a set of params overrides for this project's DVC pipeline.

Run one with ``dvc exp run -n NAME $(python -m acol.presets NAME)``: the command prints the ``-S key=value``
arguments of the preset, so DVC records every value in the experiment as usual. ``python -m acol.presets``
lists them; ``python -m acol.presets NAME --describe`` shows its row, recipe source, note and published
numbers (`acol.published`). Each preset cites where its recipe comes from; where the source leaves a value
open, the value is the source code's default and the preset's note says so. docs/models.md gives the
architectures. `match_presets` finds the preset a run's params reproduce, so the report can show the run's
numbers beside the published ones.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from acol.config import Params
from acol.published import CHOE_METHODS, NOT_CONFIRMED, PresetMatch, Published, for_preset, in_metric

__all__ = [
    "IDENTITY_KEYS",
    "CHOE_NAMES",
    "PRESETS",
    "Preset",
    "describe",
    "dvc_set_args",
    "match_presets",
    "preset_overrides",
]

_ACOL_CODE = "xiaomengyc/ACoL scripts/train_vgg_{dataset}.sh, exper/my_optim.py, utils/LoadData.py"
_CHOE_CODE = "clovaai/wsolevaluation config.py defaults and README example, data_loaders.py"

_ILSVRC = {
    "data.source": "ilsvrc",
    "data.root": "data/ILSVRC/Data/CLS-LOC",
    "data.synsets": "../../../LOC_synset_mapping.txt",
    "data.val_solution": "../../../LOC_val_solution.csv",
    "data.mask_dir": None,
    "tracking.registered_model": "wsol-ilsvrc",
}
_CUB = {
    "data.source": "cub",
    "data.root": "data/CUB_200_2011",
    "data.mask_dir": None,
    "tracking.registered_model": "wsol-cub",
}
# OpenImages30k: masks and no boxes, so PxAP is the metric the champion is chosen by
_OPENIMAGES = {
    "data.source": "openimages",
    "data.root": "data/OpenImages",
    "data.metadata": "data/wsol-metadata/OpenImages",
    "data.mask_dir": None,
    "evaluate.champion_metric": "pxap",
    "tracking.registered_model": "wsol-openimages",
}
_GPU_224 = {
    "train.image_size": 224,
    "train.use_gpu": True,
    "extract.use_gpu": True,
    "evaluate.interval": 0.001,  # Choe et al.'s cam_curve_interval
    "model.head_channels": 1024,
}
# The official ACoL recipe: SGD with Nesterov momentum 0.9, weight decay 5e-4, lr 1e-4 for the trunk,
# 2x for biases, 10x (20x for biases) for the classifiers, batch 20, no lr decay, resize 256 + crop 224 + flip.
_ACOL_RECIPE = {
    "model.erase_threshold": 0.6,
    "train.optimizer": "sgd",
    "train.lr": 0.0001,
    "train.head_lr_mult": 10.0,
    "train.bias_lr_mult": 2.0,
    "train.momentum": 0.9,
    "train.nesterov": True,
    "train.weight_decay": 0.0005,
    "train.batch_size": 20,
    "train.lr_schedule": "constant",
    "train.transform": "acol",
}
# Choe et al.: SGD momentum 0.9, classifier 10x, step decay x0.1, resize 256x256 + crop 224 + flip, test
# resize 224x224. lr, epochs, decay frequency and the method's hyperparameters were tuned per run on
# train-fullsup (their README links the table); the values here are their config.py defaults and README
# example (batch 32, weight decay 5e-4, decay every 3 epochs, 10 epochs), to be replaced by the tuned ones.
_CHOE_RECIPE = {
    "train.optimizer": "sgd",
    "train.lr": 0.01,
    "train.head_lr_mult": 10.0,
    "train.bias_lr_mult": 1.0,
    "train.momentum": 0.9,
    "train.nesterov": False,
    "train.weight_decay": 0.0005,
    "train.batch_size": 32,
    "train.lr_schedule": "step",
    "train.lr_decay_epochs": 3,
    "train.lr_decay_factor": 0.1,
    "train.transform": "choe",
}
# torchvision ImageNet state dicts, saved by the user (nothing is downloaded): `torch.save(model.state_dict())`
_TORCHVISION_WEIGHTS = {
    "vgg16": "weights/vgg16-397923af.pth",  # the file the official ACoL scripts restore from
    "googlenet": "weights/googlenet-imagenet.pth",
    "resnet50": "weights/resnet50-imagenet.pth",
    "inception_v3": "weights/inception_v3-imagenet.pth",
}


@dataclass(frozen=True)
class Preset:
    """A published row: what it reproduces, its recipe's source, and the params overrides."""

    row: str  # the published row, e.g. "VGG16-ACoL, ILSVRC"
    source: str  # where the architecture and recipe come from
    overrides: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def _acol_paper(backbone: str, dataset: str) -> Preset:
    data, epochs = (_ILSVRC, 6) if dataset == "ilsvrc" else (_CUB, 60)
    note = "" if backbone == "vgg16" else "the official code has no GoogLeNet script: VGG16's recipe is used"
    overrides = {
        "methods": ["acol"],  # the published row's method; the pipeline runs the methods listed
        **data,
        **_GPU_224,
        **_ACOL_RECIPE,
        "model.backbone": backbone,
        "model.large_feature_map": None,
        "model.backbone_weights": _TORCHVISION_WEIGHTS[backbone],
        "train.epochs": epochs,
    }
    return Preset(
        f"{backbone}-ACoL, {dataset.upper()} (Zhang et al. 2018)",
        _ACOL_CODE.format(dataset="imagenet" if dataset == "ilsvrc" else "cub"),
        overrides,
        note,
    )


_FULLSUP = {"ilsvrc": "ILSVRC", "cub": "CUB", "openimages": "OpenImages"}  # Choe et al.'s metadata folders
_CHOE_DATA = {"ilsvrc": _ILSVRC, "cub": _CUB, "openimages": _OPENIMAGES}


def _choe(backbone: str, method: str, dataset: str) -> Preset:
    erase = {"model.erase_threshold": 0.7} if method == "acol" else {}  # config.py default acol_threshold
    overrides = {
        "methods": [method],
        **_CHOE_DATA[dataset],
        # the CAM threshold is chosen on train-fullsup (ImageNetV2 / CUBV2 / OpenImages val), whose WSOL
        # metadata ships in tests/assets/wsol-metadata.tar.xz (extract it into data/wsol-metadata)
        "data.fullsup_metadata": f"data/wsol-metadata/{_FULLSUP[dataset]}/val",
        "evaluate.threshold_split": "fullsup",
        **_GPU_224,
        **_CHOE_RECIPE,
        "model.backbone": backbone,
        "model.large_feature_map": False,  # config.py default
        "model.backbone_weights": _TORCHVISION_WEIGHTS[backbone],
        **erase,
        "train.epochs": 10,
    }
    metric = "PxAP" if dataset == "openimages" else "MaxBoxAccV2"
    return Preset(
        f"{backbone} {CHOE_NAMES[method]}, {dataset.upper()} (Choe et al. 2020, {metric})",
        _CHOE_CODE,
        overrides,
        "lr, epochs and method hyperparameters: the code defaults, not the per-run tuned values",
    )


# this project's method names as Choe et al. print them (acol.published.CHOE_METHODS turned around)
CHOE_NAMES: dict[str, str] = {ours: theirs for theirs, ours in CHOE_METHODS.items()}

PRESETS: dict[str, Preset] = {
    **{f"acol-paper-{b}-{d}": _acol_paper(b, d) for b in ("vgg16", "googlenet") for d in ("ilsvrc", "cub")},
    # every cell of Choe et al.'s main table: 6 methods x 3 backbones x 3 datasets
    **{
        f"choe-{b}-{m}-{d}": _choe(b, m, d)
        for b in ("vgg16", "resnet50", "inception_v3")
        for m in CHOE_NAMES
        for d in ("ilsvrc", "cub", "openimages")
    },
}


def preset_overrides(name: str) -> dict[str, Any]:
    """The dotted-key overrides of preset `name`; an unknown name lists the presets."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dict(PRESETS[name].overrides)


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_yaml_scalar(v) for v in value) + "]"  # a YAML flow list, no whitespace
    return str(value)


def dvc_set_args(name: str) -> list[str]:
    """``-S key=value`` arguments of `dvc exp run` for preset `name` (no value holds whitespace, so the
    shell's word splitting of ``$(python -m acol.presets NAME)`` keeps each argument whole)."""
    args: list[str] = []
    for key, value in preset_overrides(name).items():
        text = f"{key}={_yaml_scalar(value)}"
        if any(c.isspace() for c in text):
            raise ValueError(f"preset {name}: {text!r} holds whitespace")
        args += ["-S", text]
    return args


# --------------------------------------------------------------------------- a run's params vs the presets

# What identifies a preset's published row: the dataset, the architecture, the method, the threshold protocol
# and the input size. A run that agrees on these is compared with the row's published numbers; amounts
# (epochs, classes, images) and every other key are not compared, only listed when they differ.
IDENTITY_KEYS = ("data.source", "model.backbone", "methods", "evaluate.threshold_split", "train.image_size")
# Where files lie and which hardware runs: not part of a recipe (paths are absolute in a stage's params).
_NOT_RECIPE = {
    *("data.root", "data.synsets", "data.val_solution", "data.mask_dir", "data.fullsup_metadata"),
    *("model.backbone_weights", "tracking.registered_model", "train.use_gpu", "extract.use_gpu"),
}


def _get(params: Params, key: str) -> Any:
    node: Any = params
    for part in key.split("."):
        node = getattr(node, part)
    return list(node) if isinstance(node, tuple) else node


def _identity(name: str) -> dict[str, Any]:
    """The preset's identity values; a key it leaves alone has the params default it runs with (a test
    checks params.yaml keeps those defaults)."""
    overrides = PRESETS[name].overrides
    return {k: overrides[k] if k in overrides else _get(Params(), k) for k in IDENTITY_KEYS}


def _differs(params: Params, name: str) -> tuple[str, ...]:
    """Recipe keys of the preset the run sets otherwise, as ``"train.epochs 2 (preset 6)"``."""
    keys = set(PRESETS[name].overrides) - set(IDENTITY_KEYS) - _NOT_RECIPE
    return tuple(
        f"{k} {_yaml_scalar(_get(params, k))} (preset {_yaml_scalar(PRESETS[name].overrides[k])})"
        for k in PRESETS[name].overrides
        if k in keys and _get(params, k) != PRESETS[name].overrides[k]
    )


def match_presets(params: Params) -> tuple[PresetMatch, ...]:
    """One match per method of the run whose params agree with a preset on `IDENTITY_KEYS` (the preset's
    one method among the run's methods); no two presets share an identity (a test checks)."""
    matches = []
    for method in params.methods:
        run = {k: [method] if k == "methods" else _get(params, k) for k in IDENTITY_KEYS}
        for name in PRESETS:
            if _identity(name) == run:
                matches.append(PresetMatch(method, name, _differs(params, name)))
    return tuple(matches)


def describe(name: str) -> str:
    """Preset `name` for a reader: its row, recipe source, note, identity and published numbers."""
    preset_overrides(name)  # an unknown name lists the presets
    preset, numbers = PRESETS[name], for_preset(name)
    lines = [name, f"  row: {preset.row}", f"  recipe source: {preset.source}"]
    lines += [f"  note: {preset.note}"] if preset.note else []
    lines.append("  identity: " + " ".join(f"{k}={_yaml_scalar(v)}" for k, v in _identity(name).items()))
    if not numbers:
        lines.append(f"  published: {NOT_CONFIRMED}")
    else:
        lines.append("  published (the figure in this project's metric, then as the source printed it):")
    lines += [line for p in numbers for line in _published_lines(p)]
    return "\n".join(lines)


def _published_lines(p: Published) -> list[str]:
    """One published entry: the figure, as printed, its status and source; then its note."""
    if p.printed is None:
        head = f"    {p.metric}: {NOT_CONFIRMED}"
    else:
        where = f"{p.paper}: {p.where}" + (f" <{p.source}>" if p.source else "")
        head = f"    {p.metric} {in_metric(p)} (printed: {p.as_printed()}) [{p.status}] {where}"
    return [head, f"      note: {p.note}"] if p.note else [head]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print a preset's `dvc exp run` arguments, or list presets.")
    parser.add_argument("name", nargs="?", help="preset name (omit to list them)")
    parser.add_argument(
        "--describe", action="store_true", help="the preset's row, source and published numbers"
    )
    args = parser.parse_args(argv)
    if args.name is None:
        for name, preset in PRESETS.items():
            print(f"{name:34s} {preset.row}")
        return 0
    try:
        print(describe(args.name) if args.describe else " ".join(dvc_set_args(args.name)))
    except KeyError as error:
        parser.exit(2, f"error: {error.args[0]}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
