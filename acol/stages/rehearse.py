"""Rehearse a preset's real path on a laptop before renting GPUs: ``bash scripts/rehearse.sh PRESET``.

What a user runs with real data, run small: a scratch copy of this checkout (its own git repository, DVC
cache, MLflow store and Ray runs), a dataset in the preset's real on-disk layout (shadow ILSVRC: the Kaggle
tree and, for Choe's protocol, ImageNetV2; shadow CUB-200-2011 and CUBV2; shadow OpenImages30k with its
instance and ignore masks; images drawn inside the real annotations' boxes, `acol.data.shadow_ilsvrc` /
`acol.data.shadow_cub` / `acol.data.shadow_openimages`), a torchvision-format state dict of
the preset's backbone at the path the preset names (random weights: nothing is downloaded), then the README's
own command, ``dvc exp run -n NAME $(python -m acol.presets NAME)``, with only amounts shrunk (classes,
images, epochs, CPUs per worker): the architecture, image size, recipe and threshold protocol are the
preset's. Training runs on 2 Ray Train workers; one is killed at the start of epoch 2 (after the first
checkpoint) and the run resumes. Then the scheduled re-evaluation of the registered champion, a prediction of
the served model (pyfunc) on one image, and a summary of what each step produced.

Why a copy: the rehearsal must not touch the user's workspace (params.yaml, outputs, mlflow.db), and a fresh
repository is what a user's clone is. The copy's code is imported (PYTHONPATH), not the installed checkout's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acol.distributed.train import EpochStart

__all__ = [
    "KILL_HOOK",
    "KILL_MARKER",
    "Rehearsal",
    "Shrink",
    "Step",
    "kill_one_worker_at_epoch_2",
    "main",
    "rehearse",
]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
METADATA_ARCHIVE = REPO / "tests" / "assets" / "wsol-metadata.tar.xz"
OPENIMAGES_ARCHIVE = REPO / "tests" / "assets" / "openimages-metadata.tar.xz"
KILL_HOOK = "acol.stages.rehearse:kill_one_worker_at_epoch_2"  # by name: this module may run as __main__
KILL_MARKER = "rehearsal_worker_killed"
# torchvision's constructors for the presets' backbones (their state dicts are what the presets load)
_TORCHVISION = {
    "vgg16": ("vgg16", {}),
    "resnet50": ("resnet50", {}),
    "googlenet": ("googlenet", {"aux_logits": False, "init_weights": False}),
    "inception_v3": ("inception_v3", {"aux_logits": False, "init_weights": False}),
}


def kill_one_worker_at_epoch_2(start: EpochStart) -> None:
    """Epoch hook: the last rank exits its process at the start of epoch 2, once per run (a marker file in
    the run folder), after the epoch-1 checkpoint is registered, so Ray Train restarts the group from it."""
    marker = Path(start.run_dir) / KILL_MARKER
    if start.rank != start.world_size - 1 or start.epoch != 2 or marker.exists():
        return
    import ray.train

    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"rank {start.rank} of {start.world_size} killed at the start of epoch {start.epoch}\n")
    ray.train.get_all_reported_checkpoints(timeout_s=60)  # the retry resumes from epoch 1's checkpoint
    log.warning("rehearsal: killing training worker %d at the start of epoch 2", start.rank)
    os._exit(1)


@dataclass(frozen=True)
class Shrink:
    """The amounts a rehearsal shrinks; nothing else of the preset changes."""

    classes: int = 2
    train_per_class: int = 4
    val_per_class: int = 5
    fullsup_per_class: int = 3
    epochs: int = 2
    workers: int = 2
    use_gpu: bool = False  # the presets' GPU settings, kept only where a GPU is (--gpu)

    def overrides(self) -> list[str]:
        """``-S`` values on top of the preset's: amounts, and the CPU where no GPU is."""
        sets = [
            f"train.epochs={self.epochs}",
            f"train.num_workers={self.workers}",
            "train.cpus_per_worker=1",
            "train.max_failures=2",
            # the default synthetic data is not this run's; the synthesize stage still runs, so keep it tiny
            "data.synthetic.num_classes=2",
            "data.synthetic.train_per_class=1",
            "data.synthetic.val_per_class=1",
            "data.synthetic.holdout_per_class=0",
            "tracking.log_system_metrics=false",
        ]
        if not self.use_gpu:
            sets += ["train.use_gpu=false", "extract.use_gpu=false"]
        return sets


