#!/usr/bin/env bash
# Stages, in this checkout, what the device scripts carry to a GPU machine that cannot reach a
# package registry: .devdeps/prefix (nlohmann_json, CLI11, fmt, GTest headers, libraries and
# CMake configs, copied from this machine's Debian packages: scripts/setup.sh installs them)
# and .whl (the build requirements and highspy as wheels for the device's Python 3.12).
# Both folders are git-ignored; name them in the device tool's `carry`.
set -euo pipefail
cd "$(dirname "$0")/../.."
P=.devdeps/prefix
rm -rf .devdeps && mkdir -p $P/include $P/share/cmake $P/lib/x86_64-linux-gnu/cmake
cp -r /usr/include/nlohmann /usr/include/CLI /usr/include/fmt /usr/include/gtest /usr/include/gmock $P/include/
cp -r /usr/share/cmake/nlohmann_json /usr/share/cmake/CLI11 $P/share/cmake/
cp -r /usr/lib/x86_64-linux-gnu/cmake/fmt /usr/lib/x86_64-linux-gnu/cmake/GTest $P/lib/x86_64-linux-gnu/cmake/
cp -P /usr/lib/x86_64-linux-gnu/libfmt.so* /usr/lib/x86_64-linux-gnu/libgtest*.a \
   /usr/lib/x86_64-linux-gnu/libgmock*.a $P/lib/x86_64-linux-gnu/
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl pybind11==3.1.0 scikit-build-core==1.1.2
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl highspy==1.16.0
du -sh .devdeps .whl
