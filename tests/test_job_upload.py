"""What `ray job submit --working-dir .` uploads: the code, never the weights, data or outputs beside it.

Ray packs the working dir minus what `.gitignore` and `.rayignore` name (and `excludes`); a package over
100 MiB is refused ("Request failed with status code 413"), which a VGG16 state dict under `weights/` alone
exceeds. The oracle is Ray's own packer, run on a checkout-shaped folder with this repository's ignore files.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCAL_ONLY = [
    "weights/vgg16-397923af.pth",  # the presets' model.backbone_weights
    "data/CUB_200_2011/images/001.Black_footed_Albatross/a.jpg",
    "data/ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000001.JPEG",
    "outputs/train/acol/model.pt",
    "outputs/prepare/train.parquet",
    "mlflow.db",
    "mlruns/0/meta.yaml",
    ".venv/bin/python",
    ".dvc/cache/files/md5/00/abc",
]
CODE = [
    "acol/__init__.py",
    "acol/data/__init__.py",
    "acol/models/weights.py",
    "pipelines/train.py",
    "params.yaml",
    "dvc.yaml",
    "scripts/run_stage.sh",
]


def test_the_job_package_holds_the_code_and_no_local_files(tmp_path: Path) -> None:
    from ray._private.runtime_env.packaging import create_package

    checkout = tmp_path / "checkout"
    for name in (".gitignore", ".rayignore", "data/.gitignore"):
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, checkout / name)
    for name in [*LOCAL_ONLY, *CODE]:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_bytes(b"x" * 1024)
    package = tmp_path / "package.zip"
    create_package(str(checkout), package, include_gitignore=True)  # as `ray job submit` without excludes
    names = {Path(n).as_posix().rstrip("/") for n in zipfile.ZipFile(package).namelist()}
    assert set(CODE) <= names
    assert not [n for n in names if any(n == f or n.startswith(f + "/") for f in LOCAL_ONLY)]
    assert not [n for n in names if n.split("/")[0] in {"weights", "outputs", ".venv", "mlruns"}]
