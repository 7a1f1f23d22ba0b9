"""The prepared GPU check (benchmarks/gpu_check.sh) and the CUDA tests it runs.

The `cuda`-marked tests need a GPU and are skipped without one (tests/conftest.py); the check runs them with
``pytest -m cuda`` on the GPU machine. Their tolerances were set without a GPU to measure on: a failure
prints the measured difference, which is the figure to read. The dry-run tests run the check itself on the
CPU at toy sizes, so the script cannot rot between the rare runs on a GPU.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
CUDA_TESTS = 3  # the cuda-marked tests below: the dry run must find them all


def _gpu_check() -> ModuleType:
    """benchmarks/gpu_check.py as a module (benchmarks/ is no package); registered, as dataclasses need."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


def _dry_run(out: Path, *extra: str) -> dict:
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", str(out), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHON": sys.executable},  # this interpreter: CI does not activate the venv
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "== gpu_check summary" in done.stdout
    return json.loads((out / "gpu_check.json").read_text())


def test_dry_run_writes_every_figure_and_names_the_gpu_parts(tmp_path: Path) -> None:
    result = _dry_run(tmp_path)
    figures = result["figures"]
    assert set(_gpu_check().FIGURE_KEYS) <= set(figures)
    skipped = {s["part"] for s in result["skipped"]}
    assert {"gpu", "cuda_tests", "mfu", "gpu_memory", "resume_deterministic_off"} <= skipped
    assert not result["errors"]
    assert result["checks"]["cuda_tests_collected"] == CUDA_TESTS
    assert figures["train_runner"] == "acol.training.engine.train_one_epoch"
    assert figures["train_images_per_s"] > 0 and figures["train_flops_per_image"] > 0
    assert figures["mfu"] is None and figures["train_max_memory_mb"] is None  # CPU: said so in skipped
    resumed = figures["resume"]["deterministic_on"]
    assert resumed["killed_by_sigkill"] and resumed["exit_codes"]["resume"] == 0
    assert resumed["weights_equal"], resumed  # the CPU repeats bit for bit
    assert figures["extract_images"] == result["checks"]["extract_rows"] == 8
    assert figures["extract_images_per_s"] > 0 and figures["extract_model_images_per_s"] > 0
    assert figures["extract_projected_seconds_50000"] == pytest.approx(
        50_000 / figures["extract_images_per_s"], rel=0.01
    )


def test_dry_run_on_a_bare_machine_says_what_it_skipped(tmp_path: Path) -> None:
    """The GPU machine has no pydantic (acol's params): what needs it is skipped and named, the rest runs."""
    result = _dry_run(tmp_path, "--without", "pydantic", "--without", "ray", "--without", "mlflow")
    skipped = {s["part"]: s["reason"] for s in result["skipped"]}
    assert {"ray", "mlflow", "resume", "extract_shadow_val"} <= set(skipped)
    assert "pydantic" in skipped["resume"]
    figures = result["figures"]
    assert figures["train_runner"].startswith("inline step") and figures["train_images_per_s"] > 0
    assert figures["extract_model_images_per_s"] > 0 and figures["extract_images_per_s"] is None
    assert not result["errors"]


@pytest.mark.parametrize(
    ("name", "peak"),
    [("NVIDIA H100 80GB HBM3", 989.5), ("NVIDIA H100 PCIe", 756.5), ("NVIDIA H100 NVL", 835.5),
     ("NVIDIA H200", 989.5), ("NVIDIA H200 NVL", 835.5), ("Tesla T4", None)],
)  # fmt: skip
def test_the_peak_of_each_gpu_model_has_a_source(name: str, peak: float | None) -> None:
    value, source = _gpu_check().peak_bf16(name)
    assert value == peak and source


# ---------------------------------------------------------------------------------------------- CUDA


