#!/usr/bin/env bash
# Configures and builds moba with Ninja in $BUILD_DIR (default: build): library, CLI, tests and
# benchmarks; the CUDA backend too when nvcc is found (MOBA_CUDA=OFF to skip it).
#   scripts/build.sh [extra cmake -D options]      (TARGET=moba_cli builds only that target)
set -euo pipefail
source "$(dirname "$0")/common.sh"

cuda_args=()
nvcc=$(find_nvcc || true)
if [ -n "$nvcc" ] && [ "${MOBA_CUDA:-AUTO}" != "OFF" ]; then
  cuda_args=(-DCMAKE_CUDA_COMPILER="$nvcc" -DMOBA_CUDA="${MOBA_CUDA:-AUTO}")
  log "configure ($BUILD_DIR, CUDA with $nvcc)"
else
  cuda_args=(-DMOBA_CUDA=OFF)
  log "configure ($BUILD_DIR, no CUDA: ${nvcc:+MOBA_CUDA=OFF}${nvcc:-nvcc not found})"
fi
cmake -S "$MOBA_ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "${cuda_args[@]}" "$@"
log "build ${TARGET:-all} (-j$JOBS)"
cmake --build "$BUILD_DIR" -j "$JOBS" ${TARGET:+--target "$TARGET"}
