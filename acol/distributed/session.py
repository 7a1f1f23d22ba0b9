"""Where a stage's Ray work runs: one rule for train, extract and re-evaluation (`ensure_ray`).

Why: a bare ``ray.init()`` joins whatever cluster ``ray start`` last recorded in ``<Ray temp dir>/ray_current_cluster``:
a cluster started for something else, or one that died without ``ray stop`` (the record stays). The stage then
runs on someone else's resources, waits on a dead address, or, given ``num_cpus=``, fails with "When connecting
to an existing cluster, num_cpus and num_gpus must not be provided". The rule, in order:

1. Ray already initialised in this process (a test session, a notebook, a caller): use it.
2. ``RAY_ADDRESS`` set (``ray job submit`` sets it for the job's driver): connect to that cluster.
3. ``ray.join_local: true`` in params: join the local cluster ``ray start`` recorded (checked reachable first).
4. Otherwise: start a private local Ray for this process (``ray.init(address="local")``) with the CPUs the stage
   needs, whatever a running or stale local cluster has recorded; it ends with the process. Like the cluster's
   images (``RAY_USAGE_STATS_ENABLED=0`` in ``infra/``), it collects no usage statistics unless the
   environment asks for them (`disable_usage_stats`).

Ray's temp folder is ``$RAY_TMPDIR/ray``, else ``$TMPDIR/ray``, else ``/tmp/ray`` (Ray's own rule). On a shared
machine it may belong to another user; a private start then falls back to ``<same parent>/ray-<uid>`` and says
so, or, when that is not writable either, fails with a message naming ``RAY_TMPDIR``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acol.cpu_isa import cpu_isa_env
from acol.data.cpus import usable_cpus
from acol.errors import UserError

__all__ = [
    "Demand",
    "RaySessionError",
    "check_placement",
    "disable_usage_stats",
    "ensure_ray",
    "unplaceable",
    "local_temp_dir",
    "ray_temp_dir",
    "recorded_cluster",
    "start_ray_in_background",
]

log = logging.getLogger(__name__)

RECORD_FILE = "ray_current_cluster"  # written by `ray start` in its temp dir, read by a bare `ray.init()`


class RaySessionError(UserError, RuntimeError):
    """Ray cannot be started or reached as asked; the message names the address, folder or param to change."""


def ray_temp_dir() -> Path:
    """Ray's default temp folder, by Ray's own rule (``ray._common.utils.get_default_ray_temp_dir``)."""
    if os.environ.get("RAY_TMPDIR"):
        return Path(os.environ["RAY_TMPDIR"]) / "ray"
    if sys.platform.startswith("linux") and os.environ.get("TMPDIR"):
        return Path(os.environ["TMPDIR"]) / "ray"
    return Path("/tmp/ray")


def recorded_cluster() -> tuple[Path, str | None]:
    """The record file a bare ``ray.init()`` reads and the address in it (None: no record)."""
    record = ray_temp_dir() / RECORD_FILE
    try:
        address = record.read_text().strip() or None
    except OSError:
        address = None
    return record, address


def _writable(folder: Path) -> bool:
    """Can this user create files in `folder` (made if missing)? Tried, not guessed from mode bits."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".acol-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError:
        return False
    return True


def local_temp_dir() -> Path | None:
    """The temp folder for a private local Ray: None for Ray's default, or a fallback this user owns."""
    default = ray_temp_dir()
    if _writable(default):
        return None
    fallback = default.with_name(f"ray-{os.getuid()}")
    if _writable(fallback):
        log.warning(
            "Ray's temp folder %s is not writable by this user (another user's Ray?): using %s; "
            "set RAY_TMPDIR to choose another parent folder",
            default,
            fallback,
        )
        return fallback
    raise RaySessionError(
        f"Ray's temp folder {default} is not writable by this user, nor is {fallback}: set RAY_TMPDIR to a "
        "folder you own (Ray uses $RAY_TMPDIR/ray), e.g. RAY_TMPDIR=$HOME/.cache"
    )


def _reachable(address: str, timeout: float = 2.0) -> bool:
    """Does something accept TCP connections at ``host:port``? (A dead cluster's record refuses at once.)"""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _check_gpus(gpus_needed: float) -> None:
    """A private Ray without the GPUs a stage asks for would wait forever for them: fail instead."""
    import ray

    found = ray.cluster_resources().get("GPU", 0)
    if found < gpus_needed:
        ray.shutdown()
        raise RaySessionError(
            f"the stage needs {gpus_needed:g} GPU(s) (use_gpu: true) but Ray sees {found:g} on this machine: "
            "set use_gpu: false, or run it on a cluster with GPUs (RAY_ADDRESS)"
        )


