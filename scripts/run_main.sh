#!/usr/bin/env bash
# The main job: builds the moba tool (incrementally) and runs `moba bench` on the default backend
# (cuda when a GPU is usable, else cpu): full vs MoBA vs MoA over sequence lengths, as a table,
# a CSV and a plot in $BUILD_DIR/results/ (default build/results/). Extra arguments go to moba bench.
#   scripts/run_main.sh [moba bench options]
set -euo pipefail
source "$(dirname "$0")/common.sh"

TARGET=moba_cli "$MOBA_ROOT/scripts/build.sh"
mkdir -p "$BUILD_DIR/results"
"$BUILD_DIR/cli/moba" info
echo
"$BUILD_DIR/cli/moba" bench --csv "$BUILD_DIR/results/moba-bench.csv" \
  --plot "$BUILD_DIR/results/moba-bench.png" "$@"
