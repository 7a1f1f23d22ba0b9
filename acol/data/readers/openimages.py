"""OpenImages30k (Choe et al., CVPR 2020) read into manifests: images with class labels, and for the val and
test splits each image's instance masks and ignore mask (no boxes: its localization metric is PxAP).

``root`` is the ``dataset/OpenImages`` folder that wsolevaluation's ``prepare_openimages.sh`` unzips (its
README's tree): ``{train,val,test}/<class>/<id>.jpg``, with the masks of val and test beside their images
(``val/<class>/<id>_m<class>_<n>.png``, ``<id>_ignore.png``), so the mask root is ``root`` too.
``metadata`` is wsolevaluation's ``metadata/OpenImages`` folder (``{train,val,test}/image_ids.txt``,
``class_labels.txt``, ``localization.txt``: ``id,mask_path,ignore_path``, one line an instance mask, the
ignore path on an image's first line only; ``image_sizes.txt`` ships empty, so sizes come from the image
headers). Image ids and mask paths are relative to ``root`` as the metadata gives them. Class index = the
metadata's label; class id = its folder name (``01226z``, an OpenImages ``/m/`` id without the slashes).
Choe et al.'s splits: ``train`` trains, ``val`` is train-fullsup (hyperparameters), ``test`` is reported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import pyarrow as pa

from acol.data.errors import DataError, DataProblem
from acol.data.readers.wsol_metadata import read_wsol_metadata

__all__ = ["SPLITS", "openimages_classes", "read_openimages"]

SPLITS = ("train", "val", "test")


def openimages_classes(metadata: str | os.PathLike[str]) -> list[str]:
    """Class folder names in label order, from every split's ``class_labels.txt`` (``<split>/<class>/<file>``);
    a label named by two folders, or a label without any, is an error naming the file."""
    names: dict[int, str] = {}
    for split in SPLITS:
        path = Path(metadata) / split / "class_labels.txt"
        if not path.is_file():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            image_id, _, label = line.rpartition(",")
            parts = image_id.split("/")
            if len(parts) != 3 or not label.strip().isdigit():
                raise DataError(
                    f"{path}:{n}", f"malformed line: expected <split>/<class>/<file>,<label>: {line!r}"
                )
            folder = names.setdefault(int(label), parts[1])
            if folder != parts[1]:
                raise DataError(
                    f"{path}:{n}", f"label {label} is class {folder!r} elsewhere, {parts[1]!r} here"
                )
    if not names:
        raise DataError(str(metadata), "no class_labels.txt in train/, val/ or test/")
    missing = sorted(set(range(max(names) + 1)) - set(names))
    if missing:
        raise DataError(str(metadata), f"labels {missing[:5]} have no image in any split")
    return [names[k] for k in range(len(names))]


def read_openimages(
    root: str | os.PathLike[str],
    metadata: str | os.PathLike[str],
    split: Literal["train", "val", "test"],
    *,
    verify_images: bool = False,
    strict: bool = False,
) -> tuple[pa.Table, list[DataProblem]]:
    """Manifest of one split (rows in ``image_ids.txt`` order) and the problems met.

    Sizes are read from the image headers (``verify_images``: every image decoded); val and test rows carry
    their masks (``mask_path`` the first instance, ``more_mask_paths`` the others, ``ignore_path``). Images
    without a label, a readable image or (val, test) a mask are recorded and dropped; ``strict`` raises.
    """
    if split not in SPLITS:
        raise ValueError(f"read_openimages: split must be one of {SPLITS}, got {split!r}")
    folder = Path(metadata) / split
    if not folder.is_dir():
        raise DataError(str(folder), "missing folder: the OpenImages WSOL metadata has train/, val/, test/")
    return read_wsol_metadata(
        folder,
        openimages_classes(metadata),
        image_root=root,
        localization="boxes" if split == "train" else "masks",
        source="openimages",
        strict=strict,
        verify_images=verify_images,
    )
