"""Every published-row preset validates against params.yaml, and its first training step runs on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from acol.config import Params, apply_overrides
from acol.models import build_model, model_kwargs
from acol.presets import PRESETS, dvc_set_args, main, preset_overrides
from acol.training.engine import build_optimizer, build_scheduler

ROOT = Path(__file__).resolve().parents[1]


def _preset_params(name: str) -> Params:
    """params.yaml with the preset's `-S` arguments applied, exactly as `dvc exp run -S` would."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    settings = dvc_set_args(name)[1::2]
    assert dvc_set_args(name)[0::2] == ["-S"] * len(settings)
    return Params.model_validate(apply_overrides(raw, settings))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_validates_and_its_first_training_step_runs(name: str) -> None:
    params = _preset_params(name)
    for key, value in preset_overrides(name).items():  # every override arrived, with its type
        node = params
        for part in key.split("."):
            node = getattr(node, part)
        assert node == (tuple(value) if isinstance(value, list) else value), key
    assert params.methods == (_method(name),)  # a preset runs its published row's method
    num_classes = 1000 if params.data.source == "ilsvrc" else 200
    torch.manual_seed(0)
    # the preset's architecture, with narrower heads (128, not 1024) to keep the suite quick on 2 cores
    section = {**params.model.model_dump(), "head_channels": 128}
    model = build_model(**model_kwargs(section, _method(name), num_classes))
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


def _method(name: str) -> str:
    return "cam" if "-cam-" in name else "acol"


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
