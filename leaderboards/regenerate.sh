#!/usr/bin/env bash
# Regenerates every published file in leaderboards/ from the raw records beside it (run from anywhere).
set -euo pipefail
cd "$(dirname "$0")"
rm -f figures/*.png  # one figure per dataset × protocol: drop those of tables that no longer exist
ddbench plot --jsonl raw/*.jsonl --kind ipc --output figures/accuracy-vs-ipc.png
ddbench plot --jsonl raw/*.jsonl --kind time --output figures/accuracy-vs-time.png
ddbench leaderboard --jsonl raw/*.jsonl --reported --all-versions --set-metrics --figures figures/*.png \
  --output leaderboard.md
ddbench leaderboard --jsonl raw/*.jsonl --reported --all-versions --set-metrics --figures figures/*.png \
  --format html --output leaderboard.html
ddbench leaderboard --jsonl raw/*.jsonl --reproduction --output reproduction.md
ddbench leaderboard --jsonl raw/*.jsonl --reproduction --format html --output reproduction.html
ddbench leaderboard --jsonl raw/dc300/*.jsonl --all-versions --set-metrics --output fashion-dc300.md
ddbench leaderboard --jsonl raw/acs-g/*.jsonl --all-versions --set-metrics --output acs-g.md
