"""Credentials in a tracking URI, kept out of messages and out of what Ray exports.

Why: ``MLFLOW_TRACKING_URI`` may hold a password (``http://user:pass@host``, ``postgresql://u:p@h/db``, or a
``?password=`` query parameter). Error messages reach logs and CI output, and a Ray Train run's
``train_loop_config`` is shown by Ray's dashboard and job API; neither may show it. Messages show the URI with
each secret replaced by ``***`` (`redact_uri`); the Ray Train config leaves a URI with credentials out
(`loop_tracking_uri`), and workers read ``MLFLOW_TRACKING_URI`` from their own environment instead.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["MASK", "has_credentials", "loop_tracking_uri", "redact_text", "redact_uri", "strip_credentials"]

MASK = "***"
# scheme://user:password@rest: the password runs to the last '@' of the URI, as urllib and SQLAlchemy read a
# password that was not URL-quoted (one that was holds no '@', ':' or '/' of its own)
_USERINFO = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/?#@]*)(?::(?P<password>.*))?@(?P<rest>[^@]*)$", re.S
)
# query parameters whose value is a secret (libpq's password/sslpassword, tokens, keys)
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;][^=&#]*(?:pass|pwd|secret|token|key|auth|credential|signature)[^=&#]*=)(?P<value>[^&#]*)",
    re.I,
)


def _secrets(uri: str) -> list[str]:
    """The secret parts of `uri` as written, and URL-decoded (how a driver might echo them)."""
    found: list[str] = []
    match = _USERINFO.match(uri)
    if match and match["password"]:
        found.append(match["password"])
    found += [m["value"] for m in _SECRET_PARAM.finditer(uri) if m["value"]]
    found += [unquote(s) for s in found]
    return sorted({s for s in found if s}, key=len, reverse=True)  # longest first: no partial replacement


def redact_uri(uri: str) -> str:
    """`uri` with its password and secret query values replaced by ``***`` (``http://user:***@host``)."""
    match = _USERINFO.match(uri)
    if match and match["password"] is not None:
        uri = f"{match['scheme']}{match['user']}:{MASK}@{match['rest']}"
    return _SECRET_PARAM.sub(lambda m: m["key"] + (MASK if m["value"] else ""), uri)


def has_credentials(uri: str) -> bool:
    """True when `uri` holds a password or a secret query parameter."""
    return redact_uri(uri) != uri


def strip_credentials(uri: str) -> str:
    """`uri` without its userinfo (``user:pass@``): what urllib can open (it reads userinfo as the host)."""
    match = _USERINFO.match(uri)
    return f"{match['scheme']}{match['rest']}" if match else uri


def redact_text(text: str, uri: str) -> str:
    """`text` with every secret of `uri` (as written or URL-decoded) replaced by ``***``.

    Why: a message may quote the URI, or an exception from a driver may echo the password on its own.
    """
    for secret in _secrets(uri):
        text = text.replace(secret, MASK)
    return text


def loop_tracking_uri(uri: str) -> str | None:
    """The tracking URI to put in a Ray Train ``train_loop_config``: `uri` when it holds no credential, else None.

    Why None: Ray shows the config in its dashboard and job API. A worker given None resolves
    ``MLFLOW_TRACKING_URI`` from its own environment (`mlflow.tracking.MlflowClient`): the driver's on a
    private local Ray (the raylet inherits it), the pod's or the job's runtime env on a cluster.
    """
    return None if has_credentials(uri) else uri
