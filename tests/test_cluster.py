"""Training as a Ray job on a real multi-node local cluster, logging to a real `mlflow server`.

The cluster is `ray start --block` processes (a head with resource ``node_a``, nodes with ``node_b``, ``node_c``,
one CPU each), each in its own short ``--temp-dir`` on free ports, started with the repo venv on PATH so the job
and its workers run the venv's Python. The test process only talks HTTP (job client, state API): no
``ray.init`` here, so the session Ray of other tests is untouched. Terminating a ``ray start --block`` stops the
processes it started; its process tree (recorded while it runs) and a sweep for processes naming our temp dir
catch stragglers. Never ``ray stop``: it
would kill every Ray on the machine.

"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services import free_port, mlflow_server, stop_process_group, wait_until

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # the venv running pytest: its `ray`, `mlflow` and `python`
# What a job's working_dir upload leaves out (venv, data, outputs, VCS and local MLflow stores).
JOB_EXCLUDES = [
    ".venv",
    "data",
    "outputs",
    ".git",
    "mlruns",
    "mlartifacts",
    "mlflow.db",
    ".dvc/cache",
    ".pytest_cache",
    ".ruff_cache",
    "**/__pycache__",
    "tests/assets",
]


@dataclass
class Cluster:
    dashboard: str  # http://127.0.0.1:<port>: the jobs API and the state API
    temp_dir: Path
    env: dict[str, str]
    nodes: dict[str, tuple[subprocess.Popen, Path]]  # custom resource -> (`ray start --block`, its temp dir)

    def kill_node(self, resource: str) -> None:
        """Simulate a machine failure: SIGKILL that node's processes (raylet, its workers), nothing else."""
        proc, node_dir = self.nodes[resource]
        tree = _descendants(proc)  # workers rename themselves (ray::...): found by parentage, not name
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        _kill(tree)
        proc.wait(10)
        _kill_stragglers(str(node_dir))


def _ray_env() -> dict[str, str]:
    return dict(
        os.environ,
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # jobs and workers: the venv's python
        RAY_AUTH_MODE="disabled",  # 2.60 turns token auth on for `ray start`; loopback-only test cluster
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        PYTHONUNBUFFERED="1",
    )


