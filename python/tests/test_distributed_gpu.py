"""moba.distributed on a GPU: the same cases as test_distributed.py with CUDA tensors.

* NCCL, world size 1 (one process on the GPU).
* NCCL, two processes sharing GPU 0 (NCCL refuses two ranks on one device in most versions:
  the test then skips and says so).
* gloo with CUDA tensors, two processes sharing GPU 0 (gloo's all-to-all and all-reduce take
  CUDA tensors; if this torch's gloo refuses them, the test skips and says which collective).

On a build with the CUDA backend the paged forward and backward of bf16/f16 cases run on the GPU
(the cases check ``info["compute_device"]``); f32 cases run the CPU kernels (the CUDA paged
kernels take bf16/f16) with communication on the GPU. Each case agrees with one process.
Skips cleanly without CUDA. Run: python -m pytest -q -rs python/tests/test_distributed_gpu.py
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import distributed_cases as dc
from moba import distributed as mdist

has_cuda = torch.cuda.is_available() and dist.is_available()
needs_nccl = pytest.mark.skipif(not (has_cuda and dist.is_nccl_available()),
                                reason="needs a CUDA device and torch.distributed with NCCL")
needs_gloo_cuda = pytest.mark.skipif(not (has_cuda and dist.is_gloo_available()),
                                     reason="needs a CUDA device and torch.distributed with gloo")


def _where():
    return ("paged kernels on the GPU for bf16/f16 (CUDA paged forward + backward)"
            if mdist._cuda_compiled() else "paged kernels on the CPU (this build has no CUDA backend)")


@needs_nccl
def test_nccl_world_size_1_matches_single_process(capsys):
    import torch.multiprocessing as mp
    mp.spawn(dc.worker, args=(1, dc.free_port(), "nccl", None), nprocs=1, join=True)
    with capsys.disabled():
        print("\n[moba.distributed] NCCL world size 1 on", torch.cuda.get_device_name(0),
              "- all cases agree;", _where())


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
        print("\n[moba.distributed] NCCL with 2 ranks sharing one GPU - all cases agree;", _where())


@needs_gloo_cuda
def test_gloo_cuda_tensors_two_ranks_share_one_gpu(capsys):
    import torch.multiprocessing as mp
    try:
        mp.spawn(dc.worker, args=(2, dc.free_port(), "gloo-cuda", None), nprocs=2, join=True)
    except mp.ProcessRaisedException as e:
        text = str(e)
        if "not supported" in text.lower() or "unsupported" in text.lower():
            last = [ln for ln in text.splitlines() if ln.strip()][-1]
            pytest.skip(f"gloo in this torch does not take CUDA tensors here: {last}")
        raise
    with capsys.disabled():
        print("\n[moba.distributed] gloo with CUDA tensors, 2 ranks sharing one GPU - all cases "
              "agree;", _where())
