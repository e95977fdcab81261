#!/usr/bin/env bash
# Device run, session 3 round 2: the merged work of this session's helpers on one H200 — MoBA in
# one pass (forward), the sm_90a wgmma gate, the warp-specialised sm_90a key pass, the
# deterministic slot path, the shared decode key ranges, the CuTe/CUTLASS primitives — built on
# the GPU machine (C++ only; the Python package is built and tested by final_tests.sh), every
# affected test binary once, then the benches that decide the `automatic` choices. Sanitizers
# run in final_tests.sh on the code as it ends up.
set -u
source scripts/device/lib.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
export CMAKE_PREFIX_PATH=$PWD/.devdeps/prefix LD_LIBRARY_PATH=$PWD/.devdeps/prefix/lib/x86_64-linux-gnu
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps .whl/*.whl
step 150 build.log env JOBS=16 scripts/build.sh -DMOBA_NATIVE=ON || { tail -40 "$OUT/build.log"; exit 1; }
T=build/tests/cuda; B=build/bench/cuda
sum() { grep -E "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure|rel_l2|kernel failed|^checked|one-pass|\[ gate \]|\[ (info|skip) \]" "$OUT/$1" | head -${2:-8}; }
{
  step 60 onepass.log $T/test_cuda_onepass; echo "onepass: $(sum onepass.log)"
  MOBA_CUDA_TEST_SHAPES=40 step 80 fwd.log $T/test_cuda_forward; echo "forward: $(sum fwd.log)"
  step 40 vis.log $T/test_onepass_tiling; echo "onepass tiling: $(sum vis.log 3)"
  MOBA_CUDA_GATE_SHAPES=40 step 60 gate.log $T/test_cuda_gate; echo "gate: $(sum gate.log)"
  MOBA_CUDA_BWD_SHAPES=6 step 120 bwd.log $T/test_cuda_backward; echo "backward: $(sum bwd.log 12)"
  step 60 graph.log $T/test_cuda_graph; echo "graph: $(sum graph.log)"
  MOBA_CUDA_DECODE_SHAPES=20 step 60 dec.log $T/test_cuda_decode; echo "decode: $(sum dec.log)"
  step 40 pbwd.log $T/test_cuda_paged_backward; echo "paged backward: $(sum pbwd.log)"
} 2>&1 | tee "$OUT/gpu_tests.txt"
step 60 gate_bench.md $B/moba_cuda_gate_bench; grep "^|" "$OUT/gate_bench.md"
step 70 coherent.md $B/moba_cuda_bench --coherent; grep "^|" "$OUT/coherent.md"
for k in sm90_wgmma sm90_warp_specialized; do
  step 50 kp_$k.md $B/moba_cuda_bwd_bench --max-n 131072 --kernel $k --configs a,b512,full; grep "^|" "$OUT/kp_$k.md"
done
step 40 det.md $B/moba_cuda_bwd_bench --max-n 131072 --configs b64; grep "^|" "$OUT/det.md"
ls "$OUT"
