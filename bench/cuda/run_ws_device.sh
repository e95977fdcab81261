#!/bin/bash
# One device call for the warp-specialised sm_90a forward (CudaOptions sm90_warp_specialized):
# its tests alone (so a hang or fault shows alone), all forward paths against one fp64 truth,
# compute-sanitizer memcheck / racecheck / synccheck on small shapes, then benchmarks of
# sm80_mma_sync vs the warp-specialised kernel (dense and MoBA (a) at 8K/32K/128K;
# FlashMoBA's setting (d) at 128K/512K).
#   $1: the CMake build folder (default build; its tests/cuda/ and bench/cuda/ hold the
#       binaries) or a flat folder holding test_cuda_forward and moba_cuda_bench
#   OUT: log folder (default /tmp/moba-ws-out); SHAPES: random shapes (default 300)
#   STEPS: which parts, default "test all san bench"
set -u
BIN=${1:-build}
if [ -x "$BIN/test_cuda_forward" ]; then
  T=$BIN/test_cuda_forward; B=$BIN/moba_cuda_bench
  export LD_LIBRARY_PATH="$BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  T=$BIN/tests/cuda/test_cuda_forward; B=$BIN/bench/cuda/moba_cuda_bench
fi
OUT=${OUT:-/tmp/moba-ws-out}
STEPS=${STEPS:-test all san bench}
mkdir -p "$OUT"
WS=sm90_warp_specialized
summary() { grep -E "^\[  (PASSED|FAILED|  OK|SKIPPED) |FAILED|Failure|Expected|Which is|rel_l2|lse\[|kernel failed|checked|ERROR SUMMARY|RACECHECK SUMMARY|Invalid|Barrier|Race" "$1" | head -${2:-30}; }
case " $STEPS " in *" test "*)
  echo "== new path alone (persistent)"
  MOBA_CUDA_TEST_KERNELS=$WS MOBA_CUDA_TEST_SHAPES=${SHAPES:-300} timeout 300 "$T" --gtest_filter='CudaForward.*' > "$OUT/test_ws.log" 2>&1; echo "rc=$?"; summary "$OUT/test_ws.log"
  echo "== new path alone, one CTA per tile"
  MOBA_CUDA_TEST_WS_PERSISTENT=0 MOBA_CUDA_TEST_KERNELS=$WS MOBA_CUDA_TEST_SHAPES=100 timeout 200 "$T" --gtest_filter='CudaForward.*' > "$OUT/test_ws_tile.log" 2>&1; echo "rc=$?"; summary "$OUT/test_ws_tile.log" 12
;; esac
case " $STEPS " in *" all "*)
  echo "== every path, one truth"
  MOBA_CUDA_TEST_SHAPES=${SHAPES:-300} timeout 400 "$T" --gtest_filter='CudaForward.*' > "$OUT/test_all.log" 2>&1; echo "rc=$?"; summary "$OUT/test_all.log"
;; esac
case " $STEPS " in *" san "*)
  for tool in memcheck racecheck synccheck; do
    echo "== compute-sanitizer $tool (new path)"
    filter='CudaForward.RandomShapes*'
    [ $tool = memcheck ] && filter="$filter:CudaForward.StridedOperands"
    MOBA_CUDA_TEST_KERNELS=$WS MOBA_CUDA_TEST_SHAPES=3 timeout ${SAN_TIMEOUT:-150} compute-sanitizer --tool $tool "$T" \
      --gtest_filter="$filter" > "$OUT/san_$tool.log" 2>&1
    echo "rc=$?"; summary "$OUT/san_$tool.log" 8
  done
;; esac
case " $STEPS " in *" bench "*)
  for k in sm80_mma_sync $WS; do
    echo "== bench $k"; timeout 240 "$B" --kernel $k 2>&1 | tee "$OUT/bench_$k.md"
  done
  for k in sm80_mma_sync $WS; do
    echo "== bench (d) $k"; timeout 240 "$B" --flashmoba --kernel $k 2>&1 | tee "$OUT/bench_d_$k.md"
  done
;; esac
