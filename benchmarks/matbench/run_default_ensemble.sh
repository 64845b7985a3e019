#!/usr/bin/env bash
# The default recipe as a 5-member seed ensemble (model.config.ensemble_size=5): per-sample uncertainty
# (member std) recorded in the MatBench JSON and its calibration in the summary. 5x the compute of one model.
# Usage: bash benchmarks/matbench/run_default_ensemble.sh [task ...]   (default: matbench_steels)
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export CROSSMAT_CACHE_DIR="${CROSSMAT_CACHE_DIR:-benchmarks/_work/cache}"
TASKS=("$@")
[ ${#TASKS[@]} -eq 0 ] && TASKS=(matbench_steels)
for t in "${TASKS[@]}"; do
  python evaluate.py --benchmark matbench --task "$t" --config benchmarks/matbench/recipes/crossmat_default.yaml \
    --variant crossmat_default_ens5 --set model.config.ensemble_size=5 \
    --baselines dummy,rf_magpie --output-dir "benchmarks/_work/matbench_default/$t" \
    --results-dir benchmarks/results \
    --notes "crossmat_default as a 5-member ensemble (ensemble_size=5); 1 thread, 2 CPU cores shared with a second run and development work"
done
