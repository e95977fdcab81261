#!/bin/bash
# One device call for the CUDA forward: tests, compute-sanitizer (memcheck, racecheck) on small
# shapes, then the benchmark. Build here, copy test_cuda_forward and moba_cuda_bench (plus
# libgomp) into $1 (default build-cuda/devfwd), carry that folder. Logs go to $OUT.
#   SHAPES=<n> random shapes for the main test run (default 300); BENCH_ARGS for the bench.
set -u
BIN=${1:-build-cuda/devfwd}
OUT=${OUT:-/tmp/moba-fwd-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
echo "== tests"
MOBA_CUDA_TEST_SHAPES=${SHAPES:-300} timeout ${TEST_TIMEOUT:-200} "$BIN/test_cuda_forward" > "$OUT/test.log" 2>&1; echo "test rc=$?"
grep -E "^\[  (PASSED|FAILED|  OK|SKIPPED) |FAILED|Failure|error|Expected|Which is|rel_l2|lse\[|checked|near-ties|chose" "$OUT/test.log" | head -40
echo "== memcheck"
MOBA_CUDA_TEST_SHAPES=3 timeout ${SAN_TIMEOUT:-90} compute-sanitizer --tool memcheck "$BIN/test_cuda_forward" \
  --gtest_filter='CudaForward.RandomShapes*:CudaForward.StridedOperands' > "$OUT/sanitizer.log" 2>&1
echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|PASSED|FAILED|Invalid|at 0x" "$OUT/sanitizer.log" | head
echo "== bench"
timeout ${BENCH_TIMEOUT:-180} "$BIN/moba_cuda_bench" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.md"
echo "== racecheck"
MOBA_CUDA_TEST_SHAPES=2 timeout ${SAN_TIMEOUT:-90} compute-sanitizer --tool racecheck "$BIN/test_cuda_forward" \
  --gtest_filter='CudaForward.RandomShapes*' >> "$OUT/sanitizer.log" 2>&1
echo "racecheck rc=$?"; grep -E "RACECHECK SUMMARY|ERROR SUMMARY|PASSED|FAILED" "$OUT/sanitizer.log" | tail -3
