# Shared by the scripts in this folder (source it): paths, root/sudo, Python, build settings.
# shellcheck shell=bash

MOBA_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$MOBA_ROOT/build}
JOBS=${JOBS:-$(nproc 2> /dev/null || echo 2)}

log() { printf '\n== %s\n' "$*"; }

# Runs a command as root: directly when we are root (CI, containers), through sudo otherwise.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo > /dev/null; then
    sudo "$@"
  else
    echo "error: need root (or sudo) to run: $*" >&2
    return 1
  fi
}

# nvcc is often installed outside PATH; CMake finds it through CUDACXX.
find_nvcc() {
  if command -v nvcc > /dev/null; then
    command -v nvcc
  elif [ -n "${CUDACXX:-}" ] && [ -x "$CUDACXX" ]; then
    echo "$CUDACXX"
  elif [ -x /usr/local/cuda/bin/nvcc ]; then
    echo /usr/local/cuda/bin/nvcc
  fi
}

# The Python to use: $PYTHON, else the venv at .deps/venv (git-ignored) when the system Python refuses pip installs
# (PEP 668, Debian's own python3), else python3.
python_cmd() {
  if [ -n "${PYTHON:-}" ]; then
    echo "$PYTHON"
  elif [ -x "$MOBA_ROOT/.deps/venv/bin/python" ]; then
    echo "$MOBA_ROOT/.deps/venv/bin/python"
  else
    command -v python3
  fi
}

python_externally_managed() {
  "$1" - << 'PY'
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)
PY
}
