#!/usr/bin/env bash
# Issue 23: does the structure knowledge of an imKT backbone show when labels are few? The default fine-tuning recipe
# (benchmarks/matbench/recipes/crossmat_default.yaml, seed 0) on the official test folds, whole, with each fold's
# training rows subsampled to N_TRAIN (default 300; the seeded draw of evaluate.py --max-train-rows, the same rows
# for every backbone: a declared deviation from the official protocol).
# Usage: bash benchmarks/imkt/run_low_data.sh ARM BACKBONE TASK [TASK ...]   (BACKBONE "none": from scratch)
# Records: benchmarks/results/matbench/<task>/crossmat_default_from_<ARM>_n<N>.json; logs in benchmarks/imkt/logs/;
# fold folders in benchmarks/matbench/runs/low_data/<ARM>_n<N>/<task> (committed as they land; a rerun resumes).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export CROSSMAT_CACHE_DIR="${CROSSMAT_CACHE_DIR:-benchmarks/_work/cache}"
N="${N_TRAIN:-300}"; ARM="$1"; BACKBONE="$2"; shift 2
SET=(); FROM="the $ARM backbone ($BACKBONE)"
[ "$BACKBONE" = none ] || SET=(--set "model.init_from=$BACKBONE")
[ "$BACKBONE" = none ] && FROM="scratch"
mkdir -p benchmarks/imkt/logs
for t in "$@"; do
  python evaluate.py --benchmark matbench --task "$t" --config benchmarks/matbench/recipes/crossmat_default.yaml \
    ${SET[@]+"${SET[@]}"} --max-train-rows "$N" --variant "crossmat_default_from_${ARM}_n${N}" \
    --baselines none --output-dir "benchmarks/matbench/runs/low_data/${ARM}_n${N}/$t" --results-dir benchmarks/results \
    --notes "crossmat_default from $FROM, $N training rows per fold (seeded subsample); 1 thread, 2 CPU cores shared" \
    2>&1 | grep --line-buffered -v -e "Loading weights" -e "Writing model" -e "^INFO" \
    | tee "benchmarks/imkt/logs/low_data_${ARM}_n${N}_${t#matbench_}.log"
done
