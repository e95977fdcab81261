"""Cases of the context-parallel tests, run by every rank of a spawned process group (gloo on
the CPU, NCCL on a GPU) or by threads (ThreadTransport). Each rank computes the single-process
result on the whole batch (cheap at these sizes), runs moba.distributed on its shard and checks
its part: selection identical, out / lse / dq / dk / dv equal within the dtype's rounding."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import List, Optional

import torch

import moba
from moba import distributed as mdist

# Tolerances: the two sides accumulate in fp32 in different orders and round once to the
# dtype; they differ by a few units in the last place of the dtype.
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@dataclass
class Case:
    name: str
    mode: str = "moba"
    seqlens: List[int] = field(default_factory=lambda: [300])
    hq: int = 2
    hkv: int = 2
    dim: int = 64
    dtype: torch.dtype = torch.float32
    layout: str = "contiguous"   # or "zigzag"
    block: int = 32              # MoBA block / page size of full and MoA
    topk: int = 3
    alphas: Optional[List[float]] = None
    betas: Optional[List[float]] = None
    sink: int = 8
    seed: int = 0


def cases() -> List[Case]:
    return [
        Case("moba f32, one sequence, blocks straddle shards"),
        Case("moba bf16 GQA 4:2 zigzag varlen", seqlens=[100, 1, 0, 157, 64], hq=4, hkv=2,
             dtype=torch.bfloat16, layout="zigzag", block=16, topk=4, seed=1),
        Case("moba f16 MQA 4:1 varlen", seqlens=[90, 130, 33], hq=4, hkv=1,
             dtype=torch.float16, block=24, topk=2, seed=2),
        Case("moba topk 1 (own block only)", seqlens=[70, 90], topk=1, block=16, seed=3),
        Case("moba topk beyond the blocks", seqlens=[200], topk=50, block=16, seed=4),
        Case("moba blocks longer than a shard", seqlens=[50, 75], block=64, topk=2, seed=5),
        Case("full f32 zigzag varlen", mode="full", seqlens=[120, 7, 95], layout="zigzag",
             block=16, seed=6),
        Case("full bf16 GQA contiguous", mode="full", seqlens=[180], hq=4, hkv=2,
             dtype=torch.bfloat16, block=32, seed=7),
        Case("moa f32 varlen per-head windows", mode="moa", seqlens=[160, 90], hq=2, hkv=2,
             alphas=[10.0, 3.0], betas=[0.05, 0.2], sink=8, block=16, seed=8),
        Case("moa bf16 GQA zigzag per-KV-head plan", mode="moa", seqlens=[150], hq=4, hkv=2,
             dtype=torch.bfloat16, layout="zigzag", alphas=[5.0, 40.0], betas=[0.1, 0.0],
             sink=0, block=16, seed=9),
    ]


def _data(c: Case):
    g = torch.Generator().manual_seed(1000 + c.seed)
    total = sum(c.seqlens)
    q = torch.randn(total, c.hq, c.dim, generator=g).to(c.dtype)
    k = torch.randn(total, c.hkv, c.dim, generator=g).to(c.dtype)
    v = torch.randn(total, c.hkv, c.dim, generator=g).to(c.dtype)
    dout = torch.randn(total, c.hq, c.dim, generator=g).to(c.dtype)
    cu = torch.tensor([0] + list(torch.tensor(c.seqlens).cumsum(0).tolist()), dtype=torch.int32)
    return q, k, v, dout, cu


def _single_process(c: Case, q, k, v, dout, cu):
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    ms = max(c.seqlens)
    sel = None
    if c.mode == "moba":
        out, lse = moba.moba_attn_varlen(q, k, v, cu, ms, c.block, c.topk, return_lse=True)
        sel = moba.moba_gate(q.detach(), k.detach(), cu, ms, c.block, c.topk)
    elif c.mode == "full":
        out, lse = moba.flash_attn_varlen(q, k, v, cu, ms, return_lse=True)
    else:
        out, lse = moba.moa_attn(q, k, v, cu, ms, c.alphas, c.betas, sink=c.sink,
                                 return_lse=True)
    out.backward(dout)
    return out.detach(), lse, sel, q.grad, k.grad, v.grad


def _layout(c: Case, cu, world: int) -> mdist.ShardLayout:
    make = mdist.ShardLayout.zigzag if c.layout == "zigzag" else mdist.ShardLayout.contiguous
    return make(cu, world)


def _distributed(c: Case, lay, rank, q, k, v, dout, device, transport=None):
    ql, kl, vl, dl = (lay.shard(x, rank).to(device).requires_grad_(x is not dout)
                      for x in (q, k, v, dout))
    info = {}
    kw = dict(mode=c.mode, info=info, return_lse=True, transport=transport)
    if c.mode == "moba":
        kw.update(moba_chunk_size=c.block, moba_topk=c.topk)
    elif c.mode == "moa":
        kw.update(alphas=c.alphas, betas=c.betas, sink=c.sink, page_size=c.block)
    else:
        kw.update(page_size=c.block)
    out, lse = mdist.context_parallel_attn(ql, kl, vl, lay, **kw)
    out.backward(dl)
    return (out.detach(), lse, info.get("selection"), ql.grad, kl.grad, vl.grad, info["stats"],
            info)


def _close(name, got, want, dtype, case):
    tol = TOL[dtype]
    torch.testing.assert_close(got.float().cpu(), want.float().cpu(), atol=tol, rtol=tol,
                               msg=lambda m: f"{case}: {name}: {m}")


def check_case(c: Case, rank: int, world: int, device="cpu", transport=None):
    q, k, v, dout, cu = _data(c)
    ref = _single_process(c, q, k, v, dout, cu)
    lay = _layout(c, cu, world)
    got = _distributed(c, lay, rank, q, k, v, dout, device, transport)
    idx = lay.global_index(rank)
    label = f"[{c.name}] rank {rank}/{world}"
    if c.mode == "moba":
        want_sel = ref[2][idx]
        assert torch.equal(got[2], want_sel), f"{label}: selection differs from one process"
    _close("out", got[0], ref[0][idx], c.dtype, label)
    _close("lse", got[1], ref[1][:, idx], torch.float32, label)
    for i, name in ((3, "dq"), (4, "dk"), (5, "dv")):
        _close(name, got[i], ref[i][idx], c.dtype, label)
    if str(device).startswith("cuda") and c.dtype in (torch.float16, torch.bfloat16) \
            and mdist._cuda_compiled() and lay.local_tokens(rank):
        # bf16/f16 on a CUDA build: the paged forward and backward ran on the GPU
        assert got[7]["compute_device"].startswith("cuda"), \
            f"{label}: paged kernels ran on {got[7]['compute_device']}, expected the GPU"
    return got[6]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, backend: str, names: Optional[List[str]]):
    """Entry point of torch.multiprocessing.spawn: every case (or those named) on this rank."""
    import torch.distributed as dist
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    device = "cpu"
    if backend == "gloo-cuda":  # gloo moving CUDA tensors (ranks may share one GPU)
        backend = "gloo"
        torch.cuda.set_device(rank % torch.cuda.device_count())
        device = f"cuda:{torch.cuda.current_device()}"
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
        device = f"cuda:{torch.cuda.current_device()}"
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        for c in cases():
            if names is None or c.name in names:
                check_case(c, rank, world, device)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def compile_worker(rank: int, world: int, port: int, backend: str):
    """torch.compile(fullgraph=False) of a context-parallel forward + backward on this rank:
    identical to the eager run (moba::cp_attention is an opaque custom op with a fake
    implementation, so the compiled graph calls the very same code) and to one process."""
    import torch.distributed as dist
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for c in (cases()[1], cases()[7], cases()[9]):  # moba GQA zigzag, full, moa (bf16)
            q, k, v, dout, cu = _data(c)
            ref = _single_process(c, q, k, v, dout, cu)
            lay = _layout(c, cu, world)
            ql, kl, vl, dl = (lay.shard(x, rank) for x in (q, k, v, dout))
            kw = dict(mode=c.mode)
            if c.mode == "moba":
                kw.update(moba_chunk_size=c.block, moba_topk=c.topk)
            elif c.mode == "moa":
                kw.update(alphas=c.alphas, betas=c.betas, sink=c.sink, page_size=c.block)
            else:
                kw.update(page_size=c.block)

            def step(q_, k_, v_):
                out = mdist.context_parallel_attn(q_, k_, v_, lay, **kw)
                return (out.float() * dl.float()).sum(), out

            results = []
            for fn in (step, torch.compile(step, fullgraph=False, backend=backend)):
                xs = [x.clone().requires_grad_() for x in (ql, kl, vl)]
                loss, out = fn(*xs)
                loss.backward()
                results.append([out.detach()] + [x.grad for x in xs])
            idx = lay.global_index(rank)
            for name, e, cgot, want in zip(("out", "dq", "dk", "dv"), results[0], results[1],
                                           (ref[0][idx], ref[3][idx], ref[4][idx], ref[5][idx])):
                assert torch.equal(e, cgot), f"[{c.name}] rank {rank}: compiled {name} != eager"
                _close(name, cgot, want, c.dtype, f"[{c.name}] compiled rank {rank}/{world}")
        dist.barrier()
    finally:
        dist.destroy_process_group()
