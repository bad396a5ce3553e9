#!/usr/bin/env bash
# Set up, then lint and run the default test suite (slow and gpu tests are skipped; run them
# with: .venv/bin/python -m pytest -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks conftest.py
.venv/bin/ruff format --check src tests benchmarks conftest.py
.venv/bin/mypy src/ar2
.venv/bin/python -m pytest "$@"
