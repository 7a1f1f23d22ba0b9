"""Probe: does ACoL beat CAM on the synthetic data with the same budget, and does B cover what A misses?

Generates the synthetic ILSVRC-format dataset (acol.data.synthetic) into a temporary folder, reads it back from
disk, and trains CAM and ACoL on the "small" backbone with the pipeline's own training path and the same budget:
`acol.training.engine.build_optimizer` / `build_scheduler` (Adam, lr 1e-3, head x1, weight decay 1e-4, cosine to 0 per
step), `train_one_epoch`, batch 64, `acol.data.transforms.train_transform(size)` (resize to size*8/7, random
crop, flip, ImageNet normalization). Evaluation uses the project's metrics as the pipeline does: the normalized
maps (A, B, fused = `WSOLModel.localization_maps`) go through `acol.wsol.scoremaps.prepare_scoremap` (bicubic to 224x224,
min-max), GT boxes through `acol.wsol.boxes.scale_boxes`, and `acol.wsol.localization_metrics.BoxEvaluator` gives MaxBoxAccV2
(multi-contour, IoU 30/50/70) and GT-known MaxBoxAcc (largest contour, IoU 50), the threshold chosen on the
evaluated split itself (both methods alike). It also reports the mean map inside the part, the body without the
part and the background (masks resized nearest to 224), for A, B and fused.

    .venv/bin/python studies/synthetic_probe.py --seed 0 --epochs 8 --out /tmp/probe_seed0.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from acol.config import TrainParams
from acol.data.errors import ProblemLog
from acol.data.readers.ilsvrc import read_solution_csv
from acol.data.synthetic import SyntheticConfig, class_wnids, generate_synthetic, render_image
from acol.data.transforms import eval_transform, train_transform
from acol.models import build_model, normalize_maps, select_class_maps
from acol.training.engine import build_optimizer, build_scheduler, seed_everything, train_one_epoch
from acol.wsol.boxes import scale_boxes
from acol.wsol.localization_metrics import BoxEvaluator
from acol.wsol.scoremaps import RESIZE_LENGTH, prepare_scoremap


def load_split(root: Path, config: SyntheticConfig, split: str) -> tuple[np.ndarray, np.ndarray, list]:
    """Images (N, H, W, 3) uint8 RGB read from disk, labels (N,), boxes per image ((n, 4) x0y0x1y1; val only)."""
    wnid_index = {w: k for k, w in enumerate(class_wnids(config.num_classes))}
    if split == "train":
        paths = sorted((root / "train").glob("*/*.JPEG"))
        labels = [wnid_index[p.parent.name] for p in paths]
        boxes: list = [None] * len(paths)
    else:
        solution = read_solution_csv(root / f"LOC_{split}_solution.csv", ProblemLog(strict=True))
        paths, labels, boxes = [], [], []
        for image_id, objects in solution.items():
            paths.append(root / split / f"{image_id}.JPEG")
            labels.append(wnid_index[objects[0][0]])
            boxes.append(np.array([box for _, box in objects]).astype(int))  # (n, 4) x0, y0, x1, y1
    images = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths])
    return images, np.array(labels, dtype=np.int64), boxes


class ArrayDataset(Dataset):
    """(image, label, index) with a torchvision v2 transform, as the pipeline's datasets yield."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
        self.labels = torch.from_numpy(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.transform(self.images[i]), self.labels[i], i


def train(method: str, data: ArrayDataset, args: argparse.Namespace) -> tuple:
    seed_everything(args.seed)
    params = TrainParams(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, head_lr_mult=args.head_lr_mult,
        optimizer="adam", weight_decay=args.weight_decay, lr_schedule="cosine", image_size=args.image_size,
        seed=args.seed,
    )  # fmt: skip
    model = build_model(
        "small", args.num_classes, method=method, head_channels=args.head_channels,
        erase_threshold=args.erase_threshold,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, generator=generator, num_workers=0)
    optimizer = build_optimizer(model, params)
    scheduler = build_scheduler(optimizer, params, len(loader))
    start = time.perf_counter()
    history = []
    for epoch in range(args.epochs):
        stats = train_one_epoch(model, loader, optimizer, scheduler, torch.device("cpu"))
        history.append({k: round(v, 4) for k, v in stats.items() if k in ("loss", "acc_a", "acc_b")})
        print(f"  {method} epoch {epoch + 1}/{args.epochs} {history[-1]}", flush=True)
    return model, time.perf_counter() - start, history


def box_scores(maps: np.ndarray, gt_boxes: list) -> dict:
    """maps (N, 224, 224) prepared; GT boxes in the 224 frame -> MaxBoxAccV2 and GT-known MaxBoxAcc (%)."""
    v2 = BoxEvaluator((30, 50, 70), multi_contour=True)
    v1 = BoxEvaluator((50,), multi_contour=False)
    for evaluator in (v2, v1):
        evaluator.accumulate(maps, gt_boxes)
    r2, r1 = v2.compute(), v1.compute()
    return {
        "maxboxaccv2": round(r2.mean_max_box_acc, 2),
        "maxboxaccv2_per_iou": {k: round(v, 2) for k, v in r2.max_box_acc.items()},
        "maxboxaccv2_thresholds": r2.best_threshold,
        "maxboxacc": round(r1.max_box_acc[50], 2),
        "maxboxacc_threshold": r1.best_threshold[50],
    }


@torch.no_grad()
def evaluate(model: torch.nn.Module, method: str, data: ArrayDataset, boxes: list, regions, args) -> dict:
    model.eval()
    x = torch.stack([data[i][0] for i in range(len(data))])
    labels = data.labels
    outputs = [model(x[i : i + 256]) for i in range(0, len(x), 256)]
    logits = torch.cat([o.logits for o in outputs])
    chunks = [labels[i : i + 256] for i in range(0, len(labels), 256)]
    result: dict = {
        "method": method,
        "top1": round(float((logits.argmax(1) == labels).float().mean() * 100), 2),
    }
    maps_a = torch.cat([select_class_maps(o.maps_a, c) for o, c in zip(outputs, chunks, strict=True)])
    named = {"A": normalize_maps(maps_a)}
    if method == "acol":
        logits_b = torch.cat([o.logits_b for o in outputs])
        result["top1_b"] = round(float((logits_b.argmax(1) == labels).float().mean() * 100), 2)
        maps_b = torch.cat([select_class_maps(o.maps_b, c) for o, c in zip(outputs, chunks, strict=True)])
        named["B"] = normalize_maps(maps_b)
        named["fused"] = torch.cat(
            [model.localization_maps(o, c) for o, c in zip(outputs, chunks, strict=True)]
        )  # max of normalized A and B
    part, body, background = regions
    for name, maps in named.items():
        prepared = prepare_scoremap(maps.numpy().astype(np.float32))  # (N, 224, 224) as the evaluator
        result[name] = {
            "part": round(float(prepared[part].mean()), 3),
            "body_minus_part": round(float(prepared[body].mean()), 3),
            "background": round(float(prepared[background].mean()), 3),
            "body_px_ge_0.5": round(float((prepared[body] >= 0.5).mean() * 100), 1),
            **box_scores(prepared, boxes),
        }
    return result


@torch.no_grad()
def save_maps(model: torch.nn.Module, method: str, data: ArrayDataset, images: np.ndarray, args) -> None:
    """Write the first 16 val images and their normalized maps (A, and B / fused for ACoL) as `<method>.npz`."""
    x = torch.stack([data[i][0] for i in range(16)])
    labels = data.labels[:16]
    output = model(x)
    maps = {"A": normalize_maps(select_class_maps(output.maps_a, labels))}
    if method == "acol":
        maps["fused"] = model.localization_maps(output, labels)
        maps["B"] = normalize_maps(
            select_class_maps(model.head.branch_b(output.features, output.maps_a, labels), labels)
        )
    args.maps_out.mkdir(parents=True, exist_ok=True)
    np.savez(args.maps_out / f"{method}.npz", images=images[:16], **{k: v.numpy() for k, v in maps.items()})


def parse_overrides(items: list[str]) -> dict:
    """``["key=value", ...]`` -> {key: YAML-parsed value}: any SyntheticConfig knob without a flag of its own."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--synthetic takes KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--val-per-class", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--body-mode", choices=["texture", "pair", "class"], default="texture")
    parser.add_argument("--texture-contrast", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--head-lr-mult", type=float, default=1.0)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--head-channels", type=int, default=128)
    parser.add_argument("--erase-threshold", type=float, default=0.6)
    parser.add_argument("--methods", default="cam,acol")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--maps-out", type=Path, default=None, help="save 16 val images' maps here (npz)")
    parser.add_argument(
        "--synthetic", action="append", default=[], metavar="KEY=VALUE",
        help="override any SyntheticConfig field (value parsed as YAML, e.g. clutter_count=[0,0]); repeatable",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fields = dict(
        num_classes=args.num_classes, train_per_class=args.train_per_class, val_per_class=args.val_per_class,
        holdout_per_class=0, image_size=args.image_size, seed=args.seed, body_mode=args.body_mode,
        texture_contrast=args.texture_contrast,
    )  # fmt: skip
    config = SyntheticConfig(**(fields | parse_overrides(args.synthetic)))
    report: dict = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "config": config.model_dump(mode="json"),
    }
    report["results"] = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = generate_synthetic(Path(tmp) / "synthetic", config, workers=1, progress=False)
        report["generate_s"] = round(time.perf_counter() - start, 1)
        report["summary"] = {k: v for k, v in vars(summary).items() if k != "root"}
        root = Path(summary.root)
        train_images, train_labels, _ = load_split(root, config, "train")
        val_images, val_labels, val_boxes = load_split(root, config, "val")
    rendered = [render_image(config, "val", i) for i in range(len(val_images))]
    size = args.image_size

    def at_224(masks: list[np.ndarray]) -> np.ndarray:
        small = np.stack(masks).astype(np.uint8)
        return (
            np.stack([cv2.resize(m, (RESIZE_LENGTH,) * 2, interpolation=cv2.INTER_NEAREST) for m in small])
            > 0
        )

    mask = at_224([r.mask for r in rendered])
    part = at_224([r.part_mask for r in rendered])
    regions = (part, mask & ~part, ~mask)
    gt_224 = [scale_boxes(b, size, size) for b in val_boxes]
    train_data = ArrayDataset(train_images, train_labels, train_transform(size))
    val_data = ArrayDataset(val_images, val_labels, eval_transform(size))
    for method in args.methods.split(","):
        model, seconds, history = train(method, train_data, args)
        result = evaluate(model, method, val_data, gt_224, regions, args)
        result["train_s"] = round(seconds, 1)
        if args.maps_out is not None:  # a few maps to look at (studies only; not part of the report)
            save_maps(model, method, val_data, val_images, args)
        result["history"] = history
        report["results"].append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=1), flush=True)
        if args.out is not None:  # after each method: a partial report survives a stopped run
            args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
