#!/usr/bin/env bash
# Every GPU check the issues ask for, in one device session: OUT/<name>.tgz per script, logs inside.
#   bash scripts/gpu_checks.sh OUT
# Timing-sensitive scripts run one after another; gpu_warps (correctness only, mostly CPU) runs
# beside them. Each has its own time limit, so one that hangs cannot eat the others' time.
set -u
OUT=${1:?usage: gpu_checks.sh OUT}
mkdir -p "$OUT"
pack() { tar czf "$OUT/$1.tgz" -C "$OUT" "$1" && rm -rf "${OUT:?}/$1"; }
step() {  # name limit_s command...
  local name=$1 limit=$2; shift 2
  mkdir -p "$OUT/$name"
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$OUT/$name/log.txt" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$OUT/$name/log.txt"
  tail -25 "$OUT/$name/log.txt"
  pack "$name"
}
( step warps 300 python3 scripts/gpu_warps.py "$OUT/warps" ) &
warps=$!
step training 200 python3 scripts/gpu_training_inference.py "$OUT/training"
step assignments 120 python3 scripts/gpu_assignments.py "$OUT/assignments" online-softmax
step notebooks 230 python3 scripts/run_notebooks.py "$OUT/notebooks"
wait $warps
