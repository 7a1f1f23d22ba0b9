"""One prepared GPU check: the CUDA tests, VGG16-ACoL training (rate, MFU, a kill and a resume), extraction.

Why one script: a GPU machine is lent for minutes, bare (PyTorch, no Ray, no MLflow, no registry), so every GPU
figure the project lacks is taken in one run that needs nothing but the repository, does what the machine
allows and says what it skipped and why. ``--dry-run`` runs the same code on the CPU at toy sizes (small
backbone, 32 px, a few images, one step) so that CI keeps it working (tests/test_gpu_check.py).

Parts, each recorded in ``gpu_check.json`` (``figures``, ``checks``, ``skipped``):
1. the CUDA tests: ``pytest -m cuda tests/test_gpu_check.py`` in a subprocess (dry run: collected only);
2. training: `acol.training.engine.train_one_epoch` on GPU-resident batches in bf16 (no decode: the GPU's own
   rate), images/s per batch size, FLOPs per image from a counted forward (`FlopCounterMode`) x 3, MFU against
   the bf16 dense peak of the GPU model (`PEAK_BF16_DENSE_TFLOPS`) and against a bf16 matmul timed here;
3. kill and resume: a child process trains and checkpoints each epoch as the Ray Train worker does, and is
   SIGKILLed at the start of an epoch; a fresh child restores with `place_and_restore` and finishes; its
   weights are compared with an uninterrupted child's, with ``train.deterministic`` on and off;
4. extraction: shadow ILSVRC val images at the real sizes (`generate_synthetic`, layout ``shadow_ilsvrc``)
   through the plain engine (`extract_plain`: decode in DataLoader workers, bf16, channels-last), and the
   model alone (`MapPredictor` on decoded batches); the 50,000-image time is arithmetic from each rate;
5. GPU memory: `torch.cuda.max_memory_allocated` per part.

Ray Train is not used even where Ray imports: the training figures come from the engine loop that the Ray
Train worker runs (benchmarks/bench_train.py measured Ray Train at 0.98 of it per worker on the CPU).

    bash benchmarks/gpu_check.sh              # on the GPU machine, figures to $OUT (else benchmarks/results/gpu_check)
    bash benchmarks/gpu_check.sh --dry-run    # CPU, toy sizes, ~30 s
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FULL_VAL = 50_000  # ILSVRC 2012 val images: the extraction goal is all of them in < 60 s on one H100

# bf16 dense tensor-core peak in TFLOP/s by `torch.cuda.get_device_name()` substring, most specific first.
# Source: NVIDIA's data sheets give bf16 "with sparsity"; dense is half of it.
PEAK_BF16_DENSE_TFLOPS: tuple[tuple[str, float, str], ...] = (
    ("H200 NVL", 835.5, "NVIDIA H200 NVL data sheet: 1,671 TFLOPS bf16 with sparsity / 2"),
    ("H200", 989.5, "NVIDIA H200 SXM data sheet: 1,979 TFLOPS bf16 with sparsity / 2"),
    ("H100 NVL", 835.5, "NVIDIA H100 NVL data sheet: 1,671 TFLOPS bf16 with sparsity / 2"),
    ("H100 PCIe", 756.5, "NVIDIA H100 PCIe data sheet: 1,513 TFLOPS bf16 with sparsity / 2"),
    ("H100", 989.5, "NVIDIA H100 SXM data sheet: 1,979 TFLOPS bf16 with sparsity / 2"),
    ("A100", 312.0, "NVIDIA A100 data sheet: 312 TFLOPS bf16 dense (624 with sparsity)"),
)

# every key `figures` holds, measured or None (then `skipped` says why); the dry-run test checks them all
FIGURE_KEYS = (
    "train_runner",
    "train_batch_size",
    "train_images_per_s",
    "train_by_batch",
    "train_flops_per_image",
    "train_tflops",
    "peak_bf16_tflops",
    "peak_source",
    "mfu",
    "matmul_bf16_tflops",
    "mfu_of_matmul",
    "train_max_memory_mb",
    "resume",
    "extract_input",
    "extract_images",
    "extract_generate_seconds",
    "extract_images_per_s",
    "extract_steady_images_per_s",
    "extract_model_images_per_s",
    "extract_projected_seconds_50000",
    "extract_model_projected_seconds_50000",
    "extract_max_memory_mb",
    "cuda_tests",
)


@dataclass(frozen=True)
class Sizes:
    """What one run does: the real GPU sizes, or the dry run's toy ones."""

    device: str
    backbone: str
    num_classes: int
    head_channels: int
    image_size: int
    train_batches: tuple[int, ...]  # the first is the GPU overlay's per-worker batch (256 global / 8 workers)
    train_steps: int
    warmup_steps: int
    resume_batch: int
    resume_epochs: int
    resume_steps: int  # steps per epoch
    kill_at_epoch: int  # the child is killed at the start of this epoch (after checkpointing the one before)
    extract_images: int
    extract_batch: int
    loader_workers: int
    generate_workers: int
    model_only_batches: int
    matmul_size: int


