"""Shadow CUB-200-2011: synthetic images in the real CUB download layout, with the real test set's geometry.

Why: the CUB path of the pipeline (``data.source: cub``, the CUB reader, CUBV2 "train-fullsup" threshold
selection) can be rehearsed end to end without the CUB images. The geometry comes from the WSOL metadata
shipped in ``tests/assets/wsol-metadata.tar.xz``: ``CUB/test`` (CUB-200-2011 test: ids, sizes, one box each)
and ``CUB/val`` (CUBV2). Images are drawn by the shadow ILSVRC renderer (``render_shadow_image``): an object
inside each real box, class cue = part hue + body texture (classes 0..199 are distinct pairs).

Layout written under ``root`` (the ``CUB_200_2011`` folder; ``data.root`` for ``data.source: cub``):

    images.txt, image_class_labels.txt, bounding_boxes.txt, train_test_split.txt, classes.txt
    images/<class>/<file>.jpg       test: the metadata's first ``test_per_class`` images of each kept class,
                                    at their ids, sizes and boxes; train: ``train_per_class`` made-up
                                    ``<Name>_<9000+n>_<n>.jpg`` per class, sizes and boxes of the class's
                                    test images (cycled)
    images/<CUBV2 id>               fullsup: the first ``fullsup_per_class`` CUB/val images of each kept class
    shadow_cub.json                 arguments and counts, written last: marks a complete dataset

plus, at ``fullsup_metadata_out``, the WSOL metadata folder of the fullsup images written
(``data.fullsup_metadata``; ``index_fullsup`` prefixes its ids with ``images/``).
Every image is drawn by ``np.random.default_rng([seed, split, index, 2])`` (index = metadata row for test
and fullsup, class-major position for train): byte-identical for the same arguments.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from acol.config import SyntheticConfig
from acol.data.shadow_ilsvrc import (
    ShadowImage,
    first_per_class,
    metadata_geometry,
    write_geometry_metadata,
    write_shadow_images,
)
from acol.data.synthetic_base import Split
from acol.io import write_text_atomic

__all__ = ["CUB_CLASSES", "ShadowCub", "generate_shadow_cub", "main"]

CUB_CLASSES = 200
_STREAM = 2  # the 4th seed word: never the shadow ILSVRC (1) or toy (none) streams
_MARKER = "shadow_cub.json"
_TRAIN_SERIAL = 9000  # made-up train serials start here: real CUB serials stay below 1000


@dataclass(frozen=True)
class ShadowCub:
    """What was written: class folder names (index order) and the images of each split.

    Names are ids relative to ``root/images`` (the CUB reader's and WSOL metadata's convention).
    """

    root: Path
    classes: list[str]
    train: list[ShadowImage]
    test: list[ShadowImage]
    fullsup: list[ShadowImage]


def _class_names(test: list[ShadowImage], classes: int) -> list[str]:
    """Folder names of classes 0..classes-1, from the test ids (``<class folder>/<file>.jpg``)."""
    names: dict[int, str] = {}
    for g in test:
        names.setdefault(g.label, g.name.split("/")[0])
    missing = [k for k in range(classes) if k not in names]
    if missing:
        raise ValueError(f"CUB test metadata has no image of classes {missing[:5]}")
    return [names[k] for k in range(classes)]


def _train_images(test: list[ShadowImage], names: list[str], per_class: int) -> list[ShadowImage]:
    """``per_class`` made-up train images per class, class-major, each with the size and box of one of the
    class's test images (cycled) and a CUB-style name (``<Name>_<serial>_<n>.jpg``)."""
    if per_class >= 1000:
        raise ValueError(f"train_per_class must be < 1000 (CUB-style 4-digit serials), got {per_class}")
    out = []
    for k, folder in enumerate(names):
        geometry = [g for g in test if g.label == k]
        prefix = Path(geometry[0].name).stem.rsplit("_", 2)[
            0
        ]  # Black_Footed_Albatross_0046_18 -> ..._Albatross
        for n in range(per_class):
            g = geometry[n % len(geometry)]
            name = f"{folder}/{prefix}_{_TRAIN_SERIAL + n}_{n}.jpg"
            out.append(ShadowImage(name, g.width, g.height, k, g.boxes))
    return out


def _under_images(jobs: list[tuple[int, ShadowImage]]) -> list[tuple[int, ShadowImage]]:
    """The same jobs named relative to ``root`` (``images/<id>``), where the writer puts them."""
    return [(i, ShadowImage(f"images/{g.name}", g.width, g.height, g.label, g.boxes)) for i, g in jobs]


def _annotation_files(test: list[ShadowImage], train: list[ShadowImage], names: list[str]) -> dict[str, str]:
    """The five CUB text files; image ids 1..M in path order (class-major, as the real images.txt)."""
    rows = sorted([(g, "0") for g in test] + [(g, "1") for g in train], key=lambda row: row[0].name)
    files: dict[str, list[str]] = {
        "images.txt": [],
        "image_class_labels.txt": [],
        "bounding_boxes.txt": [],
        "train_test_split.txt": [],
    }
    for i, (g, is_train) in enumerate(rows, 1):
        if len(g.boxes) != 1:
            raise ValueError(f"{g.name}: CUB images have one box, the metadata gives {len(g.boxes)}")
        x0, y0, x1, y1 = g.boxes[0]  # WSOL CUB boxes are [x, y, x + w, y + h], as the CUB reader makes them
        files["images.txt"].append(f"{i} {g.name}")
        files["image_class_labels.txt"].append(f"{i} {g.label + 1}")
        files["bounding_boxes.txt"].append(f"{i} {x0:.1f} {y0:.1f} {x1 - x0:.1f} {y1 - y0:.1f}")
        files["train_test_split.txt"].append(f"{i} {is_train}")
    files["classes.txt"] = [f"{k + 1} {name}" for k, name in enumerate(names)]
    return {name: "".join(f"{line}\n" for line in lines) for name, lines in files.items()}


