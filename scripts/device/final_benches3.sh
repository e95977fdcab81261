#!/usr/bin/env bash
# Final device run of session 3, part 2, right after part 1 on the same warm machine (its build/
# and installed package are reused; built here if absent): the forward peers table (settings a,
# c, gqa, d: SDPA cuDNN and flash, the public MoBA algorithm, FlexAttention, the bound), forward
# + backward peers (a, d to 128K), FlashMoBA's setting (d) forward to 512K and its forward +
# backward at 512K (ours and the bound: cuDNN's f+b there takes ~15 s a call), then the GPU
# pytest files of the torch ops.
set -u
source scripts/device/lib.sh
if ! python3 -c "import moba" 2>/dev/null || [ ! -x build/bench/cuda/moba_cuda_bench ]; then
  step 200 build.log env DEPS_PREFIX=.devdeps/prefix WHEELS=.whl JOBS=16 scripts/gpu_build.sh || { tail -40 "$OUT/build.log"; exit 1; }
  rm -f "$OUT/build.log"
fi
export LD_LIBRARY_PATH=$PWD/.devdeps/prefix/lib/x86_64-linux-gnu
B=build/bench/cuda
step 45 bench_d.md $B/moba_cuda_bench --flashmoba; grep "^|" "$OUT/bench_d.md"
step 200 peers_fwd.md python3 bench/cuda/bench_peers.py --suite a,c,gqa,d --flex-n 32768; grep -E "^\|" "$OUT/peers_fwd.md" | grep -E "moba \(ours\)|cudnn|bound|dense"
step 90 peers_fb.md python3 bench/cuda/bench_peers.py --bwd --suite a,d --max-n 131072 --max-n-d 131072 --peers ours-hostcu,ours-dense,cudnn,flash,bound; grep -E "^\|" "$OUT/peers_fb.md"
step 60 peers_fb_d512k.md python3 bench/cuda/bench_peers.py --bwd --suite d --max-n-d 524288 --peers bound; grep -E "^\|" "$OUT/peers_fb_d512k.md" | grep -E "512K|N "
step 100 pytest.log python3 -m pytest -q -rs -p no:cacheprovider -n 6 python/tests/test_ops.py python/tests/test_cuda_graph.py python/tests/test_workspace_peak.py python/tests/test_torch_integration.py; tail -6 "$OUT/pytest.log"
ls "$OUT"
