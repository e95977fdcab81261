#!/usr/bin/env bash
# Final device run of session 3, part 1 (tests): build on the GPU machine (C++ with CUDA and
# CUTLASS, then pip install .), every CUDA test binary (forward on both kernels incl. MoBA in one
# pass, backward on the three key passes incl. the deterministic slot path, gate with both score
# kernels, graphs, cu_seqlens, decode, paged backward, the CPU tiling walks), then
# compute-sanitizer on the kernels this session added or changed, most important first.
set -u
source scripts/device/lib.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
step 200 build.log env DEPS_PREFIX=.devdeps/prefix WHEELS=.whl JOBS=16 scripts/gpu_build.sh || { tail -40 "$OUT/build.log"; exit 1; }
grep -E "^== (C\+\+ build|pip install)|CUTLASS" "$OUT/build.log"; rm -f "$OUT/build.log"
export LD_LIBRARY_PATH=$PWD/.devdeps/prefix/lib/x86_64-linux-gnu
T=build/tests/cuda
ran() { grep -cE "^\[       OK \]" "$OUT/$1"; }
san() {  # san TOOL SECONDS BINARY [args...]: one compute-sanitizer run, one summary line
  local tool=$1 max=$2; shift 2
  step "$max" t.log compute-sanitizer --tool "$tool" "$@"
  echo "$tool $(basename "$1") $* : $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/t.log" | tail -1) ($(ran t.log) tests)" | sed "s|$T/||"
}
{
  step 20 t.log $T/test_ws_visibility; echo "ws visibility: $(gtest_summary t.log 2)"
  step 20 t.log $T/test_onepass_tiling; echo "one-pass tiling: $(gtest_summary t.log 2)"
  step 60 t.log $T/test_cuda_onepass; echo "one-pass: $(gtest_summary t.log 4)"
  MOBA_CUDA_TEST_SHAPES=60 step 80 t.log $T/test_cuda_forward; echo "forward: $(gtest_summary t.log 8)"; grep "^checked" $OUT/t.log
  MOBA_CUDA_BWD_SHAPES=10 step 120 t.log $T/test_cuda_backward; echo "backward: $(gtest_summary t.log 8)"; grep -E "\[ (info|skip) \]" $OUT/t.log | head -4
  step 40 t.log $T/test_cuda_graph; echo "graph: $(gtest_summary t.log 4)"
  step 20 t.log $T/test_cuda_cu_seqlens; echo "cu_seqlens: $(gtest_summary t.log 2)"
  MOBA_CUDA_GATE_SHAPES=40 step 60 t.log $T/test_cuda_gate; echo "gate: $(gtest_summary t.log 4)"; grep "^\[ gate \]" $OUT/t.log
  MOBA_CUDA_DECODE_SHAPES=20 step 60 t.log $T/test_cuda_decode; echo "decode: $(gtest_summary t.log 4)"
  step 40 t.log $T/test_cuda_paged_backward; echo "paged backward: $(gtest_summary t.log 4)"
  san memcheck 40 $T/test_cuda_onepass --gtest_filter='CudaOnePass.GraphTestShapesRunOnePassTiles:CudaOnePass.MixedTilesSplitBetweenOnePassAndWaves'
  san racecheck 60 $T/test_cuda_onepass --gtest_filter='CudaOnePass.GraphTestShapesRunOnePassTiles'
  MOBA_CUDA_TEST_BWD_KERNELS=sm90_warp_specialized san memcheck 50 $T/test_cuda_backward --gtest_filter='CudaBackward.SmallShapes'
  MOBA_CUDA_TEST_BWD_KERNELS=sm90_warp_specialized san racecheck 60 $T/test_cuda_backward --gtest_filter='CudaBackward.SmallShapes'
  MOBA_CUDA_TEST_BWD_KERNELS=sm80_mma_sync san memcheck 50 $T/test_cuda_backward --gtest_filter='CudaBackward.DeterministicSlotPath'
  MOBA_CUDA_TEST_MODE=moba MOBA_CUDA_TEST_KERNELS=sm90_warp_specialized MOBA_CUDA_TEST_SHAPES=3 san memcheck 40 $T/test_cuda_forward --gtest_filter='CudaForward.RandomShapes*'
  MOBA_CUDA_GATE_SHAPES=3 san memcheck 40 $T/test_cuda_gate --gtest_filter='CudaGate.MatchesReferenceOnRandomShapes:CudaGate.StageRingWraps'
  MOBA_CUDA_GATE_SHAPES=2 san racecheck 50 $T/test_cuda_gate --gtest_filter='CudaGate.MatchesReferenceOnRandomShapes:CudaGate.StageRingWraps'
  MOBA_CUDA_DECODE_SHAPES=3 san memcheck 30 $T/test_cuda_decode --gtest_filter='CudaDecode.ChunkedDecode*'
  san memcheck 30 $T/test_cuda_paged_backward
} 2>&1 | tee "$OUT/gpu_tests.txt"
rm -f "$OUT/t.log"
ls "$OUT"
