#!/usr/bin/env bash
# The default route, exactly as a user runs it: `python evaluate.py --benchmark matbench --task T` with no --config
# (the shipped backbone crossmat-imkt-mp-small + configs/default.yaml; 10% of each fold's training rows held out to
# calibrate the uncertainty / decision threshold), with the dummy and Magpie random forest (500 trees) on the same
# folds in the same run. Records (with coverage_1sigma / coverage_2sigma in all_metrics) go to benchmarks/results as
# variant `crossmat`; the console log to benchmarks/matbench/logs/default_route_<task>.log; the fold folders to
# benchmarks/matbench/runs/default_route/<task> (CrossMat folds committed as they land; a rerun resumes from them).
# Usage: bash benchmarks/matbench/run_default_route.sh [task ...]   (default: the 5 cheap screening tasks)
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export CROSSMAT_CACHE_DIR="${CROSSMAT_CACHE_DIR:-benchmarks/_work/cache}"
TASKS=("$@")
[ ${#TASKS[@]} -eq 0 ] && TASKS=(matbench_steels matbench_jdft2d matbench_phonons matbench_expt_gap matbench_dielectric)
for t in "${TASKS[@]}"; do
  python evaluate.py --benchmark matbench --task "$t" --baselines dummy,rf_magpie \
    --output-dir "benchmarks/matbench/runs/default_route/$t" --results-dir benchmarks/results \
    --notes "default route (no --config); 1 thread, 2 CPU cores shared with other jobs" \
    2>&1 | grep --line-buffered -v -e "Loading weights" -e "Writing model" | tee "benchmarks/matbench/logs/default_route_${t#matbench_}.log"
done
