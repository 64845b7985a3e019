#!/usr/bin/env bash
# Pretrain one backbone of the imKT transfer measurement (resumes when rerun).
# Usage: bash benchmarks/imkt/pretrain.sh ARM
#   mlm                MLM only (control)                              recipes/pretrain_mlm.yaml
#   mlm_seedN          the same with pretraining seed N (initialisation and masks; same validation split)
#   imkt_seedN         the imkt arm with pretraining seed N
#   imkt               MLM + InfoNCE onto CHGNet (recommended default) recipes/pretrain_imkt.yaml
#   imkt_cosine        same, cosine alignment loss
#   imkt_tensornet     same, TensorNet embeddings
#   imkt_both          same, CHGNet and TensorNet concatenated
#   imkt_mean          same, mean over polymorphs instead of the lowest-energy one
#   imkt_descriptors   same, 29 pymatgen structure descriptors (polymorph mean) instead of CHGNet
#   imkt_chgnet_descriptors  same, CHGNet and the 29 descriptors concatenated (polymorph mean)
#   imkt_energy[_seedN] same formulas, MLM + MSE onto what CHGNet *predicts* for the lowest-energy MP structure: its
#                      energy per atom and that energy minus fitted elemental references (z-scored; build_data.sh
#                      alignment_energy), instead of its embedding (issue 23 item 2: the structure model's predictions)
#   imkt_energy_clean[_seedN] the same, the alignment loss read from a second pass over the unmasked formula
#                      (model.config.alignment_input=clean) instead of the MLM pass, where every formula has at least
#                      one element masked or replaced
#   imkt_clean[_seedN] the shipped imkt recipe (InfoNCE onto the CHGNet embedding) with the alignment read from the
#                      clean-formula pass (model.config.alignment_input=clean), the fix found with the energy teacher
#   imkt_targets10k/20k same formulas, CHGNet targets for a nested 10k / 20k subset only (the others MLM only)
#   mlm_large          MLM only on corpus_large (80,002 formulas: MP structures + MatBench mp_* formulas + MP transport,
#                      build_data.sh corpus_large), 40 epochs as the others (about 2.5x their steps)
#   mlm_wide, imkt_wide the same recipes with a 4x wider and deeper encoder (hidden 256, 4 layers, 8 heads, MLP 512;
#                      about 5x the compute per step): does capacity limit what alignment adds (issue 23 item 4)?
# Output: benchmarks/_work/imkt/backbones/ARM (a CrossMat model folder with its card).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
ARM="$1"
R=benchmarks/imkt/recipes
A=benchmarks/_work/imkt/alignment
case "$ARM" in
  mlm) ARGS=(--config $R/pretrain_mlm.yaml) ;;
  mlm_seed*) ARGS=(--config $R/pretrain_mlm.yaml "seed=${ARM#mlm_seed}") ;;  # the backbone-seed spread of MLM-only
  mlm_large) ARGS=(--config $R/pretrain_mlm.yaml data.train=benchmarks/_work/imkt/corpus_large/data/train.parquet) ;;
  imkt) ARGS=(--config $R/pretrain_imkt.yaml) ;;
  mlm_wide|imkt_wide) ARGS=(--config "$R/pretrain_${ARM%_wide}.yaml" model.config.hidden_size=256
                            model.config.num_hidden_layers=4 model.config.num_attention_heads=8
                            model.config.intermediate_size=512) ;;
  imkt_seed*) ARGS=(--config $R/pretrain_imkt.yaml "seed=${ARM#imkt_seed}") ;;  # the backbone-seed spread of imKT
  imkt_cosine) ARGS=(--config $R/pretrain_imkt.yaml model.config.alignment_loss=cosine) ;;
  imkt_tensornet) ARGS=(--config $R/pretrain_imkt.yaml data.train.path=$A/tensornet) ;;
  imkt_both) ARGS=(--config $R/pretrain_imkt.yaml data.train.path=$A/chgnet_tensornet) ;;
  imkt_mean) ARGS=(--config $R/pretrain_imkt.yaml data.train.path=$A/chgnet_mean) ;;
  imkt_descriptors) ARGS=(--config $R/pretrain_imkt.yaml data.train.path=$A/descriptors) ;;
  imkt_chgnet_descriptors) ARGS=(--config $R/pretrain_imkt.yaml data.train.path=$A/chgnet_descriptors) ;;
  imkt_clean|imkt_clean_seed*)
    S="${ARM#imkt_clean}"
    ARGS=(--config $R/pretrain_imkt.yaml model.config.alignment_input=clean ${S:+"seed=${S#_seed}"}) ;;
  imkt_energy_clean|imkt_energy_clean_seed*)
    S="${ARM#imkt_energy_clean}"
    ARGS=(--config $R/pretrain_imkt.yaml data.train.path=$A/chgnet_energy model.config.alignment_loss=mse
          model.config.alignment_input=clean ${S:+"seed=${S#_seed}"}) ;;
  imkt_energy|imkt_energy_seed*)
    S="${ARM#imkt_energy}"
    ARGS=(--config $R/pretrain_imkt.yaml data.train.path=$A/chgnet_energy model.config.alignment_loss=mse
          ${S:+"seed=${S#_seed}"}) ;;
  imkt_targets10k|imkt_targets20k)  # scaling curve: the same 31,584 formulas, CHGNet targets for 10k / 20k of them
    ARGS=(--config $R/pretrain_imkt.yaml data.train.path=$A/chgnet_${ARM#imkt_} data.missing_embeddings=mlm_only) ;;
  *) echo "unknown arm $ARM" >&2; exit 2 ;;
esac
exec python train.py "${ARGS[@]}" --output-dir "benchmarks/_work/imkt/backbones/$ARM" --resume
