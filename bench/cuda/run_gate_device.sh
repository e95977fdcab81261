#!/bin/bash
# One device call for the CUDA MoBA gate (issue 11 item 3): its tests (both top-k kernels
# against the reference selection), compute-sanitizer memcheck / racecheck / synccheck on small
# shapes, the gate's top-k variants side by side (moba_cuda_gate_bench: old shared-memory lists,
# register lists with 128- and 256-row CTAs, and whether they select the same blocks), then
# FlashMoBA's setting (d) at 8K-512K with the gate's own time and share of the forward, and the
# (a) table's gate column (--quick: 8K and 32K). About 2-3 minutes.
#   $1: the CMake build folder (default build)
#   OUT: log folder (default /tmp/moba-gate-out); SHAPES: random shapes (default 80)
set -u
BIN=${1:-build}
T=$BIN/tests/cuda/test_cuda_gate
B=$BIN/bench/cuda/moba_cuda_bench
OUT=${OUT:-/tmp/moba-gate-out}
mkdir -p "$OUT"
summary() { grep -E "^\[  (PASSED|FAILED|  OK|SKIPPED) |^\[ gate \]|FAILED|Failure|rows differ|first:|kernel failed|ERROR SUMMARY|RACECHECK SUMMARY|Invalid|Barrier|Race" "$1" | head -${2:-30}; }
echo "== test_cuda_gate"
MOBA_CUDA_GATE_SHAPES=${SHAPES:-80} timeout 120 "$T" > "$OUT/test_gate.log" 2>&1; echo "rc=$?"; summary "$OUT/test_gate.log"
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck synccheck; do
  echo "== compute-sanitizer $tool"
  MOBA_CUDA_GATE_SHAPES=4 timeout 90 "$SAN" --tool $tool "$T" \
    --gtest_filter='CudaGate.MatchesReferenceOnRandomShapes:CudaGate.TopkBeyondBlocks:CudaGate.AscendingScores' \
    > "$OUT/san_$tool.log" 2>&1
  echo "rc=$?"; summary "$OUT/san_$tool.log" 8
done
echo "== gate variants"; timeout 120 "$BIN/bench/cuda/moba_cuda_gate_bench" 2>&1 | tee "$OUT/gate_bench.md"
echo "== bench (d)"; timeout 150 "$B" --flashmoba 2>&1 | tee "$OUT/bench_d.md"
echo "== bench (a) --quick"; timeout 90 "$B" --quick 2>&1 | tee "$OUT/bench_a.md"
