#!/usr/bin/env bash
# Regenerates the GPU tables of bench/results/ exactly as they are produced: every number there
# comes from one of the commands below, run as written. Run from the repository root on the GPU
# machine after `pip install .` and a CUDA build in $BUILD (default build). Output: one markdown
# file per table under $OUT (default /tmp/moba-results); paste them into the results file with
# the device, driver, commit and date.
#   bench/cuda/run_results_device.sh [peers|op-overhead|forward|all]
#     peers        cuda-peers-*.md, run 1: forward and forward+backward against cuDNN, flash,
#                  the public MoBA algorithm, FlexAttention and the bound (~6 min)
#     op-overhead  cuda-peers-*.md, run 2: the PyTorch op with device and host cu_seqlens
#                  against cuDNN, forward and forward+backward, and the C++ API call (~2 min)
#     forward      cuda-forward-*.md: the C++ forward bench, all configs up to 1M (~1 min)
set -euo pipefail
what=${1:-all}
BUILD=${BUILD:-build}
OUT=${OUT:-/tmp/moba-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
git rev-parse --short HEAD | tee "$OUT/commit.txt"

run() {  # run FILE cmd...: prints the command into the file, then its output
  local file=$1
  shift
  echo "== $file: $*"
  { echo "<!-- command: $* -->"; "$@"; } > "$OUT/$file" 2>&1
  tail -n 4 "$OUT/$file"
}

if [ "$what" = peers ] || [ "$what" = all ]; then
  run peers_fwd.md python3 bench/cuda/bench_peers.py --suite a,c,gqa,d,b --max-n-d 131072 --flex-n 131072
  run peers_fwd_bwd.md python3 bench/cuda/bench_peers.py --bwd --suite a,d --max-n 131072 \
    --max-n-d 131072 --peers ours-dense,cudnn,flash,public,bound
fi
if [ "$what" = op-overhead ] || [ "$what" = all ]; then
  run op_fwd.md python3 bench/cuda/bench_peers.py --suite a --peers ours-hostcu,cudnn
  run op_fwd_bwd.md python3 bench/cuda/bench_peers.py --bwd --suite a --max-n 131072 --peers ours-hostcu,cudnn
  run op_cpp.md "$BUILD/bench/cuda/moba_cuda_bench"  # the C++ rows: config (a), "64 blocks"
fi
if [ "$what" = forward ] || [ "$what" = all ]; then
  run forward.md "$BUILD/bench/cuda/moba_cuda_bench" --long
fi
echo "tables in $OUT"
