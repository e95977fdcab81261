#!/usr/bin/env bash
# Device run, session 3, after the final benches: re-verifies the last library commits (the
# sm_90a key passes' shared dV/dK step, the shared tensor-map encoder) — C++ build on the GPU
# machine, the forward / one-pass / backward / gate / graph tests, compute-sanitizer memcheck
# and racecheck on the warp-specialised key pass, and the key-pass bench at 128K.
set -u
source scripts/device/lib.sh
export CMAKE_PREFIX_PATH=$PWD/.devdeps/prefix LD_LIBRARY_PATH=$PWD/.devdeps/prefix/lib/x86_64-linux-gnu
python3 -m pip install -q --no-index --no-deps .whl/*.whl
step 150 build.log env JOBS=16 scripts/build.sh -DMOBA_NATIVE=ON || { tail -30 "$OUT/build.log"; exit 1; }
T=build/tests/cuda
ran() { grep -cE "^\[       OK \]" "$OUT/$1"; }
{
  MOBA_CUDA_TEST_SHAPES=40 step 60 t.log $T/test_cuda_forward; echo "forward: $(gtest_summary t.log 4)"
  step 40 t.log $T/test_cuda_onepass; echo "one-pass: $(gtest_summary t.log 4)"
  MOBA_CUDA_BWD_SHAPES=10 step 100 t.log $T/test_cuda_backward; echo "backward: $(gtest_summary t.log 6)"; grep -E "\[ info \]" $OUT/t.log | head -1
  MOBA_CUDA_GATE_SHAPES=20 step 40 t.log $T/test_cuda_gate; echo "gate: $(gtest_summary t.log 4)"
  step 40 t.log $T/test_cuda_graph; echo "graph: $(gtest_summary t.log 4)"
  for tool in memcheck racecheck; do
    MOBA_CUDA_TEST_BWD_KERNELS=sm90_warp_specialized step 60 t.log compute-sanitizer --tool $tool $T/test_cuda_backward --gtest_filter='CudaBackward.SmallShapes'
    echo "$tool ws key pass: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $OUT/t.log | tail -1) ($(ran t.log) tests)"
  done
  MOBA_CUDA_TEST_BWD_KERNELS=sm90_wgmma step 60 t.log compute-sanitizer --tool memcheck $T/test_cuda_backward --gtest_filter='CudaBackward.SmallShapes'
  echo "memcheck lock-step key pass: $(grep -E 'ERROR SUMMARY' $OUT/t.log | tail -1) ($(ran t.log) tests)"
} 2>&1 | tee "$OUT/verify_tests.txt"
rm -f "$OUT/t.log"
step 40 kp.md build/bench/cuda/moba_cuda_bwd_bench --max-n 131072 --configs a,b512,full; grep "^|" "$OUT/kp.md" | grep -E "N \||128K"
