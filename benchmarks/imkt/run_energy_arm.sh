#!/usr/bin/env bash
# The energy-teacher arm of issue 23 (benchmarks/imkt/SECTION.md, "The structure model's predictions as the teacher"),
# end to end; every step resumes when rerun (embedding shards, pretraining checkpoints, finished folds).
#   bash benchmarks/imkt/run_energy_arm.sh data       CHGNet on the MP structures, then the energy alignment set
#   bash benchmarks/imkt/run_energy_arm.sh SEED       pretrain imkt_energy (SEED 42) or imkt_energy_seed7 (SEED 7)
#                                                     and fine-tune it on the five screening tasks
#   bash benchmarks/imkt/run_energy_arm.sh controls   the MLM-only seed-7 control on the five tasks (retrains the
#                                                     seed-7 backbone if missing; seed 42's records already exist)
# Two processes on two cores: `data` first, then `42` and `7` side by side, then `controls`. A fold is reused only
# if its overrides match, and they hold the backbone's path: the landed control folds used
# /work/main/benchmarks/_work/imkt/backbones (BACKBONES=... sets it; default: this checkout's).
# Afterwards: PYTHONPATH=. python benchmarks/imkt/energy_rule.py --json benchmarks/imkt/energy_rule.json
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
TASKS=(matbench_phonons matbench_jdft2d matbench_steels matbench_dielectric matbench_expt_gap)
L=benchmarks/imkt/logs
B="${BACKBONES:-$PWD/benchmarks/_work/imkt/backbones}"
mkdir -p "$L"
case "${1:-}" in
  data)
    PROCESSES=2 bash benchmarks/imkt/build_data.sh mp_chgnet
    bash benchmarks/imkt/build_data.sh alignment_energy 2>&1 | tee "$L/build_alignment_energy.log" ;;
  42|7)
    ARM=imkt_energy; [ "$1" = 7 ] && ARM=imkt_energy_seed7
    bash benchmarks/imkt/pretrain.sh "$ARM" 2>&1 | tee "$L/pretrain_$ARM.log"
    for t in "${TASKS[@]}"; do
      TRANSFER_DIR=benchmarks/matbench/runs/transfer bash benchmarks/imkt/run_transfer.sh "$ARM" "$t" 2>&1 |
        grep --line-buffered -v -e "Loading weights" -e "Writing model" | tee "$L/transfer_${ARM}_${t#matbench_}.log"
    done ;;
  controls)
    [ -f "$B/mlm_seed7/model.safetensors" ] || bash benchmarks/imkt/pretrain.sh mlm_seed7 2>&1 | tee "$L/pretrain_mlm_seed7_rebuild.log"
    bash benchmarks/imkt/run_keep.sh rerun mlm_seed7 "$B/mlm_seed7" "${TASKS[@]}" ;;
  *) echo "usage: bash benchmarks/imkt/run_energy_arm.sh data | 42 | 7 | controls" >&2; exit 2 ;;
esac
