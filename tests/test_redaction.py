"""Credentials in the tracking URI stay out of what Ray exports and out of every message.

The URI (``MLFLOW_TRACKING_URI``) may hold a password (``http://user:pass@host``, ``postgresql://u:p@h/db``). Ray
shows a Ray Train run's ``train_loop_config`` in its dashboard and job API, and error messages end up in logs
and CI output: neither may show the password. The oracle is the standard library's own URL parser
(`urllib.parse.urlsplit`) and MLflow's own resolution of a client's tracking URI.
"""

from __future__ import annotations

import http.server
import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from acol.config import load_params
from acol.tracking import stage_runs as tracking
from acol.tracking.redact import loop_tracking_uri, redact_text, redact_uri

REPO = Path(__file__).resolve().parents[1]
SECRET = "s3cr@t:/pw"  # what a generated password may hold: '@', ':' and '/'
QUOTED = "s3cr%40t%3A%2Fpw"  # as it must be written in a URI
URIS = [
    f"http://alice:{QUOTED}@mlflow.example:5000",
    f"https://alice:{QUOTED}@mlflow.example/prefix/",
    f"postgresql://mlflow:{QUOTED}@postgres:5432/mlflow",
    f"postgresql+psycopg://mlflow:{QUOTED}@postgres:5432/mlflow?sslmode=require",
    f"mysql://root:{QUOTED}@db/mlflow",
]


def _leaks(text: str) -> bool:
    return any(part in text for part in ("s3cr", QUOTED, SECRET))


@pytest.mark.parametrize("uri", URIS)
def test_redacted_uri_keeps_everything_but_the_password(uri: str) -> None:
    redacted = redact_uri(uri)
    assert not _leaks(redacted), redacted
    before, after = urlsplit(uri), urlsplit(redacted)
    assert after.password == "***"
    assert (after.scheme, after.username, after.hostname, after.port, after.path, after.query) == (
        before.scheme, before.username, before.hostname, before.port, before.path, before.query
    )  # fmt: skip
    assert loop_tracking_uri(uri) is None  # holds a credential: never put into Ray's config


@pytest.mark.parametrize(
    "uri",
    ["http://mlflow:5000", "sqlite:////abs/mlflow.db", "postgresql://mlflow@postgres/mlflow", "databricks"],
)
def test_uris_without_credentials_are_unchanged(uri: str) -> None:
    assert redact_uri(uri) == uri and loop_tracking_uri(uri) == uri


def test_secrets_in_the_query_and_unquoted_passwords_are_redacted() -> None:
    uri = "postgresql://mlflow@postgres/mlflow?sslmode=require&password=hunter2"
    assert redact_uri(uri) == "postgresql://mlflow@postgres/mlflow?sslmode=require&password=***"
    assert loop_tracking_uri(uri) is None
    raw = "postgresql://mlflow:p@ss:w/rd@postgres/mlflow"  # not URL-quoted, as people do write them
    assert "p@ss" not in redact_uri(raw) and "w/rd" not in redact_uri(raw)
    message = f"cannot reach {raw} (password p@ss:w/rd rejected; decoded {SECRET})"
    assert "p@ss" not in redact_text(message, raw)
    assert not _leaks(redact_text(f"at {URIS[0]}: {SECRET}", URIS[0]))  # decoded form too


def _params(tmp_path: Path):
    return load_params(tmp_path / "absent.yaml", ["tracking.log_system_metrics=false"])


def _ray_exports(config) -> str:
    """What Ray shows of a run's ``train_loop_config``: its run state sanitizes the dict with this function
    (`RunSettings`, exported to the dashboard and the state API), which turns an object into its ``str``."""
    from ray.train.v2._internal.state.schema import _to_json_serializable_value

    from acol.distributed.train import _ray_loop_config

    return json.dumps(_to_json_serializable_value(_ray_loop_config(config)))


def test_the_ray_train_loop_config_holds_no_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: ``train_loop_config["tracking_uri"]`` was the whole URI, which Ray's dashboard shows."""
    from acol.distributed.train import _loop_config, _mlflow_client

    manifest = tmp_path / "m.parquet"
    for uri in URIS:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        config = _loop_config(_params(tmp_path), "acol", manifest, manifest, tmp_path, "run", "/r", None)
        exported = _ray_exports(config)
        assert not _leaks(exported), exported
        assert "run_dir='/r'" in exported and "tracking_uri=None" in exported, exported  # the fields do show
        assert not _leaks(pickle.dumps(config).decode("latin-1"))  # nor anything a worker could be sent
        if uri.startswith("http"):  # (a database URI would connect at once)
            # a worker resolves the URI from its own environment (Ray workers inherit the driver's, or the pod's)
            assert _mlflow_client(config)._tracking_client.tracking_uri == uri
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    config = _loop_config(_params(tmp_path), "acol", manifest, manifest, tmp_path, "run", "/r", None)
    # no credential: the URI travels as before (a relative sqlite path made absolute for workers elsewhere)
    assert config.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert config.tracking_uri in _ray_exports(config)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_error_shows_no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: TrackingServerError printed the URI whole."""
    port = _closed_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:{QUOTED}@127.0.0.1:{port}")
    with pytest.raises(tracking.TrackingServerError) as error:
        tracking.check_tracking_server(timeout=2)
    assert not _leaks(str(error.value)), error.value
    assert f"http://alice:***@127.0.0.1:{port}" in str(error.value)  # still says which server


def test_a_server_behind_credentials_is_probed_and_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: urllib took ``alice:pw@127.0.0.1`` for the host name, so a live server was "unreachable" (and
    the password was printed)."""
    seen: list[str] = []

    class Unauthorized(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_error(401)

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://alice:{QUOTED}@127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert tracking.check_tracking_server(timeout=5) == uri
        assert seen == ["/health"]
    finally:
        server.shutdown()


def test_a_sqlite_error_is_redacted_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/nowhere/mlflow.db?password=hunter2")
    with pytest.raises(tracking.TrackingServerError, match="nowhere") as error:
        tracking.check_tracking_server()
    assert "hunter2" not in str(error.value)


RAY_WORKER = textwrap.dedent(
    """
    from pathlib import Path
    import ray
    from acol.config import load_params
    from acol.distributed.train import _loop_config, _mlflow_client

    params = load_params(Path("absent.yaml"), ["tracking.log_system_metrics=false"])
    m = Path("m.parquet")
    config = _loop_config(params, "acol", m, m, Path("."), "r", "/r", None)
    assert config.tracking_uri is None, "the URI travelled"
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)

    @ray.remote
    def worker_uri(config):
        return _mlflow_client(config)._tracking_client.tracking_uri

    print("WORKER", ray.get(worker_uri.remote(config)))
    ray.shutdown()
    """
)


@pytest.mark.slow
def test_a_ray_worker_gets_the_uri_from_its_environment(tmp_path: Path) -> None:
    """The URI left out of the config still reaches a worker of a private local Ray (the stages' default):
    the raylet and its workers inherit the driver's environment."""
    uri = URIS[0]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-c", RAY_WORKER],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"WORKER {uri}" in done.stdout