@contextmanager
def ray_cluster(node_resources: list[str], timeout: float = 240) -> Iterator[Cluster]:
    """A head plus one node per extra entry of `node_resources` (custom resource names), one CPU each.

    `timeout` is generous: the first head started from a fresh venv took more than 90 s to answer in one CI-like
    run (its dashboard's first start), the next ones a few seconds.
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="acolray-", dir="/tmp"))  # short: Ray's unix sockets live here
    env = _ray_env()
    gcs, dash = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    nodes: dict[str, tuple[subprocess.Popen, Path]] = {}
    auth_mode = os.environ.get("RAY_AUTH_MODE")

    def start(extra: list[str], resource: str, name: str) -> tuple[subprocess.Popen, Path]:
        log = temp_dir / f"{name}.log"
        # One temp dir per node, as on separate machines: nodes sharing one would share runtime_resources/,
        # and a node that garbage-collects the job's working_dir would delete the driver's cwd on another.
        node_dir = temp_dir / name
        node_dir.mkdir()
        cmd = [
            str(VENV_BIN / "ray"),
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            f"--resources={json.dumps({resource: 1})}",
            f"--temp-dir={node_dir}",
            "--object-store-memory=80000000",
            "--disable-usage-stats",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            *extra,
        ]
        with log.open("w") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        procs.append(proc)
        nodes[resource] = (proc, node_dir)
        return proc, log

    dashboard = f"http://127.0.0.1:{dash}"
    try:
        head, head_log = start(
            [
                "--head",
                f"--port={gcs}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}",
                f"--ray-client-server-port={free_port()}",
            ],
            node_resources[0],
            "head",
        )
        wait_until(lambda: urllib.request.urlopen(f"{dashboard}/api/version", timeout=2), timeout, "ray head",
              head, head_log)  # fmt: skip
        for k, resource in enumerate(node_resources[1:], start=1):
            start([f"--address=127.0.0.1:{gcs}"], resource, f"node{k}")

        def all_alive() -> bool:
            from ray.util.state import list_nodes

            nodes = list_nodes(address=dashboard, filters=[("state", "=", "ALIVE")])
            return len(nodes) == len(node_resources)

        os.environ["RAY_AUTH_MODE"] = "disabled"  # the state API client reads it (restored below)
        wait_until(all_alive, timeout, "ray nodes", procs[-1], temp_dir / f"node{len(procs) - 1}.log")
        yield Cluster(dashboard=dashboard, temp_dir=temp_dir, env=env, nodes=nodes)
    finally:
        if auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = auth_mode
        trees = [_descendants(proc) for proc in procs]
        for proc in reversed(procs):
            stop_process_group(proc)
        _kill([p for tree in trees for p in tree])
        _kill_stragglers(str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)


def _descendants(proc: subprocess.Popen) -> list:
    """psutil processes below `proc` (raylet, GCS, dashboard, Ray workers), found while it still runs."""
    import psutil

    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill(processes: list) -> None:
    """SIGKILL the given psutil processes that are still alive (psutil checks pid reuse)."""
    import psutil

    for p in processes:
        with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            p.kill()
    psutil.wait_procs(processes, timeout=10)


def _kill_stragglers(marker: str) -> None:
    """Kill processes whose command line names our temp dir (only ours: the dir name is unique)."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(arg.endswith(marker) or f"{marker}/" in arg for arg in proc.info["cmdline"] or []):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def _submit(cluster: Cluster, entrypoint: str, env_vars: dict[str, str]) -> str:
    """Submit `entrypoint` with the repo as working_dir (small: see `JOB_EXCLUDES`); returns the job id."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard)
    runtime_env = {"working_dir": str(REPO), "excludes": JOB_EXCLUDES, "env_vars": env_vars}
    return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)


def _wait_job(cluster: Cluster, job: str, timeout: float) -> tuple[str, str]:
    """Wait (bounded; stopped after `timeout` s) for a job to end; returns (status, logs)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard)
    end = time.monotonic() + timeout
    status = client.get_job_status(job)
    while not status.is_terminal() and time.monotonic() < end:
        time.sleep(1)
        status = client.get_job_status(job)
    if not status.is_terminal():
        client.stop_job(job)
    return str(status.value), client.get_job_logs(job)


def _train_entrypoint(tiny_dataset: dict[str, Path], out: Path, shared: Path, **overrides: object) -> str:
    """`python pipelines/train.py` for a tiny CAM run with 2 one-CPU workers, SPREAD, checkpoints in `shared`."""
    settings = {
        "train.num_workers": 2,
        "train.cpus_per_worker": 1,
        "train.placement_strategy": "SPREAD",
        "train.storage_path": str(shared / "ray"),
        "train.epochs": 2,
        "train.batch_size": 8,
        "train.image_size": 32,
        "train.max_failures": 1,
        "model.head_channels": 8,
        "tracking.log_system_metrics": "false",
    } | {k.replace("__", "."): v for k, v in overrides.items()}
    return " ".join(
        [
            "python pipelines/train.py --method cam",
            f"--train-manifest {tiny_dataset['train']} --val-manifest {tiny_dataset['val']}",
            f"--root {tiny_dataset['root']} --out {out}",
            *(f"--set {k}={v}" for k, v in settings.items()),
        ]
    )


def _worker_labels(cluster: Cluster, state: str | None = None) -> dict[str, tuple[str, int]]:
    """Ray Train worker actor id -> (the custom resource (node label) of the node it ran on, its pid)."""
    from ray.util.state import list_actors, list_nodes

    nodes = {n.node_id: n.resources_total for n in list_nodes(address=cluster.dashboard)}
    filters = [("class_name", "=", "RayTrainWorker")] + ([("state", "=", state)] if state else [])
    workers = list_actors(address=cluster.dashboard, filters=filters)
    return {w.actor_id: (next(r for r in cluster.nodes if r in nodes[w.node_id]), w.pid) for w in workers}


def _upload_bytes() -> int:
    """Size of what the job's working_dir upload holds: the repo minus `JOB_EXCLUDES` (paths from the root)."""
    plain = {e for e in JOB_EXCLUDES if "*" not in e}
    total = 0
    for dirpath, dirnames, filenames in os.walk(REPO):
        rel = Path(dirpath).relative_to(REPO)
        dirnames[:] = [d for d in dirnames if str(rel / d) not in plain and d != "__pycache__"]
        total += sum((Path(dirpath) / f).stat().st_size for f in filenames if str(rel / f) not in plain)
    return total


