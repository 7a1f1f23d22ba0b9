"""Where a stage's Ray runs (`acol.distributed.session.ensure_ray`) in a user's real environment.

Ray is pointed at a temp folder per test with ``RAY_TMPDIR`` (Ray reads ``$RAY_TMPDIR/ray/ray_current_cluster``),
so the machine's own ``/tmp/ray`` is never read or written. The live cluster is `tests.test_cluster.ray_cluster`
(its own temp dir and ports, stopped by its own process ids, never ``ray stop``); a symlink makes its temp dir
the ``$RAY_TMPDIR/ray`` the stages see, as ``/tmp/ray`` is for a user who ran ``ray start --head``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from acol.cpu_isa import CPU_ISA_ENV
from acol.distributed.session import RaySessionError, ensure_ray, local_temp_dir, ray_temp_dir
from tests.services import free_port

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"

TINY = [
    "model.head_channels=8",
    "train.epochs=1",
    "train.batch_size=16",
    "train.image_size=32",
    "train.num_workers=1",
    "train.cpus_per_worker=1",
    "extract.batch_size=16",
    "extract.cpus_per_actor=0.5",  # actor + decode fit in the one CPU of the test cluster's head
    "extract.decode_cpus=0.5",
    "tracking.log_system_metrics=false",
    "tracking.registered_model=ray-session",
]


@pytest.fixture
def ray_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short RAY_TMPDIR of this test's own (Ray's unix sockets live under it: paths must stay short)."""
    folder = Path(tempfile.mkdtemp(prefix="acolrs-", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(folder))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=False)


def _record(ray_tmp: Path, address: str) -> Path:
    record = ray_tmp / "ray" / "ray_current_cluster"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(address)
    return record


def _no_ray(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Patch `ray.init` to record its keyword arguments instead of starting anything."""
    import ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    return calls


# --- the rule, without starting Ray -------------------------------------------------------------------------


def test_ray_temp_dir_follows_rays_own_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ray._common.utils import get_default_ray_temp_dir

    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.delenv("TMPDIR", raising=False)
    assert ray_temp_dir() == Path(get_default_ray_temp_dir()) == Path("/tmp/ray")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "t"))
    assert ray_temp_dir() == Path(get_default_ray_temp_dir()) == tmp_path / "t" / "ray"
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "r"))
    assert ray_temp_dir() == Path(get_default_ray_temp_dir()) == tmp_path / "r" / "ray"


def test_a_stale_record_is_ignored_and_named(ray_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = _record(ray_tmp, f"127.0.0.1:{free_port()}")
    calls = _no_ray(monkeypatch)
    what = ensure_ray(3.5)
    assert calls == [{"address": "local", "num_cpus": max(os.cpu_count() or 1, 4), "_temp_dir": None}]
    assert what.startswith("started a private local Ray") and str(record) in what


def test_ray_address_wins_and_sets_no_resources(ray_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _record(ray_tmp, "127.0.0.1:1")
    calls = _no_ray(monkeypatch)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:6379")
    monkeypatch.delenv(CPU_ISA_ENV, raising=False)
    assert ensure_ray(2, join_local=True) == "connected to the Ray cluster at RAY_ADDRESS=10.0.0.7:6379"
    # ray.init() reads RAY_ADDRESS (num_cpus would make Ray refuse to connect); the cluster's workers get the
    # CPU kernel level, which they do not inherit from this process
    kernels = {
        CPU_ISA_ENV: "avx2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_CBWR": "AVX2",
    }
    assert calls == [{"runtime_env": {"env_vars": kernels}}]


def test_an_unreachable_ray_address_names_it(ray_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def refuse(**_kwargs: object) -> None:
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.7:6379")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:6379")
    with pytest.raises(RaySessionError, match=r"RAY_ADDRESS=10\.0\.0\.7:6379 .*or unset RAY_ADDRESS"):
        ensure_ray(1)


def test_join_local_needs_a_live_record(ray_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _no_ray(monkeypatch)
    with pytest.raises(RaySessionError, match=r"ray_current_cluster does not exist.*ray.join_local: false"):
        ensure_ray(1, join_local=True)
    port = free_port()
    _record(ray_tmp, f"127.0.0.1:{port}")
    with pytest.raises(RaySessionError, match=rf"records 127\.0\.0\.1:{port}, which does not answer"):
        ensure_ray(1, join_local=True)
    assert calls == []


def _environ_without_usage_stats(monkeypatch: pytest.MonkeyPatch, config: Path) -> None:
    """A copy of the environment without RAY_USAGE_STATS_ENABLED for this test (what the code sets stays here),
    with Ray's usage-stats config file at ``config`` (the user's own ~/.ray/config.json left out)."""
    environ = {k: v for k, v in os.environ.items() if k != "RAY_USAGE_STATS_ENABLED"}
    monkeypatch.setattr(os, "environ", {**environ, "RAY_USAGE_STATS_CONFIG_PATH": str(config)})


@pytest.mark.parametrize("users", [None, "1"])
def test_a_private_ray_collects_no_usage_stats_unless_asked(
    ray_tmp: Path, monkeypatch: pytest.MonkeyPatch, users: str | None
) -> None:
    """As on the cluster (infra/ sets RAY_USAGE_STATS_ENABLED=0): Ray Data of a private Ray runs no usage
    collector actor, by Ray's own reading of the variable; a user who set it keeps their value."""
    from ray._common.usage.usage_lib import usage_stats_enabled

    _environ_without_usage_stats(monkeypatch, ray_tmp / "no-config.json")
    if users is not None:
        os.environ["RAY_USAGE_STATS_ENABLED"] = users
    _no_ray(monkeypatch)
    ensure_ray(1)
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == (users or "0")
    assert usage_stats_enabled() is (users == "1")


