#!/usr/bin/env bash
# The default CrossMat recipe (benchmarks/matbench/recipes/crossmat_default.yaml) on the official MatBench
# v0.1 5-fold protocol, with the dummy and Magpie random-forest (500 trees) baselines on the same folds in
# the same run. One thread per run (two runs share the 2 cores); per-fold wall seconds go into the record.
# Usage: bash benchmarks/matbench/run_default.sh [task ...]   (default: the 4 composition tasks)
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export CROSSMAT_CACHE_DIR="${CROSSMAT_CACHE_DIR:-benchmarks/_work/cache}"
TASKS=("$@")
[ ${#TASKS[@]} -eq 0 ] && TASKS=(matbench_steels matbench_expt_gap matbench_expt_is_metal matbench_glass)
for t in "${TASKS[@]}"; do
  python evaluate.py --benchmark matbench --task "$t" --config benchmarks/matbench/recipes/crossmat_default.yaml \
    --baselines dummy,rf_magpie --output-dir "benchmarks/_work/matbench_default/$t" \
    --results-dir benchmarks/results \
    --notes "crossmat_default (fixed in advance, same settings for every task); 1 thread per run, 2 CPU cores shared with a second run and development work"
done
