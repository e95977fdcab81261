#!/usr/bin/env bash
# Device run of 2026-11-29 for issues 15 and 14: the package built on the GPU machine, the
# training study (full / MoBA / MoBA-hybrid, same seed, data and token budget; loss by position,
# needle heatmap, throughput), then the MoA plan search on the study's full-attention checkpoint
# against uniform windows + sink at the same density. Results under $OUT/study and $OUT/moa.
#   STUDY_S  seconds for the study (default 330)      MOA_S  seconds for the search (default 170)
set -u
source scripts/device/lib.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
export CMAKE_PREFIX_PATH=$PWD/.devdeps/prefix  # nlohmann_json (the machine has no registry)
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps .whl/*.whl || exit 1
MOBA_CUDA=ON python3 -m pip install --no-build-isolation --no-deps -q . || exit 1
echo "[pip install . $(( $(date +%s) - t0 ))s]"
python3 -c "import torch, moba; print(moba.build_info())"
mkdir -p "$OUT/study" "$OUT/moa"
step $(( ${STUDY_S:-330} + 30 )) study.log python3 examples/train_lm/run_study.py --out "$OUT/study" \
  --time-budget "${STUDY_S:-330}" --ckpt-dir /tmp/ckpt-full --commit "${COMMIT:-unknown}"
tail -45 "$OUT/study.log"
rm -f "$OUT/study.log"  # the console has its summary; the folder has the tables
stdlib=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
step "${MOA_S:-170}" moa.log python3 bench/moa/run_search_device.py --checkpoint /tmp/ckpt-full \
  --data "$stdlib" --out "$OUT/moa"
tail -25 "$OUT/moa.log"; rm -f "$OUT/moa.log"
ls -la "$OUT"/*
