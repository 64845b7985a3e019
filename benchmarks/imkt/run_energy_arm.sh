#!/usr/bin/env bash
# The energy-teacher arm of issue 23 (benchmarks/imkt/SECTION.md, "The structure model's predictions as the teacher"),
# end to end; every step resumes when rerun (embedding shards, pretraining checkpoints, finished folds).
#   bash benchmarks/imkt/run_energy_arm.sh data       CHGNet on the MP structures, then the energy alignment set
#   bash benchmarks/imkt/run_energy_arm.sh SEED       pretrain imkt_energy (SEED 42) or imkt_energy_seed7 (SEED 7)
#                                                     and fine-tune it on the five screening tasks
#   bash benchmarks/imkt/run_energy_arm.sh controls   the MLM-only seed-7 control on the five tasks (retrains the
#                                                     seed-7 backbone if missing; seed 42's records already exist)
#   bash benchmarks/imkt/run_energy_arm.sh probes     frozen probes (probes.py) of the energy backbones against MLM-only:
#                                                     masked view seed 42, clean view seeds 42 and 7 (pretrains missing
#                                                     backbones; output probes_energy/<arm>/)
#   bash benchmarks/imkt/run_energy_arm.sh confirm SEED           rule step 3, only once rule 1 holds on the screening
#   bash benchmarks/imkt/run_energy_arm.sh confirm_controls SEED  tasks: the energy arm (SEED 42 or 7; retrains its
#       backbone if missing) or the MLM-only control of the same seed (run_keep.sh rerun; retrains mlm / mlm_seed7 if
#       missing) on the other five tasks, cheapest first: expt_is_metal, glass, log_kvrh, log_gvrh, perovskites
# ENERGY_ARM=imkt_energy_clean runs the clean-view arm instead (pretrain.sh imkt_energy_clean[_seed7]; SECTION.md,
# "Alignment on the clean formula"); its rule: energy_rule.py --arm imkt_energy_clean. ENERGY_ARM=imkt_clean runs the
# CHGNet-embedding teacher with the clean view (pretrain.sh imkt_clean[_seed7], `data` step: build_data.sh alignment);
# its rule: energy_rule.py --arm imkt_clean.
# Two processes on two cores: `data` first, then `42` and `7` side by side, then `controls`. A fold is reused only
# if its overrides match, and they hold the backbone's path: the landed control folds used
# /work/main/benchmarks/_work/imkt/backbones (BACKBONES=... sets it; default: this checkout's).
# Afterwards: PYTHONPATH=. python benchmarks/imkt/energy_rule.py --json benchmarks/imkt/energy_rule.json
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
TASKS=(matbench_phonons matbench_jdft2d matbench_steels matbench_dielectric matbench_expt_gap)
CONFIRM=(matbench_expt_is_metal matbench_glass matbench_log_kvrh matbench_log_gvrh matbench_perovskites)
L=benchmarks/imkt/logs
B="${BACKBONES:-$PWD/benchmarks/_work/imkt/backbones}"
mkdir -p "$L"
case "${1:-}" in
  data)
    PROCESSES=2 bash benchmarks/imkt/build_data.sh mp_chgnet
    bash benchmarks/imkt/build_data.sh alignment_energy 2>&1 | tee "$L/build_alignment_energy.log" ;;
  42|7|confirm)
    SEED="$1"; RUN=("${TASKS[@]}")
    [ "$1" = confirm ] && { SEED="${2:?confirm needs a seed: 42 or 7}"; RUN=("${CONFIRM[@]}"); }
    ARM="${ENERGY_ARM:-imkt_energy}"; [ "$SEED" = 7 ] && ARM="${ARM}_seed7"
    [ -f "$B/$ARM/model.safetensors" ] || bash benchmarks/imkt/pretrain.sh "$ARM" 2>&1 | tee "$L/pretrain_$ARM.log"
    for t in "${RUN[@]}"; do
      TRANSFER_DIR=benchmarks/matbench/runs/transfer bash benchmarks/imkt/run_transfer.sh "$ARM" "$t" 2>&1 |
        grep --line-buffered -v -e "Loading weights" -e "Writing model" | tee "$L/transfer_${ARM}_${t#matbench_}.log"
    done ;;
  controls)
    [ -f "$B/mlm_seed7/model.safetensors" ] || bash benchmarks/imkt/pretrain.sh mlm_seed7 2>&1 | tee "$L/pretrain_mlm_seed7_rebuild.log"
    bash benchmarks/imkt/run_keep.sh rerun mlm_seed7 "$B/mlm_seed7" "${TASKS[@]}" ;;
  confirm_controls)
    ARM=mlm; [ "${2:?confirm_controls needs a seed: 42 or 7}" = 7 ] && ARM=mlm_seed7
    [ -f "$B/$ARM/model.safetensors" ] || bash benchmarks/imkt/pretrain.sh "$ARM" 2>&1 | tee "$L/pretrain_${ARM}_rebuild.log"
    bash benchmarks/imkt/run_keep.sh rerun "$ARM" "$B/$ARM" "${CONFIRM[@]}" ;;
  probes)  # reported beside the rule, not part of it; the first two side by side, the third reuses the first's cache
    W=benchmarks/_work/probes_energy
    for a in mlm imkt_energy imkt_energy_clean imkt_energy_clean_seed7; do
      [ -f "$B/$a/model.safetensors" ] || bash benchmarks/imkt/pretrain.sh "$a" > "$L/pretrain_${a}_probes.log" 2>&1
    done
    probe() {  # ARM WORK_DIR
      python benchmarks/imkt/probes.py --mlm "$B/mlm" --imkt "$B/$1" --output-dir "benchmarks/imkt/probes_energy/$1" \
        --work-dir "$2" --corpus benchmarks/_work/imkt/corpus_mp/data/train.parquet \
        --chgnet-embeddings benchmarks/_work/imkt/embeddings/mp_structures
    }
    probe imkt_energy "$W/masked" & probe imkt_energy_clean "$W/clean"; wait
    probe imkt_energy_clean_seed7 "$W/clean" ;;
  *) echo "usage: bash benchmarks/imkt/run_energy_arm.sh data | 42 | 7 | controls | probes | confirm SEED | confirm_controls SEED" >&2
     exit 2 ;;
esac