def _runtime_env() -> dict[str, Any] | None:
    """A cluster's workers get this process's CPU kernel level (`acol.cpu_isa`): its nodes do not share the
    driver's environment (a private local Ray's workers inherit it, without a runtime-env setup per worker)."""
    env = cpu_isa_env()
    return {"env_vars": env} if env else None


def _usage_stats_chosen() -> bool:
    """Whether the user chose about Ray's usage statistics, by either of Ray's two means: the variable, or
    ``usage_stats`` in Ray's config file (what ``ray enable-usage-stats`` and ``disable-usage-stats`` write)."""
    if "RAY_USAGE_STATS_ENABLED" in os.environ:
        return True
    config = os.environ.get("RAY_USAGE_STATS_CONFIG_PATH", os.path.expanduser("~/.ray/config.json"))
    try:
        settings = json.loads(Path(config).read_text())
    except (OSError, ValueError):  # no file, or not JSON: Ray falls back to its default too
        return False
    return isinstance(settings, dict) and "usage_stats" in settings


def disable_usage_stats() -> None:
    """No usage statistics from a private Ray, as on the cluster (``infra/``), unless the user chose otherwise.

    Why: Ray Data runs its usage collector as one more actor, a Python process importing Ray Data at the start
    of a run (benchmarks/README.md, "Ray's start-up, process by process"), to report to Ray's servers, which
    the pipeline's machines need not reach. Ray Data reads the variable in this process at each run: it is
    set in this process, not only for the workers. Ray gives the variable precedence over its config file, so
    it is left unset where the file holds the user's choice.
    """
    if not _usage_stats_chosen():
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


def ensure_ray(cpus_needed: float, gpus_needed: float = 0, join_local: bool = False) -> str:
    """Initialise Ray by the module's rule; logs and returns what it did (one line, for logs and tests).

    `cpus_needed` / `gpus_needed`: what the stage reserves at once; a private local Ray gets at least that many
    CPUs (all this process may use when more: its affinity and cgroup quota, `usable_cpus`, not the host's
    cores, which a CPU-limited pod would oversubscribe). `join_local` is ``params.ray.join_local``.
    """
    import ray

    if ray.is_initialized():
        what = "using the Ray session already running in this process"
    elif os.environ.get("RAY_ADDRESS", "") not in ("", "local"):
        address = os.environ["RAY_ADDRESS"]
        try:
            ray.init(runtime_env=_runtime_env())  # reads RAY_ADDRESS; resources are the cluster's
        except ConnectionError as e:
            raise RaySessionError(
                f"cannot connect to the Ray cluster at RAY_ADDRESS={address} ({e}): start it, or unset "
                "RAY_ADDRESS to run on a private local Ray"
            ) from None
        what = f"connected to the Ray cluster at RAY_ADDRESS={address}"
    elif join_local:
        record, address = recorded_cluster()
        if address is None or not _reachable(address):
            state = f"records {address}, which does not answer" if address else "does not exist"
            raise RaySessionError(
                f"ray.join_local is true but {record} {state}: start a cluster with `ray start --head`, "
                "or set ray.join_local: false to run on a private local Ray"
            )
        ray.init(address=address, runtime_env=_runtime_env())
        what = f"joined the local Ray cluster at {address} (ray.join_local, recorded in {record})"
    else:
        temp_dir = local_temp_dir()
        num_cpus = max(usable_cpus(), math.ceil(cpus_needed))
        disable_usage_stats()
        ray.init(
            address="local",
            num_cpus=num_cpus,
            _temp_dir=str(temp_dir) if temp_dir else None,
        )  # its workers inherit this process's environment, the CPU kernel level included
        if gpus_needed:
            _check_gpus(gpus_needed)
        what = f"started a private local Ray ({num_cpus} CPUs)"
        if temp_dir:
            what += f" in {temp_dir}"
        record, address = recorded_cluster()
        if address:
            what += (
                f"; ignored the local cluster recorded in {record} ({address}; ray.join_local: true joins it)"
            )
    log.info("Ray: %s", what)
    return what


@dataclass(frozen=True)
class Demand:
    """What a stage asks Ray for at once: `count` bundles of `bundle` resources placed by `strategy`;
    `params` names the keys that set it, for the error message."""

    params: str
    bundle: Mapping[str, float]
    count: int = 1
    strategy: str = "PACK"


