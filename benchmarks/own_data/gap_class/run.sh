#!/usr/bin/env bash
# A second real task of several classes for the own-data route, to check the label rule of classifiers of three
# classes or more (pre-registered in ../crystal_system/SECTION.md) on data it was not chosen on: MatBench's 4,604
# experimental band gaps (Zhuo et al. 2018; formulas the shipped backbone's pretraining left out) cut into metal
# (0 eV), semiconductor (0-3 eV) and wide-gap insulator (> 3 eV), shuffled with SEED and split 80/10/10 into files,
# then `crossmat evaluate` as docs/your_own_data.md writes it (default recipe, shipped backbone, forest, dummy).
# Usage: [SEED=0] bash benchmarks/own_data/gap_class/run.sh   (work under benchmarks/_work/gap_class, log next to this)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "$HERE/../../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" CROSSMAT_DATA_DIR="${CROSSMAT_DATA_DIR:-../shared/data}"
SEED="${SEED:-0}"
W=benchmarks/_work/gap_class/seed$SEED
mkdir -p $W
SEED=$SEED W=$W python - <<'PY'
import os
import numpy as np
import pandas as pd

df = pd.read_csv(f"{os.environ['CROSSMAT_DATA_DIR']}/matbench_v0.1/matbench_expt_gap.csv.gz")
gap = df["gap expt"]
df["gap_class"] = np.where(gap == 0, "metal", np.where(gap <= 3.0, "semiconductor", "insulator"))
df = df[["id", "formula", "gap_class"]].sample(frac=1.0, random_state=int(os.environ["SEED"])).reset_index(drop=True)
n = len(df) // 10
out = os.environ["W"]
df.iloc[:n].to_csv(f"{out}/test.csv", index=False)
df.iloc[n:2 * n].to_csv(f"{out}/val.csv", index=False)
df.iloc[2 * n:].to_csv(f"{out}/train.csv", index=False)
print(df["gap_class"].value_counts().to_dict())
PY
start=$(date +%s)
crossmat evaluate --train $W/train.csv --validation $W/val.csv --test $W/test.csv --target gap_class --id-column id \
    --seed "$SEED" --output-dir $W/run 2>&1 | grep -v -e "Loading weights" -e "^\[crossmat\] finetune: step" -e "fold/s" \
    | tee "$HERE/default_seed$SEED.log"
cp $W/run/summary.json "$HERE/default_seed${SEED}_summary.json"
echo "wall $(($(date +%s) - start)) s for crossmat evaluate; $(python -c 'import platform,torch;print(platform.processor() or platform.machine(), torch.__version__)'), OMP_NUM_THREADS=$OMP_NUM_THREADS" | tee -a "$HERE/default_seed$SEED.log"