@pytest.mark.parametrize("choice", [True, False])
def test_a_choice_in_rays_config_file_is_kept(
    ray_tmp: Path, monkeypatch: pytest.MonkeyPatch, choice: bool
) -> None:
    """``ray enable-usage-stats`` writes ``{"usage_stats": true}`` to Ray's config file; the variable would
    override it (Ray reads the variable first), so a private Ray leaves it unset and the user's choice holds."""
    from ray._common.usage.usage_lib import usage_stats_enabled

    config = ray_tmp / "config.json"
    config.write_text(json.dumps({"usage_stats": choice}))
    _environ_without_usage_stats(monkeypatch, config)
    _no_ray(monkeypatch)
    ensure_ray(1)
    assert "RAY_USAGE_STATS_ENABLED" not in os.environ
    assert usage_stats_enabled() is choice


@pytest.mark.parametrize("config", ["", "[not json", "3", '"usage_stats"', '{"other": 1}'])
def test_a_config_file_without_a_choice_leaves_usage_stats_off(
    ray_tmp: Path, monkeypatch: pytest.MonkeyPatch, config: str
) -> None:
    (ray_tmp / "config.json").write_text(config)
    _environ_without_usage_stats(monkeypatch, ray_tmp / "config.json")
    _no_ray(monkeypatch)
    ensure_ray(1)
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"


