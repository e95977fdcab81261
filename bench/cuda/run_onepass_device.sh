#!/bin/bash
# One device call for MoBA in one pass (CudaOptions::moba_one_pass, the sm_90a forward):
#   1. test_cuda_onepass: coherent / mixed inputs against the fp64 truth, one pass on and off,
#      the statistic that proves it ran, the factor option, the sm_80 kernel on the waves;
#   2. test_cuda_forward with both kernels (random shapes: block sizes 128/256 run one-pass
#      tiles on the sm_90a kernel) and test_cuda_graph's forward capture (block-128 shapes with
#      one-pass and mixed tiles);
#   3. compute-sanitizer memcheck and racecheck on small MoBA shapes with one-pass and wave
#      tiles (CudaOnePass.GraphTestShapesRunOnePassTiles);
#   4. moba_cuda_bench --coherent: (a) and (d), one pass on vs off, coherent and random data.
#   $1: the CMake build folder (default build). OUT: log folder (default /tmp/moba-onepass-out).
# Expected: about 2-3 minutes on an H200. Read the "rc=" lines (0 everywhere), the PASSED /
# FAILED lines and the ERROR / RACECHECK SUMMARY lines, then the bench table.
set -u
BIN=${1:-build}
OUT=${OUT:-/tmp/moba-onepass-out}
mkdir -p "$OUT"
TD=$BIN/tests/cuda
summary() { grep -E "^\[  (PASSED|FAILED|  OK|SKIPPED) |FAILED|Failure|Expected|Which is|rel_l2|kernel failed|checked|one-pass|ERROR SUMMARY|RACECHECK SUMMARY|Invalid|Race" "$1" | head -${2:-30}; }
echo "== test_cuda_onepass"
timeout 150 "$TD/test_cuda_onepass" > "$OUT/onepass.log" 2>&1; echo "rc=$?"; summary "$OUT/onepass.log"
echo "== test_cuda_forward, both kernels (100 random shapes)"
MOBA_CUDA_TEST_SHAPES=100 timeout 200 "$TD/test_cuda_forward" --gtest_filter='CudaForward.*' > "$OUT/forward.log" 2>&1
echo "rc=$?"; summary "$OUT/forward.log"
echo "== test_cuda_graph, forward capture"
timeout 100 "$TD/test_cuda_graph" --gtest_filter='CudaGraph.Forward*' > "$OUT/graph.log" 2>&1; echo "rc=$?"; summary "$OUT/graph.log" 12
for tool in memcheck racecheck; do
  echo "== compute-sanitizer $tool (one-pass and wave tiles)"
  timeout 200 compute-sanitizer --tool $tool "$TD/test_cuda_onepass" \
    --gtest_filter='CudaOnePass.GraphTestShapesRunOnePassTiles' > "$OUT/san_$tool.log" 2>&1
  echo "rc=$?"; summary "$OUT/san_$tool.log" 8
done
echo "== bench --coherent"
timeout 240 "$BIN/bench/cuda/moba_cuda_bench" --coherent 2>&1 | tee "$OUT/bench_coherent.md"
