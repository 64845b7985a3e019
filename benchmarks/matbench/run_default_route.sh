#!/usr/bin/env bash
# The default route, exactly as a user runs it: `python evaluate.py --benchmark matbench --task T` with no --config
# (the shipped backbone crossmat-imkt-mp-small + configs/default.yaml; 10% of each fold's training rows held out to
# calibrate the uncertainty / decision threshold), with the dummy and Magpie random forest (500 trees) on the same
# folds in the same run. Records (with coverage_1sigma / coverage_2sigma in all_metrics) go to benchmarks/results as
# variant `crossmat`; the console log to benchmarks/matbench/logs/default_route_<task>.log; the fold folders to
# benchmarks/matbench/runs/default_route/<task> (CrossMat folds committed as they land; a rerun resumes from them).
# Usage: bash benchmarks/matbench/run_default_route.sh [task ...]   (default: the 5 cheap screening tasks)
# ENSEMBLE=N (N > 1): the same route with model.config.ensemble_size=N (N members from the same backbone, the
# calibrated sigma may use their spread), variant crossmat_ensN, folds in runs/default_route_ensN, no baselines
# (they are the default route's).
# EPOCHS=E (with ENSEMBLE=N): every member trains E epochs instead of 200, SWA over the last E/10 (E=100, N=2 costs
# what the single default model costs); variant crossmat_ensN_eE, folds in runs/default_route_ensN_eE.
# SEED=S (S > 0): a replicate with --seed S (another training seed, data order and calibration hold-out; the official
# folds stay), no baselines; `_seedS` is appended to the variant and the route folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export CROSSMAT_CACHE_DIR="${CROSSMAT_CACHE_DIR:-benchmarks/_work/cache}"
TASKS=("$@")
[ ${#TASKS[@]} -eq 0 ] && TASKS=(matbench_steels matbench_jdft2d matbench_phonons matbench_expt_gap matbench_dielectric)
N="${ENSEMBLE:-1}" S="${SEED:-0}"
ROUTE=default_route VARIANT=crossmat NOTE="default route" SETS=()
if [ "$N" -gt 1 ]; then
  ROUTE=${ROUTE}_ens$N VARIANT=${VARIANT}_ens$N NOTE="$NOTE with ensemble_size=$N" SETS=(--set "model.config.ensemble_size=$N")
  if [ -n "${EPOCHS:-}" ]; then
    ROUTE=${ROUTE}_e$EPOCHS VARIANT=${VARIANT}_e$EPOCHS NOTE="$NOTE, $EPOCHS epochs each"
    SETS+=(--set "train.epochs=$EPOCHS" --set "train.swa_epochs=$((EPOCHS / 10))")
  fi
fi
[ "$S" -gt 0 ] && ROUTE=${ROUTE}_seed$S VARIANT=${VARIANT}_seed$S NOTE="$NOTE, seed $S"
if [ "$ROUTE" = default_route ]; then
  EXTRA=(--baselines dummy,rf_magpie)
else
  EXTRA=("${SETS[@]}" --seed "$S" --variant "$VARIANT" --baselines none)
fi
for t in "${TASKS[@]}"; do
  python evaluate.py --benchmark matbench --task "$t" "${EXTRA[@]}" \
    --output-dir "benchmarks/matbench/runs/$ROUTE/$t" --results-dir benchmarks/results \
    --notes "$NOTE (no --config); 1 thread, 2 CPU cores shared with other jobs" \
    2>&1 | grep --line-buffered -v -e "Loading weights" -e "Writing model" | tee "benchmarks/matbench/logs/${ROUTE}_${t#matbench_}.log"
done