@pytest.fixture
def exact_fp32() -> Iterator[None]:
    """float32 on the GPU as on the CPU: no TF32 in matmuls or convolutions (cuDNN allows it by default)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _vgg16_acol() -> nn.Module:
    from acol.models import build_model

    torch.manual_seed(0)
    return build_model("vgg16", 1000, "acol", head_channels=1024)


@pytest.mark.cuda
def test_bf16_training_step_on_cuda_is_finite_and_close_to_fp32(exact_fp32: None) -> None:
    from acol.config import TrainParams
    from acol.training.engine import build_optimizer, train_one_epoch

    device = torch.device("cuda")
    model = _vgg16_acol().to(device)
    g = torch.Generator().manual_seed(1)
    images, labels = torch.randn(8, 3, 224, 224, generator=g), torch.randint(0, 1000, (8,), generator=g)
    images, labels = images.to(device), labels.to(device)
    model.train()
    losses = {}
    for amp in (False, True):
        torch.manual_seed(2)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            losses[amp] = float(model.loss(model(images, labels), labels))
    assert math.isfinite(losses[True]) and math.isfinite(losses[False]), losses
    assert losses[True] == pytest.approx(losses[False], rel=0.02), losses
    optimizer = build_optimizer(model, TrainParams())
    metrics = train_one_epoch(model, [(images, labels, None)] * 2, optimizer, None, device, amp=True)
    assert math.isfinite(metrics["loss"]), metrics
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.cuda
def test_optimizer_state_is_on_cuda_after_a_restore(tmp_path: Path) -> None:
    """`place_and_restore` with the GPU move: SGD's momentum comes back on the GPU and the next step runs."""
    from acol.config import TrainParams
    from acol.distributed.train import _save_checkpoint, _WorkerState, place_and_restore
    from acol.models import build_model
    from acol.training.engine import build_optimizer, build_scheduler, train_one_epoch

    gpu_check = _gpu_check()
    tp = TrainParams(optimizer="sgd", lr=0.1, momentum=0.9, epochs=2)

    def run() -> _WorkerState:
        torch.manual_seed(0)
        model = build_model("small", 4, "acol", head_channels=8)
        optimizer = build_optimizer(model, tp)
        return _WorkerState(model, optimizer, build_scheduler(optimizer, tp, 2), lambda e: [], None,  # type: ignore[arg-type]
                    torch.device("cuda"), epochs=2)  # fmt: skip

    batch = [(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), None)]
    first = run()
    train_one_epoch(first.model, batch, first.optimizer, first.scheduler, torch.device("cpu"))
    _save_checkpoint(
        tmp_path, first.model, first.optimizer, first.scheduler, {"epoch": 1, "restarts": 0, "history": []}
    )
    resumed = run()
    place_and_restore(resumed, lambda m: m.cuda(), gpu_check._FolderCheckpoint(tmp_path), 1, 0)
    buffers = [s["momentum_buffer"] for s in resumed.optimizer.state.values()]
    assert buffers and {b.device.type for b in buffers} == {"cuda"}
    assert resumed.start_epoch == 1
    metrics = train_one_epoch(
        resumed.model, batch, resumed.optimizer, resumed.scheduler, torch.device("cuda")
    )
    assert math.isfinite(metrics["loss"])


@pytest.mark.cuda
def test_extraction_maps_on_cuda_match_the_cpu(exact_fp32: None) -> None:
    """`predict_batch` (both engines' step) on the GPU vs the CPU: float32 to rounding, bf16 loosely.

    Branch A's maps come before any erasing: compared tightly. The fused map depends on B, whose input is
    erased where A's map passes a threshold, so a cell at the threshold may flip: compared on the mean."""
    from acol.inference.predict import predict_batch

    cpu_model = _vgg16_acol().eval()
    gpu_model = copy.deepcopy(cpu_model).cuda()
    g = torch.Generator().manual_seed(3)
    images = torch.randn(4, 3, 224, 224, generator=g)
    labels = np.array([1, 10, 100, 999])
    sizes = np.array([500, 375, 224, 640])
    ref = predict_batch(cpu_model, images, labels, sizes, sizes, 0.2)
    for amp, tight, mean in ((False, 2e-3, 1e-3), (True, 0.05, 0.02)):
        got = predict_batch(gpu_model, images.cuda(), labels, sizes, sizes, 0.2, amp=amp)
        diff_a = np.abs(got["map_a_gt"].astype(np.float32) - ref["map_a_gt"].astype(np.float32))
        diff = np.abs(got["map_gt"].astype(np.float32) - ref["map_gt"].astype(np.float32))
        print(
            f"amp={amp}: branch A max {diff_a.max():.2e}, fused mean {diff.mean():.2e}, max {diff.max():.2e}"
        )
        assert diff_a.max() <= tight, (amp, float(diff_a.max()))
        assert diff.mean() <= mean, (amp, float(diff.mean()))
        assert ref["map_gt"].shape == got["map_gt"].shape