def _plan(
    metadata_dir: Path, classes: int, train_per_class: int, test_per_class: int, fullsup_per_class: int
) -> tuple[list[str], dict[Split, list[tuple[int, ShadowImage]]]]:
    """Class folder names and the (render index, image) jobs of each split: train, val (= CUB test) and
    holdout (= CUBV2 fullsup); raises if a made-up train name is a real one."""
    every_test = metadata_geometry(metadata_dir / "test")
    names = _class_names(every_test, classes)
    fullsup = metadata_geometry(metadata_dir / "val") if fullsup_per_class else []
    splits: dict[Split, list[tuple[int, ShadowImage]]] = {
        "train": list(enumerate(_train_images(every_test, names, train_per_class))),
        "val": first_per_class(every_test, classes, test_per_class),
        "holdout": first_per_class(fullsup, classes, fullsup_per_class),
    }
    real = {g.name for _, g in splits["val"] + splits["holdout"]}
    clash = real & {g.name for _, g in splits["train"]}
    if clash:
        raise ValueError(f"made-up train names clash with real ones: {sorted(clash)[:3]}")
    return names, splits


def _check_marker(root: Path, arguments: dict[str, object]) -> None:
    """Refuse to write over a complete shadow CUB made with other arguments (never mix two datasets)."""
    marker = root / _MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("arguments") != arguments:
        raise FileExistsError(
            f"{root} holds a shadow CUB made with other arguments ({marker}); use an empty folder"
        )


def generate_shadow_cub(
    root: str | os.PathLike[str],
    metadata_dir: str | os.PathLike[str],
    *,
    classes: int,
    train_per_class: int,
    test_per_class: int,
    fullsup_per_class: int = 0,
    seed: int = 0,
    fullsup_metadata_out: str | os.PathLike[str] | None = None,
    style: SyntheticConfig | None = None,
) -> ShadowCub:
    """Write a shadow CUB_200_2011 folder at ``root`` from ``metadata_dir`` (the WSOL ``CUB`` folder, holding
    ``test/`` and ``val/``) for classes 0..classes-1; see the module docstring for what goes where.

    ``style``: colours, contrast, part size, noise and JPEG quality (its seed is replaced by ``seed``);
    default ``SyntheticConfig()``'s. ``fullsup_metadata_out`` needs ``fullsup_per_class >= 1``.
    """
    if not 1 <= classes <= CUB_CLASSES:
        raise ValueError(f"classes must be in 1..{CUB_CLASSES}, got {classes}")
    if min(train_per_class, test_per_class, fullsup_per_class) < 0 or test_per_class < 1:
        raise ValueError("test_per_class must be >= 1; train_per_class and fullsup_per_class >= 0")
    if fullsup_metadata_out is not None and fullsup_per_class < 1:
        raise ValueError("fullsup_metadata_out needs fullsup_per_class >= 1")
    root, metadata_dir = Path(root), Path(metadata_dir)
    config = (style or SyntheticConfig()).model_copy(update={"seed": seed})
    arguments: dict[str, object] = {"classes": classes, "train_per_class": train_per_class,
                                    "test_per_class": test_per_class, "fullsup_per_class": fullsup_per_class,
                                    "style": config.model_dump(mode="json")}  # fmt: skip
    _check_marker(root, arguments)
    names, splits = _plan(metadata_dir, classes, train_per_class, test_per_class, fullsup_per_class)
    root.mkdir(parents=True, exist_ok=True)
    for split, jobs in splits.items():
        write_shadow_images(root, config, split, _under_images(jobs), stream=_STREAM)
    train, test, fullsup = ([g for _, g in splits[split]] for split in ("train", "val", "holdout"))
    for name, text in _annotation_files(test, train, names).items():
        write_text_atomic(root / name, text)
    if fullsup_metadata_out is not None:
        write_geometry_metadata(Path(fullsup_metadata_out), fullsup, names, "cub")
    counts = {"train": len(train), "test": len(test), "fullsup": len(fullsup)}
    write_text_atomic(root / _MARKER, json.dumps({"arguments": arguments, "images": counts}, indent=2) + "\n")
    return ShadowCub(root, names, train, test, fullsup)


def main(argv: list[str] | None = None) -> int:
    """``python -m acol.data.shadow_cub ROOT METADATA_DIR --classes 4 ...``: the function from a shell."""
    import argparse

    parser = argparse.ArgumentParser(
        description="Write a shadow CUB_200_2011 folder (see the module docstring)."
    )
    parser.add_argument("root", help="the CUB_200_2011 folder to write")
    parser.add_argument("metadata_dir", help="the WSOL metadata CUB folder (holding test/ and val/)")
    parser.add_argument("--classes", type=int, default=CUB_CLASSES)
    parser.add_argument("--train-per-class", type=int, default=3)
    parser.add_argument("--test-per-class", type=int, default=3)
    parser.add_argument("--fullsup-per-class", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fullsup-metadata-out", default=None, help="where to write the fullsup WSOL folder")
    args = parser.parse_args(argv)
    written = generate_shadow_cub(args.root, args.metadata_dir, classes=args.classes,
                                  train_per_class=args.train_per_class, test_per_class=args.test_per_class,
                                  fullsup_per_class=args.fullsup_per_class, seed=args.seed,
                                  fullsup_metadata_out=args.fullsup_metadata_out)  # fmt: skip
    print(f"{written.root}: {len(written.classes)} classes, {len(written.train)} train, "
          f"{len(written.test)} test, {len(written.fullsup)} fullsup images")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
