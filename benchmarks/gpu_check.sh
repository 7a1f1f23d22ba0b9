#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): CUDA tests, VGG16-ACoL training rate / MFU / kill and resume,
# extraction of shadow ILSVRC val images, GPU memory; figures as JSON in the out folder, a summary on stdout.
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--extract-images N] [--without MODULE]...
# Out folder: --out, else $OUT (the GPU machine's), else benchmarks/results/gpu_check.
# Needs only the repository and a Python with PyTorch; fits in 8 minutes on one H100/H200 (parts that would
# not fit in --budget-s, 450 s by default, are skipped and named). A bare machine lacks pydantic, which acol's
# params need: wheels in .whl/ (git-ignored; or WHEELS=DIR) are installed into a temporary folder first, see
# benchmarks/README.md ("One GPU check").
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
py=${PYTHON:-$(command -v python || command -v python3)}
wheels=${WHEELS:-$here/.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then
  site=$(mktemp -d /tmp/gpu_check_site.XXXXXX)
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  echo "[gpu_check] installed $(ls "$wheels"/*.whl | wc -l) wheels from $wheels into $site"
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$py" benchmarks/gpu_check.py "$@"
