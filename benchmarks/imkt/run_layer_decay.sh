#!/usr/bin/env bash
# The layer-wise lr decay arm of issue 23 (records crossmat_default_from_<ARM>_llrd.json): run_keep.sh llrd.
# Usage: bash benchmarks/imkt/run_layer_decay.sh ARM BACKBONE TASK [TASK ...]
exec bash "$(dirname "$0")/run_keep.sh" llrd "$@"
