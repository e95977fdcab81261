# Shared by the device-run scripts (source it; stage their carried deps first with
# scripts/device/stage_deps.sh): a deadline for the whole call, steps that each
# get what is left of it, logs under $OUT (what comes back from the GPU machine).
# shellcheck shell=bash
OUT=${OUT:-/tmp/moba-out}
mkdir -p "$OUT"
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-560} ))
export PYTHONUNBUFFERED=1
# step MAX_SECONDS LOG cmd...: runs cmd with at most MAX_SECONDS (less if the deadline is
# nearer), output to $OUT/LOG, and prints one status line.
step() {
  local max=$1 log=$2; shift 2
  local left=$(( DEADLINE - $(date +%s) - 5 ))
  (( left < max )) && max=$left
  if (( max < 10 )); then echo "[$log skipped: deadline]"; return; fi
  local t0 rc
  t0=$(date +%s)
  timeout "$max" "$@" > "$OUT/$log" 2>&1
  rc=$?
  echo "[$log rc=$rc $(( $(date +%s) - t0 ))s]"
  return $rc
}
gtest_summary() { grep -E "^\[  (PASSED|FAILED) |^\[  FAILED  \]|rel_l2|Failure" "$OUT/$1" | head -${2:-8}; }
