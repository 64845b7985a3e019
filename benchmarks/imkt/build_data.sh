#!/usr/bin/env bash
# imKT data at Materials Project scale, one command per dataset (each resumes when rerun):
#   1. structure embeddings of all 54,629 MP structures and all 18,928 perov_5 structures, CHGNet and
#      matgl TensorNet (sharded parquet + card; build time in embeddings_metadata.json);
#      plus the model-free descriptor teacher (29 pymatgen/spglib structure descriptors, step mp_descriptors);
#   2. the leakage-free MLM corpus and alignment sets (formulas of every evaluated MatBench task removed).
# Outputs under benchmarks/_work/imkt (git-ignored). Usage: [PROCESSES=2] bash benchmarks/imkt/build_data.sh [step ...]
#   PROCESSES=2: the embedding steps run under accelerate launch (configs/accelerate/two_processes.yaml), each process
#   takes half of the shards (mp_chgnet: 25 min on 2 cores instead of about 50)
#   steps: mp_chgnet mp_tensornet perov_chgnet perov_tensornet corpus alignment  (default: all, in order)
#          mp_descriptors alignment_descriptors  (the descriptor teacher; run on request, not by default)
#          alignment_chgnet_descriptors  (CHGNet + descriptors concatenated per structure, polymorph mean; needs
#          mp_chgnet and mp_descriptors)
#          alignment_scaling  (the alignment-set scaling curve: all 31,584 formulas, CHGNet targets for a seeded nested
#          10k / 20k subset, the rest MLM-only rows; needs mp_chgnet)
#          alignment_energy  (the energy teacher: CHGNet's predicted energy per atom of each formula's lowest-energy
#          structure and that energy minus fitted elemental references, instead of the embedding; needs mp_chgnet)
#          corpus_large  (issue 23 item 4: every formula the shared and pip data hold as text, same leakage guard: the
#          MP structures, the three MatBench mp_* tasks' formulas (no labels) and matminer's MP transport set)
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/imkt/tasks.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
W=benchmarks/_work/imkt
EMB=(--num-threads 1 --batch-size 64 --on-bad report)
EMBED=(python -m crossmat.dataset_builders embeddings)
[ "${PROCESSES:-1}" = 2 ] && EMBED=(accelerate launch --config_file configs/accelerate/two_processes.yaml
                                   -m crossmat.dataset_builders embeddings)
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(mp_chgnet mp_tensornet perov_chgnet perov_tensornet corpus alignment)
for step in "${STEPS[@]}"; do
  case "$step" in
    mp_chgnet) "${EMBED[@]}" --source mp_structures --encoder chgnet --output-dir $W/embeddings/mp_structures "${EMB[@]}" ;;
    mp_tensornet) "${EMBED[@]}" --source mp_structures --encoder matgl-tensornet --output-dir $W/embeddings/mp_structures "${EMB[@]}" ;;
    mp_descriptors) "${EMBED[@]}" --source mp_structures --encoder descriptors --output-dir $W/embeddings/mp_structures "${EMB[@]}" ;;
    perov_chgnet) "${EMBED[@]}" --source perov_5 --encoder chgnet --output-dir $W/embeddings/perov_5 "${EMB[@]}" ;;
    perov_tensornet) "${EMBED[@]}" --source perov_5 --encoder matgl-tensornet --output-dir $W/embeddings/perov_5 "${EMB[@]}" ;;
    corpus)  # the MLM-only control's formulas: the same MP formulas as the alignment sets
      python -m crossmat.dataset_builders corpus --source "file=${CROSSMAT_DATA_DIR:-../shared/data}/mp_structures/structures.csv.gz" \
        "${EXCLUDE_ARGS[@]}" --output-dir $W/corpus_mp ;;
    corpus_large)
      python -m crossmat.dataset_builders corpus --source "file=${CROSSMAT_DATA_DIR:-../shared/data}/mp_structures/structures.csv.gz" \
        --source matbench=matbench_mp_e_form --source matbench=matbench_mp_gap --source matbench=matbench_mp_is_metal \
        --source mp_transport "${EXCLUDE_ARGS[@]}" --output-dir $W/corpus_large ;;
    alignment)
      A=(--embeddings $W/embeddings/mp_structures "${EXCLUDE_ARGS[@]}")
      python -m crossmat.dataset_builders alignment "${A[@]}" --encoder chgnet --output-dir $W/alignment/chgnet
      python -m crossmat.dataset_builders alignment "${A[@]}" --encoder chgnet --polymorphs mean --output-dir $W/alignment/chgnet_mean
      if [ -d $W/embeddings/mp_structures/data/matgl-tensornet ]; then
        python -m crossmat.dataset_builders alignment "${A[@]}" --encoder matgl-tensornet --output-dir $W/alignment/tensornet
        python -m crossmat.dataset_builders alignment "${A[@]}" --encoder chgnet --encoder matgl-tensornet --output-dir $W/alignment/chgnet_tensornet
      fi ;;
    alignment_descriptors)  # no energies (no model): the mean over a formula's polymorphs, not an arbitrary one
      python -m crossmat.dataset_builders alignment --embeddings $W/embeddings/mp_structures "${EXCLUDE_ARGS[@]}" \
        --encoder descriptors --polymorphs mean --output-dir $W/alignment/descriptors ;;
    alignment_chgnet_descriptors)  # one multimodal target: learned (CHGNet) + explicit geometry (descriptors)
      python -m crossmat.dataset_builders alignment --embeddings $W/embeddings/mp_structures "${EXCLUDE_ARGS[@]}" \
        --encoder chgnet --encoder descriptors --polymorphs mean --output-dir $W/alignment/chgnet_descriptors ;;
    alignment_energy)
      python -m crossmat.dataset_builders alignment --embeddings $W/embeddings/mp_structures "${EXCLUDE_ARGS[@]}" \
        --encoder chgnet --teacher energy --output-dir $W/alignment/chgnet_energy ;;
    alignment_scaling)  # the alignment-set scaling curve: every corpus formula, CHGNet targets for a nested subset
      for n in 10000 20000; do
        python -m crossmat.dataset_builders alignment --embeddings $W/embeddings/mp_structures "${EXCLUDE_ARGS[@]}" \
          --encoder chgnet --max-targets $n --seed 0 --output-dir $W/alignment/chgnet_targets$((n / 1000))k
      done ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
