#!/usr/bin/env bash
# The whole MatBench record, in the order it was run on the shared 2-core CPU machine:
# CrossMat variants (scratch / MLM-pretrained / imKT-pretrained) with baselines in the same run,
# then baselines-only runs on the composition versions of the structure tasks.
# Pretrained encoders come from benchmarks/matbench/pretrain.sh (started separately; waited for here).
set -uo pipefail
cd "$(dirname "$0")/../.."
M=benchmarks/matbench
wait_for() { while [ ! -f "$1" ]; do sleep 30; done; }
bash $M/run_crossmat.sh scratch matbench_steels matbench_expt_gap
wait_for benchmarks/_work/pretrain/mlm_only/training_info.json
for t in matbench_steels matbench_expt_gap; do
  bash $M/run_crossmat.sh imkt "$t"
  bash $M/run_crossmat.sh mlm "$t"
done
bash $M/run_crossmat.sh scratch matbench_expt_is_metal matbench_glass
for t in matbench_expt_is_metal matbench_glass; do
  bash $M/run_crossmat.sh imkt "$t"
  bash $M/run_crossmat.sh mlm "$t"
done
bash $M/run_baselines.sh matbench_jdft2d matbench_phonons matbench_dielectric matbench_perovskites matbench_log_gvrh matbench_log_kvrh
