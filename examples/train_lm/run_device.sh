#!/usr/bin/env bash
# The training study (issue 15) in one device call, from the repository root:
#   OUT=/path/to/results bash examples/train_lm/run_device.sh [run_study.py options]
# With DEV=build-final/dev (staged by bench/stage_device.sh, carried), the package is python/moba
# plus the staged extension; otherwise it is installed (pip install .) unless an importable moba
# already has a usable CUDA backend. Then run_study.py runs within BUDGET seconds (default 450;
# an install adds about a minute). Writes OUT/results.md, results.json,
# loss_curves.png, needle_heatmap.png and study.log; the full-attention checkpoint goes to CKPT
# (default /tmp/ckpt-full, outside OUT: it is ~60 MB).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/train-lm-out}
BUDGET=${BUDGET:-450}
CKPT=${CKPT:-/tmp/ckpt-full}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader || true
cuda_ready() {
  python3 - << 'EOF'
import sys
try:
    import moba
except ImportError:
    sys.exit(1)
sys.exit(0 if any(b["name"] == "cuda" and b["available"] for b in moba.backends()) else 1)
EOF
}
if [ -n "${DEV:-}" ]; then
  rm -rf /tmp/pkg && mkdir -p /tmp/pkg && cp -r python/moba /tmp/pkg/ \
    && cp "$DEV"/_C.cpython-*.so /tmp/pkg/moba/ || exit 1
  export PYTHONPATH=/tmp/pkg${PYTHONPATH:+:$PYTHONPATH}
  export LD_LIBRARY_PATH="$DEV${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if ! cuda_ready; then
  t0=$(date +%s)
  python3 -m pip install --no-build-isolation -q . || exit 1
  echo "[pip install . took $(( $(date +%s) - t0 )) s]"
  cuda_ready || { echo "moba has no usable CUDA backend here"; exit 1; }
fi
PYTHONUNBUFFERED=1 python3 examples/train_lm/run_study.py --out "$OUT" --time-budget "$BUDGET" \
  --ckpt-dir "$CKPT" "$@" 2>&1 | tee "$OUT/study.log"
