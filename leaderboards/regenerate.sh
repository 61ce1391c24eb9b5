#!/usr/bin/env bash
# Regenerates every published file in leaderboards/ from the raw records beside it (run from anywhere).
set -euo pipefail
cd "$(dirname "$0")"
ddbench leaderboard --jsonl raw/*.jsonl --reported --set-metrics --output leaderboard.md
ddbench leaderboard --jsonl raw/*.jsonl --reported --format html --output leaderboard.html
ddbench plot --jsonl raw/*.jsonl --kind ipc --output accuracy-vs-ipc.png
ddbench leaderboard --jsonl raw/dc300/*.jsonl --set-metrics --output fashion-dc300.md
ddbench leaderboard --jsonl raw/acs-g/*.jsonl --set-metrics --output acs-g.md
