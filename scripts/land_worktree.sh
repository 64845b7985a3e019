#!/usr/bin/env bash
# Copy finished benchmark records from a pinned worktree into this checkout: every fold.json / predictions.csv /
# matbench_results.json / predictions_without_*.csv under the given run folders (never model/ folders) and the given files as they are.
# Usage: bash scripts/land_worktree.sh WORKTREE PATH [PATH ...]   (PATHs relative to the repository root)
set -euo pipefail
WT="$1"; shift
cd "$(dirname "$0")/.."
for p in "$@"; do
  if [ -d "$WT/$p" ]; then
    (cd "$WT" && find "$p" \( -name fold.json -o -name predictions.csv -o -name matbench_results.json \
      -o -name predictions_without_forest.csv -o -name predictions_without_same_composition.csv \) -not -path "*/model/*" -print0) |
      while IFS= read -r -d '' f; do mkdir -p "$(dirname "$f")" && cp "$WT/$f" "$f"; done
  elif [ -f "$WT/$p" ]; then
    mkdir -p "$(dirname "$p")" && cp "$WT/$p" "$p"
  fi
done
