#!/bin/bash
# One device call for the deterministic backward's slot path and the backward scratch bound,
# repo root, after any CUDA build made $1 (default build/):
#   1. tests: the slot path vs the wave path (truth, bit-identical repeats, which path ran), the
#      scratch bound, small and split shapes, 8 random shapes; graph capture of training steps
#   2. compute-sanitizer memcheck on small shapes (mma.sync key pass: the slot path's kernels)
#   3. timing: moba_cuda_bwd_bench to 128K (blocks of 64 top-3 and 512 top-8, full causal);
#      the det/def column is the target (<= 1.3x), stage times on stderr
# Logs go to $OUT (default /tmp/moba-det). Rough durations: 1. ~60 s, 2. ~40 s, 3. ~60 s.
set -u
B=${1:-build}
OUT=${OUT:-/tmp/moba-det}
T=$B/tests/cuda/test_cuda_backward
G=$B/tests/cuda/test_cuda_graph
BENCH=$B/bench/cuda/moba_cuda_bwd_bench
mkdir -p "$OUT"
summary() { grep -E "^\[  (PASSED|FAILED) |Failure|kernel failed|\[ (info|skip) \]|error" "$1" | head -${2:-30}; }

echo "== backward tests (slot path, scratch bound, small / split / any-block shapes, 8 random)"
MOBA_CUDA_BWD_SHAPES=8 timeout 150 "$T" --gtest_filter='CudaBackward.DeterministicSlotPath:CudaBackward.ScratchWithinBound:CudaBackward.SmallShapes:CudaBackward.PopularBlockIsSplit:CudaBackward.AnyBlockSize:CudaBackward.RandomShapes*' \
  > "$OUT/test.log" 2>&1
echo "rc=$?"; summary "$OUT/test.log"
echo "== graph capture of forward + backward (every backward variant incl. deterministic)"
timeout 90 "$G" --gtest_filter='CudaGraph.TrainingStep*' > "$OUT/graph.log" 2>&1
echo "rc=$?"; summary "$OUT/graph.log" 10

echo "== memcheck, mma.sync key pass (slot path in deterministic mode)"
MOBA_CUDA_TEST_BWD_KERNELS=sm80_mma_sync timeout 150 compute-sanitizer --tool memcheck "$T" \
  --gtest_filter='CudaBackward.SmallShapes:CudaBackward.PopularBlockIsSplit' > "$OUT/memcheck.log" 2>&1
echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|^\[  (PASSED|FAILED) " "$OUT/memcheck.log" | head -5

echo "== timing: default vs deterministic (det/def column), to 128K"
timeout 200 "$BENCH" --max-n 131072 --out "$OUT/bench.md" > "$OUT/bench.log" 2> "$OUT/bench_stages.log"
echo "bench rc=$?"
cat "$OUT/bench.md"
grep -E "B=64 top-3 (det|default)\]|B=512 top-8 (det|default)\]" "$OUT/bench_stages.log"
