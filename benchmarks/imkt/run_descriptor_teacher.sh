#!/usr/bin/env bash
# The descriptor teacher end to end (issue 23 item 2), each step resumable:
#   descriptors of all 54,629 MP structures -> throughput check on 500 of them -> alignment set (polymorph mean,
#   leakage guard) -> imKT pretraining (arm imkt_descriptors) -> fine-tuning on the given tasks.
# Fold folders (predictions.csv + fold.json, tracked) go to benchmarks/matbench/runs/transfer/imkt_descriptors/<task>.
# Usage: bash benchmarks/imkt/run_descriptor_teacher.sh [TASK ...]   (default: jdft2d steels phonons)
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
TASKS=("$@")
[ ${#TASKS[@]} -eq 0 ] && TASKS=(matbench_jdft2d matbench_steels matbench_phonons)
E=benchmarks/_work/imkt/embeddings/mp_structures
L=benchmarks/imkt/logs
mkdir -p $L
bash benchmarks/imkt/build_data.sh mp_descriptors
if ! grep -q throughput_check $E/embeddings_metadata.json; then
  PYTHONPATH=. python benchmarks/imkt/descriptor_throughput.py --metadata $E
  bash benchmarks/imkt/build_data.sh mp_descriptors  # refinalise: the card gets the throughput line
fi
bash benchmarks/imkt/build_data.sh alignment_descriptors
bash benchmarks/imkt/pretrain.sh imkt_descriptors 2>&1 | tr '\r' '\n' | grep -v -E '^\s*$' | tee $L/pretrain_imkt_descriptors.log
for t in "${TASKS[@]}"; do
  TRANSFER_DIR=benchmarks/matbench/runs/transfer bash benchmarks/imkt/run_transfer.sh imkt_descriptors "$t" 2>&1 \
    | tr '\r' '\n' | grep -v -E '^\s*$|it/s\]|s/it\]' > $L/transfer_imkt_descriptors_${t#matbench_}.log
done