@dataclass
class Step:
    """One step of the rehearsal: how long it took and what it produced (one line each)."""

    name: str
    seconds: float
    produced: list[str] = field(default_factory=list)


@dataclass
class Rehearsal:
    """What a rehearsal ran: the scratch repository, its steps and the facts the tests and the summary use."""

    preset: str
    repo: Path
    steps: list[Step] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        total = sum(s.seconds for s in self.steps)
        lines = [f"rehearsal of {self.preset} in {self.repo}: {total:.0f} s"]
        for step in self.steps:
            lines.append(f"  {step.name:<28s} {step.seconds:7.1f} s")
            lines += [f"      {line}" for line in step.produced]
        return "\n".join(lines)


def _dataset(preset: str) -> str:
    from acol.presets import preset_overrides

    return str(preset_overrides(preset)["data.source"])


def _copy_checkout(dest: Path) -> None:
    """The files a clone of this checkout has (tracked and untracked-not-ignored), as a fresh git repo."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git = ["git", "-c", "user.name=rehearsal", "-c", "user.email=rehearsal@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "rehearsal: copy of the checkout"]):
        subprocess.run([*git, *args], cwd=dest, check=True)


def _metadata(work: Path) -> Path:
    """The shipped WSOL metadata (ILSVRC, CUB and OpenImages), extracted once."""
    folder = work / "wsol-metadata"
    if not folder.is_dir():
        for path in (METADATA_ARCHIVE, OPENIMAGES_ARCHIVE):
            with tarfile.open(path) as archive:
                archive.extractall(folder, filter="data")
    return folder


def _shadow_ilsvrc(repo: Path, metadata: Path, shrink: Shrink, overrides: dict[str, Any]) -> list[str]:
    """The Kaggle ILSVRC tree the preset points at: data/ILSVRC/Data/CLS-LOC/{train,val[,val2]} and the
    LOC_*.txt/csv files three folders above it; ImageNetV2's WSOL folder where the preset reads it."""
    from acol.data.shadow_ilsvrc import FULLSUP_METADATA
    from acol.data.synthetic import SyntheticConfig, generate_synthetic

    fullsup = overrides.get("data.fullsup_metadata")
    scratch = repo.parent / "shadow-ilsvrc"
    config = SyntheticConfig(
        layout="shadow_ilsvrc",
        num_classes=1000,  # the metadata's class space; shadow_classes keeps the first ones
        shadow_metadata=str(metadata / "ILSVRC" / "test"),
        shadow_classes=shrink.classes,
        train_per_class=shrink.train_per_class,
        val_per_class=shrink.val_per_class,
        holdout_per_class=shrink.fullsup_per_class if fullsup else 0,
        shadow_fullsup_metadata=str(metadata / "ILSVRC" / "val") if fullsup else None,
    )
    generate_synthetic(scratch, config, progress=False)
    root = repo / str(overrides["data.root"])
    root.mkdir(parents=True)
    for split in ("train", "val", "val2"):
        if (scratch / split).is_dir():
            shutil.move(scratch / split, root / split)
    for name, key in (
        ("LOC_synset_mapping.txt", "data.synsets"),
        ("LOC_val_solution.csv", "data.val_solution"),
    ):
        shutil.move(scratch / name, (root / str(overrides[key])).resolve())
    if fullsup:
        shutil.move(scratch / FULLSUP_METADATA, repo / str(fullsup))
    return [
        f"{root.relative_to(repo)}: {_count_images(root)} JPEGs, {shrink.classes} classes (Kaggle layout)"
    ]


