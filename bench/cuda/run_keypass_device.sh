#!/bin/bash
# One device call for the warp-specialised sm_90a backward key pass
# (CudaOptions::backward_kernel = sm90_warp_specialized) against the lock-step one (sm90_wgmma),
# repo root, after a CUDA build made $1 (default build/):
#   all:   the whole backward test binary, every key pass (sm80_mma_sync, sm90_wgmma,
#          sm90_warp_specialized) in one process, each case through default / 64-key tiles /
#          all-atomic / per-thread dQ atomics / deterministic x2 (bit-identical)   ~60-80 s
#   san:   compute-sanitizer memcheck + racecheck + synccheck of the new kernel alone on the
#          small fixed shapes                                                      ~40-60 s
#   bench: moba_cuda_bwd_bench, old (sm90_wgmma) vs new key pass, setting (a) (64 blocks top-3)
#          blocks of 512 top-8 and full causal, 8K..128K, then the new one with implicit rows by
#          cp.async instead of TMA (full causal); the key pass's own TFLOP/s is in the stderr
#          lines ("key pass X ms (Y TFLOP/s)")                                      ~40-60 s
# STEPS="all san bench" picks parts; logs in $OUT (default /tmp/moba-keypass).
set -u
B=${1:-build}
OUT=${OUT:-/tmp/moba-keypass}
STEPS=${STEPS:-"all san bench"}
T=$B/tests/cuda/test_cuda_backward
BENCH=$B/bench/cuda/moba_cuda_bwd_bench
WS=sm90_warp_specialized
mkdir -p "$OUT"
has() { [[ " $STEPS " == *" $1 "* ]]; }
summary() { grep -E "^\[  (PASSED|FAILED) |Failure|kernel failed|\[ (info|skip) \]|error|Expected|Which is|rel_l2" "$1" | head -${2:-30}; }
if has all; then
  echo "== every key pass in one process (12 random shapes + fixed cases)"
  MOBA_CUDA_BWD_SHAPES=${SHAPES:-12} timeout 240 "$T" > "$OUT/test_all.log" 2>&1
  echo "rc=$?"; summary "$OUT/test_all.log"
fi
if has san; then
  for tool in memcheck racecheck synccheck; do
    echo "== compute-sanitizer $tool, $WS only"
    MOBA_CUDA_TEST_BWD_KERNELS=$WS timeout 150 compute-sanitizer --tool $tool "$T" \
      --gtest_filter='CudaBackward.SmallShapes' > "$OUT/san_$tool.log" 2>&1
    echo "rc=$?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^\[  (PASSED|FAILED) |Invalid|Race|Barrier" "$OUT/san_$tool.log" | head -6
  done
fi
if has bench; then
  for k in sm90_wgmma $WS; do
    echo "== bench $k"
    timeout 150 "$BENCH" --max-n 131072 --kernel $k --configs a,b512,full --out "$OUT/bench_$k.md" > "$OUT/bench_$k.log" 2> "$OUT/bench_$k.err"
    echo "rc=$?"; cat "$OUT/bench_$k.log"; grep "key pass" "$OUT/bench_$k.err" | grep -v " det\]" | sed 's/ lists.*key pass/ ... key pass/'
  done
  echo "== bench $WS, implicit rows by cp.async (--no-row-tma), full causal"
  timeout 120 "$BENCH" --max-n 131072 --kernel $WS --no-row-tma --configs full > "$OUT/bench_norowtma.log" 2> "$OUT/bench_norowtma.err"
  echo "rc=$?"; cat "$OUT/bench_norowtma.log"; grep "key pass" "$OUT/bench_norowtma.err" | grep -v " det\]" | sed 's/ lists.*key pass/ ... key pass/'
fi
