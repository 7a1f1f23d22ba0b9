"""``train.input: ray_data``: the same images as the DataLoader path where nothing is random, augmentation
seeded per image and epoch, and a Ray Train run fed by Ray Data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from acol.config import load_params
from acol.data.dataset import ManifestDataset
from acol.data.manifest import read_manifest
from acol.data.transforms import eval_transform, normalize
from tests.test_train import TINY_OVERRIDES


def _images_by_index(dataset) -> dict[int, tuple[torch.Tensor, int]]:
    """Every row of a Ray Dataset from `acol.distributed.ingest.epoch_dataset`: index -> (uint8 image, label)."""
    out: dict[int, tuple[torch.Tensor, int]] = {}
    for batch in dataset.iter_torch_batches(batch_size=7, device="cpu"):
        for image, label, index in zip(batch["image"], batch["label"], batch["index"], strict=True):
            assert int(index) not in out, f"row {int(index)} came twice"
            out[int(index)] = (image, int(label))
    return out


def test_ray_data_gives_the_loaders_images_without_augmentation(tiny_dataset: dict, ray_session) -> None:
    from acol.distributed.ingest import epoch_dataset

    table = read_manifest(tiny_dataset["train"])
    loader_set = ManifestDataset(table, tiny_dataset["root"], eval_transform(32))
    dataset = epoch_dataset(
        tiny_dataset["train"], tiny_dataset["root"], 32, protocol=None, seed=0, epoch=None, rows_per_task=5
    )
    rows = _images_by_index(dataset)
    assert sorted(rows) == list(range(len(loader_set)))
    norm = normalize()
    for index, (image, label) in rows.items():
        expected, expected_label, _ = loader_set[index]
        assert image.dtype == torch.uint8 and label == expected_label
        assert torch.equal(norm(image), expected), f"row {index} differs"


def test_ray_data_augmentation_is_seeded_per_image_and_epoch(tiny_dataset: dict, ray_session) -> None:
    """The same crop and flip per (seed, epoch, image) whatever the chunking; another epoch draws anew."""
    from acol.distributed.ingest import epoch_dataset

    def epoch(number: int, rows_per_task: int) -> dict[int, tuple[torch.Tensor, int]]:
        return _images_by_index(
            epoch_dataset(tiny_dataset["train"], tiny_dataset["root"], 32, protocol="acol", seed=3,
                          epoch=number, rows_per_task=rows_per_task)
        )  # fmt: skip

    first, again, second = epoch(1, 3), epoch(1, 8), epoch(2, 3)
    assert sorted(first) == sorted(again) == sorted(second) == list(range(32))
    assert all(torch.equal(first[i][0], again[i][0]) for i in first)
    changed = sum(not torch.equal(first[i][0], second[i][0]) for i in first)
    assert changed > 16, f"only {changed} of 32 images drew a new crop or flip in epoch 2"


@pytest.mark.slow
def test_a_run_fed_by_ray_data_trains_and_reports(
    tiny_dataset: dict, ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers (half a CPU each: the session's other CPU decodes) on Ray Data shards, ACoL, 2 epochs."""
    from acol.distributed.train import fit

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("ACOL_EPOCH_HOOK", raising=False)
    params = load_params(
        tmp_path / "absent.yaml",
        [*TINY_OVERRIDES, "train.input=ray_data", "train.cpus_per_worker=0.5", "train.max_failures=0",
         f"train.storage_path={tmp_path / 'ray'}"],
    )  # fmt: skip
    data = [tiny_dataset["train"], tiny_dataset["val"], tiny_dataset["root"]]
    outcome = fit(params, "acol", *data, tmp_path / "out")
    assert [row["epoch"] for row in outcome.history] == [1, 2]
    assert Path(outcome.checkpoint_path).name == "epoch-0002"  # the folder `ray.train.report` was given
    last = outcome.history[-1]
    assert all(torch.isfinite(torch.tensor(last[k])) for k in ("loss", "acc_a", "acc_b", "val_loss"))
    assert last["lr"] < outcome.history[0]["lr"]  # the schedule counted the shard's steps
    assert outcome.model_path.stat().st_size > 0
