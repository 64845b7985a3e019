#!/usr/bin/env bash
# The GPU run of the CIF LM (issue 24): train a 6 x 256 GPT-2 CIF LM on the perov_5 train split through train.py
# (configs/cif_lm.yaml with the overrides below, all fixed before the run), then sample every perov_5 test formula
# (constrained_p1, 20 draws each) with run_cif_lm_full.py on the same machine; a deadline stops sampling cleanly and
# the records resume anywhere (a CPU machine included). Scored here afterwards with
#   PYTHONPATH=. python benchmarks/explicit_transfer/run_cif_lm_full.py aggregate --model M --records R
# The recorded run (run_cif_lm_gpu.log) used WORKERS=14 and batches of 32 formulas: one of the 14 processes ran out
# of GPU memory (each process's allocator grew to 3-30 GiB), so the defaults are now 10 workers, batches of 16 and
# expandable segments; what a failed worker had not written is simply sampled again by the next run.
# Usage: W=/tmp/w DEADLINE=420 bash benchmarks/explicit_transfer/run_cif_lm_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
W="${W:-benchmarks/_work/cif_lm_gpu}"
T0=$(date +%s)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
python3 train.py --config configs/cif_lm.yaml --output-dir "$W/lm" --resume \
  "data.train=['${CROSSMAT_DATA_DIR:-$PWD/../shared/data}/perov_5/train_structures.csv.gz']" \
  "model.config={n_embd: 256, n_layer: 6, n_head: 8, n_positions: 512, dropout: 0.1}" \
  train.max_steps="${STEPS:-4000}" train.batch_size=64 train.learning_rate=1.0e-3 train.warmup_steps=200 \
  train.eval_every=1000 train.checkpoint_every=1000 train.keep_checkpoints=1 train.progress_bar=false 2>&1 \
  | grep --line-buffered -v -e "Loading weights" -e "Writing model shards"
echo "training done after $(( $(date +%s) - T0 )) s"
LEFT=$(( ${DEADLINE:-420} - ($(date +%s) - T0) ))
python3 benchmarks/explicit_transfer/run_cif_lm_full.py sample --model "$W/lm" --records "$W/records" \
  --workers "${WORKERS:-10}" --device "${DEVICE:-cuda}" --batch-formulas "${BATCH:-16}" --deadline-s "$LEFT" 2>&1 \
  | grep --line-buffered -v -e "Loading weights" -e "attention_mask"
echo "sampling stopped after $(( $(date +%s) - T0 )) s"
