#!/usr/bin/env bash
# CrossMat on the official MatBench v0.1 5-fold protocol (composition tasks), baselines in the same run
# (same --output-dir as run_baselines.sh, so their finished folds are reused, not recomputed).
# Usage: bash benchmarks/matbench/run_crossmat.sh <variant: scratch|mlm|imkt> [task ...]
# Size: hidden 64, 2 layers, <=12 epochs, batch 128, early stopping (patience 3) on the validation metric
# (10% of each fold's training rows); matbench_steels: 30 epochs, batch 32, patience 6 (312 rows only).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"  # 2 shared cores: no thread oversubscription
export CROSSMAT_CACHE_DIR="${CROSSMAT_CACHE_DIR:-benchmarks/_work/cache}"
VARIANT="$1"; shift
TASKS=("$@")
[ ${#TASKS[@]} -eq 0 ] && TASKS=(matbench_steels matbench_expt_gap matbench_expt_is_metal matbench_glass)
for t in "${TASKS[@]}"; do
  EXTRA=()
  [ "$t" = matbench_steels ] && EXTRA=(--set train.epochs=30 --set train.batch_size=32 --set train.early_stopping_patience=6)
  python evaluate.py --benchmark matbench --task "$t" --config "benchmarks/matbench/recipes/crossmat_${VARIANT}.yaml" \
    --baselines dummy,rf_magpie --rf-trees 100 --results-dir benchmarks/results --output-dir "benchmarks/_work/matbench/$t" "${EXTRA[@]}" \
    --notes "CrossMat ${VARIANT}: hidden 64, 2 layers, 2 CPU cores shared with other jobs; see benchmarks/matbench/run_crossmat.sh"
done
