#!/usr/bin/env bash
# Pretrain the two encoders compared in the imKT-vs-MLM experiment (same model, data and budget):
#   benchmarks/_work/pretrain/imkt/{mlm,imkt}   MLM stage, then MLM + alignment onto CHGNet features
#   benchmarks/_work/pretrain/mlm_only          same MLM stage, then the same second stage with alignment weight 0
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"  # 2 shared cores: no thread oversubscription
python train.py --config benchmarks/matbench/recipes/pretrain_imkt.yaml --output-dir benchmarks/_work/pretrain/imkt --resume
python train.py --config benchmarks/matbench/recipes/pretrain_mlm_only.yaml --output-dir benchmarks/_work/pretrain/mlm_only --resume
