#!/usr/bin/env bash
# Final device run of session 2, part 2 (benchmarks), right after part 1 on the same warm
# machine (its build/ and installed package are reused; built here if absent): the forward peers
# table (settings a, c, gqa, d; SDPA cuDNN and flash, the public MoBA algorithm, FlexAttention,
# the bound), forward + backward peers (a, d), the backward's key passes, the gate and (d)
# forward, the decode table.
set -u
source scripts/device/lib.sh
if ! python3 -c "import moba" 2>/dev/null || [ ! -x build/bench/cuda/moba_cuda_bench ]; then
  step 200 build.log env DEPS_PREFIX=.devdeps/prefix WHEELS=.whl JOBS=16 scripts/gpu_build.sh || { tail -40 "$OUT/build.log"; exit 1; }
  rm -f "$OUT/build.log"
fi
export LD_LIBRARY_PATH=$PWD/.devdeps/prefix/lib/x86_64-linux-gnu
B=build/bench/cuda
step 40 bench_d.md $B/moba_cuda_bench --flashmoba; grep "^|" "$OUT/bench_d.md"
for k in sm80_mma_sync sm90_wgmma; do
  step 45 bwd_$k.md $B/moba_cuda_bwd_bench --max-n 131072 --kernel $k; grep "^|" "$OUT/bwd_$k.md" | grep -E "N \||128K"
done
step 200 peers_fwd.md python3 bench/cuda/bench_peers.py --suite a,c,gqa,d --flex-n 32768; grep -E "^\|" "$OUT/peers_fwd.md" | grep -E "moba \(ours\)|cudnn|bound|dense"
step 80 peers_fb.md python3 bench/cuda/bench_peers.py --bwd --suite a,d --max-n 131072 --max-n-d 131072 --peers ours-hostcu,ours-dense,cudnn,flash,bound; grep -E "^\|" "$OUT/peers_fb.md"
step 90 decode.log python3 bench/cuda/bench_decode.py --contexts 32768,131072,1048576 --batches 1,8,64 --out "$OUT/decode.md"; grep "^|" "$OUT/decode.md" | tail -14; tail -3 "$OUT/decode.log"
ls "$OUT"
