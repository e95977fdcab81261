#!/bin/bash
# One device call for the engine items (CudaOptions, device planning + CUDA graphs, MoA
# gradients, any block size >= 16): every CUDA test binary, compute-sanitizer memcheck and
# racecheck on small filters, then short benchmarks. Run from the repository root after
#   cmake -S . -B build -G Ninja -DMOBA_CUDA=ON && ninja -C build
# (and `pip install .` for the Python benchmark). Logs go to $OUT; a summary to stdout.
#   BUILD=<dir> (default build)  FWD_SHAPES / BWD_SHAPES: random shapes (default 80 / 20)
#   NO_BENCH=1 skips the benchmarks.
set -u
BUILD=${BUILD:-build}
T=$BUILD/tests/cuda
OUT=${OUT:-/tmp/moba-engine-out}
mkdir -p "$OUT"
summary() { grep -E "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure|Expected|Which is|error|checked|\[ info \]|selection rows" "$1" | head -${2:-25}; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"

echo "== test_cuda_graph (capture/replay = eager, new lengths, invalid cu_seqlens)"
timeout 120 "$T/test_cuda_graph" > "$OUT/graph.log" 2>&1; echo "rc=$?"; summary "$OUT/graph.log"
echo "== test_cuda_cu_seqlens"
timeout 60 "$T/test_cuda_cu_seqlens" > "$OUT/cu.log" 2>&1; echo "rc=$?"; summary "$OUT/cu.log" 5
echo "== test_cuda_forward (both kernels per shape, block sizes 16..4096)"
MOBA_CUDA_TEST_SHAPES=${FWD_SHAPES:-80} timeout 300 "$T/test_cuda_forward" > "$OUT/fwd.log" 2>&1
echo "rc=$?"; summary "$OUT/fwd.log"
echo "== test_cuda_backward (MoA, any block size, 64-key tiles, all-atomic dQ, deterministic)"
MOBA_CUDA_BWD_SHAPES=${BWD_SHAPES:-20} timeout 300 "$T/test_cuda_backward" > "$OUT/bwd.log" 2>&1
echo "rc=$?"; summary "$OUT/bwd.log"

echo "== memcheck"
timeout 150 compute-sanitizer --tool memcheck "$T/test_cuda_graph" > "$OUT/memcheck.log" 2>&1
echo "graph rc=$?"
MOBA_CUDA_TEST_SHAPES=3 timeout 150 compute-sanitizer --tool memcheck "$T/test_cuda_forward" \
  --gtest_filter='CudaForward.RandomShapes*' >> "$OUT/memcheck.log" 2>&1
echo "forward rc=$?"
timeout 200 compute-sanitizer --tool memcheck "$T/test_cuda_backward" \
  --gtest_filter='CudaBackward.SmallShapes' >> "$OUT/memcheck.log" 2>&1
echo "backward rc=$?"
grep -E "ERROR SUMMARY|Invalid|PASSED|FAILED" "$OUT/memcheck.log" | head -12
echo "== racecheck"
MOBA_CUDA_TEST_SHAPES=2 timeout 150 compute-sanitizer --tool racecheck "$T/test_cuda_forward" \
  --gtest_filter='CudaForward.RandomShapes*' > "$OUT/racecheck.log" 2>&1
echo "forward rc=$?"
timeout 200 compute-sanitizer --tool racecheck "$T/test_cuda_backward" \
  --gtest_filter='CudaBackward.SmallShapes' >> "$OUT/racecheck.log" 2>&1
echo "backward rc=$?"
grep -E "RACECHECK SUMMARY|ERROR SUMMARY|PASSED|FAILED" "$OUT/racecheck.log" | head -8

[ -n "${NO_BENCH:-}" ] && exit 0
echo "== bench: forward (moba_cuda_bench --quick) and backward (--max-n 32768)"
timeout 150 "$BUILD/bench/cuda/moba_cuda_bench" --quick 2>&1 | tee "$OUT/bench_fwd.md" | tail -20
timeout 150 "$BUILD/bench/cuda/moba_cuda_bwd_bench" --max-n 32768 --out "$OUT/bench_bwd.md" > "$OUT/bench_bwd.log" 2>&1
echo "rc=$?"; cat "$OUT/bench_bwd.md" 2>/dev/null | tail -12
