#!/usr/bin/env bash
# The main job: builds moba (when not built yet) and runs `moba bench` on the default backend
# (cuda when a GPU is usable, else cpu): full vs MoBA vs MoA over sequence lengths, as a table,
# a CSV and a plot in $BUILD_DIR/bench/ (default build/bench/). Extra arguments go to moba bench.
#   scripts/run_main.sh [moba bench options]
set -euo pipefail
source "$(dirname "$0")/common.sh"

if [ ! -x "$BUILD_DIR/cli/moba" ]; then
  "$MOBA_ROOT/scripts/build.sh"
fi
mkdir -p "$BUILD_DIR/bench"
"$BUILD_DIR/cli/moba" info
echo
"$BUILD_DIR/cli/moba" bench --csv "$BUILD_DIR/bench/moba-bench.csv" \
  --plot "$BUILD_DIR/bench/moba-bench.png" "$@"
