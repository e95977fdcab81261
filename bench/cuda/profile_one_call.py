#!/usr/bin/env python3
"""One MoBA call between cudaProfilerStart/Stop, for `ncu --profile-from-start off`.

The call is made once before profiling (plans, workspace, module loading), then once profiled,
so ncu sees exactly the kernels of one forward (or forward + backward with --bwd).
Run: ncu --profile-from-start off --clock-control none python3 bench/cuda/profile_one_call.py \
         --setting a --n 131072 [--bwd]
"""
import argparse

import torch

import moba

SETTINGS = {  # batch, heads, kv heads, D, block(n), top-k, dtype — as in bench_peers.py
    "a": lambda n: (1, 8, 8, 128, n // 64, 3, torch.bfloat16),
    "c": lambda n: (1, 8, 8, 128, 512, 8, torch.bfloat16),
    "d": lambda n: (2, 16, 16, 128, 128, 8, torch.float16),
    "dense": lambda n: (1, 8, 8, 128, None, None, torch.bfloat16),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="a")
    ap.add_argument("--n", type=int, default=131072)
    ap.add_argument("--bwd", action="store_true")
    args = ap.parse_args()
    batch, h, hkv, d, block, topk, dtype = SETTINGS[args.setting](args.n)
    total = batch * args.n
    q, k, v = (torch.randn(total, hh, d, device="cuda", dtype=dtype, requires_grad=args.bwd)
               for hh in (h, hkv, hkv))
    cu = torch.arange(0, total + 1, args.n, device="cuda", dtype=torch.int32)

    def call():
        if block is None:
            o = moba.flash_attn_varlen(q, k, v, cu, args.n)
        else:
            o = moba.moba_attn_varlen(q, k, v, cu, args.n, block, topk)
        if args.bwd:
            o.backward(torch.ones_like(o))

    call()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    call()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
