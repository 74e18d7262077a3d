#!/usr/bin/env bash
# Every GPU check the issues ask for, in one device session: OUT/<name>.tgz per script, logs inside.
#   bash scripts/gpu_checks.sh OUT
# Timing-sensitive scripts run one after another; gpu_warps (correctness only, mostly CPU) runs
# beside them. Each has its own time limit, so one that hangs cannot eat the others' time.
set -u
OUT=${1:?usage: gpu_checks.sh OUT}
mkdir -p "$OUT"
. "$(dirname "$0")/gpu_steps.sh"
( step warps 300 python3 scripts/gpu_warps.py "$OUT/warps" ) &
warps=$!
step training 200 python3 scripts/gpu_training_inference.py "$OUT/training"
step assignments 120 python3 scripts/gpu_assignments.py "$OUT/assignments" online-softmax
step notebooks 230 python3 scripts/run_notebooks.py "$OUT/notebooks"
wait $warps
