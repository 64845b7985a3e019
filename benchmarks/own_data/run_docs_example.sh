#!/usr/bin/env bash
# The documented own-data route exactly as docs/your_own_data.md writes it: the make-data block (MatBench
# expt_gap, shuffled with seed 0, 10% test / 10% validation / 80% train) and `crossmat evaluate` with no recipe
# option (the default recipe: shipped backbone, 2 members x 100 epochs), the forest and the dummy in the same run.
# Usage: bash benchmarks/own_data/run_docs_example.sh [WORKDIR]   (output: docs_example.log next to this script)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="${1:-$(mktemp -d)}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" CROSSMAT_DATA_DIR="${CROSSMAT_DATA_DIR:-$HERE/../../../shared/data}"
cd "$WORK"
python - <<'PY'
import os
import pandas as pd

df = pd.read_csv(f"{os.environ['CROSSMAT_DATA_DIR']}/matbench_v0.1/matbench_expt_gap.csv.gz")
df = df.rename(columns={"gap expt": "band_gap"})[["id", "formula", "band_gap"]]
df = df.sample(n=len(df), random_state=0).reset_index(drop=True)
n = len(df) // 10
df.iloc[:n].to_csv("test.csv", index=False)
df.iloc[n:2 * n].to_csv("val.csv", index=False)
df.iloc[2 * n:].to_csv("train.csv", index=False)
PY
start=$(date +%s)
crossmat evaluate --train train.csv --validation val.csv --test test.csv --target band_gap --unit eV --id-column id \
    --output-dir runs/my_gap 2>&1 | grep -v -e "Loading weights" -e "^\[crossmat\] finetune: step" | tee "$HERE/docs_example.log"
echo "wall $(($(date +%s) - start)) s for crossmat evaluate; $(python -c 'import platform,torch;print(platform.processor() or platform.machine(), torch.__version__)'), OMP_NUM_THREADS=$OMP_NUM_THREADS" | tee -a "$HERE/docs_example.log"
