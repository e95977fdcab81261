#!/bin/bash
# One device call for the CUDA MoBA gate (issue 11 item 3): its tests (every top-k kernel, and in
# the register range both score kernels, mma.sync and sm_90a warpgroup MMA, against the
# reference selection and against each other), compute-sanitizer memcheck / racecheck /
# synccheck on small shapes (both score kernels run inside each test), then the gate's top-k
# variants side by side (moba_cuda_gate_bench: old shared-memory lists, the sm80 register kernel
# and the sm90 wgmma kernel, ms and TFLOP/s on the score work, whether they select the same
# blocks) for FlashMoBA's setting (d) at 8K-512K and setting (a) at 8K-128K. About 2 minutes.
# FORWARD=1 adds the (d) forward with the gate's time and share (moba_cuda_bench --flashmoba,
# about 1 more minute).
#   $1: the CMake build folder (default build)
#   OUT: log folder (default /tmp/moba-gate-out); SHAPES: random shapes (default 80)
set -u
BIN=${1:-build}
T=$BIN/tests/cuda/test_cuda_gate
B=$BIN/bench/cuda/moba_cuda_bench
OUT=${OUT:-/tmp/moba-gate-out}
mkdir -p "$OUT"
summary() { grep -E "^\[  (PASSED|FAILED|  OK|SKIPPED) |^\[ gate \]|FAILED|Failure|rows differ|differ on|first:|kernel failed|ERROR SUMMARY|RACECHECK SUMMARY|Invalid|Barrier|Race" "$1" | head -${2:-30}; }
echo "== test_cuda_gate"
MOBA_CUDA_GATE_SHAPES=${SHAPES:-80} timeout 150 "$T" > "$OUT/test_gate.log" 2>&1; echo "rc=$?"; summary "$OUT/test_gate.log"
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck synccheck; do
  echo "== compute-sanitizer $tool"
  MOBA_CUDA_GATE_SHAPES=4 timeout 100 "$SAN" --tool $tool "$T" \
    --gtest_filter='CudaGate.MatchesReferenceOnRandomShapes:CudaGate.TopkBeyondBlocks:CudaGate.AscendingScores:CudaGate.StageRingWraps' \
    > "$OUT/san_$tool.log" 2>&1
  echo "rc=$?"; summary "$OUT/san_$tool.log" 8
done
echo "== gate variants"; timeout 150 "$BIN/bench/cuda/moba_cuda_gate_bench" 2>&1 | tee "$OUT/gate_bench.md"
if [ "${FORWARD:-0}" = 1 ]; then
  echo "== bench (d) forward"; timeout 150 "$B" --flashmoba 2>&1 | tee "$OUT/bench_d.md"
fi
