#!/usr/bin/env bash
# Train the CIF language model through train.py (configs/cif_lm.yaml) and score it on perov_5 test
# (validity, match@1 and match@20 with StructureMatcher(0.5, 10, 0.3)); results_cif_lm_stage.json + log.
# The CPU run recorded here used only the perov_5 train split (rendering the 54,629 MP structures takes about an
# hour of CPU on this machine) and STEPS=1000; on a GPU run the full config: SOURCES=all STEPS=2000 TARGETS=0.
# Usage: bash benchmarks/explicit_transfer/run_cif_lm_stage.sh     (resumes an interrupted training run)
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
OUT="${OUT:-benchmarks/_work/cif_lm_stage}"
ARGS=(--config configs/cif_lm.yaml --output-dir "$OUT" --resume "train.max_steps=${STEPS:-1000}" train.progress_bar=false)
if [ "${SOURCES:-perov5}" = perov5 ]; then
  ARGS+=('data.train=[${CROSSMAT_DATA_DIR}/perov_5/train_structures.csv.gz]')
fi
L=benchmarks/_work/logs; mkdir -p $L
python train.py "${ARGS[@]}" > $L/cif_lm_stage_train.log 2>&1
python benchmarks/explicit_transfer/run_cif_lm.py --model "$OUT" --targets "${TARGETS:-200}" --samples 20 \
  --results-name results_cif_lm_stage.json > $L/cif_lm_stage_eval.log 2>&1
cat $L/cif_lm_stage_train.log $L/cif_lm_stage_eval.log | grep -v -e "Writing model shards" -e "Loading weights" \
  > benchmarks/explicit_transfer/run_cif_lm_stage.log
