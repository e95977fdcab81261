#!/usr/bin/env bash
# One device call that checks and measures everything GPU-side, most important first, within a
# deadline (the device allows 600 s a call): C++ GPU tests, Python tests on the GPU, the peer
# benchmark forward and forward+backward, the C++ benchmark, `moba check --backend cuda`.
# Stage the binaries first (bench/stage_device.sh) and carry build-final/dev.
set -u
DEV=${1:-build-final/dev}
OUT=${OUT:-/tmp/moba-out}
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-560} ))
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$DEV${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" PYTHONUNBUFFERED=1
step() {  # step MAX_SECONDS LOG cmd...: runs within what is left before the deadline
  local max=$1 log=$2; shift 2
  local left=$(( DEADLINE - $(date +%s) - 5 ))
  (( left < max )) && max=$left
  if (( max < 10 )); then echo "skipped (deadline): $*"; return; fi
  local t0=$(date +%s)
  timeout "$max" "$@" > "$OUT/$log" 2>&1
  echo "[$log rc=$? $(( $(date +%s) - t0 ))s]"
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
rm -rf /tmp/pkg && mkdir -p /tmp/pkg && cp -r python/moba /tmp/pkg/ && cp "$DEV"/_C.cpython-312-*.so /tmp/pkg/moba/
export PYTHONPATH=/tmp/pkg
MOBA_CUDA_TEST_SHAPES=120 step 110 test_fwd.log "$DEV/test_cuda_forward"
grep -E "^\[  (PASSED|FAILED) |FAILED  \]" "$OUT/test_fwd.log" | head -6
step 100 test_bwd.log "$DEV/test_cuda_backward"
grep -E "^\[  (PASSED|FAILED) |FAILED  \]" "$OUT/test_bwd.log" | head -6
step 120 pytest.log python3 -m pytest -q -p no:cacheprovider python/tests
tail -2 "$OUT/pytest.log"
step 170 peers_fwd.md python3 bench/cuda/bench_peers.py --suite a,c,gqa,d,b --max-n-d 131072 --flex-n 131072
grep -E "^\|" "$OUT/peers_fwd.md" | grep -E "moba \(ours\)|cudnn" | head -40
step 100 peers_bwd.md python3 bench/cuda/bench_peers.py --bwd --suite a,d --max-n 131072 --max-n-d 131072 --peers ours-dense,cudnn,flash,public,bound
grep -E "^\|" "$OUT/peers_bwd.md" | grep -E "moba \(ours\)|cudnn" | head -20
step 40 cpp_fwd_bench.md "$DEV/moba_cuda_bench"
step 40 check.log "$DEV/moba" check --backend cuda --cases 40
tail -2 "$OUT/check.log"
