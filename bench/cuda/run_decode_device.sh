#!/bin/bash
# One device call for the paged decode (issue 13): the CUDA decode tests, compute-sanitizer
# memcheck and racecheck on a few shapes, the Python cache/generate tests on the GPU, then the decode table.
# Run from the repository root after `pip install .` (CUDA on) and a C++ build with CUDA at
# build/ (or BUILD=<dir>). Logs and the table go to $OUT (default /tmp/moba-decode-out).
# SKIP_BENCH=1: tests only (~3 min); BENCH_ARGS: e.g. "--contexts 32768,131072 --batches 1,8".
set -u
BUILD=${BUILD:-build}
OUT=${OUT:-/tmp/moba-decode-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
echo "== C++ decode tests"
MOBA_CUDA_DECODE_SHAPES=${SHAPES:-80} timeout ${TEST_TIMEOUT:-150} "$BUILD/tests/cuda/test_cuda_decode" > "$OUT/test.log" 2>&1
echo "test rc=$?"
grep -E "^\[  (PASSED|FAILED|  OK|SKIPPED) |FAILED|Failure|Expected|Which is|paged \]|long context|failing" "$OUT/test.log" | head -40
echo "== memcheck"
MOBA_CUDA_DECODE_SHAPES=4 timeout ${SAN_TIMEOUT:-120} compute-sanitizer --tool memcheck "$BUILD/tests/cuda/test_cuda_decode" \
  --gtest_filter='CudaDecode.ChunkedDecode*:CudaDecode.DecodeStepIsGraphCapturable' > "$OUT/sanitizer.log" 2>&1
echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|PASSED|FAILED|Invalid|at 0x" "$OUT/sanitizer.log" | head
echo "== racecheck"
MOBA_CUDA_DECODE_SHAPES=2 timeout ${SAN_TIMEOUT:-120} compute-sanitizer --tool racecheck "$BUILD/tests/cuda/test_cuda_decode" \
  --gtest_filter='CudaDecode.ChunkedDecode*' >> "$OUT/sanitizer.log" 2>&1
echo "racecheck rc=$?"; grep -E "RACECHECK SUMMARY|ERROR SUMMARY" "$OUT/sanitizer.log" | tail -2
echo "== python (cuda params)"
timeout ${PY_TIMEOUT:-150} python3 -m pytest -q python/tests/test_kv_cache.py -k "cuda" > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?"; tail -5 "$OUT/pytest.log"
[ "${SKIP_BENCH:-0}" = 1 ] && exit 0
echo "== bench"
timeout ${BENCH_TIMEOUT:-300} python3 bench/cuda/bench_decode.py ${BENCH_ARGS:---contexts 32768,131072,1048576 --batches 1,8,64} --out "$OUT/decode.md" 2>&1 | tail -80