def test_a_cluster_keeps_its_own_usage_stats_setting(ray_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _environ_without_usage_stats(monkeypatch, ray_tmp / "no-config.json")
    os.environ["RAY_ADDRESS"] = "10.0.0.7:6379"
    _no_ray(monkeypatch)
    ensure_ray(1)
    assert "RAY_USAGE_STATS_ENABLED" not in os.environ  # the cluster's images decide (infra/)


def test_an_unwritable_ray_folder_falls_back_to_ones_own(
    ray_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plain file where Ray's folder should be: unwritable even for root (chmod would not stop root).
    (ray_tmp / "ray").write_text("another user's")
    fallback = ray_tmp / f"ray-{os.getuid()}"
    assert local_temp_dir() == fallback and fallback.is_dir()
    calls = _no_ray(monkeypatch)
    assert ensure_ray(1).endswith(f"in {fallback}")
    assert calls[0]["_temp_dir"] == str(fallback)


def test_no_writable_ray_folder_says_how_to_point_ray_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("RAY_TMPDIR", str(blocked))
    with pytest.raises(
        RaySessionError, match=r"not-a-folder/ray is not writable.*set RAY_TMPDIR to a folder"
    ):
        local_temp_dir()


def test_a_running_session_is_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # as under the tests' shared `ray_session`
    monkeypatch.setattr(ray, "init", lambda **_: pytest.fail("ray.init called with Ray running"))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:6379")
    assert ensure_ray(64, join_local=True) == "using the Ray session already running in this process"


# --- the stages, in fresh processes ------------------------------------------------------------------------


def _stage_env(ray_tmp: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": str(ray_tmp), **extra}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{ray_tmp / 'mlflow.db'}", ACOL_PIPELINE_RUN=ray_tmp.name)
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")
    for key in ("RAY_ADDRESS", "ACOL_EPOCH_HOOK", "ACOL_DEBUG"):
        env.pop(key, None)
    return env


def _stage(name: str, args: list[str], tiny: dict, work: Path, env: dict[str, str], *sets: str) -> str:
    """Run ``pipelines/<name>.py`` on the tiny dataset; returns its stderr (the logs), failing on exit != 0."""
    cmd = [sys.executable, str(PIPELINES / f"{name}.py"), "--method", "cam", *args,
           "--root", str(tiny["root"]), "--params", str(work / "absent.yaml")]  # fmt: skip
    for setting in [*TINY, f"train.storage_path={work / 'ray-train'}", *sets]:
        cmd += ["--set", setting]
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done.stderr


def _extract(tiny: dict, work: Path, env: dict[str, str], model: Path, card: Path, *sets: str) -> str:
    args = ["--manifest", str(tiny["val"]), "--model", str(model), "--model-card", str(card),
            "--out", str(work / "extract")]  # fmt: skip
    # batches of 4: the driver predicts the first (extract.driver_batches: 1) while Ray starts in the
    # background, Ray the other 12 rows; a Ray started off the main thread must survive that thread
    log = _stage("extract", args, tiny, work, env, "extract.batch_size=4", *sets)
    assert json.loads((work / "extract" / "summary.json").read_text())["rows"] == 16  # every val image
    return log


@pytest.mark.slow
def test_extract_runs_through_a_stale_record(tiny_dataset: dict, ray_tmp: Path) -> None:
    """A cluster that died without `ray stop` left its address: extract runs anyway, on a private Ray.

    (Train, which failed outright on such a record, takes the same private path in the live-cluster test.)
    """
    from acol.data.manifest import manifest_classes, read_manifest
    from tests.test_faults import _model_files

    address = f"127.0.0.1:{free_port()}"  # nothing listens there: the cluster is gone
    record = _record(ray_tmp, address)
    model, card = _model_files(ray_tmp / "model", manifest_classes(read_manifest(tiny_dataset["val"])), "cam")
    log = _extract(tiny_dataset, ray_tmp, _stage_env(ray_tmp), model, card)
    assert (
        "Ray: started a private local Ray" in log and f"ignored the local cluster recorded in {record}" in log
    )
    assert "Connecting to existing Ray cluster" not in log
    assert (
        "SIGTERM handler is not set" not in log
    )  # Ray started off the main thread; the stage set the handler
    assert record.read_text() == address  # the record is the user's: left as it was


def _wait_for_record(path: Path, timeout: float = 60.0) -> str:
    """The head writes its address record a moment after it answers (later on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if time.monotonic() > deadline:
            raise AssertionError(f"ray start --head wrote no {path} within {timeout:.0f} s")
        time.sleep(0.5)
    return path.read_text()


@pytest.mark.slow
def test_stages_leave_a_live_local_cluster_alone_unless_asked(
    tiny_dataset: dict, ray_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ray start --head` running: train runs on a private Ray (the head sees no job); join_local runs on it."""
    from ray.util.state import list_jobs, list_nodes

    from tests.test_cluster import ray_cluster

    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the head's workers import this tree's acol
    with ray_cluster(["node_a"]) as cluster:
        head_dir = cluster.nodes["node_a"][1]
        (ray_tmp / "ray").symlink_to(head_dir)  # the stages' $RAY_TMPDIR/ray is the head's temp dir
        record = _wait_for_record(ray_tmp / "ray" / "ray_current_cluster")
        env = _stage_env(ray_tmp, RAY_AUTH_MODE="disabled")
        out = ray_tmp / "train"
        manifests = [
            "--train-manifest",
            str(tiny_dataset["train"]),
            "--val-manifest",
            str(tiny_dataset["val"]),
        ]
        train_log = _stage("train", [*manifests, "--out", str(out)], tiny_dataset, ray_tmp, env)
        assert json.loads((out / "model_card.json").read_text())["epochs"] == 1
        assert "Ray: started a private local Ray" in train_log and record in train_log
        assert list_jobs(address=cluster.dashboard) == []  # the head never saw the train stage

        extract_log = _extract(tiny_dataset, ray_tmp, env, out / "model.pt", out / "model_card.json",
                               "ray.join_local=true")  # fmt: skip
        assert f"Ray: joined the local Ray cluster at {record}" in extract_log
        # The head is still up, with its record; the one driver it saw is the extract stage that asked.
        assert (head_dir / "ray_current_cluster").read_text() == record
        assert [n.state for n in list_nodes(address=cluster.dashboard)] == ["ALIVE"]
        assert len(list_jobs(address=cluster.dashboard)) == 1
        assert all(proc.poll() is None for proc, _ in cluster.nodes.values())
