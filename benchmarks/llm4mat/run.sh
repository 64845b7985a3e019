#!/usr/bin/env bash
# LLM4Mat-Bench protocol (test-set MAD:MAE with MAD on the test targets; official rounded "AUC" next to the
# true ROC-AUC) for CrossMat (from scratch, CPU-sized recipe) and the baselines, on the data available here:
# the OFFICIAL 10-ROW SAMPLE of the Materials Project dataset (10 train / 10 validation / 10 test rows).
# Numbers from 10 test rows only demonstrate the protocol; they are not comparable to the leaderboard.
# With the full benchmark downloaded to $CROSSMAT_DATA_DIR/llm4mat_bench/mp/ the same command runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"  # 2 shared cores: no thread oversubscription
export CROSSMAT_CACHE_DIR="${CROSSMAT_CACHE_DIR:-benchmarks/_work/cache}"
for task in mp/band_gap mp/formation_energy_per_atom mp/is_stable mp/is_gap_direct; do
  python evaluate.py --benchmark llm4mat --task "$task" --config benchmarks/matbench/recipes/crossmat_scratch.yaml \
    --baselines dummy,rf_magpie --rf-trees 100 --results-dir benchmarks/results --output-dir "benchmarks/_work/llm4mat/${task//\//__}" \
    --set train.epochs=20 --set train.batch_size=8 \
    --notes "official 10-row MP sample only (10 test rows): protocol demonstration, not a leaderboard number"
done
