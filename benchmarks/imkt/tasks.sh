# The MatBench tasks whose formulas (every fold) are kept out of the imKT/MLM pretraining data, so one
# backbone serves every fold of every one of them (a superset of the per-fold rule). The three
# Materials-Project-scale tasks (mp_e_form, mp_gap, mp_is_metal) are not in this list: do not evaluate
# these backbones on them.
EXCLUDED_TASKS=(matbench_steels matbench_expt_gap matbench_expt_is_metal matbench_glass matbench_jdft2d
                matbench_phonons matbench_dielectric matbench_log_gvrh matbench_log_kvrh matbench_perovskites)
EXCLUDE_ARGS=()
for t in "${EXCLUDED_TASKS[@]}"; do EXCLUDE_ARGS+=(--exclude "matbench=$t"); done
