#!/usr/bin/env bash
# run_default.sh for one task, with the 5 official folds split over two processes (one thread each; folds
# 0-2 and 3-4), then one resume pass that reuses the finished folds, runs the baselines and writes the
# record. Same settings and outputs as run_default.sh; only the wall clock differs.
# Usage: bash benchmarks/matbench/run_default_parallel.sh TASK
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export CROSSMAT_CACHE_DIR="${CROSSMAT_CACHE_DIR:-benchmarks/_work/cache}"
TASK="$1"
ARGS=(--benchmark matbench --task "$TASK" --config benchmarks/matbench/recipes/crossmat_default.yaml
      --output-dir "benchmarks/_work/matbench_default/$TASK")
python evaluate.py "${ARGS[@]}" --folds 0,1,2 --baselines none --results-dir none > /dev/null 2>&1 &
python evaluate.py "${ARGS[@]}" --folds 3,4 --baselines none --results-dir none > /dev/null 2>&1 &
wait
python evaluate.py "${ARGS[@]}" --baselines dummy,rf_magpie --results-dir benchmarks/results \
  --notes "crossmat_default (fixed in advance, same settings for every task); folds trained by two processes (one thread each) on 2 CPU cores"
