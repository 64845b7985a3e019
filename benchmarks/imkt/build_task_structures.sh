#!/usr/bin/env bash
# The structure side of the fine-tuning structure auxiliary (issue 23, run_keep.sh aux): every Materials Project
# structure (shared mp_structures, read by path) of every formula of the MatBench tasks below, embedded with CHGNet;
# per_formula/chgnet.parquet keeps the lowest-energy polymorph per formula. Resumable (rerun the same command).
# No MatBench target enters; a fold looks up only its training rows' formulas during fine-tuning.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
W=benchmarks/_work/imkt/task_structures
python benchmarks/imkt/task_structures.py --output $W/structures.csv.gz --tasks matbench_phonons matbench_jdft2d \
  matbench_dielectric matbench_expt_gap matbench_steels matbench_log_kvrh matbench_expt_is_metal matbench_glass \
  matbench_log_gvrh
python -m crossmat.dataset_builders embeddings --source $W/structures.csv.gz --encoder chgnet \
  --output-dir $W/chgnet --num-threads 1 --on-bad report --shard-size 1000
