"""A request no node of the cluster can hold fails at once, naming the params (Ray alone waits for ever)."""

from __future__ import annotations

from pathlib import Path

import pytest

from acol.config import load_params
from acol.distributed.session import Demand, RaySessionError, unplaceable

ONE_CPU_NODES = [{"CPU": 1.0}, {"CPU": 1.0}]
GPU_NODE, CPU_NODE = {"CPU": 16.0, "GPU": 8.0}, {"CPU": 32.0}


@pytest.mark.parametrize(
    ("demand", "nodes", "placeable"),
    [
        (Demand("w", {"CPU": 2.0}, 1), ONE_CPU_NODES, False),  # the 1-CPU nodes, 2 CPUs per worker
        (Demand("w", {"CPU": 1.0}, 2), ONE_CPU_NODES, True),
        (Demand("w", {"CPU": 1.0}, 3), ONE_CPU_NODES, False),  # 2 fit in all
        (Demand("w", {"CPU": 1.0}, 2, "STRICT_PACK"), ONE_CPU_NODES, False),  # no node holds both
        (Demand("w", {"CPU": 1.0}, 2, "STRICT_SPREAD"), ONE_CPU_NODES, True),
        (Demand("w", {"CPU": 0.5}, 2, "STRICT_PACK"), ONE_CPU_NODES, True),
        (Demand("w", {"CPU": 2.0, "GPU": 1.0}, 8), [GPU_NODE, CPU_NODE], True),  # 8 on the GPU node
        (Demand("w", {"CPU": 2.0, "GPU": 1.0}, 9), [GPU_NODE, CPU_NODE], False),  # 8 GPUs in all
        (Demand("w", {"CPU": 3.0, "GPU": 1.0}, 8), [GPU_NODE, CPU_NODE], False),  # 16 CPUs hold 5 such
        (Demand("w", {"CPU": 1.0, "GPU": 0.0}, 1), [{"CPU": 1.0}], True),  # no GPU asked: none needed
    ],
)
def test_placement_by_hand(demand: Demand, nodes: list[dict[str, float]], placeable: bool) -> None:
    assert (unplaceable(demand, nodes) is None) == placeable


def test_training_that_no_node_can_hold_fails_at_once(
    tiny_dataset: dict[str, Path], ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test session's Ray has one 2-CPU node; 3 CPUs per worker used to queue for ever."""
    from acol.distributed.train import fit

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = load_params(
        tmp_path / "absent.yaml",
        [
            "model.backbone=small",
            "model.head_channels=8",
            "train.epochs=1",
            "train.cpus_per_worker=3",
            f"train.storage_path={tmp_path / 'ray'}",
        ],
    )
    data = [tiny_dataset["train"], tiny_dataset["val"], tiny_dataset["root"]]
    with pytest.raises(
        RaySessionError, match=r"train\.num_workers x train\.cpus_per_worker.*ray\.autoscaling"
    ):
        fit(params, "cam", *data, tmp_path / "out")
    assert not (tmp_path / "ray").exists() or not any((tmp_path / "ray").iterdir())  # nothing started


def test_an_autoscaling_cluster_only_warns(ray_session, caplog: pytest.LogCaptureFixture) -> None:
    from acol.distributed.session import check_placement

    check_placement([Demand("extract.cpus_per_actor", {"CPU": 64.0})], autoscaling=True)
    assert "waiting for the autoscaler" in caplog.text
    with pytest.raises(RaySessionError, match=r"extract\.cpus_per_actor.*\{CPU: 2, GPU: 0\}"):
        check_placement([Demand("extract.cpus_per_actor", {"CPU": 64.0})], autoscaling=False)
