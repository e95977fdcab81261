#!/usr/bin/env bash
# Device run 1 of 2026-11-29 (issue 10, item 1): what toolchain the GPU image has, the crash of
# an extension linked without python/src/exports.map (reproduced on a CPU-only build), then the
# real build (C++ with CUDA, pip install .), the whole pytest suite and the GPU C++ tests.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
  head -2 /etc/os-release; for c in c++ g++ gcc cc; do echo "$c -> $(readlink -f "$(command -v $c)" 2>/dev/null)"; done
  echo "CC=${CC:-} CXX=${CXX:-}"; c++ --version | head -1; cmake --version | head -1; nvcc --version | tail -1
  c++ -print-file-name=libstdc++.a; c++ -print-file-name=libstdc++.so
  python3 -c "import torch, sys; print(sys.executable, torch.__version__)"
  python3 -m pip list 2>/dev/null | grep -iE "^(pybind11|scikit.build.core|numpy|pytest|transformers|tokenizers|matplotlib) "
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
} 2>&1 | tee "$OUT/toolchain.txt"
python3 -m pip install -q --no-index --no-deps .whl/*.whl
# Reproduce: the same package linked the old way (no version script), CPU-only to be quick.
rm -rf /tmp/old && mkdir /tmp/old && cp -r CMakeLists.txt cmake include src python pyproject.toml docs /tmp/old/
sed -i '/moba_py_exports/d; /--exclude-libs/d' /tmp/old/python/CMakeLists.txt
( export CMAKE_PREFIX_PATH=$PWD/.devdeps/prefix
  MOBA_CUDA=OFF python3 -m pip install --no-build-isolation --no-deps -q --target /tmp/oldpkg /tmp/old ) > "$OUT/old_build.log" 2>&1
echo "old build rc=$?; exported symbols: $(nm -D --defined-only /tmp/oldpkg/moba/_C*.so | wc -l)"
nm -D --defined-only /tmp/oldpkg/moba/_C*.so | grep -c "_ZNSo\|_ZNSt" | sed 's/^/  of them std:: /'
PYTHONPATH=/tmp/oldpkg python3 -c "import torch, moba; print(moba.build_info())"; echo "old: torch first rc=$?"
PYTHONPATH=/tmp/oldpkg python3 -c "import moba; print(moba.build_info())"; echo "old: moba alone rc=$?"
# The real build, as a user of this machine does it.
DEPS_PREFIX=.devdeps/prefix JOBS=16 scripts/gpu_build.sh > "$OUT/build.log" 2>&1; echo "build rc=$?"; tail -4 "$OUT/build.log"
python3 -c "import torch, moba; print(moba.build_info())"; echo "new: torch first rc=$?"
PYTHONUNBUFFERED=1 timeout 240 python3 -m pytest -q -p no:cacheprovider python/tests > "$OUT/pytest.log" 2>&1; echo "pytest rc=$?"; tail -3 "$OUT/pytest.log"
export LD_LIBRARY_PATH=$PWD/.devdeps/prefix/lib/x86_64-linux-gnu
(cd build && timeout 200 ctest -j4 --timeout 150 > "$OUT/ctest.log" 2>&1); echo "ctest rc=$?"; tail -4 "$OUT/ctest.log"