def _fits(node: Mapping[str, float], bundle: Mapping[str, float], times: int = 1) -> bool:
    return all(node.get(key, 0.0) + 1e-9 >= amount * times for key, amount in bundle.items() if amount)


def _copies(node: Mapping[str, float], bundle: Mapping[str, float]) -> int:
    """How many `bundle`s one node holds (by its total resources: busy ones free up)."""
    needed = [(node.get(key, 0.0), amount) for key, amount in bundle.items() if amount]
    return min((math.floor(have / amount + 1e-9) for have, amount in needed), default=1_000_000)


def unplaceable(demand: Demand, nodes: Sequence[Mapping[str, float]]) -> str | None:
    """Why no placement of `demand` exists on `nodes` (each node's total resources), or None when one does."""
    if demand.strategy == "STRICT_PACK":
        if any(_fits(node, demand.bundle, demand.count) for node in nodes):
            return None
        return f"no node holds all {demand.count} of them (STRICT_PACK)"
    if demand.strategy == "STRICT_SPREAD":
        holding = sum(_fits(node, demand.bundle) for node in nodes)
        if holding >= demand.count:
            return None
        return f"{holding} node(s) hold one, STRICT_SPREAD needs {demand.count}"
    if not any(_fits(node, demand.bundle) for node in nodes):
        return "no node holds even one"
    held = sum(_copies(node, demand.bundle) for node in nodes)
    return None if held >= demand.count else f"the nodes hold {held} in all"


def _node_sizes(nodes: Sequence[Mapping[str, float]]) -> str:
    return ", ".join(
        "{" + ", ".join(f"{k}: {node.get(k, 0):g}" for k in ("CPU", "GPU")) + "}" for node in nodes
    )


def check_placement(demands: Sequence[Demand], autoscaling: bool) -> None:
    """Fail at once, naming the params, when the cluster's live nodes cannot hold what a stage asks for.

    Why: Ray queues a request that no node can hold and waits for ever ("No available node types can fulfill
    resource request") when no autoscaler will add a node. With ``ray.autoscaling: true`` (a cluster whose
    autoscaler adds nodes, e.g. KubeRay's) the wait is what the user wants: a warning instead.
    """
    import ray

    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    for demand in demands:
        why = unplaceable(demand, nodes)
        if why is None:
            continue
        message = (
            f"Ray cannot place {demand.count} x {dict(demand.bundle)} ({demand.params}): {why}; the live "
            f"nodes have {_node_sizes(nodes) or 'nothing'}"
        )
        if autoscaling:
            log.warning("%s; waiting for the autoscaler to add nodes (ray.autoscaling: true)", message)
            continue
        raise RaySessionError(
            f"{message}. Lower those params, or add nodes; on a cluster whose autoscaler adds nodes, set "
            "ray.autoscaling: true to wait for them"
        )


def _drop_sigterm_note(record: logging.LogRecord) -> bool:
    return "SIGTERM handler is not set" not in record.getMessage()


def _exit_on_sigterm() -> None:
    """What ``ray.init`` does in the main thread and cannot from another: SIGTERM exits through ``sys.exit``,
    so ``finally`` blocks and ``ray.shutdown`` (atexit) run. Only where nobody set a handler before."""
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))


def start_ray_in_background(
    cpus_needed: float, gpus_needed: float = 0, join_local: bool = False
) -> Future[str]:
    """`ensure_ray` without waiting: a future of its line, so the caller can work while Ray starts.

    Ray is started by a daemon thread that then stays for the life of the process. Why it stays: the
    processes of a private local Ray get their parent-death signal when the *thread* that started them ends
    (Linux's rule), so a Ray started by a short-lived thread died with it, and the driver with it.
    """
    import ray

    started: Future[str] = Future()
    if ray.is_initialized():  # nothing to start: answer now, no thread
        started.set_result(ensure_ray(cpus_needed, gpus_needed, join_local))
        return started

    _exit_on_sigterm()

    def start_and_stay() -> None:
        worker_log = logging.getLogger("ray._private.worker")
        worker_log.addFilter(_drop_sigterm_note)  # its "handler not set" warning: we set the same one above
        try:
            started.set_result(ensure_ray(cpus_needed, gpus_needed, join_local))
        except BaseException as error:  # raised to whoever waits on the future
            started.set_exception(error)
            return
        finally:
            worker_log.removeFilter(_drop_sigterm_note)
        threading.Event().wait()  # keep the Ray processes' parent thread alive until the process exits

    threading.Thread(target=start_and_stay, name="ray-start", daemon=True).start()
    return started
