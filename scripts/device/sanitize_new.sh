#!/usr/bin/env bash
# Device run: compute-sanitizer on the kernels new this session that the final run did not
# cover (racecheck of the tensor-core decode kernel and of the register top-k gate; memcheck and
# racecheck of the CUDA paged backward). Builds the C++ project only (no Python package).
set -u
source scripts/device/lib.sh
export CMAKE_PREFIX_PATH=$PWD/.devdeps/prefix LD_LIBRARY_PATH=$PWD/.devdeps/prefix/lib/x86_64-linux-gnu
step 110 build.log scripts/build.sh -DMOBA_NATIVE=ON || { tail -30 "$OUT/build.log"; exit 1; }
T=build/tests/cuda
ran() { grep -cE "^\[       OK \]" "$OUT/$1"; }
san() {
  local tool=$1 max=$2; shift 2
  step "$max" t.log compute-sanitizer --tool "$tool" "$@"
  echo "$tool $(basename "$1") $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/t.log" | tail -1) ($(ran t.log) tests)"
}
{
  MOBA_CUDA_DECODE_SHAPES=4 san racecheck 40 $T/test_cuda_decode --gtest_filter='CudaDecode.ChunkedDecode*:CudaDecode.WideQueryGroups'
  MOBA_CUDA_GATE_SHAPES=3 san racecheck 30 $T/test_cuda_gate --gtest_filter='CudaGate.MatchesReferenceOnRandomShapes:CudaGate.RegisterListEdges'
  MOBA_CUDA_PAGED_BWD_SHAPES=4 san memcheck 30 $T/test_cuda_paged_backward
  MOBA_CUDA_PAGED_BWD_SHAPES=2 san racecheck 30 $T/test_cuda_paged_backward --gtest_filter='CudaPagedBackward.SharedPages*'
} 2>&1 | tee "$OUT/sanitizers.txt"
rm -f "$OUT/t.log"
