#!/bin/sh
# Run one pipeline stage (dvc.yaml's cmd) with the active Python, or say plainly why it cannot.
# Why: without the project's virtual environment, `python pipelines/<stage>.py` dies with an ImportError (or
# "python: not found") and DVC only reports "exited with 1". Checking that the packages can be found costs
# milliseconds (nothing is imported).
# DVC runs a stage at the root of the checkout it reproduces: a `dvc exp run --temp` or queued experiment runs in
# a copy of it. Put that root first on the import path, so the stage runs the copy's acol, not the checkout the
# editable install points at.
PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH
py=$(command -v python || true)
if [ -z "$py" ] || ! "$py" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('acol', 'torch', 'ray', 'mlflow', 'pyarrow')))" 2>/dev/null; then
  echo "ERROR: $1 needs the project's virtual environment, which is not active: 'python' is ${py:-not on PATH}" \
    "and cannot find acol, torch, ray, mlflow and pyarrow. Run 'bash scripts/setup.sh' once, then" \
    "'source .venv/bin/activate', then 'dvc repro' again." >&2
  exit 2
fi
exec "$py" "$@"
