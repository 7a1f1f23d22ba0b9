"""Benchmark: what each CPU kernel level (`acol.cpu_isa`) gives in bits and costs in speed, on this machine.

For each setting, a fresh process (the kernel variables are read once per process) builds the default small
ACoL model (10 classes, head 128, seed 0), takes ``--steps`` Adam steps on one fixed random batch
(``--batch`` images at 64 px), then times ``--timed`` more training steps and as many inference forwards
(the maps included). Reported per setting: the SHA-256 of the weights after the first steps (the same digest =
the same bits), training and inference images/s, and the ratio to the native kernels measured in the same run.
Settings: native (nothing set), each library's variable alone at AVX2, the ``avx2`` level (all three: what
the pipeline pins), the ``baseline`` level, the ``avx2`` level at other thread counts; ``--rounds`` interleaves
the settings so that load changes hit them alike.

    python benchmarks/bench_cpu_isa.py --out benchmarks/results/cpu_isa.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from acol.cpu_isa import CPU_ISA_ENV, LEVELS  # noqa: E402

PROBE = """
import hashlib, json, sys, time, torch
from acol.models import build_model
steps, timed, batch, threads = map(int, sys.argv[1:5])
torch.manual_seed(0)
torch.set_num_threads(threads)
model = build_model("small", 10, "acol", head_channels=128)
optimizer = torch.optim.Adam(model.parameters(), 1e-3)
generator = torch.Generator().manual_seed(1)
images = torch.rand(batch, 3, 64, 64, generator=generator)
labels = torch.randint(0, 10, (batch,), generator=generator)
def step():
    loss = model.loss(model(images, labels), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
for _ in range(steps):
    step()
digest = hashlib.sha256()
for _, value in sorted(model.state_dict().items()):
    digest.update(value.numpy().tobytes())
started = time.perf_counter()
for _ in range(timed):
    step()
train = batch * timed / (time.perf_counter() - started)
model.eval()
with torch.no_grad():
    started = time.perf_counter()
    for _ in range(timed):
        model.localization_maps(model(images), labels)
    infer = batch * timed / (time.perf_counter() - started)
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "sha256": digest.hexdigest()[:16],
                  "train_images_per_s": train, "infer_images_per_s": infer}))
"""

KERNEL_VARS = (CPU_ISA_ENV, *LEVELS["avx2"])


def settings(threads: int) -> dict[str, tuple[dict[str, str], int]]:
    avx2 = LEVELS["avx2"]
    found: dict[str, tuple[dict[str, str], int]] = {"native": ({}, threads)}
    for name, value in avx2.items():
        found[f"{name}={value} alone"] = ({name: value}, threads)
    found["avx2 level"] = (dict(avx2), threads)
    found["baseline level"] = (dict(LEVELS["baseline"]), threads)
    for other in (1, threads + 1):
        found[f"avx2 level, {other} threads"] = (dict(avx2), other)
    return found


def probe(env_vars: dict[str, str], threads: int, args: argparse.Namespace) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_VARS}
    env.update(env_vars, PYTHONPATH=str(REPO))
    command = [sys.executable, "-c", PROBE, str(args.steps), str(args.timed), str(args.batch), str(threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="Adam steps before the weights' digest")
    parser.add_argument("--timed", type=int, default=20, help="timed training steps and forwards")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="the pipeline's train.cpus_per_worker")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    runs: dict[str, list[dict[str, object]]] = {}
    for _ in range(args.rounds):
        for name, (env_vars, threads) in settings(args.threads).items():
            runs.setdefault(name, []).append(probe(env_vars, threads, args))
    native_train = statistics.median(float(r["train_images_per_s"]) for r in runs["native"])
    native_infer = statistics.median(float(r["infer_images_per_s"]) for r in runs["native"])
    table = {}
    for name, results in runs.items():
        train = statistics.median(float(r["train_images_per_s"]) for r in results)
        infer = statistics.median(float(r["infer_images_per_s"]) for r in results)
        table[name] = {
            "capability": results[0]["capability"],
            "sha256": sorted({str(r["sha256"]) for r in results}),
            "train_images_per_s": round(train, 1),
            "infer_images_per_s": round(infer, 1),
            "train_vs_native": round(train / native_train, 3),
            "infer_vs_native": round(infer / native_infer, 3),
        }
        print(f"{name:38s} {table[name]}")
    if args.out:
        args.out.write_text(
            json.dumps({"args": vars(args) | {"out": str(args.out)}, "settings": table}, indent=2)
        )


if __name__ == "__main__":
    main()
