#!/usr/bin/env bash
# Fold-safe exKT on matbench_perovskites (official 5 folds): folds 0-2 and 3-4 in two processes (one thread each),
# then one pass that reuses the finished folds and writes results_matbench_perovskites.json. The log (Trainer
# loss lines dropped) goes to run_matbench_perovskites.log. About 8 CPU-minutes per fold on this machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export CROSSMAT_CACHE_DIR="${CROSSMAT_CACHE_DIR:-benchmarks/_work/cache}"
S=benchmarks/explicit_transfer/run_matbench_perovskites.py
L=benchmarks/_work/logs; mkdir -p $L
python $S --folds 0,1,2 > $L/exkt_mbp_a.log 2>&1 &
python $S --folds 3,4 > $L/exkt_mbp_b.log 2>&1 &
wait
python $S > $L/exkt_mbp_final.log 2>&1
cat $L/exkt_mbp_a.log $L/exkt_mbp_b.log $L/exkt_mbp_final.log | grep -v -e "^{'loss'" -e "Writing model shards" \
  > benchmarks/explicit_transfer/run_matbench_perovskites.log
