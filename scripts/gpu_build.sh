#!/usr/bin/env bash
# Builds everything on a GPU machine the way its user would, with its own compilers and python3:
# the C++ project with CUDA (library, tests, CLI, benchmarks) in $BUILD_DIR, then the Python
# package with `pip install .` (CUDA on). Used by every device run, so the package that is tested
# on the GPU is the one built there.
#   DEPS_PREFIX=dir  a prefix with what the machine lacks (nlohmann_json, GTest, CLI11, fmt
#                    headers/configs) when it cannot reach a package registry
#   WHEELS=dir       build-requirement wheels (scikit-build-core, pybind11) to install first
set -euo pipefail
source "$(dirname "$0")/common.sh"
py=$(python_cmd)
if [ -n "${DEPS_PREFIX:-}" ]; then
  DEPS_PREFIX=$(cd "$DEPS_PREFIX" && pwd)
  export CMAKE_PREFIX_PATH="$DEPS_PREFIX${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export LD_LIBRARY_PATH="$DEPS_PREFIX/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [ -n "${WHEELS:-}" ]; then
  "$py" -m pip install -q --no-index --no-deps "$WHEELS"/*.whl
fi
log "compilers: $(command -v c++ || true) / $(command -v nvcc || find_nvcc)"
start=$(date +%s)
"$MOBA_ROOT/scripts/build.sh" -DMOBA_NATIVE=ON
log "C++ build: $(( $(date +%s) - start )) s"
start=$(date +%s)
MOBA_CUDA=${MOBA_CUDA:-ON} "$py" -m pip install --no-build-isolation --no-deps -q "$MOBA_ROOT"
log "pip install .: $(( $(date +%s) - start )) s"
"$py" -c "import torch, moba; print(moba.build_info()); print(moba.backends())"
