"""The CPU kernels' instruction set (`acol.cpu_isa`): the same bytes on an AVX2 machine and on a wider one.

The oracle is a machine of another kind, simulated: a process started with the kernel variables already
at AVX2 (what PyTorch, oneDNN and MKL choose by themselves on an AVX2-only CPU). The pipeline's stages,
started natively on this machine, pin themselves (in the stage process and in each Ray worker) and must
train and extract the same bytes. The control shows the check can fail: unpinned, this machine's own
kernels give other weights (skipped on a CPU with nothing wider than AVX2, where the two are one machine).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from acol.cpu_isa import CPU_ISA_ENV, LEVELS, CpuIsaError, cpu_isa_env, pin_cpu_isa

REPO = Path(__file__).resolve().parents[1]
AVX2_MACHINE = dict(LEVELS["avx2"])  # the variables' values an AVX2-only CPU gives the libraries by itself
TINY = {
    "data.root": "data",
    "data.synthetic.num_classes": 3,
    "data.synthetic.train_per_class": 16,
    "data.synthetic.val_per_class": 12,
    "data.synthetic.holdout_per_class": 0,
    "model.head_channels": 16,
    "train.epochs": 1,
    "train.batch_size": 16,
    "train.cpus_per_worker": 1,
    "extract.batch_size": 16,
    "extract.cpus_per_actor": 1,
}


def test_levels_and_the_escape() -> None:
    assert cpu_isa_env({}) == {CPU_ISA_ENV: "avx2", **LEVELS["avx2"]}  # the default
    assert cpu_isa_env({CPU_ISA_ENV: "Baseline"})["ATEN_CPU_CAPABILITY"] == "default"
    assert cpu_isa_env({CPU_ISA_ENV: "native"}) == {}
    with pytest.raises(CpuIsaError, match=f"{CPU_ISA_ENV}='avx512': choose one of avx2, baseline, native"):
        cpu_isa_env({CPU_ISA_ENV: "avx512"})


def test_pin_sets_the_variables_and_overrides_a_wider_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    monkeypatch.delenv(CPU_ISA_ENV, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("MKL_CBWR", raising=False)
    assert pin_cpu_isa() == "avx2"
    assert {k: os.environ[k] for k in AVX2_MACHINE} == AVX2_MACHINE
    monkeypatch.setenv(CPU_ISA_ENV, "native")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    assert pin_cpu_isa() == "native" and os.environ["ATEN_CPU_CAPABILITY"] == "avx512"  # left alone


def _stage(script: str, args: list[str], work: Path, env: dict[str, str]) -> None:
    sets = [a for key, value in TINY.items() for a in ("--set", f"{key}={value}")]
    command = [sys.executable, str(REPO / "pipelines" / script), "--params", str(REPO / "params.yaml"), *sets]
    done = subprocess.run([*command, *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{script} {args} failed:\n{(done.stdout + done.stderr)[-4000:]}"


def _env(work: Path, tag: str, extra: dict[str, str]) -> dict[str, str]:
    kernel_vars = {CPU_ISA_ENV, *AVX2_MACHINE}
    env = {
        k: v for k, v in os.environ.items() if k not in kernel_vars and not k.startswith(("RAY_", "MLFLOW_"))
    }
    env.update(extra, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=f"sqlite:///{work / f'mlflow-{tag}.db'}")
    return env


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def _maps(folder: Path) -> pq.Table:
    return pq.read_table(folder / "maps").sort_by("image_id")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("isa")
    env = _env(work, "prep", {})
    _stage("synthesize.py", ["--out", "data"], work, env)
    _stage("prepare.py", ["--out", "prepared"], work, env)
    return work


def _train_and_extract(work: Path, tag: str, extra: dict[str, str]) -> Path:
    env = _env(work, tag, extra)
    manifests = ["--train-manifest", "prepared/train.parquet", "--val-manifest", "prepared/val.parquet"]
    _stage("train.py", ["--method", "acol", *manifests, "--out", f"train-{tag}"], work, env)
    model = ["--model", f"train-{tag}/model.pt", "--model-card", f"train-{tag}/model_card.json"]
    extract = ["--method", "acol", "--manifest", "prepared/val.parquet", *model, "--out", f"extract-{tag}"]
    _stage("extract.py", extract, work, env)
    return work


@pytest.mark.slow
def test_a_wider_cpu_trains_and_extracts_the_bytes_of_an_avx2_cpu(prepared: Path) -> None:
    _train_and_extract(prepared, "native", {})  # this machine, pinned by the stages themselves
    _train_and_extract(prepared, "avx2", AVX2_MACHINE)  # an AVX2-only machine, from its first instruction
    assert _same_weights(prepared / "train-native/model.pt", prepared / "train-avx2/model.pt")
    native, avx2 = _maps(prepared / "extract-native"), _maps(prepared / "extract-avx2")
    assert native.num_rows == 36 and native.equals(avx2)


def _native_capability(work: Path) -> str:
    """What torch chooses here by itself (asked in a fresh process: this one may be pinned by now)."""
    probe = [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"]
    env = _env(work, "probe", {})
    return subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.slow
def test_unpinned_this_machine_trains_other_weights(prepared: Path) -> None:
    if _native_capability(prepared) in ("DEFAULT", "AVX2"):
        pytest.skip("this CPU has no kernels wider than AVX2: an AVX2 machine is this machine")
    env = _env(prepared, "unpinned", {CPU_ISA_ENV: "native"})
    manifests = ["--train-manifest", "prepared/train.parquet", "--val-manifest", "prepared/val.parquet"]
    _stage("train.py", ["--method", "acol", *manifests, "--out", "train-unpinned"], prepared, env)
    if not (prepared / "train-avx2/model.pt").exists():
        _train_and_extract(prepared, "avx2", AVX2_MACHINE)
    assert not _same_weights(prepared / "train-unpinned/model.pt", prepared / "train-avx2/model.pt")
