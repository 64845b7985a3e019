#!/usr/bin/env bash
# The composition-only side of the perov_5 heat_ref head-to-head (exKT vs composition-only): the default
# MatBench fine-tuning recipe (benchmarks/matbench/recipes/crossmat_default.yaml, unchanged), trained on
# perov_5 val (3,787 rows with targets; train has structures only) and scored once on all 3,785 test rows,
# with the dummy and Magpie random-forest baselines in the same run. Arms: from scratch, and from the
# shipped imKT backbone (its pretraining corpus excludes every matbench_perovskites formula, hence every
# perov_5 formula). Usage: bash benchmarks/explicit_transfer/run_composition_default.sh [scratch|imkt ...]
# Records: benchmarks/results/csv/perov_5_heat_ref/<variant>.json (with the baselines of the same run);
# fold models and predictions under benchmarks/_work/perov5_composition/<arm>/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
D="${CROSSMAT_DATA_DIR:-../shared/data}/perov_5"
ARMS=("$@"); [ ${#ARMS[@]} -eq 0 ] && ARMS=(scratch imkt)
for arm in "${ARMS[@]}"; do
  case "$arm" in
    scratch) INIT=() ;;
    imkt) INIT=(--set model.init_from=crossmat-imkt-mp-small) ;;
    *) echo "unknown arm $arm" >&2; exit 2 ;;
  esac
  out=benchmarks/_work/perov5_composition/$arm
  python evaluate.py --train "$D/val.csv.gz" --test "$D/test.csv.gz" --target heat_ref --task perov_5_heat_ref \
    --config benchmarks/matbench/recipes/crossmat_default.yaml --validation-fraction 0 "${INIT[@]}" \
    --variant "crossmat_default_$arm" --output-dir "$out" --results-dir benchmarks/results
done
