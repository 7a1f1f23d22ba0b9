"""Local services for tests: free loopback ports, polling, stopping process groups, and an `mlflow server`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

VENV_BIN = Path(sys.executable).parent  # the venv running pytest: its `mlflow`


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None
):
    """Poll `predicate` until truthy (returned) or `timeout` s; fail with the process log if it died."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what}: process exited with {proc.returncode}\n{tail}")
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # not up yet
            last_error = e
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s (last error: {last_error})\n{tail}")


def stop_process_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group we started, SIGKILL after `timeout` s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


@contextmanager
def mlflow_server(folder: Path, timeout: float = 90, backend_uri: str | None = None) -> Iterator[str]:
    """`mlflow server` on a loopback port with SQLite (or `backend_uri`) and artifacts it serves itself from a
    local folder; yields its http URI."""
    with mlflow_server_process(folder, timeout, backend_uri) as (uri, _):
        yield uri


@contextmanager
def mlflow_server_process(
    folder: Path, timeout: float = 90, backend_uri: str | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`mlflow_server`, also yielding its process (tests that stop the server while a client uses it)."""
    port = free_port()
    log = folder / "mlflow-server.log"
    cmd = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        backend_uri or f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200, timeout, "mlflow server",
              proc, log)  # fmt: skip
        yield uri, proc
    finally:
        stop_process_group(proc)


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian keeps them in /usr/lib/postgresql/<major>/bin)."""
    import shutil

    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


@contextmanager
def postgres_cluster(timeout: float = 60) -> Iterator[str]:
    """A throw-away PostgreSQL cluster on a loopback port with one fresh database; yields its SQLAlchemy URI.

    initdb and the server refuse to run as root, so as root they run as the ``postgres`` user (Debian's package
    creates it) in a temp folder that user owns. Trust authentication: the server listens on 127.0.0.1 only
    and lives as long as the test.
    """
    import pwd
    import shutil
    import tempfile

    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server programs not found (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="acol-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log, port = folder / "data", folder / "server.log", free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stdout}{done.stderr}")

    try:
        run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
        )
        database = f"mlflow_{os.getpid()}_{port}"
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database)
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True, timeout=timeout)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)