def full_sizes(extract_images: int) -> Sizes:
    """VGG16-ACoL at 224 on 1,000 classes, the GPU overlay's settings (head 1024, extract batch 256)."""
    cores = os.cpu_count() or 1
    return Sizes("cuda", "vgg16", 1000, 1024, 224, (32, 128), 30, 5, 32, 3, 4, 3, extract_images, 256,
                 max(cores - 2, 0), cores, 8, 8192)  # fmt: skip


def dry_sizes() -> Sizes:
    return Sizes("cpu", "small", 10, 8, 32, (4,), 1, 1, 4, 2, 1, 2, 8, 4, 0, 1, 1, 256)


@dataclass
class Report:
    """What the check writes: figures (None where skipped), pass/fail checks, and the skipped parts."""

    dry_run: bool
    budget_s: float
    started: float = field(default_factory=time.perf_counter)
    figures: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(FIGURE_KEYS))
    checks: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)

    def skip(self, part: str, reason: str) -> None:
        print(f"[gpu_check] skipped {part}: {reason}", flush=True)
        self.skipped.append({"part": part, "reason": reason})

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    @contextlib.contextmanager
    def part(self, name: str, needs_s: float = 0.0) -> Iterator[bool]:
        """Run a part unless the time budget is spent; an exception is recorded, and the next part runs."""
        if self.left_s() < needs_s:
            self.skip(name, f"time budget: {self.left_s():.0f} s left, the part needs ~{needs_s:.0f} s")
            yield False
            return
        print(f"[gpu_check] {name} ...", flush=True)
        start = time.perf_counter()
        try:
            yield True
        except Exception as e:  # one broken part must not cost the figures of the others
            self.errors.append({"part": name, "error": f"{type(e).__name__}: {e}"})
            print(f"[gpu_check] {name} FAILED: {type(e).__name__}: {e}", flush=True)
        print(f"[gpu_check] {name}: {time.perf_counter() - start:.1f} s", flush=True)


def block(names: list[str]) -> None:
    """Make `names` unimportable in this process (``--without``): how the dry run plays a bare GPU machine."""
    for name in names:
        sys.modules[name] = None  # type: ignore[assignment]


