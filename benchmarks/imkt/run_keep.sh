#!/usr/bin/env bash
# Issue 23 item 3: keep what the backbone learned through fine-tuning. The same default fine-tuning recipe and folds
# as run_transfer.sh (benchmarks/matbench/recipes/crossmat_default.yaml, every training row, seed 0), started from a
# backbone, with one keep method whose setting was fixed before any run:
#   llrd    train.layer_lr_decay=0.5 (encoder layer i of 3 at lr * 0.5^(3-i), embeddings at lr / 16, head at full lr)
#   anchor  train.anchor_weight=1.0 (a frozen copy of the backbone; 1 - cos between the pooled embeddings is added
#           to the loss, training/anchor.py)
#   lpft    train.freeze_encoder_epochs=20 (the head alone for the first 20 of 200 epochs, then everything: linear
#           probing then fine-tuning, so that a random head does not distort the pretrained features)
#   branch  model.config.structure_branch=true (a frozen copy of the backbone embeds every formula too; the head
#           reads the fine-tuned pooled embedding and the frozen one side by side, so the backbone's pooled
#           embedding, where the frozen probes found imKT's structure knowledge, cannot be overwritten)
#   aux     train.structure_aux_weight=1.0 with data.structure_targets=$STRUCTURE_TARGETS (default: the CHGNet
#           embedding of the lowest-energy Materials Project polymorph of each task formula, built by
#           benchmarks/imkt/build_task_structures.sh): a linear read-out of the pooled embedding regresses the
#           z-scored structure vector of every training row that has one (training/structure_aux.py)
#   rerun   nothing: the same recipe and backbone rerun with this commit's code, when the record it would be paired
#           with came from older code that no longer reproduces it
# Paired per fold against crossmat_default_from_<ARM>.json (same recipe, same backbone, no keep method).
# Usage: bash benchmarks/imkt/run_keep.sh METHOD ARM BACKBONE TASK [TASK ...]
#   ARM: imkt (BACKBONE = crossmat-imkt-mp-small, the shipped imkt backbone) or mlm (its folder); imkt_seed7 and
#   mlm_seed7 (the seed-7 backbones of pretrain.sh) for the second pretraining seed
# Records: benchmarks/results/matbench/<task>/crossmat_default_from_<ARM>_<METHOD>.json; logs in benchmarks/imkt/logs/;
# fold folders in benchmarks/matbench/runs/keep_<METHOD>/<ARM>/<task> (committed as they land; a rerun resumes).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export CROSSMAT_CACHE_DIR="${CROSSMAT_CACHE_DIR:-benchmarks/_work/cache}"
METHOD="$1"; ARM="$2"; BACKBONE="$3"; shift 3
case "$METHOD" in
  llrd) SET=(--set train.layer_lr_decay=0.5); WHAT="layer-wise lr decay 0.5"; OUT="benchmarks/_work/imkt/llrd/$ARM" ;;
  anchor) SET=(--set train.anchor_weight=1.0); WHAT="embedding anchor weight 1.0"; OUT="benchmarks/matbench/runs/keep_anchor/$ARM" ;;
  lpft) SET=(--set train.freeze_encoder_epochs=20); WHAT="the encoder frozen for the first 20 epochs"; OUT="benchmarks/matbench/runs/keep_lpft/$ARM" ;;
  branch) SET=(--set model.config.structure_branch=true); WHAT="a frozen structure branch (the backbone's own pooled embedding) beside the fine-tuned one"; OUT="benchmarks/matbench/runs/keep_branch/$ARM" ;;
  rerun) SET=(); WHAT="no keep method, rerun with this commit's code (the paired control of a keep arm)"
         OUT="benchmarks/matbench/runs/keep_rerun/$ARM" ;;
  aux) TARGETS="${STRUCTURE_TARGETS:-benchmarks/_work/imkt/task_structures/chgnet/per_formula/chgnet.parquet}"
       [ -f "$TARGETS" ] || { echo "no structure targets at $TARGETS: run bash benchmarks/imkt/build_task_structures.sh" >&2; exit 2; }
       SET=(--set train.structure_aux_weight=1.0 --set "data.structure_targets=$TARGETS")
       WHAT="the structure auxiliary (weight 1.0, $TARGETS)"; OUT="benchmarks/matbench/runs/keep_aux/$ARM" ;;
  *) echo "unknown keep method $METHOD (llrd, anchor, lpft, branch, aux or rerun)" >&2; exit 2 ;;
esac
mkdir -p benchmarks/imkt/logs
for t in "$@"; do
  python evaluate.py --benchmark matbench --task "$t" --config benchmarks/matbench/recipes/crossmat_default.yaml \
    --set "model.init_from=$BACKBONE" ${SET[@]+"${SET[@]}"} --variant "crossmat_default_from_${ARM}_${METHOD}" \
    --baselines none --output-dir "$OUT/$t" --results-dir benchmarks/results \
    --notes "crossmat_default from the $ARM backbone with $WHAT; 1 thread, 2 CPU cores shared" \
    2>&1 | grep --line-buffered -v -e "Loading weights" -e "Writing model" -e "^INFO" \
    | tee "benchmarks/imkt/logs/${METHOD}_${ARM}_${t#matbench_}.log"
done
