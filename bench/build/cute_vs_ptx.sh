#!/usr/bin/env bash
# Build-cost and generated-code comparison of the sm_90a building block written two ways:
#   bench/build/ptx_probe_sm90.cu  - the project's hand-written PTX headers (hopper_wgmma.cuh,
#                                    sm90_pipeline.cuh) and a driver-encoded tensor map
#   bench/build/cute_probe_sm90.cu - CuTe/CUTLASS (nvidia-cutlass 4.2.0.0 headers)
# Both: one warpgroup, Q by TMA, per 128-key chunk K and V by TMA on one mbarrier,
# S = Q K^T (SS wgmma 64x128x16, 128B swizzle), P = exp2(S) in bf16, O += P V (RS wgmma).
# Rows marked (+sm_80) add the project's second target (-gencode compute_80/sm_80), as the real
# build does. Compile only (no GPU needed). Prints a markdown table; run from the repository root:
#   bash bench/build/cute_vs_ptx.sh [runs=3] [real_runs=1]
# Since the port (bench/results/cute-port-sass-2026-11-29.md) the project's wrappers themselves
# go through CUTLASS's arch-level headers, so the ptx_probe and ws_attn rows now measure the
# ported headers; the hand-written PTX numbers are those of commit 4fc23f2 (cute-vs-ptx results).
# Needs the CUTLASS headers in .cutlass/include (git-ignored): unzip the pinned wheel's
# cutlass_library/source/include there (see the results file for the command).
set -euo pipefail
RUNS=${1:-3}
REAL_RUNS=${2:-1}
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
CUOBJDUMP=${CUOBJDUMP:-/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/triton/backends/nvidia/bin/cuobjdump}
CUTLASS_INC=${CUTLASS_INC:-.cutlass/include}
# the project's nvcc flags for its .cu files (src/cuda/CMakeLists.txt, Release, sm_90a only)
FLAGS=(-std=c++17 -O3 -DNDEBUG -gencode arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -lineinfo)
# the project's full gencode list (CMakeLists.txt MOBA_CUDA_GENCODE), for the real file's scale row
FULL_GENCODE=(-gencode arch=compute_90a,code=sm_90a -gencode arch=compute_80,code=sm_80)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

[[ -d $CUTLASS_INC/cute && -d $CUTLASS_INC/cutlass ]] || {
  echo "no CUTLASS headers in $CUTLASS_INC" >&2; exit 1; }

load() { cut -d' ' -f1 /proc/loadavg; }

# measure NAME SRC RUNS INCLUDES...: mean wall/user seconds, ptxas regs/spills, SASS counts
measure() {
  local name=$1 src=$2 runs=$3; shift 3
  local inc=("$@" "${EXTRA[@]}") obj="$OUT/$name.o" log="$OUT/$name.log"
  local walls=() users=() loads=()
  for ((i = 0; i < runs; i++)); do
    loads+=("$(load)")
    /usr/bin/time -f "%e %U" -o "$OUT/t" "$NVCC" "${FLAGS[@]}" -Xptxas -v "${inc[@]}" -c "$src" -o "$obj" \
      >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
    read -r w u <"$OUT/t"
    walls+=("$w"); users+=("$u")
  done
  local mw mu
  mw=$(printf '%s\n' "${walls[@]}" | awk '{s+=$1} END {printf "%.2f", s/NR}')
  mu=$(printf '%s\n' "${users[@]}" | awk '{s+=$1} END {printf "%.2f", s/NR}')
  local pre_bytes pre_lines
  "$NVCC" "${FLAGS[@]}" "${inc[@]}" -E "$src" >"$OUT/$name.ii" 2>/dev/null
  pre_bytes=$(wc -c <"$OUT/$name.ii"); pre_lines=$(wc -l <"$OUT/$name.ii")
  # headers this translation unit reaches, and their bytes (nvcc -M, de-duplicated)
  "$NVCC" "${FLAGS[@]}" "${inc[@]}" -M "$src" 2>/dev/null | tr -d '\\' | tr ' ' '\n' | grep -E '\.(h|hpp|cuh|inl)$' |
    sort -u >"$OUT/$name.deps"
  local proj_hdrs proj_bytes
  proj_hdrs=$(grep -cvE '^/usr' "$OUT/$name.deps" || true)
  proj_bytes=$(grep -vE '^/usr' "$OUT/$name.deps" | xargs -r cat | wc -c)
  # registers / spills of the kernels (max registers, summed spill bytes)
  local regs spills
  regs=$( (grep -oE 'Used [0-9]+ registers' "$log" || true) | awk '{if ($2 > m) m = $2} END {print m + 0}')
  spills=$( (grep -oE '[0-9]+ bytes spill stores' "$log" || true) | awk '{s += $1} END {print s + 0}')
  "$CUOBJDUMP" -sass "$obj" >"$OUT/$name.sass" 2>/dev/null || true  # no device code: empty
  local hgmma utma syncs total
  hgmma=$(grep -cE '\bHGMMA\.' "$OUT/$name.sass" || true)
  utma=$(grep -cE '\bUTMALDG\b' "$OUT/$name.sass" || true)
  syncs=$(grep -cE '\bSYNCS\b' "$OUT/$name.sass" || true)
  total=$(grep -cE '^\s+/\*[0-9a-f]{4}\*/' "$OUT/$name.sass" || true)
  printf '| %s | %s | %s | %s | %s / %s | %s / %s | %s | %s | %s | %s | %s |\n' \
    "$name" "$runs" "$mw" "$mu" "$pre_bytes" "$pre_lines" "$proj_hdrs" "$proj_bytes" \
    "$regs / $spills" "$hgmma" "$utma" "$syncs" "$total" 
  echo "$name: load average before each run: ${loads[*]}" >>"$OUT/loads"
}

