#!/usr/bin/env bash
# Baselines (dummy + Magpie/random forest) on the official MatBench v0.1 folds, composition input.
# Writes benchmarks/results/matbench/<task>/{dummy,rf_magpie}.json; predictions under benchmarks/_work/.
# Usage: bash benchmarks/matbench/run_baselines.sh [task ...]   (default: the tasks below)
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"  # 2 shared cores: no thread oversubscription
export CROSSMAT_CACHE_DIR="${CROSSMAT_CACHE_DIR:-benchmarks/_work/cache}"
TASKS=("$@")
if [ ${#TASKS[@]} -eq 0 ]; then
  TASKS=(matbench_steels matbench_expt_gap matbench_expt_is_metal matbench_glass
         matbench_jdft2d matbench_phonons matbench_dielectric matbench_perovskites matbench_log_gvrh matbench_log_kvrh)
fi
for t in "${TASKS[@]}"; do
  python evaluate.py --benchmark matbench --task "$t" --baselines-only --rf-trees 100 \
    --results-dir benchmarks/results --output-dir "benchmarks/_work/matbench/$t" \
    --notes "baselines only; RF 100 trees, n_jobs=1; composition input"
done
