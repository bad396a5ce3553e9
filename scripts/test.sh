#!/usr/bin/env bash
# Set up, then lint and run the default test suite (slow and gpu tests are skipped; run them
# with: .venv/bin/python -m pytest -m slow). The 15 slowest tests are listed at the end; add
# -m "not integration" for a quick pass without the multi-process, kill/resume and load tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks conftest.py
.venv/bin/ruff format --check src tests benchmarks conftest.py
.venv/bin/mypy src/ar2
.venv/bin/python -m pytest --durations=15 "$@"
