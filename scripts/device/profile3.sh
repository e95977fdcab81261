#!/usr/bin/env bash
# Device run, session 3: what the automatic choices and the closing notes rest on — the backward
# key passes side by side at small MoBA blocks (mma.sync vs warp-specialised sm_90a), and ncu
# profiles of one (d) 128K forward (gate, own-block / one-pass, waves) and one (a) 128K
# forward + backward (the warp-specialised key pass). Builds on the GPU machine first.
set -u
source scripts/device/lib.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
step 200 build.log env DEPS_PREFIX=.devdeps/prefix WHEELS=.whl JOBS=16 scripts/gpu_build.sh || { tail -40 "$OUT/build.log"; exit 1; }
grep -E "^== (C\+\+ build|pip install)|CUTLASS" "$OUT/build.log"; rm -f "$OUT/build.log"
export LD_LIBRARY_PATH=$PWD/.devdeps/prefix/lib/x86_64-linux-gnu
B=build/bench/cuda
for k in sm80_mma_sync sm90_warp_specialized; do
  step 45 kp_small_$k.md $B/moba_cuda_bwd_bench --max-n 131072 --kernel $k --configs b64,a; grep "^|" "$OUT/kp_small_$k.md"
done
NCU="ncu --profile-from-start off --clock-control none --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy"
step 150 ncu_d128k_fwd.txt $NCU python3 bench/cuda/profile_one_call.py --setting d --n 131072
grep -E "^  [a-z_]+.*\(|Duration|Compute \(SM\) Throughput|Memory Throughput|Stall|Issued Warp" "$OUT/ncu_d128k_fwd.txt" | head -80
step 200 ncu_a128k_fb.txt $NCU python3 bench/cuda/profile_one_call.py --setting a --n 131072 --bwd
grep -E "^  [a-z_]+.*\(|Duration|Compute \(SM\) Throughput|Memory Throughput" "$OUT/ncu_a128k_fb.txt" | head -60
