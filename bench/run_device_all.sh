#!/usr/bin/env bash
# One device call: every GPU test (C++ and Python) and the C++ benchmarks, logs under $OUT.
# The peer comparison (bench/cuda/bench_peers.py) runs in a second call, see bench/README.md.
#   bash bench/run_device_all.sh build-final/dev
set -u
DEV=${1:-build-final/dev}
OUT=${OUT:-/tmp/moba-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$DEV${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
echo "== moba info"; "$DEV/moba" info
echo "== C++ GPU tests"
for t in test_cuda_forward test_cuda_backward; do
  timeout 200 "$DEV/$t" > "$OUT/$t.log" 2>&1; echo "$t rc=$?"
  grep -E "^\[  (PASSED|FAILED) |FAILED|Failure" "$OUT/$t.log" | head -8
done
echo "== moba check --backend cuda"
timeout 120 "$DEV/moba" check --backend cuda --cases 60 > "$OUT/check.log" 2>&1; echo "check rc=$?"; tail -3 "$OUT/check.log"
echo "== Python tests on the GPU"
rm -rf /tmp/pkg && mkdir -p /tmp/pkg && cp -r python/moba /tmp/pkg/ && cp "$DEV"/_C.cpython-312-x86_64-linux-gnu.so /tmp/pkg/moba/
PYTHONPATH=/tmp/pkg timeout 240 python3 -m pytest -q -p no:cacheprovider python/tests > "$OUT/pytest.log" 2>&1; echo "pytest rc=$?"
tail -4 "$OUT/pytest.log"
echo "== C++ benchmarks"
timeout 150 "$DEV/moba_cuda_bench" --long > "$OUT/cpp_fwd_bench.md" 2>&1; echo "fwd bench rc=$?"
timeout 100 "$DEV/moba_cuda_bwd_bench" --out "$OUT/cpp_bwd_bench.md" > "$OUT/cpp_bwd_bench.log" 2>&1; echo "bwd bench rc=$?"
grep -E "^\|" "$OUT/cpp_fwd_bench.md" | tail -25
