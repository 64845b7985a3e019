#!/usr/bin/env bash
# The transfer measurement: the default fine-tuning recipe (benchmarks/matbench/recipes/crossmat_default.yaml,
# unchanged: same epochs, batch rule, schedule, SWA) started from a pretrained backbone instead of from
# scratch, on the official MatBench v0.1 5 folds. The scratch arm is the record crossmat_default.json.
# Usage: bash benchmarks/imkt/run_transfer.sh ARM TASK [TASK ...]   (ARM as in pretrain.sh, or "scratch":
#   the same recipe without a backbone, rerun with the same code as the arms it is compared with; or ARM_lora:
#   the same backbone fine-tuned through LoRA adapters, lora section of the recipe at its defaults)
# Records: benchmarks/results/matbench/<task>/crossmat_default_from_<ARM>.json
# Fold outputs: $TRANSFER_DIR/<ARM>/<task> (default benchmarks/_work/imkt/transfer, ignored; set
#   TRANSFER_DIR=benchmarks/matbench/runs/transfer to keep predictions.csv + fold.json tracked)
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export CROSSMAT_CACHE_DIR="${CROSSMAT_CACHE_DIR:-benchmarks/_work/cache}"
TRANSFER_DIR="${TRANSFER_DIR:-benchmarks/_work/imkt/transfer}"
ARM="$1"; shift
EXTRA=()
case "$ARM" in *_lora) EXTRA=(--set lora.enabled=true) ;; esac
BACKBONE="benchmarks/_work/imkt/backbones/${ARM%_lora}"
INIT=(--set "model.init_from=$BACKBONE" "${EXTRA[@]}")
if [ "$ARM" = scratch ]; then INIT=()
elif [ ! -f "$BACKBONE/model.safetensors" ]; then echo "no backbone at $BACKBONE: run bash benchmarks/imkt/pretrain.sh $ARM" >&2; exit 2; fi
for t in "$@"; do
  python evaluate.py --benchmark matbench --task "$t" --config benchmarks/matbench/recipes/crossmat_default.yaml \
    "${INIT[@]}" --variant "crossmat_default_from_$ARM" --baselines none \
    --output-dir "$TRANSFER_DIR/$ARM/$t" --results-dir benchmarks/results \
    --notes "crossmat_default fine-tuned from the $ARM backbone (benchmarks/imkt/pretrain.sh $ARM); 1 thread, 2 CPU cores shared"
done
