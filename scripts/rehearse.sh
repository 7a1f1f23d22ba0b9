#!/usr/bin/env bash
# Rehearse a preset's real path small, on CPUs, before renting GPUs (acol/stages/rehearse.py):
#   bash scripts/rehearse.sh acol-paper-vgg16-ilsvrc [--work DIR] [--classes N] [--epochs N] [--gpu]
# Needs the project's environment (bash scripts/setup.sh; . .venv/bin/activate).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
if ! "$py" -c "import acol, torch, ray, mlflow, dvc" 2>/dev/null; then
  echo "ERROR: rehearse needs the project's virtual environment: run 'bash scripts/setup.sh', then" \
    "'source .venv/bin/activate'" >&2
  exit 2
fi
exec "$py" -m acol.stages.rehearse "$@"
