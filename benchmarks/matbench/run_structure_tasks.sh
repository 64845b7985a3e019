#!/usr/bin/env bash
# CrossMat (from scratch) on the composition-only versions of the small structure tasks, official
# 5-fold protocol, baselines in the same run. Small data: 30 epochs, batch 32, patience 6 (as steels).
# Usage: bash benchmarks/matbench/run_structure_tasks.sh [task ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"  # 2 shared cores
export CROSSMAT_CACHE_DIR="${CROSSMAT_CACHE_DIR:-benchmarks/_work/cache}"
TASKS=("$@")
[ ${#TASKS[@]} -eq 0 ] && TASKS=(matbench_jdft2d matbench_phonons)
for t in "${TASKS[@]}"; do
  python evaluate.py --benchmark matbench --task "$t" --config benchmarks/matbench/recipes/crossmat_scratch.yaml \
    --baselines dummy,rf_magpie --rf-trees 100 --results-dir benchmarks/results --output-dir "benchmarks/_work/matbench/$t" \
    --set train.epochs=30 --set train.batch_size=32 --set train.early_stopping_patience=6 \
    --notes "CrossMat scratch on composition only (structure task): hidden 64, 2 layers, 30 epochs, batch 32; 2 shared CPU cores"
done
