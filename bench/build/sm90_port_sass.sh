#!/usr/bin/env bash
# Before/after check of the CuTe/CUTLASS port of the sm_90a primitives (hopper_wgmma.cuh,
# sm90_pipeline.cuh): every translation unit that includes them is compiled for sm_90a at a base
# commit (hand-written PTX) and from the working tree (CuTe/CUTLASS), and the table compares
# ptxas registers / spill bytes, the SASS instruction counts (HGMMA, UTMALDG, SYNCS, BAR, all)
# and whether the SASS text is identical (addresses and encodings stripped; registers included).
# Compile only (no GPU). Run from the repository root:
#   bash bench/build/sm90_port_sass.sh [base=merge-base of HEAD and main] [jobs=2]
# ONLY=<regex> restricts the translation units (e.g. ONLY=ws_attn_bf16_d64); KEEP=<dir> keeps
# the normalised SASS and ptxas logs.
# CUTLASS headers: CUTLASS_INC, else the build's MOBA_CUTLASS_INCLUDE (build*/CMakeCache.txt),
# else .cutlass/include.
set -euo pipefail
BASE=${1:-$(git merge-base HEAD main)}
JOBS=${2:-2}
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
CUOBJDUMP=${CUOBJDUMP:-/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/triton/backends/nvidia/bin/cuobjdump}
if [[ -z ${CUTLASS_INC:-} ]]; then
  CUTLASS_INC=$(grep -h '^MOBA_CUTLASS_INCLUDE:PATH=' build*/CMakeCache.txt 2>/dev/null | head -1 | cut -d= -f2- || true)
  [[ -n $CUTLASS_INC ]] || CUTLASS_INC=.cutlass/include
fi
[[ -f $CUTLASS_INC/cutlass/version.h ]] || { echo "no CUTLASS headers at $CUTLASS_INC" >&2; exit 1; }
# the project's nvcc flags for its .cu files (src/cuda/CMakeLists.txt, Release), sm_90a only
FLAGS=(-std=c++17 -O3 -DNDEBUG -gencode arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -lineinfo)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

git archive "$BASE" src include | tar -x -C "$OUT" && mkdir -p "$OUT/base" && mv "$OUT/src" "$OUT/include" "$OUT/base/"
# the translation units that reach the primitives (through any chain of headers), in either tree
pat='hopper_wgmma\.cuh|sm90_pipeline\.cuh'
while :; do
  next=$(grep -rlE "#include \"[^\"]*/($pat)\"" --include='*.cuh' src "$OUT/base/src" | xargs -n1 basename | sort -u |
    sed 's/\./\\./g' | paste -sd'|')
  next="hopper_wgmma\.cuh|sm90_pipeline\.cuh${next:+|$next}"
  [[ $next == "$pat" ]] && break
  pat=$next
done
mapfile -t TUS < <(grep -rlE "#include \"[^\"]*/($pat)\"" --include='*.cu' src "$OUT/base/src" | sed "s|^$OUT/base/||" |
  sort -u | grep -E "${ONLY:-.}")

# compile SIDE TU: object, ptxas log, normalised SASS
compile() {
  local side=$1 tu=$2 root name
  root=$([[ $side == base ]] && echo "$OUT/base" || echo .)
  name=$side.$(basename "$tu" .cu)
  [[ -f $root/$tu ]] || { touch "$OUT/$name.missing"; return 0; }
  /usr/bin/time -f "%U" -o "$OUT/$name.time" "$NVCC" "${FLAGS[@]}" -Xptxas -v -I"$root/src" -I"$root/include" \
    -isystem "$CUTLASS_INC" -c "$root/$tu" -o "$OUT/$name.o" >"$OUT/$name.log" 2>&1 ||
    { cat "$OUT/$name.log" >&2; return 1; }
  "$CUOBJDUMP" -sass "$OUT/$name.o" >"$OUT/$name.sass.raw"
  # instruction text only: drop addresses, encodings, and the file/function banner lines
  sed -nE 's|^\s+/\*[0-9a-f]{4}\*/\s+(.*);.*$|\1|p; s|^\s+Function : (.*)$|== \1|p' "$OUT/$name.sass.raw" \
    | sed -E 's/\s+/ /g' >"$OUT/$name.sass"
}
export -f compile
export OUT NVCC CUOBJDUMP CUTLASS_INC
export FLAGS_STR="${FLAGS[*]}"
for tu in "${TUS[@]}"; do echo "base $tu"; echo "head $tu"; done |
  xargs -P "$JOBS" -L 1 bash -c 'FLAGS=($FLAGS_STR); compile "$0" "$1"'

stats() {  # NAME -> "regs/spills hgmma utmaldg syncs bar total userseconds"
  local n=$1 regs spills
  regs=$( (grep -oE 'Used [0-9]+ registers' "$OUT/$n.log" || true) | awk '{if ($2 > m) m = $2} END {print m + 0}')
  spills=$( (grep -oE '[0-9]+ bytes spill stores' "$OUT/$n.log" || true) | awk '{s += $1} END {print s + 0}')
  printf '%s/%s %s %s %s %s %s %s' "$regs" "$spills" \
    "$(grep -cE '^HGMMA|^@\S+ HGMMA' "$OUT/$n.sass" || true)" \
    "$(grep -cE '(^|\s)UTMALDG' "$OUT/$n.sass" || true)" \
    "$(grep -cE '(^|\s)SYNCS' "$OUT/$n.sass" || true)" \
    "$(grep -cE '(^|\s)BAR\.' "$OUT/$n.sass" || true)" \
    "$(grep -cvE '^==' "$OUT/$n.sass" || true)" "$(cat "$OUT/$n.time")"
}

echo "base: $BASE ($(git rev-parse --short "$BASE")); head: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src include || echo ' + working tree changes')"
echo "nvcc: $("$NVCC" --version | tail -1); CUTLASS headers: $CUTLASS_INC"
echo "flags: ${FLAGS[*]} -Xptxas -v; load average: $(cat /proc/loadavg)"
echo
echo '| translation unit | regs/spill bytes | HGMMA | UTMALDG | SYNCS | BAR | SASS instrs | compile user s | SASS text |'
echo '|---|---|---|---|---|---|---|---|---|'
for tu in "${TUS[@]}"; do
  n=$(basename "$tu" .cu)
  if [[ -f $OUT/base.$n.missing || -f $OUT/head.$n.missing ]]; then
    echo "| $n | (only in one tree) | | | | | | | |"; continue
  fi
  read -r -a b <<<"$(stats "base.$n")"
  read -r -a h <<<"$(stats "head.$n")"
  cells=""
  for i in 0 1 2 3 4 5 6; do
    if [[ ${b[$i]} == "${h[$i]}" ]]; then cells+=" ${b[$i]} |"; else cells+=" ${b[$i]} -> ${h[$i]} |"; fi
  done
  if cmp -s "$OUT/base.$n.sass" "$OUT/head.$n.sass"; then same=identical
  else same="$(diff "$OUT/base.$n.sass" "$OUT/head.$n.sass" | grep -c '^[<>]' || true) lines differ"; fi
  echo "| $n |$cells $same |"
done
echo
echo "Cells: base value, or base -> head where they differ. Registers: the most of any kernel in the"
echo "file; spill bytes summed. Compile user s: CPU seconds of the nvcc -c (sm_90a only), base -> head."
if [[ -n ${KEEP:-} ]]; then mkdir -p "$KEEP" && cp "$OUT"/*.sass "$OUT"/*.log "$KEEP"/; fi
