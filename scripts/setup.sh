#!/usr/bin/env bash
# Create .venv and install ar2 with every extra. torch is pinned in the same pip call, so pip
# takes the local CPU wheel instead of a multi-GB CUDA build. Re-runs are quick (a stamp file
# remembers the pyproject.toml that was installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.ar2-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "torch==2.13.0" -e ".[all,dev]"
  echo "$want" > "$stamp"
fi
