#!/usr/bin/env bash
# The own-data route on a real task of seven classes: the crystal system of Materials Project crystals from their
# formula (make_data.py: formulas the shipped backbone never saw in pretraining, split 80/10/10 by formula), run as
# docs/your_own_data.md writes it: `crossmat evaluate` with no recipe option (the default recipe, shipped backbone),
# the forest and the dummy in the same run. VARIANT=scratch adds --from-scratch (the same recipe, random weights).
# Usage: [VARIANT=default|scratch] [SEED=0] bash benchmarks/own_data/crystal_system/run.sh
#   data and runs under benchmarks/_work/crystal_system (git-ignored); the log lands next to this script
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "$HERE/../../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" CROSSMAT_DATA_DIR="${CROSSMAT_DATA_DIR:-../shared/data}"
VARIANT="${VARIANT:-default}" SEED="${SEED:-0}"
W=benchmarks/_work/crystal_system
DATA=$W/data_seed$SEED
[ -f $DATA/test.csv ] || python "$HERE/make_data.py" $DATA --seed "$SEED"
cp $DATA/data_stats.json "$HERE/data_stats_seed$SEED.json"
EXTRA=()
[ "$VARIANT" = scratch ] && EXTRA=(--from-scratch)
LOG="$HERE/${VARIANT}_seed$SEED.log"
start=$(date +%s)
crossmat evaluate --train $DATA/train.csv --validation $DATA/val.csv --test $DATA/test.csv --target crystal_system \
    --id-column id --seed "$SEED" --output-dir $W/runs/${VARIANT}_seed$SEED "${EXTRA[@]}" 2>&1 \
    | grep -v -e "Loading weights" -e "^\[crossmat\] finetune: step" -e "fold/s" | tee "$LOG"
cp $W/runs/${VARIANT}_seed$SEED/summary.json "$HERE/${VARIANT}_seed${SEED}_summary.json"
echo "wall $(($(date +%s) - start)) s for crossmat evaluate; $(python -c 'import platform,torch;print(platform.processor() or platform.machine(), torch.__version__)'), OMP_NUM_THREADS=$OMP_NUM_THREADS" | tee -a "$LOG"