echo "nvcc: $("$NVCC" --version | tail -1)"
echo "cuobjdump: $CUOBJDUMP"
echo "CUTLASS: $(grep -E '#define CUTLASS_(MAJOR|MINOR|PATCH)' "$CUTLASS_INC/cutlass/version.h" | awk '{printf "%s=%s ", $2, $3}')"
echo "flags: ${FLAGS[*]} -Xptxas -v"
echo "start load average: $(cat /proc/loadavg)"
echo
echo '| translation unit | runs | wall s (mean) | user s (mean) | nvcc -E bytes / lines | non-system headers reached / bytes | regs / spill bytes | HGMMA | UTMALDG | SYNCS | SASS instrs |'
echo '|---|---|---|---|---|---|---|---|---|---|---|'
EXTRA=()
measure ptx_probe bench/build/ptx_probe_sm90.cu "$RUNS" -Isrc -Iinclude "-I$CUTLASS_INC"
measure cute_probe bench/build/cute_probe_sm90.cu "$RUNS" "-I$CUTLASS_INC"
measure cute_headers_only bench/build/cute_headers_only.cu "$RUNS" "-I$CUTLASS_INC"
measure ws_attn_bf16_d128_moba src/cuda/forward/ws_attn_bf16_d128_moba.cu "$REAL_RUNS" -Isrc -Iinclude "-I$CUTLASS_INC"
EXTRA=("${FULL_GENCODE[@]}")
measure "ws_attn_bf16_d128_moba (+sm_80)" src/cuda/forward/ws_attn_bf16_d128_moba.cu "$REAL_RUNS" -Isrc -Iinclude "-I$CUTLASS_INC"
measure "cute_probe (+sm_80)" bench/build/cute_probe_sm90.cu "$REAL_RUNS" "-I$CUTLASS_INC"
measure "cute_headers_only (+sm_80)" bench/build/cute_headers_only.cu "$REAL_RUNS" "-I$CUTLASS_INC"
EXTRA=()
echo
cat "$OUT/loads"
echo "end load average: $(cat /proc/loadavg)"
echo
# where the CuTe probe's time goes, per nvcc phase (one run)
"$NVCC" "${FLAGS[@]}" "-I$CUTLASS_INC" --time "$OUT/phases.csv" -c bench/build/cute_probe_sm90.cu -o "$OUT/p.o" >/dev/null 2>&1
echo "cute_probe nvcc phases (ms, one run, load $(load)):"
awk -F" , " 'NR > 1 && $2 != "" {printf "  %-22s %-12s %s ms\n", $2, $5, $7}' "$OUT/phases.csv" | head -20
"$NVCC" "${FLAGS[@]}" -Isrc -Iinclude "-I$CUTLASS_INC" --time "$OUT/phases2.csv" -c bench/build/ptx_probe_sm90.cu -o "$OUT/p.o" >/dev/null 2>&1
echo "ptx_probe nvcc phases (ms, one run, load $(load)):"
awk -F" , " 'NR > 1 && $2 != "" {printf "  %-22s %-12s %s ms\n", $2, $5, $7}' "$OUT/phases2.csv" | head -20
echo
echo "header payload on disk:"
echo "  CUTLASS include tree ($CUTLASS_INC): $(du -sb "$CUTLASS_INC" | cut -f1) bytes, $(find "$CUTLASS_INC" -type f | wc -l) files"
echo "  hand-written PTX pieces (hopper_wgmma.cuh, sm90_pipeline.cuh, tensor_map.cpp/.hpp): $(cat src/cuda/forward/hopper_wgmma.cuh src/cuda/forward/sm90_pipeline.cuh src/cuda/forward/tensor_map.cpp src/cuda/forward/tensor_map.hpp | wc -c) bytes"