def _shadow_cub(repo: Path, metadata: Path, shrink: Shrink, overrides: dict[str, Any]) -> list[str]:
    """CUB_200_2011 as downloaded (images.txt, bounding_boxes.txt, train_test_split.txt, ...) and CUBV2."""
    from acol.data.shadow_cub import generate_shadow_cub

    fullsup = overrides.get("data.fullsup_metadata")
    root = repo / str(overrides["data.root"])
    generate_shadow_cub(
        root,
        metadata / "CUB",
        classes=shrink.classes,
        train_per_class=shrink.train_per_class,
        test_per_class=shrink.val_per_class,
        fullsup_per_class=shrink.fullsup_per_class if fullsup else 0,
        fullsup_metadata_out=repo / str(fullsup) if fullsup else None,
    )
    return [f"{root.relative_to(repo)}: {_count_images(root)} JPEGs, {shrink.classes} classes (CUB layout)"]


def _shadow_openimages(repo: Path, metadata: Path, shrink: Shrink, overrides: dict[str, Any]) -> list[str]:
    """dataset/OpenImages as unzipped (images, instance and ignore masks beside them) and the metadata of
    what was written where the preset reads it (``data.metadata``)."""
    from acol.data.shadow_openimages import generate_shadow_openimages

    root = repo / str(overrides["data.root"])
    per_class = {
        "train": shrink.train_per_class,
        "val": shrink.fullsup_per_class,
        "test": shrink.val_per_class,
    }
    generate_shadow_openimages(root, metadata / "OpenImages", repo / str(overrides["data.metadata"]),
                               classes=shrink.classes, per_class=per_class)  # fmt: skip
    return [
        f"{root.relative_to(repo)}: {_count_images(root)} JPEGs, {shrink.classes} classes (OpenImages layout)"
    ]


_SHADOWS = {"ilsvrc": _shadow_ilsvrc, "cub": _shadow_cub, "openimages": _shadow_openimages}


def _count_images(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))


def _weights(repo: Path, overrides: dict[str, Any]) -> str:
    """A torchvision state dict of the preset's backbone where the preset expects the ImageNet one."""
    import torch
    import torchvision

    backbone = str(overrides["model.backbone"])
    constructor, kwargs = _TORCHVISION[backbone]
    path = repo / str(overrides["model.backbone_weights"])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(getattr(torchvision.models, constructor)(weights=None, **kwargs).state_dict(), path)
    return f"{path.relative_to(repo)}: torchvision {constructor} state dict ({path.stat().st_size / 2**20:.0f} MiB)"


