#!/usr/bin/env bash
# Issue 23: the same-learner ceiling (SECTION.md, "fine-tuning with the real structure as an input"). The default
# fine-tuning recipe and folds of run_keep.sh, from the MLM-only backbone, with the features of each row's real
# ground-state MP structure in the property head's second input slot (benchmarks/imkt/structure_oracle.py).
# Needs: teacher_headroom.py structures + its chgnet and descriptors embeddings + the chgnet-predictions stage, then
#   python benchmarks/imkt/structure_oracle.py table
# Usage: bash benchmarks/imkt/run_oracle.sh TASK [TASK ...]   (BACKBONE, ARM to override; default mlm, seed 42)
# Records: benchmarks/results/matbench/<task>/crossmat_default_from_<ARM>_oracle.json, paired against
# crossmat_default_from_<ARM>_rerun.json; fold folders in benchmarks/matbench/runs/oracle/<ARM>/<task>.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export CROSSMAT_CACHE_DIR="${CROSSMAT_CACHE_DIR:-benchmarks/_work/cache}"
ARM="${ARM:-mlm}"; BACKBONE="${BACKBONE:-$PWD/benchmarks/_work/imkt/backbones/mlm}"
TABLE="${TABLE:-benchmarks/_work/imkt/headroom/oracle_table.parquet}"  # or a student table (structure_oracle.py student)
SUFFIX="${SUFFIX:-oracle}"  # the record name: crossmat_default_from_<ARM>_<SUFFIX>
[ -f "$TABLE" ] || { echo "no oracle table at $TABLE: run python benchmarks/imkt/structure_oracle.py table" >&2; exit 2; }
mkdir -p benchmarks/imkt/logs
for t in "$@"; do
  python benchmarks/imkt/structure_oracle.py run --table "$TABLE" -- --benchmark matbench --task "$t" \
    --config benchmarks/matbench/recipes/crossmat_default.yaml --set "model.init_from=$BACKBONE" \
    --set model.config.structure_branch=true --variant "crossmat_default_from_${ARM}_${SUFFIX}" \
    --baselines none --output-dir "benchmarks/matbench/runs/$SUFFIX/$ARM/$t" --results-dir benchmarks/results \
    --notes "crossmat_default from the $ARM backbone with structure features as a second head input ($TABLE: the real ground-state MP structure's, or a formula student's predictions of them); 1 thread, 2 CPU cores shared" \
    2>&1 | grep --line-buffered -v -e "Loading weights" -e "Writing model" -e "^INFO" \
    | tee "benchmarks/imkt/logs/${SUFFIX}_${ARM}_${t#matbench_}.log"
done
