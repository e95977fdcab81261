#!/usr/bin/env bash
# Stage what one device run needs into BUILD/dev (carry that folder): the GPU test and bench
# binaries, the moba CLI, the Python extension built for the device's Python (3.12), libgomp.
# Build first, here:  cmake -S . -B build-final -G Ninja -DMOBA_CUDA=ON -DMOBA_NATIVE=OFF \
#   -DMOBA_BUILD_PYTHON=ON -DPython_EXECUTABLE=python3.12 -Dpybind11_DIR=$(python3 -m pybind11 --cmakedir)
set -euo pipefail
BUILD=${1:-build-final}
DEV=$BUILD/dev
rm -rf "$DEV" && mkdir -p "$DEV"
cp "$BUILD"/tests/cuda/test_cuda_forward "$BUILD"/tests/cuda/test_cuda_backward \
   "$BUILD"/bench/cuda/moba_cuda_bench "$BUILD"/bench/cuda/moba_cuda_bwd_bench "$BUILD"/cli/moba "$DEV"/
cp "$BUILD"/python/_C.cpython-312-x86_64-linux-gnu.so "$DEV"/
cp "$(ldd "$BUILD"/tests/cuda/test_cuda_forward | awk '/libgomp/ {print $3}')" "$DEV"/
du -sh "$DEV"
