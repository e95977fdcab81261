#!/bin/bash
# One device call for the CUDA backward: tests, compute-sanitizer (memcheck, racecheck) on small
# shapes, then the benchmark. Binaries are built here (test_cuda_backward, moba_cuda_bwd_bench)
# and copied to $1 (default build-cudabwd/devbin), which the device call carries. Logs go to $OUT.
set -u
BIN=${1:-build-cudabwd/devbin}
OUT=${OUT:-/tmp/moba-bwd-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
echo "== tests (every shape also runs with 64-key tiles and all-atomic dQ: CudaOptions)"
timeout 300 "$BIN/test_cuda_backward" > "$OUT/test.log" 2>&1; echo "test rc=$?"
grep -E "^\[  (PASSED|FAILED|  OK|SKIPPED) |FAILED|Failure|error" "$OUT/test.log" | head -30
grep "\[ info \]" "$OUT/test.log"
echo "== memcheck"
MOBA_CUDA_BWD_SHAPES=2 timeout 200 compute-sanitizer --tool memcheck "$BIN/test_cuda_backward" \
  --gtest_filter='CudaBackward.SmallShapes:CudaBackward.PopularBlockIsSplit:CudaBackward.LongCausalIsSplit' > "$OUT/sanitizer.log" 2>&1
echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/sanitizer.log" | head
echo "== racecheck"
timeout 200 compute-sanitizer --tool racecheck "$BIN/test_cuda_backward" \
  --gtest_filter='CudaBackward.SmallShapes' >> "$OUT/sanitizer.log" 2>&1
echo "racecheck rc=$?"; grep -E "RACECHECK SUMMARY|ERROR SUMMARY|PASSED|FAILED" "$OUT/sanitizer.log" | tail -3
echo "== bench"
timeout 240 "$BIN/moba_cuda_bwd_bench" --out "$OUT/bench.md" 2>&1 | tee "$OUT/bench.log"
