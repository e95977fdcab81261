#!/usr/bin/env bash
# GPU check of moba.distributed (context parallelism), from the repository root after
# `pip install .`: the agreement tests over NCCL (world size 1; two ranks on one GPU if NCCL
# allows) and over gloo (P = 1..4, CPU), then a 1M-token dry-run volume count (random data).
# About 2-3 minutes. Read the pytest summary (passed / skipped with reason) and the bytes table.
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m pytest -q -rs python/tests/test_distributed_gpu.py python/tests/test_distributed.py
python bench/distributed/cp_volume.py --data random --layouts contiguous
