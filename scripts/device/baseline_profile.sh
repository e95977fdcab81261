#!/usr/bin/env bash
# Device run: build on the GPU machine, the forward tests on the default (warp-specialised)
# kernel, ncu profiles of one call of (a) 128K fwd + bwd and (d) 128K fwd, then the forward
# peers table (settings a, c, gqa, d) in one run.
set -u
source scripts/device/lib.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
step 170 build.log env DEPS_PREFIX=.devdeps/prefix WHEELS=.whl JOBS=16 scripts/gpu_build.sh || { tail -40 "$OUT/build.log"; exit 1; }
grep -E "^== (C\+\+ build|pip install)" "$OUT/build.log"; rm -f "$OUT/build.log"
export LD_LIBRARY_PATH=$PWD/.devdeps/prefix/lib/x86_64-linux-gnu
T=build/tests/cuda
MOBA_CUDA_TEST_SHAPES=30 step 60 t.log $T/test_cuda_forward; echo "forward: $(gtest_summary t.log 4)"; rm -f "$OUT/t.log"
NCU="ncu --profile-from-start off --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section Occupancy --section LaunchStats --section WarpStateStats"
step 80 ncu_a128k_fb.txt $NCU python3 bench/cuda/profile_one_call.py --setting a --n 131072 --bwd
step 60 ncu_d128k_f.txt $NCU python3 bench/cuda/profile_one_call.py --setting d --n 131072
for f in ncu_a128k_fb.txt ncu_d128k_f.txt; do echo "== $f"; grep -E "^  [a-z_].*\(|Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Cache Throughput|DRAM Throughput|Registers Per|Achieved Occupancy" "$OUT/$f" | head -80; done
step 240 peers.log python3 bench/cuda/bench_peers.py --suite a,c,gqa,d --peers ours-hostcu,ours-dense,cudnn,flash,public,flex,bound --flex-n 32768; grep -E "^\|" "$OUT/peers.log"
ls "$OUT"
