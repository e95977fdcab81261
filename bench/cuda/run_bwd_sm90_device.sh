#!/bin/bash
# One device call for the sm_90a backward key pass (CudaOptions::backward_kernel = sm90_wgmma),
# repo root, after scripts/gpu_build.sh (or any CUDA build) made $1 (default build/):
#   1. the new kernel alone through every backward test (a hang => rc 124, a fault => "kernel
#      failed"), 2. memcheck + racecheck of it on small shapes, 3. both kernels in one process,
#   4. the benchmark per kernel (stage times and the key pass's TFLOP/s on stderr).
# STEPS="test san both bench" picks parts; logs go to $OUT (default /tmp/moba-bwd-sm90).
# Rough durations: test ~1-2 min, san ~2-3 min, both ~2 min, bench ~2-3 min (4 runs to 128K).
set -u
B=${1:-build}
OUT=${OUT:-/tmp/moba-bwd-sm90}
STEPS=${STEPS:-"test san both bench"}
T=$B/tests/cuda/test_cuda_backward
BENCH=$B/bench/cuda/moba_cuda_bwd_bench
mkdir -p "$OUT"
has() { [[ " $STEPS " == *" $1 "* ]]; }
summary() { grep -E "^\[  (PASSED|FAILED) |Failure|kernel failed|\[ (info|skip) \]|error" "$1" | head -${2:-30}; }
if has test; then
  echo "== sm90_wgmma only, every backward test (24 random shapes)"
  MOBA_CUDA_TEST_BWD_KERNELS=sm90_wgmma MOBA_CUDA_BWD_SHAPES=24 timeout 300 "$T" > "$OUT/test_sm90.log" 2>&1
  echo "rc=$?"; summary "$OUT/test_sm90.log"
fi
if has san; then
  echo "== memcheck / racecheck, sm90_wgmma only"
  MOBA_CUDA_TEST_BWD_KERNELS=sm90_wgmma MOBA_CUDA_BWD_SHAPES=2 timeout 200 compute-sanitizer --tool memcheck "$T" \
    --gtest_filter='CudaBackward.SmallShapes:CudaBackward.RandomShapes*' > "$OUT/memcheck.log" 2>&1
  echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|^\[  (PASSED|FAILED) " "$OUT/memcheck.log" | head -5
  MOBA_CUDA_TEST_BWD_KERNELS=sm90_wgmma timeout 200 compute-sanitizer --tool racecheck "$T" \
    --gtest_filter='CudaBackward.SmallShapes' > "$OUT/racecheck.log" 2>&1
  echo "racecheck rc=$?"; grep -E "RACECHECK SUMMARY|ERROR SUMMARY|^\[  (PASSED|FAILED) " "$OUT/racecheck.log" | head -5
fi
if has both; then
  echo "== both kernels in one process (40 random shapes + fixed cases)"
  timeout 400 "$T" > "$OUT/test_both.log" 2>&1
  echo "rc=$?"; summary "$OUT/test_both.log"
fi
if has bench; then
  for args in "--kernel sm80_mma_sync" "--kernel sm90_wgmma" "--kernel sm90_wgmma --dq-all-atomic" "--kernel sm90_wgmma --no-dq-bulk"; do
    tag=$(echo "$args" | tr -d ' -')
    echo "== bench $args"
    timeout 200 "$BENCH" --max-n 131072 $args --out "$OUT/bench_$tag.md" > "$OUT/bench_$tag.log" 2> "$OUT/bench_$tag.err"
    echo "rc=$?"; cat "$OUT/bench_$tag.log"; grep "key pass" "$OUT/bench_$tag.err" | grep -v " det\]" | sed 's/ lists.*key pass/ ... key pass/'
  done
fi
