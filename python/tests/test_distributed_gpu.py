"""moba.distributed on a GPU: the same cases as test_distributed.py with CUDA tensors over NCCL.

World size 1 (one process, NCCL on the GPU) and two processes sharing GPU 0 (NCCL refuses two
ranks on one device in most versions: the test then skips and says so). Skips cleanly without
CUDA or NCCL. The paged kernels run on the CPU in this build (no CUDA paged attention or paged
backward yet): K/V, requests, means and gradients move over NCCL on the GPU, the attention of
each rank is computed by the CPU kernels and its result moved back; the test prints that.
Run: python -m pytest -q -rs python/tests/test_distributed_gpu.py
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import distributed_cases as dc

needs_nccl = pytest.mark.skipif(
    not (torch.cuda.is_available() and dist.is_available() and dist.is_nccl_available()),
    reason="needs a CUDA device and torch.distributed with NCCL")


@needs_nccl
def test_nccl_world_size_1_matches_single_process(capsys):
    import torch.multiprocessing as mp
    mp.spawn(dc.worker, args=(1, dc.free_port(), "nccl", None), nprocs=1, join=True)
    with capsys.disabled():
        print("\n[moba.distributed] NCCL world size 1 on", torch.cuda.get_device_name(0),
              "- all cases agree; communication on the GPU, paged kernels on the CPU")


@needs_nccl
def test_nccl_two_ranks_share_one_gpu(capsys):
    import torch.multiprocessing as mp
    if torch.cuda.device_count() >= 2:
        pytest.skip("two GPUs present: this test is about two ranks on one GPU")
    try:
        mp.spawn(dc.worker, args=(2, dc.free_port(), "nccl", None), nprocs=2, join=True)
    except mp.ProcessRaisedException as e:
        if "Duplicate GPU" in str(e) or "duplicate" in str(e).lower():
            pytest.skip("NCCL refuses two ranks on one GPU (Duplicate GPU detected)")
        raise
    with capsys.disabled():
        print("\n[moba.distributed] NCCL with 2 ranks sharing one GPU - all cases agree")
