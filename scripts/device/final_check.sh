#!/usr/bin/env bash
# Final device run of 2026-11-29: everything built on the GPU machine (C++ with CUDA, then
# pip install .), every CUDA test binary (forward on every kernel path, backward incl. MoA and
# any block size, gate, CUDA-graph capture, device cu_seqlens, paged decode), compute-sanitizer
# on the new kernels, the whole pytest suite, then short benchmarks: forward of the sm_90a
# kernels (old wgmma vs warp-specialised), decode, and ours vs SDPA peers forward + backward.
# Since the lock-step wgmma kernel was removed (sm90_wgmma is now an alias of
# sm90_warp_specialized), its two forward benchmark kernels are the same kernel.
set -u
source scripts/device/lib.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
step 170 build.log env DEPS_PREFIX=.devdeps/prefix WHEELS=.whl JOBS=16 scripts/gpu_build.sh || { tail -40 "$OUT/build.log"; exit 1; }
grep -E "^== (C\+\+ build|pip install)" "$OUT/build.log"; rm -f "$OUT/build.log"
export LD_LIBRARY_PATH=$PWD/.devdeps/prefix/lib/x86_64-linux-gnu
T=build/tests/cuda
{
  MOBA_CUDA_TEST_SHAPES=60 step 90 t.log $T/test_cuda_forward; echo "forward: $(gtest_summary t.log 4)"
  MOBA_CUDA_BWD_SHAPES=24 step 80 t.log $T/test_cuda_backward; echo "backward: $(gtest_summary t.log 4)"
  MOBA_CUDA_GATE_SHAPES=80 step 40 t.log $T/test_cuda_gate; echo "gate: $(gtest_summary t.log 4)"
  step 30 t.log $T/test_cuda_graph; echo "graph: $(gtest_summary t.log 3)"
  step 20 t.log $T/test_cuda_cu_seqlens; echo "cu_seqlens: $(gtest_summary t.log 2)"
  MOBA_CUDA_DECODE_SHAPES=40 step 60 t.log $T/test_cuda_decode; echo "decode: $(gtest_summary t.log 6)"
  step 20 t.log $T/test_ws_visibility; echo "ws visibility: $(gtest_summary t.log 2)"
  MOBA_CUDA_DECODE_SHAPES=3 step 40 t.log compute-sanitizer --tool memcheck $T/test_cuda_decode --gtest_filter='CudaDecode.ChunkedDecode*'; echo "decode memcheck: $(grep 'ERROR SUMMARY' $OUT/t.log)"
  MOBA_CUDA_DECODE_SHAPES=2 step 40 t.log compute-sanitizer --tool racecheck $T/test_cuda_decode --gtest_filter='CudaDecode.ChunkedDecode*'; echo "decode racecheck: $(grep 'SUMMARY' $OUT/t.log | tail -1)"
  MOBA_CUDA_TEST_KERNELS=sm90_warp_specialized MOBA_CUDA_TEST_SHAPES=2 step 40 t.log compute-sanitizer --tool memcheck $T/test_cuda_forward --gtest_filter='CudaForward.RandomShapes*'; echo "ws memcheck: $(grep 'ERROR SUMMARY' $OUT/t.log)"
} 2>&1 | tee "$OUT/gpu_tests.txt"
rm -f "$OUT/t.log"
step 170 pytest.log python3 -m pytest -q -rs -p no:cacheprovider -n 6 python/tests; tail -3 "$OUT/pytest.log"
B=build/bench/cuda
for k in sm90_wgmma sm90_warp_specialized; do
  step 40 bench_fwd_$k.md $B/moba_cuda_bench --kernel $k
  step 30 bench_d_$k.md $B/moba_cuda_bench --flashmoba --kernel $k
done
grep -h "^|" "$OUT"/bench_fwd_*.md "$OUT"/bench_d_*.md | grep -E "128K|512K" | head -20
step 60 decode.log python3 bench/cuda/bench_decode.py --contexts 32768,131072,1048576 --batches 1,8 --out "$OUT/decode.md"; grep "^|" "$OUT/decode.md" | head -24; [ -s "$OUT/decode.md" ] && rm -f "$OUT/decode.log"
step 90 peers.log python3 bench/cuda/bench_peers.py --bwd --suite a,d --max-n 131072 --max-n-d 131072 --peers ours-dense,cudnn,flash,bound; grep -E "^\|" "$OUT/peers.log" | head -30
ls "$OUT"