def _env(repo: Path) -> dict[str, str]:
    """The stages' environment: this Python first, the copy's code, its own MLflow store, the kill hook."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(repo)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo / 'mlflow.db'}"
    env["ACOL_EPOCH_HOOK"] = KILL_HOOK
    env.pop("RAY_ADDRESS", None)  # a private local Ray per stage, as on a laptop
    env.pop("ACOL_PIPELINE_RUN", None)
    return env


def _stream(cmd: list[str], repo: Path, env: dict[str, str], prefix: str) -> tuple[int, dict[str, float]]:
    """Run `cmd`, echo its output, and time DVC's stages from its ``Running stage '<name>'`` lines."""
    started: dict[str, float] = {}
    process = subprocess.Popen(
        cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert process.stdout is not None
    for line in process.stdout:
        print(f"{prefix}{line}", end="", flush=True)
        if line.startswith("Running stage '"):
            started[line.split("'")[1]] = time.perf_counter()
    code = process.wait()
    started["(end)"] = time.perf_counter()
    names = list(started)
    return code, {a: started[b] - started[a] for a, b in itertools.pairwise(names)}


def _pipeline(rehearsal: Rehearsal, shrink: Shrink, env: dict[str, str]) -> None:
    """The README's command: ``dvc exp run -n NAME $(python -m acol.presets NAME)``, amounts shrunk."""
    from acol.presets import dvc_set_args

    sets = [arg for value in shrink.overrides() for arg in ("-S", value)]
    cmd = ["dvc", "exp", "run", "-n", f"rehearse-{rehearsal.preset}", *dvc_set_args(rehearsal.preset), *sets]
    log.info("running: %s", " ".join(cmd))
    code, stages = _stream(cmd, rehearsal.repo, env, "  | ")
    if code:
        raise RuntimeError(
            f"the pipeline failed (exit {code}): see the output above; the copy is {rehearsal.repo}"
        )
    for stage, seconds in stages.items():
        rehearsal.steps.append(Step(f"dvc stage {stage}", seconds, _produced(rehearsal, stage)))


def _produced(rehearsal: Rehearsal, stage: str) -> list[str]:
    """One line per file a stage wrote that tells what it did (counts, restarts, metrics)."""
    repo, name, _, method = rehearsal.repo, *stage.partition("@")
    if name == "prepare":
        summary = json.loads((repo / "outputs/prepare/summary.json").read_text())
        return [f"manifests: {summary['train']['images']} train, {summary['val']['images']} val images, "
                f"{summary['num_classes']} classes, {summary['problems']} problems"]  # fmt: skip
    if name == "train":
        card = json.loads((repo / f"outputs/train/{method}/model_card.json").read_text())
        rehearsal.facts[f"train@{method}"] = card
        return [f"model.pt ({card['backbone']}, {card['num_classes']} classes), {card['epochs']} epochs, "
                f"restarts {card['restarts']}, last loss {card['metrics']['loss']:.4f}"]  # fmt: skip
    if name == "extract":
        rows = [json.loads((repo / f"outputs/{d}/{method}/summary.json").read_text())["rows"]
                for d in ("extract", "extract_fullsup")]  # fmt: skip
        return [f"maps: {rows[0]} val rows, {rows[1]} train-fullsup rows"]
    if name == "evaluate":
        record = json.loads((repo / f"outputs/evaluate/{method}/evaluation.json").read_text())
        rehearsal.facts[f"evaluate@{method}"] = record
        return [_evaluation_line(record)]
    if name == "report":
        return [f"outputs/report/index.html ({(repo / 'outputs/report/index.html').stat().st_size} bytes)"]
    if name == "metrics":
        return [", ".join(sorted(p.stem for p in (repo / "metrics").glob("*.json")))]
    return []


def _evaluation_line(record: dict) -> str:
    """The evaluate step's result: box metrics, or PxAP where the dataset has masks and no boxes (OpenImages)."""
    if "maxboxacc_v2" not in record:
        return f"PxAP {record['pxap']:.2f}, box metrics {record.get('box_metrics')} ({record.get('backbone')}); registered"
    return (f"MaxBoxAccV2 {record['maxboxacc_v2']:.2f}, GT-known {record['gt_known_loc']:.2f}, "
            f"CAM threshold {record['best_threshold']} ({record.get('backbone')}); registered")  # fmt: skip


def _reevaluate(rehearsal: Rehearsal, method: str, env: dict[str, str]) -> None:
    """The scheduled re-evaluation (the README's crontab command) of the champion just registered."""
    began = time.perf_counter()
    out = f"outputs/reevaluate/{method}"
    manifests = [
        "--manifest",
        "outputs/prepare/val.parquet",
        "--fullsup-manifest",
        "outputs/prepare/fullsup.parquet",
    ]
    cmd = [
        sys.executable,
        "pipelines/reevaluate.py",
        "--method",
        method,
        *manifests,
        "--engine",
        "plain",
        "--out",
        out,
    ]
    code, _ = _stream(cmd, rehearsal.repo, env, "  | ")
    report = json.loads((rehearsal.repo / out / "report.json").read_text()) if code in (0, 3) else {}
    rehearsal.facts["reevaluate"] = {"exit": code, **report}
    if code not in (0, 3):
        raise RuntimeError(f"the re-evaluation failed (exit {code}); the copy is {rehearsal.repo}")
    produced = [f"exit {code}: {report.get('summary')}", f"settings: {report.get('settings')}"]
    rehearsal.steps.append(Step(f"reevaluate@{method}", time.perf_counter() - began, produced))


_SERVE_CHECK = """
import json, sys
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
row = model.predict(pd.DataFrame({"image": [open(sys.argv[2], "rb").read()]}), params={"top_k": 2}).iloc[0]
print(json.dumps({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in row.items() if k != "maps"}))
"""


def _serve(rehearsal: Rehearsal, name: str, env: dict[str, str]) -> None:
    """The served model (``models:/<name>@champion``, pyfunc) on one val image: classes, scores, boxes."""
    import pyarrow.parquet as pq

    began = time.perf_counter()
    val = pq.read_table(rehearsal.repo / "outputs/prepare/val.parquet", columns=["image_id"])
    root = Path(json.loads((rehearsal.repo / "outputs/prepare/summary.json").read_text())["root"])
    image = (rehearsal.repo / root if not root.is_absolute() else root) / val.column("image_id")[0].as_py()
    done = subprocess.run(
        [sys.executable, "-c", _SERVE_CHECK, f"models:/{name}@champion", str(image)],
        cwd=rehearsal.repo, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"the served model failed on {image}:\n{done.stderr[-3000:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    rehearsal.facts["served"] = answer
    produced = [f"models:/{name}@champion on {image.name}: {answer['classes']} {answer['scores']}",
                f"boxes (image pixels {answer['width']}x{answer['height']}): {answer['boxes']}"]  # fmt: skip
    rehearsal.steps.append(Step("serve (pyfunc)", time.perf_counter() - began, produced))


def _registered(rehearsal: Rehearsal, method: str, env: dict[str, str]) -> str:
    """The registry name the evaluate stage used, read back from its MLflow tags."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`acol.stage` = 'evaluate' and tags.`acol.method` = '{method}'",
    )
    if not runs or "model_name" not in runs[0].data.tags:
        raise RuntimeError(
            f"no evaluate run of {method} registered a model (MLflow at {env['MLFLOW_TRACKING_URI']})"
        )
    tags = runs[0].data.tags
    version = client.get_model_version_by_alias(tags["model_name"], "champion")
    rehearsal.facts["registered"] = {"name": tags["model_name"], "version": tags["model_version"],
                                     "champion": str(version.version), "tags": dict(version.tags)}  # fmt: skip
    return tags["model_name"]


def rehearse(preset: str, work: str | os.PathLike[str], shrink: Shrink | None = None) -> Rehearsal:
    """Run the rehearsal of `preset` in the empty (or new) folder `work`; returns what ran and produced."""
    from acol.presets import preset_overrides

    shrink = shrink or Shrink()
    overrides = preset_overrides(preset)
    (method,) = overrides["methods"]
    work = Path(work).resolve()
    repo = work / "repo"
    if repo.exists():
        raise FileExistsError(f"{repo} exists: rehearse in an empty folder")
    rehearsal = Rehearsal(preset, repo)
    began = time.perf_counter()
    repo.mkdir(parents=True)
    _copy_checkout(repo)
    make = _SHADOWS[_dataset(preset)]
    produced = make(repo, _metadata(work), shrink, overrides)
    produced.append(_weights(repo, overrides))
    rehearsal.steps.append(Step("copy, data, weights", time.perf_counter() - began, produced))
    env = _env(repo)
    _pipeline(rehearsal, shrink, env)
    name = _registered(rehearsal, method, env)
    _reevaluate(rehearsal, method, env)
    _serve(rehearsal, name, env)
    rehearsal.facts["killed"] = sorted(str(p) for p in (repo / "outputs" / "ray").glob(f"*/{KILL_MARKER}"))
    return rehearsal


def main(argv: list[str] | None = None) -> int:
    from acol.presets import PRESETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", choices=sorted(PRESETS), metavar="PRESET", help="a preset of acol.presets")
    parser.add_argument(
        "--work", default=None, help="an empty folder for the copy (default: a new temp folder)"
    )
    parser.add_argument("--classes", type=int, default=Shrink.classes)
    parser.add_argument("--train-per-class", type=int, default=Shrink.train_per_class)
    parser.add_argument("--val-per-class", type=int, default=Shrink.val_per_class)
    parser.add_argument("--fullsup-per-class", type=int, default=Shrink.fullsup_per_class)
    parser.add_argument(
        "--epochs", type=int, default=Shrink.epochs, help="at least 2: a worker dies in epoch 2"
    )
    parser.add_argument(
        "--gpu", action="store_true", help="keep the preset's use_gpu settings (a GPU machine)"
    )
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (a worker is killed at the start of epoch 2)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix=f"rehearse-{args.preset}-"))
    shrink = Shrink(args.classes, args.train_per_class, args.val_per_class, args.fullsup_per_class,
                    args.epochs, use_gpu=args.gpu)  # fmt: skip
    rehearsal = rehearse(args.preset, work, shrink)
    print(rehearsal.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
