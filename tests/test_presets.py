"""Every published-row preset validates against params.yaml, and its first training step runs on the CPU."""

from __future__ import annotations

import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import torch
import yaml

from acol import presets
from acol.config import Params, apply_overrides
from acol.models import ModelSpec, build_model
from acol.presets import IDENTITY_KEYS, PRESETS, describe, dvc_set_args, main, match_presets, preset_overrides
from acol.published import (
    CHOE_ACOL,
    CHOE_COLUMNS,
    CHOE_GRID,
    CHOE_METHODS,
    NUMBERS,
    PresetMatch,
    for_preset,
    in_metric,
    markdown_tables,
)
from acol.training.engine import build_optimizer, build_scheduler

ROOT = Path(__file__).resolve().parents[1]


def _preset_params(name: str) -> Params:
    """params.yaml with the preset's `-S` arguments applied, exactly as `dvc exp run -S` would."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    settings = dvc_set_args(name)[1::2]
    assert dvc_set_args(name)[0::2] == ["-S"] * len(settings)
    return Params.model_validate(apply_overrides(raw, settings))


def _method(name: str) -> str:
    """The method a preset's name says: ``choe-<backbone>-<method>-<dataset>``; the ACoL paper's are ACoL."""
    return name.split("-")[2] if name.startswith("choe-") else "acol"


_CLASSES = {"ilsvrc": 1000, "cub": 200, "openimages": 100}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_validates_with_every_override(name: str) -> None:
    params = _preset_params(name)
    for key, value in preset_overrides(name).items():  # every override arrived, with its type
        node = params
        for part in key.split("."):
            node = getattr(node, part)
        assert node == (tuple(value) if isinstance(value, list) else value), key
    assert params.methods == (_method(name),)  # a preset runs its published row's method


def _one_preset_per_architecture() -> list[str]:
    """The datasets of one backbone x method share the architecture (only the class count differs)."""
    seen: dict[tuple[str, str], str] = {}
    for name in sorted(PRESETS):
        overrides = PRESETS[name].overrides
        seen.setdefault((overrides["model.backbone"], _method(name)), name)
    return sorted(seen.values())


def test_presets_cover_choes_three_backbones_for_six_methods() -> None:
    picked = {(PRESETS[n].overrides["model.backbone"], _method(n)) for n in _one_preset_per_architecture()}
    methods = ("acol", "cam", "has", "cutmix", "adl", "spg")
    assert {(b, m) for b in ("vgg16", "resnet50", "inception_v3") for m in methods} <= picked


@pytest.mark.parametrize("name", _one_preset_per_architecture())
def test_preset_first_training_step_runs(name: str) -> None:
    params = _preset_params(name)
    num_classes = _CLASSES[params.data.source]
    torch.manual_seed(0)
    # the preset's architecture, with narrower heads (128, not 1024) to keep the suite quick on 2 cores
    section = {**params.model.model_dump(), "head_channels": 128}
    model = build_model(ModelSpec.from_params(section, _method(name), num_classes))
    optimizer = build_optimizer(model, params.train)
    scheduler = build_scheduler(optimizer, params.train, steps_per_epoch=10)
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, num_classes - 1])
    before = [p.detach().clone() for p in model.head.parameters()]
    model.train()
    loss = model.loss(model(images, labels), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.head.parameters(), strict=True))


def test_recipes_follow_their_sources() -> None:
    acol = _preset_params("acol-paper-vgg16-ilsvrc").train
    # xiaomengyc/ACoL: SGD Nesterov 0.9, wd 5e-4, lr 1e-4, classifiers 10x, biases 2x, batch 20, 6 epochs
    assert (acol.optimizer, acol.nesterov, acol.momentum, acol.weight_decay) == ("sgd", True, 0.9, 0.0005)
    assert (acol.lr, acol.head_lr_mult, acol.bias_lr_mult, acol.batch_size, acol.epochs) == (
        1e-4,
        10,
        2,
        20,
        6,
    )
    assert _preset_params("acol-paper-vgg16-cub").train.epochs == 60
    choe = _preset_params("choe-resnet50-cam-cub")
    assert (choe.train.transform, choe.train.lr_schedule, choe.model.large_feature_map) == (
        "choe",
        "step",
        False,
    )


def test_cli_prints_dvc_arguments_and_rejects_unknown_names(capsys) -> None:
    assert main(["acol-paper-googlenet-ilsvrc"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == dvc_set_args("acol-paper-googlenet-ilsvrc")
    assert "model.backbone=googlenet" in printed
    result = subprocess.run(
        [sys.executable, "-m", "acol.presets", "no-such-preset"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 2 and "choe-vgg16-acol-ilsvrc" in result.stderr


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_key_is_in_params_yaml(name: str) -> None:
    """`dvc exp run -S key=value` only overrides keys params.yaml has ("Key 'fullsup_metadata' is not in
    struct" stopped every Choe preset before its first stage)."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in preset_overrides(name):
        node = raw
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{key} is not in params.yaml"
            node = node[part]


# --- published numbers (acol.published): one table, read by the README, --describe and the report ---

# the project's notes on published numbers, as shipped with the tests (a clone has no ../shared)
NOTES = ROOT / "tests" / "assets" / "published-numbers.md"


def test_choe_acol_is_cam_plus_the_printed_difference() -> None:
    cam, diff = CHOE_GRID["CAM"], CHOE_GRID["ACoL"]
    assert [str(Decimal(c) + Decimal(d)) for c, d in zip(cam, diff, strict=True)] == list(CHOE_ACOL)


def test_every_cell_of_choes_table_is_a_preset_with_its_printed_figure() -> None:
    """54 presets, one a cell; each one's figure is the cell as printed and CAM + the difference (hand sums
    of three cells below)."""
    theirs = {ours: name for name, ours in CHOE_METHODS.items()}
    cells = [p for p in NUMBERS if p.preset and p.preset.startswith("choe-")]
    assert sorted(p.preset for p in cells) == sorted(n for n in PRESETS if n.startswith("choe-"))
    assert len(cells) == 6 * 3 * 3
    for p in cells:
        _, backbone, method, dataset = p.preset.split("-")
        column = CHOE_COLUMNS.index((dataset, backbone))
        assert p.method == method and p.printed == Decimal(CHOE_GRID[theirs[method]][column]), p.preset
        cam = Decimal(CHOE_GRID["CAM"][column])
        assert p.value == (cam if method == "cam" else cam + p.printed), p.preset
        assert p.metric == ("pxap" if dataset == "openimages" else "maxboxacc_v2")
    value = {p.preset: str(p.value) for p in cells}
    assert value["choe-inception_v3-has-cub"] == "53.4"  # 56.7 - 3.3
    assert value["choe-vgg16-adl-cub"] == "66.3"  # 63.7 + 2.6
    assert value["choe-resnet50-spg-openimages"] == "56.7"  # 58.5 - 1.8


def test_errors_are_100_minus_the_printed_accuracy() -> None:
    for p in NUMBERS:
        if p.value is None or p.printed is None:
            continue
        if "accuracy" in p.measure and "error" in p.metric:
            assert p.printed + p.value == 100, p
        elif "difference" not in p.measure:
            assert p.value == p.printed, p  # printed in this project's terms already


def _choe_notes_table(text: str) -> dict[str, list[str]]:
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ")]
    grid = {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows if len(cells) == 10}
    grid.pop("method"), grid.pop("---")  # the header and its rule
    return grid


def test_every_figure_is_as_the_notes_print_it() -> None:
    text = NOTES.read_text()
    assert _choe_notes_table(text) == {m: list(v) for m, v in CHOE_GRID.items()}
    so_acol = re.search(r"So ACoL: ImageNet (.*), CUB (.*), OpenImages PxAP (.*)\.", text)
    assert so_acol and [v for g in so_acol.groups() for v in g.split(" / ")] == list(CHOE_ACOL)
    for p in NUMBERS:
        if p.paper.startswith("Choe"):
            continue  # the grid and its sums are checked above
        for figure in (p.printed, p.value):  # every figure, digit for digit, in the notes
            assert figure is None or re.search(rf"(?<![\d.+-]){re.escape(str(figure))}(?![\d])", text), p
    do_not_cite = re.search(r"^\| VGG16-ACoL, CUB GT-known \| (.*?) \|", text, re.M)
    assert do_not_cite and "do not cite" in text.split(do_not_cite.group(0))[1].splitlines()[0]
    cub_gt = [p for p in for_preset("acol-paper-vgg16-cub") if p.metric == "gt_known_loc"]
    assert [(p.value, p.printed, p.status) for p in cub_gt] == [(None, None, "not confirmed")]


def test_unconfirmed_figures_are_no_presets_number() -> None:
    for p in NUMBERS:
        if "unconfirmed" in p.status or p.status == "not confirmed":
            assert p.preset is None or (p.value, p.printed) == (None, None), p
    assert all(p.preset is None or p.preset in PRESETS for p in NUMBERS)
    for name in ("acol-paper-googlenet-ilsvrc", "acol-paper-googlenet-cub"):
        assert [p.value for p in for_preset(name)] == [None]


def test_readme_holds_the_published_tables() -> None:
    section = (ROOT / "README.md").read_text().split("## Reproducing published results")[1]
    assert markdown_tables() in section.split("### Rehearse a preset")[0]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_describe_shows_row_source_and_published_numbers(name: str, capsys) -> None:
    assert main([name, "--describe"]) == 0
    out = capsys.readouterr().out
    assert PRESETS[name].row in out and PRESETS[name].source in out and PRESETS[name].note in out
    numbers = [p for p in for_preset(name) if p.value is not None or p.printed is not None]
    for p in numbers:
        assert f"{p.metric} {in_metric(p)} (printed: {p.as_printed()}) [{p.status}]" in out
    if not numbers:
        assert "not confirmed" in out and not re.search(r"\d\.\d", out.split("published")[1])


def test_describe_of_the_abstract_number_says_whose_classifier() -> None:
    out = describe("acol-paper-vgg16-ilsvrc")
    line = next(ln for ln in out.splitlines() if "(printed: top-1 loc error 45.14)" in ln)
    note = out.splitlines()[out.splitlines().index(line) + 1]
    assert "[primary]" in line and "DPN-ensemble classifier" in note and "not this preset's own" in note


# --- a run's params vs the presets ---


def test_each_presets_params_match_that_preset_alone() -> None:
    identities = [tuple(map(str, presets._identity(n).values())) for n in PRESETS]
    assert len(set(identities)) == len(PRESETS)  # no two presets share an identity
    for name in PRESETS:
        assert match_presets(_preset_params(name)) == (PresetMatch(_method(name), name, ()),)


def test_identity_defaults_are_params_yaml_values() -> None:
    """A preset that leaves an identity key alone runs with params.yaml's value: the Params default."""
    default = Params.model_validate(yaml.safe_load((ROOT / "params.yaml").read_text()))
    for key in IDENTITY_KEYS:
        if any(key not in p.overrides for p in PRESETS.values()):
            assert presets._get(default, key) == presets._get(Params(), key), key


def test_default_params_match_no_preset() -> None:
    assert match_presets(Params.model_validate(yaml.safe_load((ROOT / "params.yaml").read_text()))) == ()


def test_shortened_run_matches_but_is_not_the_full_recipe() -> None:
    """A rehearsal (fewer epochs, data elsewhere, CPUs) still matches; only the recipe key is listed."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    settings = dvc_set_args("acol-paper-vgg16-cub")[1::2]
    shrunk = ["train.epochs=2", "data.root=/tmp/elsewhere", "train.use_gpu=false", "methods=[acol,cam]"]
    params = Params.model_validate(apply_overrides(raw, [*settings, *shrunk]))
    assert match_presets(params) == (
        PresetMatch("acol", "acol-paper-vgg16-cub", ("train.epochs 2 (preset 60)",)),
    )
    other = Params.model_validate(apply_overrides(raw, [*settings, "evaluate.threshold_split=fullsup"]))
    (match,) = match_presets(other)  # Choe et al.'s threshold protocol: their row, with the ACoL recipe
    assert match.preset == "choe-vgg16-acol-cub" and "model.erase_threshold 0.6 (preset 0.7)" in match.differs
