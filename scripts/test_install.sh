#!/usr/bin/env bash
# Installs a moba build into a temporary prefix, then configures, builds and runs the separate
# project examples/consumer against it (find_package(moba) + moba::moba) and the installed CLI.
#   scripts/test_install.sh [build-dir]      (default: build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== install $build into $work/prefix"
cmake --install "$build" --prefix "$work/prefix" > "$work/install.log" || { cat "$work/install.log"; exit 1; }
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
echo "== configure and build examples/consumer against it"
cmake -S "$root/examples/consumer" -B "$work/consumer" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$work/prefix" > "$work/configure.log" \
  || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/consumer"
echo "== run"
"$work/consumer/consumer"
if [ -x "$work/prefix/bin/moba" ]; then
  "$work/prefix/bin/moba" --version
fi
echo "test_install: OK"
