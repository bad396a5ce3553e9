#!/usr/bin/env bash
# The main job: set up, then run the `quick` AR2 demo on the bundled SciFact (14 to 35 minutes on
# 2 CPU cores, by CPU; it prints its estimate first): warm-up retriever, warm-up ranker, one
# adversarial round, then the comparison of bm25, start, g0, ar2-g and ar2-g+d on the test split.
# Writes runs/quick/ (models, index, report.md, report.json, metrics.jsonl, training.png). Run
# again to reprint the report; a killed run continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ar2 train data/scifact --preset quick --out runs/quick --resume "$@"