def test_job_upload_stays_small():
    # Ray refuses working_dirs over 512 MiB and every job pays the upload; the project's is well under 5 MB.
    assert _upload_bytes() < 5_000_000


@pytest.mark.slow
def test_train_job_spreads_over_two_nodes_and_resumes(tiny_dataset, tmp_path):
    """ray job submit -> pipelines/train.py: 2 workers on 2 nodes, a killed worker resumed, model + MLflow out."""
    from mlflow import MlflowClient

    shared = tmp_path / "shared"  # stands for the storage every node mounts
    out = shared / "train" / "cam"
    with mlflow_server(tmp_path) as uri, ray_cluster(["node_a", "node_b"]) as cluster:
        env_vars = {
            "MLFLOW_TRACKING_URI": uri,
            "ACOL_EPOCH_HOOK": "tests.fault_injection:kill_rank0_at_epoch_2",  # in the uploaded working dir
            "ACOL_PIPELINE_RUN": "cluster-test",
        }
        job = _submit(cluster, _train_entrypoint(tiny_dataset, out, shared), env_vars)
        status, logs = _wait_job(cluster, job, timeout=240)
        assert status == "SUCCEEDED", logs[-4000:]

        # Placement: the Train workers (alive or dead after the restart) sat on both nodes.
        assert {label for label, _ in _worker_labels(cluster).values()} == {"node_a", "node_b"}

        # Resumed from the shared checkpoint: both epochs done, one restart recorded.
        card = json.loads((out / "model_card.json").read_text())
        assert card["epochs"] == 2 and card["restarts"] == 1
        assert (out / "model.pt").stat().st_size > 0
        assert any((shared / "ray").glob("train-cam-*/epoch-0002"))

        # The MLflow run and its files are on the server, not in the job's temp working dir (the evaluate
        # stage registers the model).
        client = MlflowClient(tracking_uri=uri)
        run = client.get_run(card["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["restarts"] == "1"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"model_card.json", "history.csv"}


@pytest.mark.slow
def test_training_resumes_on_another_node_after_a_node_fails(tiny_dataset, tmp_path):
    """Kill a worker's node after the first checkpoint: the run finishes on the nodes left, from that checkpoint."""
    import psutil

    shared = tmp_path / "shared"
    out = shared / "train" / "cam"
    epochs = 40  # ~0.3 s each here: the run outlasts the seconds between the first checkpoint and the kill
    with mlflow_server(tmp_path) as uri, ray_cluster(["node_a", "node_b", "node_c"]) as cluster:
        entrypoint = _train_entrypoint(tiny_dataset, out, shared, train__epochs=epochs, train__max_failures=2)
        job = _submit(cluster, entrypoint, {"MLFLOW_TRACKING_URI": uri, "ACOL_PIPELINE_RUN": "node-failure"})
        # Ray Train resumes from checkpoints its controller has registered (it then writes this snapshot); a
        # checkpoint folder that exists but is not registered yet would be ignored and the run start over.
        snapshot = "train-cam-*/checkpoint_manager_snapshot.json"
        wait_until(lambda: any((shared / "ray").glob(snapshot)), 180, "first registered checkpoint")
        before = _worker_labels(cluster, state="ALIVE")
        victim = next(
            n for n in ("node_b", "node_c") if n in {label for label, _ in before.values()}
        )  # never the head
        assert not any((shared / "ray").glob(f"train-cam-*/epoch-{epochs:04d}")), "finished before the kill"
        pids = [pid for actor, (label, pid) in before.items() if label == victim]
        cluster.kill_node(victim)
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids)

        status, logs = _wait_job(cluster, job, timeout=240)
        assert status == "SUCCEEDED", logs[-4000:]
        card = json.loads((out / "model_card.json").read_text())
        assert card["epochs"] == epochs and card["restarts"] >= 1, f"{victim} killed, no restart recorded"
        after = {a: label for a, (label, _) in _worker_labels(cluster).items() if a not in before}
        survivor = ({"node_b", "node_c"} - {victim}).pop()
        assert victim not in after.values() and survivor in after.values(), (victim, before, after)