def importable(name: str) -> str | None:
    """None when `name` imports, else the reason (the exception's text)."""
    try:
        importlib.import_module(name)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def present(name: str) -> bool:
    """Installed (and not blocked), without paying for the import (Ray's is seconds)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


def peak_bf16(device_name: str) -> tuple[float | None, str]:
    """The bf16 dense peak of a GPU model and where it comes from; None for a GPU not in the table."""
    for key, tflops, source in PEAK_BF16_DENSE_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops, source
    return None, f"{device_name!r} is not in PEAK_BF16_DENSE_TFLOPS"


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _max_memory_mb(device: Any) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


# ---------------------------------------------------------------------------------------------- CUDA tests


def cuda_tests(report: Report, out: Path, has_gpu: bool) -> None:
    """Run the `cuda`-marked tests (JUnit XML to `out`); without a GPU only check that they are collected."""
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "cuda", "tests/test_gpu_check.py"]
    if not has_gpu:
        done = subprocess.run([*base, "--collect-only", "-q"], cwd=REPO, capture_output=True, text=True)
        collected = [line for line in done.stdout.splitlines() if "::" in line]
        report.checks["cuda_tests_collected"] = len(collected)
        report.skip("cuda_tests", f"no GPU: {len(collected)} cuda-marked tests collected, not run")
        return
    xml = out / "cuda_tests.xml"
    done = subprocess.run([*base, "-q", f"--junitxml={xml}"], cwd=REPO, capture_output=True, text=True)
    print(done.stdout[-3000:], done.stderr[-2000:], flush=True)
    counts: dict[str, Any] = {"exit_code": done.returncode}
    if xml.exists():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts |= {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["failed"] = []
        for case in suite.iter("testcase"):
            # an Element without children is falsy: compare with None, never `or`
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                counts["failed"].append(f"{case.get('name')}: {bad.get('message', '')[:300]}")
    report.figures["cuda_tests"] = counts


# ---------------------------------------------------------------------------------------------- training


def _train_step_fn() -> tuple[Callable[..., dict[str, float]], str]:
    """`train_one_epoch`, or (acol's params not importable: no pydantic) the same calls inline, named."""
    reason = importable("acol.training.engine")
    if reason is None:
        from acol.training.engine import train_one_epoch

        return train_one_epoch, "acol.training.engine.train_one_epoch"
    import torch

    def inline(model, loader, optimizer, scheduler, device, *, amp=False):  # type: ignore[no-untyped-def]
        model.train()
        samples, start = 0, time.perf_counter()
        for images, labels, _ in loader:
            images, labels = images.to(device), labels.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(images, labels)
                loss = model.loss(out, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            samples += labels.shape[0]
        _sync(device)
        seconds = time.perf_counter() - start
        return {
            "loss": float(loss),
            "samples": samples,
            "seconds": seconds,
            "samples_per_second": samples / seconds,
        }

    return inline, f"inline step, the calls of train_one_epoch (acol.training.engine: {reason})"


def _optimizer(model: Any) -> Any:
    import torch

    if importable("acol.config") is None:
        from acol.config import TrainParams
        from acol.training.engine import build_optimizer

        return build_optimizer(model, TrainParams())
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)


def forward_flops(model: Any, images: Any, labels: Any) -> float:
    """FLOPs of one training-mode forward per image (erasing and branch B included), counted by PyTorch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(images, labels)
    return counter.get_total_flops() / images.shape[0]


def matmul_tflops(device: Any, n: int, reps: int = 10) -> float:
    """A bf16 n x n x n matmul's TFLOP/s here: the attainable ceiling beside the data-sheet peak."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def training(report: Report, sizes: Sizes, device: Any) -> None:
    """Images/s of the training step at each batch size (bf16, cuDNN autotuned), FLOPs and MFU."""
    import torch

    from acol.models import build_model

    if importable("acol.distributed.train") is None:
        from acol.distributed.train import _configure_cudnn

        _configure_cudnn(False)  # the pipeline's default (train.deterministic: false)
    else:
        torch.backends.cudnn.benchmark = True
    step, runner = _train_step_fn()
    figures = report.figures
    figures["train_runner"] = runner
    torch.manual_seed(0)
    model = build_model(sizes.backbone, sizes.num_classes, "acol", head_channels=sizes.head_channels).to(
        device
    )
    optimizer = _optimizer(model)
    s = sizes.image_size
    probe = torch.randn(2, 3, s, s, device=device)
    flops = forward_flops(model, probe, torch.tensor([0, 1], device=device))
    figures["train_flops_per_image"] = 3 * flops  # forward + backward (~2x the forward)
    rows = []
    for batch in sizes.train_batches:
        images = torch.randn(batch, 3, s, s, device=device)
        labels = torch.randint(0, sizes.num_classes, (batch,), device=device)
        _reset_memory(device)
        step(model, [(images, labels, None)] * sizes.warmup_steps, optimizer, None, device, amp=True)
        metrics = step(model, [(images, labels, None)] * sizes.train_steps, optimizer, None, device, amp=True)
        rate = metrics["samples_per_second"]
        rows.append({"batch": batch, "images_per_s": round(rate, 1), "steps": sizes.train_steps,
                     "loss": metrics["loss"], "tflops": float(f"{rate * 3 * flops / 1e12:.4g}"),
                     "max_memory_mb": _max_memory_mb(device)})  # fmt: skip
        print(f"[gpu_check] train batch {batch}: {rate:.1f} images/s", flush=True)
    figures["train_by_batch"] = rows
    first = rows[0]
    figures["train_batch_size"] = first["batch"]
    figures["train_images_per_s"] = first["images_per_s"]
    figures["train_tflops"] = first["tflops"]
    figures["train_max_memory_mb"] = first["max_memory_mb"]
    if device.type != "cuda":
        report.skip("mfu", "no GPU: no bf16 tensor-core peak to divide by")
        report.skip("gpu_memory", "no GPU: torch.cuda.max_memory_allocated needs one")
    else:
        peak, source = peak_bf16(torch.cuda.get_device_name(device))
        figures["peak_bf16_tflops"], figures["peak_source"] = peak, source
        if peak is None:
            report.skip("mfu", source)
        else:
            figures["mfu"] = round(first["tflops"] / peak, 4)
            for row in rows:
                row["mfu"] = round(row["tflops"] / peak, 4)
    del model, optimizer
    matmul = matmul_tflops(device, sizes.matmul_size)  # a CPU's bf16 rate can be far under 0.01 TFLOP/s
    figures["matmul_bf16_tflops"] = float(f"{matmul:.4g}")
    if matmul > 0:
        figures["mfu_of_matmul"] = float(f"{first['tflops'] / matmul:.4g}")
    else:
        report.skip("mfu_of_matmul", "the bf16 matmul took no measurable time")


# ---------------------------------------------------------------------------------------------- kill + resume


class _FolderCheckpoint:
    """The one method of a Ray `Checkpoint` that `place_and_restore` calls, for a local folder (no Ray here)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        yield str(self.folder)


def _epoch_batches(job: dict[str, Any], epoch: int) -> list[tuple[Any, Any, None]]:
    """An epoch's batches, drawn from (seed, epoch): the same in every process, as a seeded loader's are."""
    import torch

    from acol.training.engine import derived_seed

    g = torch.Generator().manual_seed(derived_seed(job["seed"], 0, epoch))
    b, s = job["batch"], job["image_size"]
    return [
        (torch.randn(b, 3, s, s, generator=g), torch.randint(0, job["num_classes"], (b,), generator=g), None)
        for _ in range(job["steps"])
    ]


def child_train(job: dict[str, Any]) -> None:
    """One training process of the resume check: ``full``, ``killed`` (SIGKILL at the start of
    ``kill_at_epoch``) or ``resume`` (from the folder's checkpoint); the worker loop's order of calls."""
    import torch

    from acol.config import TrainParams
    from acol.distributed.train import _configure_cudnn, _save_checkpoint, _WorkerState, place_and_restore
    from acol.models import build_model
    from acol.training.engine import (
        build_optimizer,
        build_scheduler,
        seed_epoch,
        seed_everything,
        train_one_epoch,
    )

    device = torch.device(job["device"])
    folder = Path(job["folder"])
    tp = TrainParams(epochs=job["epochs"], seed=job["seed"], amp=True, deterministic=job["deterministic"])
    _configure_cudnn(tp.deterministic)
    seed_everything(tp.seed)
    model = build_model(job["backbone"], job["num_classes"], "acol", head_channels=job["head_channels"])
    optimizer = build_optimizer(model, tp)
    run = _WorkerState(model, optimizer, build_scheduler(optimizer, tp, job["steps"]), lambda e: [], None, device,  # type: ignore[arg-type]
               tp.epochs)  # fmt: skip
    checkpoint = _FolderCheckpoint(folder / "checkpoint") if job["mode"] == "resume" else None
    place_and_restore(run, lambda m: m.to(device), checkpoint, 1, 0)
    for epoch in range(run.start_epoch + 1, tp.epochs + 1):
        if job["mode"] == "killed" and epoch == job["kill_at_epoch"]:
            os.kill(os.getpid(), signal.SIGKILL)  # as a lost node: no cleanup, no exit handlers
        seed_epoch(tp.seed, 0, epoch)
        train_one_epoch(
            run.model, _epoch_batches(job, epoch), run.optimizer, run.scheduler, device, amp=tp.amp
        )
        (folder / "checkpoint").mkdir(parents=True, exist_ok=True)
        _save_checkpoint(folder / "checkpoint", run.model, run.optimizer, run.scheduler,
                         {"epoch": epoch, "restarts": run.restarts, "history": [], "world_size": 1})  # fmt: skip
    torch.save({k: v.cpu() for k, v in run.model.state_dict().items()}, folder / "final.pt")


def _spawn(job: dict[str, Any]) -> int:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})  # fmt: skip
    return done.returncode


def resume(report: Report, sizes: Sizes, work: Path) -> None:
    """Uninterrupted vs killed-and-resumed, each in fresh processes (a fresh cuDNN autotuner, as after a kill)."""
    import torch

    if (reason := importable("acol.distributed.train")) is not None:
        report.skip("resume", f"acol.distributed.train does not import: {reason}")
        return
    modes = [True, False] if sizes.device == "cuda" else [True]
    if sizes.device != "cuda":
        report.skip(
            "resume_deterministic_off", "no GPU: no cuDNN, train.deterministic changes nothing on the CPU"
        )
    results = {}
    for deterministic in modes:
        job = {"device": sizes.device, "backbone": sizes.backbone, "num_classes": sizes.num_classes,
               "head_channels": sizes.head_channels, "image_size": sizes.image_size, "batch": sizes.resume_batch,
               "steps": sizes.resume_steps, "epochs": sizes.resume_epochs, "kill_at_epoch": sizes.kill_at_epoch,
               "seed": 0, "deterministic": deterministic}  # fmt: skip
        name = f"deterministic_{'on' if deterministic else 'off'}"
        full, cut = work / f"{name}_full", work / f"{name}_cut"
        codes = {
            "full": _spawn(job | {"mode": "full", "folder": str(full)}),
            "killed": _spawn(job | {"mode": "killed", "folder": str(cut)}),
        }
        codes["resume"] = _spawn(job | {"mode": "resume", "folder": str(cut)})
        row: dict[str, Any] = {"exit_codes": codes, "killed_by_sigkill": codes["killed"] == -signal.SIGKILL,
                               "kill_at_epoch": sizes.kill_at_epoch, "epochs": sizes.resume_epochs}  # fmt: skip
        if (full / "final.pt").exists() and (cut / "final.pt").exists():
            a = torch.load(full / "final.pt", weights_only=True)
            b = torch.load(cut / "final.pt", weights_only=True)
            diffs = [
                (a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point()
            ]
            row |= {"weights_equal": all(torch.equal(a[k], b[k]) for k in a), "max_abs_diff": max(diffs),
                    "tensors_differing": sum(d > 0 for d in diffs), "tensors": len(diffs)}  # fmt: skip
        results[name] = row
        print(f"[gpu_check] resume {name}: {row}", flush=True)
    report.figures["resume"] = results
    report.checks["resume_deterministic_equal"] = results["deterministic_on"].get("weights_equal")


# ---------------------------------------------------------------------------------------------- extraction


def _shadow_val(report: Report, sizes: Sizes, work: Path) -> tuple[Path, Path] | None:
    """Generate the shadow val images and their manifest; None (recorded) when the generator cannot run."""
    for module in ("acol.data.synthetic", "acol.data.readers.ilsvrc", "acol.distributed.extract"):
        if (reason := importable(module)) is not None:
            report.skip("extract_shadow_val", f"{module} does not import: {reason}")
            return None
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_generate import extract_metadata

    from acol.data.manifest import write_manifest
    from acol.data.readers.ilsvrc import read_ilsvrc_val
    from acol.data.synthetic import SyntheticConfig, generate_synthetic

    start = time.perf_counter()
    config = SyntheticConfig(layout="shadow_ilsvrc", num_classes=1000, shadow_metadata=extract_metadata(str(work)),
                             num_val_images=sizes.extract_images, train_per_class=0, holdout_per_class=0,
                             jpeg_quality=90)  # fmt: skip
    root = work / "shadow"
    generate_synthetic(root, config, workers=sizes.generate_workers)
    table, problems = read_ilsvrc_val(root, root / "LOC_synset_mapping.txt", root / "LOC_val_solution.csv")
    if problems:
        raise RuntimeError(f"{len(problems)} problems in the shadow val set, first: {problems[0]}")
    manifest = work / "val.parquet"
    write_manifest(table, manifest)
    report.figures["extract_generate_seconds"] = round(time.perf_counter() - start, 1)
    report.figures["extract_input"] = f"shadow ILSVRC val JPEGs at the real sizes ({table.num_rows} images)"
    report.figures["extract_images"] = table.num_rows
    return root, manifest


def extraction(report: Report, sizes: Sizes, device: Any, work: Path) -> None:
    """The plain engine end to end on shadow val JPEGs, then the model alone on decoded batches."""
    import torch

    from acol.models import build_model

    figures = report.figures
    data = _shadow_val(report, sizes, work)
    classes = [f"n{i:08d}" for i in range(1000)]
    torch.manual_seed(0)
    model = build_model(sizes.backbone, len(classes), "acol", head_channels=sizes.head_channels)
    torch.save(model.state_dict(), work / "model.pt")
    del model
    if data is None:
        _model_only_inline(report, sizes, device)
        return
    from acol.config import load_params
    from acol.data.manifest import manifest_classes, read_manifest
    from acol.distributed.extract import ExtractionJob, _input_columns, extract_plain
    from acol.inference.model_card import spec_from_card
    from acol.inference.predict import ForwardOptions, MapPredictor, decode_batch

    root, manifest = data
    classes = manifest_classes(read_manifest(manifest))
    card = {"method": "acol", "backbone": sizes.backbone, "num_classes": len(classes), "classes": classes,
            "model": {"head_channels": sizes.head_channels}}  # fmt: skip
    params = load_params(work / "none.yaml", [
        f"model.backbone={sizes.backbone}", f"model.head_channels={sizes.head_channels}",
        f"train.image_size={sizes.image_size}", f"extract.batch_size={sizes.extract_batch}",
        f"extract.use_gpu={str(device.type == 'cuda').lower()}", "extract.amp=true", "extract.channels_last=true",
    ])  # fmt: skip
    _reset_memory(device)
    job = ExtractionJob(params, "acol", manifest, root, work / "model.pt", card, work / "maps")
    summary = extract_plain(job, device=str(device), loader_workers=sizes.loader_workers)
    figures["extract_max_memory_mb"] = _max_memory_mb(device)
    figures["extract_images_per_s"] = round(summary.images_per_s, 1)
    figures["extract_steady_images_per_s"] = round(summary.steady_images_per_s, 1)
    figures["extract_projected_seconds_50000"] = round(FULL_VAL / summary.images_per_s, 1)
    report.checks["extract_rows"] = summary.rows
    report.checks["extract_errors"] = summary.errors
    report.checks["extract_loader_workers"] = sizes.loader_workers

    table = read_manifest(manifest).slice(0, sizes.extract_batch)
    columns = _input_columns(table)
    batch = decode_batch(columns, str(root), sizes.image_size)
    spec = spec_from_card(card, params, "acol", classes)
    options = ForwardOptions(
        sizes.image_size, params.extract.box_threshold, str(device), amp=True, channels_last=True
    )
    predictor = MapPredictor(spec, str(work / "model.pt"), options)
    predictor(batch)  # warm-up (cuDNN autotuning, allocator), not timed
    _sync(device)
    start = time.perf_counter()
    for _ in range(sizes.model_only_batches):
        predictor(batch)  # returns NumPy: each call ends synchronized
    rate = sizes.model_only_batches * table.num_rows / (time.perf_counter() - start)
    figures["extract_model_images_per_s"] = round(rate, 1)
    figures["extract_model_projected_seconds_50000"] = round(FULL_VAL / rate, 1)


def _model_only_inline(report: Report, sizes: Sizes, device: Any) -> None:
    """Without acol.inference (no pydantic): the forward and the maps on random tensors, as predict_batch."""
    import torch

    from acol.models import build_model

    model = build_model(sizes.backbone, 1000, "acol", head_channels=sizes.head_channels)
    model = model.to(device, memory_format=torch.channels_last).eval()
    b, s = sizes.extract_batch, sizes.image_size
    images = torch.randn(b, 3, s, s, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (b,), device=device)

    def once() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(images, labels)
            model.localization_maps(out, out.logits.argmax(1)).float().cpu()

    _reset_memory(device)
    once()
    start = time.perf_counter()
    for _ in range(sizes.model_only_batches):
        once()
    rate = sizes.model_only_batches * b / (time.perf_counter() - start)
    report.figures["extract_input"] = "random tensors on the device (model only)"
    report.figures["extract_model_images_per_s"] = round(rate, 1)
    report.figures["extract_model_projected_seconds_50000"] = round(FULL_VAL / rate, 1)
    report.figures["extract_max_memory_mb"] = _max_memory_mb(device)


# ---------------------------------------------------------------------------------------------- main


def machine(device: Any) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "device": str(device)}  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": torch.cuda.get_device_name(device), "gpu_memory_gb": round(props.total_memory / 1e9, 1),
                 "multiprocessors": props.multi_processor_count}  # fmt: skip
    return info


def summary_lines(result: dict[str, Any]) -> list[str]:
    f = result["figures"]

    def show(key: str, unit: str = "") -> str:
        return "skipped" if f.get(key) is None else f"{f[key]}{unit}"

    lines = [
        f"device: {result['machine'].get('gpu', result['machine']['device'])} (dry run: {result['dry_run']})",
        f"train ({show('train_runner')}): {show('train_images_per_s', ' images/s')} at batch "
        f"{show('train_batch_size')}; {show('train_tflops', ' TFLOP/s')}; MFU {show('mfu')} of "
        f"{show('peak_bf16_tflops', ' TFLOP/s')} peak, {show('mfu_of_matmul')} of the "
        f"{show('matmul_bf16_tflops', ' TFLOP/s')} matmul; GPU memory {show('train_max_memory_mb', ' MB')}",
        f"resume: {json.dumps(f['resume'])}",
        f"extract ({show('extract_input')}): {show('extract_images_per_s', ' images/s')} end to end "
        f"(steady {show('extract_steady_images_per_s')}), model alone {show('extract_model_images_per_s', ' images/s')}; "
        f"50,000 images (arithmetic): {show('extract_projected_seconds_50000', ' s')} end to end, "
        f"{show('extract_model_projected_seconds_50000', ' s')} model alone; GPU memory {show('extract_max_memory_mb', ' MB')}",
        f"cuda tests: {json.dumps(f['cuda_tests'])}",
    ]
    lines += [f"skipped {s['part']}: {s['reason']}" for s in result["skipped"]]
    lines += [f"ERROR {e['part']}: {e['error']}" for e in result["errors"]]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, toy sizes: checks the script, measures nothing"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "benchmarks/results/gpu_check")
    )
    parser.add_argument("--extract-images", type=int, default=5000)
    parser.add_argument("--budget-s", type=float, default=450.0, help="parts that would not fit are skipped")
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="MODULE",
        help="treat MODULE as not installed (e.g. pydantic, ray), to rehearse a bare machine",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_train(json.loads(args.child))
        return 0
    block(args.without)
    import torch

    report = Report(dry_run=args.dry_run, budget_s=args.budget_s)
    has_gpu = torch.cuda.is_available()
    if args.dry_run:
        sizes = dry_sizes()
    elif not has_gpu:
        print("[gpu_check] no GPU: use --dry-run on a CPU machine", file=sys.stderr)
        return 2
    else:
        sizes = full_sizes(args.extract_images)
    device = torch.device(sizes.device)
    for name in ("ray", "mlflow"):
        if not present(name):
            report.skip(name, f"{name} is not installed here: nothing in this check needs it")
    if present("ray"):
        report.skip(
            "ray_train", "the engine loop is timed instead (the Ray Train worker runs it; bench_train.py)"
        )
    if not has_gpu:
        report.skip("gpu", "no CUDA device: the figures below are CPU figures at toy sizes")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        with report.part("cuda_tests", 60) as go:
            if go:
                cuda_tests(report, args.out, has_gpu)
        with report.part("training", 30) as go:
            if go:
                training(report, sizes, device)
        with report.part("resume", 60) as go:
            if go:
                resume(report, sizes, work)
        with report.part("extraction", 60) as go:
            if go:
                extraction(report, sizes, device, work)
    result = {
        "check": "gpu_check",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "machine": machine(device),
        "available": {
            name: present(name) for name in ("pydantic", "cv2", "pyarrow", "numba", "pytest", "ray", "mlflow")
        },
        "sizes": asdict(sizes),
        "seconds": round(time.perf_counter() - report.started, 1),
        "figures": report.figures,
        "checks": report.checks,
        "skipped": report.skipped,
        "errors": report.errors,
        "notes": "train: GPU-resident random batches (no decode), bf16 autocast, cuDNN autotuned; FLOPs per image = "
        "3 x a counted training-mode forward; MFU = train TFLOP/s / the data-sheet bf16 dense peak. extract: "
        "projected seconds for 50,000 images are 50,000 / the measured rate (arithmetic, not measured).",
    }
    path = args.out / "gpu_check.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print("\n".join(["== gpu_check summary", *summary_lines(result), f"-> {path}"]), flush=True)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
