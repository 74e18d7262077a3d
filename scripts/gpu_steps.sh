# Sourced by the GPU runbooks (gpu_checks.sh, gpu_h200.sh): run one step with a time limit, its log
# in OUT/<name>/log.txt, then pack OUT/<name> into OUT/<name>.tgz (the device returns 8 files).
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
