#!/usr/bin/env bash
# Installs what building and testing moba needs on Debian/Ubuntu: the toolchain and libraries
# (apt-get, as root or through sudo) and the pinned Python packages of the PyTorch package and
# its tests (pip; in a venv at .deps/venv if the system Python is externally managed).
#   scripts/setup.sh             everything
#   scripts/setup.sh --no-python only the Debian packages: enough for the library, the CLI, the
#                                C++ tests and scripts/run_main.sh (no torch download)
set -euo pipefail
source "$(dirname "$0")/common.sh"

with_python=1
[ "${1:-}" = "--no-python" ] && with_python=0

log "Debian packages"
packages=(cmake ninja-build g++ make pkg-config git
          libgtest-dev libbenchmark-dev libcli11-dev libfmt-dev nlohmann-json3-dev
          libopenblas-dev gnuplot-nox)
[ "$with_python" = 1 ] && packages+=(python3 python3-dev python3-pip python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2> /dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "all present"
fi

if [ "$with_python" = 1 ]; then
  log "Python packages"
  py=$(python_cmd)
  if [ -z "${PYTHON:-}" ] && [ "$py" != "$MOBA_ROOT/.deps/venv/bin/python" ] && python_externally_managed "$py"; then
    echo "$py is externally managed (PEP 668): using a venv at $MOBA_ROOT/.deps/venv"
    "$py" -m venv "$MOBA_ROOT/.deps/venv"
    py=$MOBA_ROOT/.deps/venv/bin/python
  fi
  "$py" -m pip install -q torch==2.11.0 numpy==2.4.6 pytest pybind11==3.1.0 scikit-build-core==1.1.2 \
    transformers==5.17.0 highspy==1.16.0 tokenizers==0.23.2 matplotlib==3.11.2
  # CUTLASS/CuTe headers for the CUDA build (cmake/cutlass.cmake finds them here; it downloads
  # the same pinned wheel when they are absent). Headers only: its Python deps are not needed.
  "$py" -m pip install -q --no-deps nvidia-cutlass==4.2.0.0
  echo "$("$py" -c 'import torch; print("torch", torch.__version__)')"
fi
log "setup done"
