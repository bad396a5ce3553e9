#!/usr/bin/env bash
# The main job: set up, then evaluate BM25, zero-shot all-MiniLM-L6-v2 and their hybrid on the
# bundled SciFact test split. Writes runs/scifact-eval/{report.md,report.json,report.png}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ar2 eval data/scifact --split test --systems bm25,dense,hybrid --out runs/scifact-eval "$@"
