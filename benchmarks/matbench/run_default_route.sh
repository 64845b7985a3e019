#!/usr/bin/env bash
# The default route: `python evaluate.py --benchmark matbench --task T` with no --config (the shipped backbone
# crossmat-imkt-mp-small + configs/default.yaml: 2 members x 100 epochs, SWA over the last 10; 10% of each fold's
# training rows held out to calibrate the uncertainty / decision threshold), with the dummy and Magpie random forest
# (500 trees) on the same folds. The recipe's ensemble/epoch settings are passed as explicit --set overrides (equal
# to configs/default.yaml by default) so that every record names what it trained. Records (coverage_1sigma /
# coverage_2sigma in all_metrics) go to benchmarks/results as variant crossmat_ens2_e100 (the default route of
# BENCHMARKS.md); console logs to benchmarks/matbench/logs/<route>_<task>.log; fold folders to
# benchmarks/matbench/runs/<route>/<task> (folds committed as they land; a rerun resumes from them).
# Usage: bash benchmarks/matbench/run_default_route.sh [task ...]   (default: the 5 cheap screening tasks)
# ENSEMBLE=N, EPOCHS=E: other ensemble sizes / epochs per member; ENSEMBLE=1 EPOCHS=200 is the previous default
# (one model of 200 epochs, variant crossmat, route default_route); ENSEMBLE=2 EPOCHS=200 the 2 x 200 ensemble
# (crossmat_ens2). SEED=S (S > 0): a replicate with --seed S (another training seed, data order and calibration
# hold-out; the official folds stay), `_seedS` appended to variant and route. Baselines run with the seed-0 default
# and the previous default only. STATS=magpie: the head also reads the Magpie composition statistics
# (model.config.element_statistics=magpie), `_magpie_stats` appended to variant and route. BLEND=magpie: a forest
# on the Magpie composition statistics is blended in, its weight chosen on the calibration rows against its
# out-of-bag predictions (train.forest_blend=magpie, crossmat/modeling/forest.py), `_forest_blend` appended.
# SAME=1: the same-composition correction (train.same_composition=true, crossmat/modeling/same_composition.py), its weight
# chosen on the calibration rows, `_same_composition` appended; the fold also writes the same model's test outputs
# without it (predictions_without_same_composition.csv). FOLDS=0,1,2: only these folds, no record written (two
# processes can share one task's folds; a later run without FOLDS reuses the finished folds and writes the record).
# MAXROWS=N: --max-train-rows N (each fold's training rows subsampled, a declared deviation), `_nN` appended.
# BASELINES_OVERRIDE=list: the baselines of the run (default: dummy,rf_magpie for the seed-0 default route, else none).
# TAG=name: `_name` appended to variant and route, for a rerun of the same settings with newer code (e.g. TAG=tempered:
# the classifier's probability temperature, fitted on the calibration rows; benchmarks/calibration/temperature_scaling.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export CROSSMAT_CACHE_DIR="${CROSSMAT_CACHE_DIR:-benchmarks/_work/cache}"
TASKS=("$@")
[ ${#TASKS[@]} -eq 0 ] && TASKS=(matbench_steels matbench_jdft2d matbench_phonons matbench_expt_gap matbench_dielectric)
N="${ENSEMBLE:-2}" E="${EPOCHS:-100}" S="${SEED:-0}"
# names: one model of 200 epochs is the previous default (route default_route, variant crossmat); otherwise
# default_route_ensN[_eE] / crossmat_ensN[_eE] (no _eE for 200 epochs); the default 2 x 100 is crossmat_ens2_e100
if [ "$N" -eq 1 ] && [ "$E" -eq 200 ]; then ROUTE=default_route VARIANT=crossmat
elif [ "$E" -eq 200 ]; then ROUTE=default_route_ens$N VARIANT=crossmat_ens$N
else ROUTE=default_route_ens${N}_e$E VARIANT=crossmat_ens${N}_e$E; fi
NOTE="default route with ensemble_size=$N, $E epochs each"
[ "$S" -gt 0 ] && ROUTE=${ROUTE}_seed$S VARIANT=${VARIANT}_seed$S NOTE="$NOTE, seed $S"
ST="${STATS:-}"
[ -n "$ST" ] && ROUTE=${ROUTE}_${ST}_stats VARIANT=${VARIANT}_${ST}_stats NOTE="$NOTE, $ST element statistics in the head"
BL="${BLEND:-}"
[ -n "$BL" ] && ROUTE=${ROUTE}_forest_blend VARIANT=${VARIANT}_forest_blend NOTE="$NOTE, blended with a $BL forest"
SC="${SAME:-}"
[ -n "$SC" ] && ROUTE=${ROUTE}_same_composition VARIANT=${VARIANT}_same_composition NOTE="$NOTE, same-composition correction"
MR="${MAXROWS:-}"
[ -n "$MR" ] && ROUTE=${ROUTE}_n$MR VARIANT=${VARIANT}_n$MR NOTE="$NOTE, $MR training rows per fold"
TG="${TAG:-}"
[ -n "$TG" ] && ROUTE=${ROUTE}_$TG VARIANT=${VARIANT}_$TG NOTE="$NOTE, $TG"
BASELINES=none
[ "$S" -eq 0 ] && { [ "$VARIANT" = crossmat ] || [ "$VARIANT" = crossmat_ens2_e100 ]; } && BASELINES=dummy,rf_magpie
BASELINES="${BASELINES_OVERRIDE:-$BASELINES}"
EXTRA=(--set "model.config.ensemble_size=$N" --set "train.epochs=$E" --set "train.swa_epochs=$((E / 10))"
       --seed "$S" --variant "$VARIANT" --baselines "$BASELINES")
[ -n "$ST" ] && EXTRA+=(--set "model.config.element_statistics=$ST")
[ -n "$BL" ] && EXTRA+=(--set "train.forest_blend=$BL")
[ -n "$SC" ] && EXTRA+=(--set "train.same_composition=true")
[ -n "$MR" ] && EXTRA+=(--max-train-rows "$MR")
RESULTS=(--results-dir benchmarks/results) LOG_SUFFIX=""
[ -n "${FOLDS:-}" ] && EXTRA+=(--folds "$FOLDS") RESULTS=(--results-dir none) LOG_SUFFIX="_folds${FOLDS//,/}"
for t in "${TASKS[@]}"; do
  python evaluate.py --benchmark matbench --task "$t" "${EXTRA[@]}" \
    --output-dir "benchmarks/matbench/runs/$ROUTE/$t" "${RESULTS[@]}" \
    --notes "$NOTE (no --config); 1 thread, 2 CPU cores shared with other jobs" \
    2>&1 | grep --line-buffered -v -e "Loading weights" -e "Writing model" | tee "benchmarks/matbench/logs/${ROUTE}_${t#matbench_}${LOG_SUFFIX}.log"
done
