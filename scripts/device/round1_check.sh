#!/usr/bin/env bash
# Device run, session 2 round 1: build on the GPU machine; forward tests (warp-specialised
# kernel with producer-resolved tiles), gate tests + sanitizers + variants bench, decode tests
# + bench, (a)/(d) benches, forward peers of a/c/d to 128K (ours vs cuDNN).
set -u
source scripts/device/lib.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
step 170 build.log env DEPS_PREFIX=.devdeps/prefix WHEELS=.whl JOBS=16 scripts/gpu_build.sh || { tail -40 "$OUT/build.log"; exit 1; }
grep -E "^== (C\+\+ build|pip install)" "$OUT/build.log"; rm -f "$OUT/build.log"
export LD_LIBRARY_PATH=$PWD/.devdeps/prefix/lib/x86_64-linux-gnu
T=build/tests/cuda; B=build/bench/cuda
{
  step 20 t.log $T/test_ws_visibility; echo "ws visibility: $(gtest_summary t.log 2)"
  MOBA_CUDA_TEST_SHAPES=40 step 80 t.log $T/test_cuda_forward; echo "forward: $(gtest_summary t.log 6)"
  MOBA_CUDA_TEST_KERNELS=sm90_warp_specialized MOBA_CUDA_TEST_SHAPES=2 step 40 t.log compute-sanitizer --tool memcheck $T/test_cuda_forward --gtest_filter='CudaForward.RandomShapes*'; echo "ws memcheck: $(grep 'ERROR SUMMARY' $OUT/t.log)"
  MOBA_CUDA_TEST_KERNELS=sm90_warp_specialized MOBA_CUDA_TEST_SHAPES=2 step 60 t.log compute-sanitizer --tool racecheck $T/test_cuda_forward --gtest_filter='CudaForward.RandomShapes*'; echo "ws racecheck: $(grep 'SUMMARY' $OUT/t.log | tail -1)"
  MOBA_CUDA_GATE_SHAPES=60 step 60 t.log $T/test_cuda_gate; echo "gate: $(gtest_summary t.log 8)"
  MOBA_CUDA_GATE_SHAPES=3 step 40 t.log compute-sanitizer --tool memcheck $T/test_cuda_gate --gtest_filter='CudaGate.MatchesReferenceOnRandomShapes:CudaGate.TopkBeyondBlocks'; echo "gate memcheck: $(grep 'ERROR SUMMARY' $OUT/t.log)"
  MOBA_CUDA_DECODE_SHAPES=30 step 80 t.log $T/test_cuda_decode; echo "decode: $(gtest_summary t.log 8)"
  step 20 t.log $T/test_cuda_graph; echo "graph: $(gtest_summary t.log 3)"
} 2>&1 | tee "$OUT/gpu_tests.txt"
rm -f "$OUT/t.log"
step 60 gate_variants.md $B/moba_cuda_gate_bench; grep "^|" "$OUT/gate_variants.md" | tail -12
step 50 bench_d.md $B/moba_cuda_bench --flashmoba; grep "^|" "$OUT/bench_d.md"
step 40 bench_a.md $B/moba_cuda_bench; grep "^|" "$OUT/bench_a.md"
step 80 peers.log python3 bench/cuda/bench_peers.py --suite a,c,d --max-n 131072 --max-n-d 131072 --peers cudnn; grep -E "^\|" "$OUT/peers.log"
step 120 decode.log python3 bench/cuda/bench_decode.py --contexts 32768,1048576 --batches 1,8 --moa-context 0 --out "$OUT/decode.md"; grep "^|" "$OUT/decode.md" | head -40; tail -5 "$OUT/decode.log"
ls "$OUT"
