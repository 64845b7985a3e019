#!/usr/bin/env bash
# Issue 23 item 3 (keep what the backbone learned through fine-tuning), arm "layer-wise learning-rate decay":
# the same default fine-tuning recipe and folds as run_transfer.sh (benchmarks/matbench/recipes/crossmat_default.yaml,
# every training row, seed 0), started from a backbone, with train.layer_lr_decay=0.5 (fixed before any run: encoder
# layer i of 3 at lr * 0.5^(3-i), embeddings at lr / 16, the head at the full rate). Paired per fold against the
# records crossmat_default_from_<ARM>.json (same recipe without the decay).
# Usage: bash benchmarks/imkt/run_layer_decay.sh ARM BACKBONE TASK [TASK ...]
#   ARM: imkt (BACKBONE = crossmat-imkt-mp-small, the shipped imkt backbone) or mlm (its folder)
# Records: benchmarks/results/matbench/<task>/crossmat_default_from_<ARM>_llrd.json; logs in benchmarks/imkt/logs/
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export CROSSMAT_CACHE_DIR="${CROSSMAT_CACHE_DIR:-benchmarks/_work/cache}"
ARM="$1"; BACKBONE="$2"; shift 2
mkdir -p benchmarks/imkt/logs
for t in "$@"; do
  python evaluate.py --benchmark matbench --task "$t" --config benchmarks/matbench/recipes/crossmat_default.yaml \
    --set "model.init_from=$BACKBONE" --set train.layer_lr_decay=0.5 --variant "crossmat_default_from_${ARM}_llrd" \
    --baselines none --output-dir "benchmarks/_work/imkt/llrd/$ARM/$t" --results-dir benchmarks/results \
    --notes "crossmat_default from the $ARM backbone with layer-wise lr decay 0.5; 1 thread, 2 CPU cores shared" \
    2>&1 | grep --line-buffered -v -e "Loading weights" -e "Writing model" -e "^INFO" \
    | tee "benchmarks/imkt/logs/llrd_${ARM}_${t#matbench_}.log"
done
