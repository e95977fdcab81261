#!/usr/bin/env bash
# Device run, session 2 round 2: the merged backward work (device planning, sm_90a key pass),
# the CUDA paged backward and context parallelism on the GPU, the workspace-peak API: build on
# the GPU machine, every CUDA test binary, sanitizers on the new kernels, the GPU pytest files,
# then backward benches (sm80 vs sm90 key pass) and f+b peers.
set -u
source scripts/device/lib.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
step 200 build.log env DEPS_PREFIX=.devdeps/prefix WHEELS=.whl JOBS=16 scripts/gpu_build.sh || { tail -40 "$OUT/build.log"; exit 1; }
grep -E "^== (C\+\+ build|pip install)" "$OUT/build.log"; rm -f "$OUT/build.log"
export LD_LIBRARY_PATH=$PWD/.devdeps/prefix/lib/x86_64-linux-gnu
T=build/tests/cuda; B=build/bench/cuda
ran() { grep -cE "^\[       OK \]" "$OUT/$1"; }
{
  step 40 t.log $T/test_cuda_graph; echo "graph: $(gtest_summary t.log 6)"
  MOBA_CUDA_TEST_BWD_KERNELS=sm90_wgmma MOBA_CUDA_BWD_SHAPES=24 step 100 t.log $T/test_cuda_backward; echo "backward sm90: $(gtest_summary t.log 8)"; grep -E "\[ (info|skip) \]" $OUT/t.log | head -4
  MOBA_CUDA_BWD_SHAPES=16 step 100 t.log $T/test_cuda_backward; echo "backward both: $(gtest_summary t.log 8)"
  step 60 t.log $T/test_cuda_paged_backward; echo "paged backward: $(gtest_summary t.log 6)"; grep "cuda paged backward" $OUT/t.log | head -2
  MOBA_CUDA_TEST_SHAPES=20 step 50 t.log $T/test_cuda_forward; echo "forward: $(gtest_summary t.log 6)"
  step 20 t.log $T/test_cuda_cu_seqlens; echo "cu_seqlens: $(gtest_summary t.log 3)"
  MOBA_CUDA_TEST_BWD_KERNELS=sm90_wgmma MOBA_CUDA_BWD_SHAPES=2 step 60 t.log compute-sanitizer --tool memcheck $T/test_cuda_backward --gtest_filter='CudaBackward.SmallShapes:CudaBackward.RandomShapes*'; echo "sm90 bwd memcheck: $(grep 'ERROR SUMMARY' $OUT/t.log) ($(ran t.log) tests)"
  MOBA_CUDA_TEST_BWD_KERNELS=sm90_wgmma step 60 t.log compute-sanitizer --tool racecheck $T/test_cuda_backward --gtest_filter='CudaBackward.SmallShapes'; echo "sm90 bwd racecheck: $(grep 'RACECHECK SUMMARY' $OUT/t.log) ($(ran t.log) tests)"
  MOBA_CUDA_TEST_BWD_KERNELS=sm80_mma_sync MOBA_CUDA_BWD_SHAPES=2 step 50 t.log compute-sanitizer --tool memcheck $T/test_cuda_backward --gtest_filter='CudaBackward.SmallShapes:CudaBackward.PopularBlockIsSplit:CudaBackward.LongCausalIsSplit'; echo "device-planned bwd memcheck: $(grep 'ERROR SUMMARY' $OUT/t.log) ($(ran t.log) tests)"
  step 50 t.log compute-sanitizer --tool memcheck $T/test_cuda_graph; echo "graph memcheck: $(grep 'ERROR SUMMARY' $OUT/t.log) ($(ran t.log) tests)"
  MOBA_CUDA_TEST_SHAPES=2 MOBA_CUDA_TEST_KERNELS=sm90_warp_specialized step 40 t.log compute-sanitizer --tool memcheck $T/test_cuda_forward --gtest_filter='CudaForward.RandomShapes*'; echo "ws memcheck: $(grep 'ERROR SUMMARY' $OUT/t.log) ($(ran t.log) tests)"
} 2>&1 | tee "$OUT/gpu_tests.txt"
rm -f "$OUT/t.log"
step 150 pytest.log python3 -m pytest -q -rs -p no:cacheprovider python/tests/test_distributed_gpu.py python/tests/test_cuda_graph.py python/tests/test_workspace_peak.py; tail -8 "$OUT/pytest.log"
for args in "--kernel sm80_mma_sync" "--kernel sm90_wgmma"; do
  tag=$(echo "$args" | tr -d ' -')
  step 60 bwd_$tag.md $B/moba_cuda_bwd_bench --max-n 131072 $args; grep "^|" "$OUT/bwd_$tag.md" | head -20
done
step 90 peers_fb.log python3 bench/cuda/bench_peers.py --bwd --suite a,d --max-n 131072 --max-n-d 131072 --peers ours-hostcu,cudnn; grep -E "^\|" "$OUT/peers_fb.log"
ls "$OUT"
