#!/usr/bin/env bash
# Everything CI runs, on a fresh Debian machine: install dependencies, build (CUDA too when
# nvcc exists), run the C++ tests (ctest), check that an install works for a find_package
# consumer, run the fuzz drivers under AddressSanitizer + UBSan, then build the Python package
# and run its tests.
set -euo pipefail
source "$(dirname "$0")/common.sh"
start=$(date +%s)
step() { log "$* ($(($(date +%s) - start)) s)"; }

step "setup"
"$MOBA_ROOT/scripts/setup.sh"

step "docs name only files that exist"
python3 "$MOBA_ROOT/scripts/check_doc_paths.py"

step "build"
"$MOBA_ROOT/scripts/build.sh"

step "ctest"
(cd "$BUILD_DIR" && ctest --output-on-failure -j "$JOBS" --timeout 1800)

step "install + find_package consumer"
"$MOBA_ROOT/scripts/test_install.sh" "$BUILD_DIR"

step "fuzz drivers under AddressSanitizer + UBSan"
# A separate small build: only the library's core (reference + cpu backends) and tests/fuzz,
# compiled with the sanitizers; every random input must end in a result or a moba::Error.
ASAN_DIR=${ASAN_BUILD_DIR:-$MOBA_ROOT/build-asan}
sanitize="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S "$MOBA_ROOT" -B "$ASAN_DIR" -G Ninja -DMOBA_CUDA=OFF -DMOBA_BUILD_TESTS=OFF \
  -DMOBA_BUILD_CLI=OFF -DMOBA_BUILD_BENCH=OFF -DMOBA_BUILD_FUZZ=ON -DMOBA_FUZZ_RUNS=5000 \
  -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS=-O1 -g $sanitize" "-DCMAKE_EXE_LINKER_FLAGS=$sanitize"
cmake --build "$ASAN_DIR" -j "$JOBS" --target fuzz_inputs
(cd "$ASAN_DIR" && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --output-on-failure -L fuzz --timeout 900)

py=$(python_cmd)
step "pip install ./ (Python package)"
# Without a visible GPU the package's CUDA path cannot run here, so it is built CPU-only
# unless MOBA_CUDA says otherwise (the C++ build above already compiled the CUDA backend).
if [ -z "${MOBA_CUDA:-}" ] && ! nvidia-smi -L > /dev/null 2>&1; then
  export MOBA_CUDA=OFF
fi
"$py" -m pip install --no-build-isolation -q "$MOBA_ROOT"

step "pytest"
(cd "$MOBA_ROOT" && "$py" -m pytest -q python/tests)
step "all tests passed"
