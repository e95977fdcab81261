#!/usr/bin/env bash
# Device run 2 of 2026-11-29: build on the GPU machine, then the CUDA engine changes (device
# planning + graph capture, MoA gradients, the opt-in warp-specialised sm_90a forward) against
# fp64 truth, compute-sanitizer on the new kernel, the whole pytest suite, and the forward
# benchmark of the old and new sm_90a kernels.
# Since the lock-step wgmma kernel was removed (sm90_wgmma is now an alias of
# sm90_warp_specialized), its two forward benchmark kernels are the same kernel.
set -u
source scripts/device/lib.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
step 200 build.log env DEPS_PREFIX=.devdeps/prefix WHEELS=.whl JOBS=16 scripts/gpu_build.sh || { tail -30 "$OUT/build.log"; exit 1; }
export LD_LIBRARY_PATH=$PWD/.devdeps/prefix/lib/x86_64-linux-gnu
T=build/tests/cuda B=build/bench/cuda
MOBA_CUDA_TEST_KERNELS=sm90_warp_specialized MOBA_CUDA_TEST_SHAPES=120 step 100 fwd_ws.log $T/test_cuda_forward --gtest_filter='CudaForward.*'; gtest_summary fwd_ws.log
MOBA_CUDA_TEST_SHAPES=120 step 120 fwd_all.log $T/test_cuda_forward; gtest_summary fwd_all.log
step 90 bwd.log $T/test_cuda_backward; gtest_summary bwd.log
step 40 graph.log $T/test_cuda_graph; gtest_summary graph.log
step 30 cu.log $T/test_cuda_cu_seqlens; gtest_summary cu.log 3
MOBA_CUDA_TEST_KERNELS=sm90_warp_specialized MOBA_CUDA_TEST_SHAPES=3 step 60 memcheck.log compute-sanitizer --tool memcheck $T/test_cuda_forward --gtest_filter='CudaForward.RandomShapes*:CudaForward.StridedOperands'; grep "ERROR SUMMARY" "$OUT/memcheck.log"
MOBA_CUDA_TEST_KERNELS=sm90_warp_specialized MOBA_CUDA_TEST_SHAPES=2 step 60 racecheck.log compute-sanitizer --tool racecheck $T/test_cuda_forward --gtest_filter='CudaForward.RandomShapes*'; grep "SUMMARY" "$OUT/racecheck.log"
step 130 pytest.log python3 -m pytest -q -p no:cacheprovider python/tests; tail -2 "$OUT/pytest.log"
for k in sm90_wgmma sm90_warp_specialized; do
  step 50 bench_$k.md $B/moba_cuda_bench --kernel $k; grep "^|" "$OUT/bench_$k.md"
  step 40 bench_d_$k.md $B/moba_cuda_bench --flashmoba --kernel $k; grep "^|" "$OUT/bench_d_$k.md"
done
