#!/usr/bin/env python3
"""MoBA prefill on the GPU: ours against the real peers, one run, same inputs for all.

Peers: torch SDPA with the cuDNN backend and with the flash backend (dense causal), FlexAttention
with a block mask built from the same selection, and the public MoBA implementation's algorithm
(gate in PyTorch, gather, two flash varlen calls, LSE merge) written here from its description.
'bound' is the perfect-kernel row: cuDNN dense non-causal attention of the N queries over as
many keys as a query sees on average (the selected FLOPs with no gate, no sparsity overhead).

TFLOP/s are on the FLOPs the selection requires: 4*D per visible (query, key) pair forward,
2.5x that more for the backward. Peak memory is the largest allocation on top of the inputs (PyTorch's allocator plus the
high-water mark of moba's own scratch pool, moba.cuda_workspace_peak_bytes).
Run: python3 bench/cuda/bench_peers.py [--suite a,b,c,gqa,d] [--bwd] [--max-n 1048576]
"""
import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

try:
    import moba  # our package (python/): moba.moba_attn_varlen, moba.flash_attn_varlen
except ImportError as e:  # pragma: no cover
    print(f"cannot import moba ({e}); build the Python package first", file=sys.stderr)
    raise

K, M = 1024, 1024 * 1024


# ---- counting ----------------------------------------------------------------------------------

def visible_pairs(n, block, topk):
    """Visible (query, key) pairs of one head of a length-n sequence under MoBA."""
    pairs = 0
    for t0 in range(0, n, block):
        i, rows = t0 // block, min(block, n - t0)
        pairs += rows * (rows + 1) // 2 + rows * min(topk - 1, i) * block
    return pairs


def fwd_flops(batch, heads, n, d, block, topk):
    return 4.0 * d * heads * batch * visible_pairs(n, block, topk)


# ---- timing ------------------------------------------------------------------------------------

def bench(fn, budget_ms=1500.0, leaves=()):
    """Median milliseconds of fn() and peak extra memory (GiB); (None, None) on OOM. Two calls
    warm up untimed (plans, compilation, workspace), a third sets the number of timed repeats;
    calls slower than 2 s are timed once more only. The .grad of `leaves` is cleared before
    every call (as zero_grad(set_to_none=True) would), so every row's peak holds one copy of
    its gradients: a row measured after another on the same leaves would otherwise find that
    row's gradients in its baseline (0.75 GiB at (a) 128K) and report less."""
    plain = fn

    def fn():
        for t in leaves:
            t.grad = None
        plain()
    torch.cuda.synchronize()
    for t in leaves:
        t.grad = None
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    moba.cuda_workspace_peak_bytes(torch.cuda.current_device(), reset=True)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed():
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)

    try:
        fn()  # untimed: the first call of a shape plans, loads kernels and grows memory pools,
        fn()  # and the second may still pay for the first's (it made a (a) 8K row read 8x slow)
        first = timed()
        reps = 1 if first > 2000 else max(2, min(20, int(budget_ms / max(first, 1e-3))))
        times = sorted(timed() for _ in range(reps))
        # moba's scratch comes from its own pool: its high-water mark is added (an upper bound of
        # the joint peak; 0 for the peers)
        scratch = moba.cuda_workspace_peak_bytes(torch.cuda.current_device())
        peak = (torch.cuda.max_memory_allocated() - base + scratch) / 2**30
        return times[len(times) // 2], peak
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None, None
    except RuntimeError as e:  # a peer that cannot run this shape: say so, keep going
        print(f"<!-- {str(e).splitlines()[0][:160]} -->", flush=True)
        torch.cuda.empty_cache()
        return "error", None


def warm_up_gpu(seconds=1.5):
    """Run dense matrix products until the clocks have left idle: the first row of a run was
    otherwise timed on a cold GPU (2x slower at 8K than the same call a row later)."""
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    t0 = time.time()
    while time.time() - t0 < seconds:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


# ---- peers -------------------------------------------------------------------------------------

def sdpa(q, k, v, backend, causal=True, bwd=False):
    """q [B, N, H, D] -> SDPA in [B, H, N, D]; GQA through enable_gqa (no repeat)."""
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    with sdpa_kernel([backend]):
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal,
                                           enable_gqa=q.shape[2] != k.shape[2])
        if bwd:
            o.backward(torch.ones_like(o))
    return o


def torch_gate(q, k, block, topk):
    """The public implementation's gate for one sequence: q [N, H, D], k [N, Hkv, D].
    Returns top-(topk-1) past block ids [N, H, topk-1] (-1 where none), ties to earlier."""
    n, h, d = q.shape
    nfull = n // block
    g = h // k.shape[1]
    means = k[: nfull * block].view(nfull, block, k.shape[1], d).float().mean(1).to(k.dtype).float()
    means = means.repeat_interleave(g, dim=1)                   # [nb, H, D]
    scores = torch.einsum("nhd,bhd->nhb", q.float(), means)    # [N, H, nb]: what it materialises
    own = torch.arange(n, device=q.device) // block
    future = torch.arange(nfull, device=q.device)[None, :] >= own[:, None]
    scores.masked_fill_(future[:, None, :], float("-inf"))
    kk = min(topk - 1, nfull)
    if kk <= 0:
        return torch.full((n, h, 0), -1, dtype=torch.int64, device=q.device)
    # Ties to the earlier block: break them with a tiny index-decreasing offset in fp64.
    idx = torch.arange(nfull, device=q.device, dtype=torch.float64)
    keyed = scores.double() - idx * 1e-30
    val, sel = keyed.topk(kk, dim=-1)
    sel[val == float("-inf")] = -1
    return sel


def public_moba(q, k, v, block, topk, bwd=False):
    """The public MoBA algorithm for one sequence: q [N, H, D]. Gate, then the own block by a
    causal flash varlen call, the selected blocks by a second (non-causal) flash varlen call over
    gathered (head, block) groups, then the LSE merge."""
    n, h, d = q.shape
    g = h // k.shape[1]
    kr = k.repeat_interleave(g, dim=1)  # the public implementation repeats K/V for GQA
    vr = v.repeat_interleave(g, dim=1)
    dev = q.device
    own_cu = torch.arange(0, n + block, block, device=dev, dtype=torch.int32).clamp_(max=n)
    o_self, lse_self = torch.ops.aten._flash_attention_forward(
        q, kr, vr, own_cu, own_cu, block, block, 0.0, True, False)[:2]   # lse [H, N]
    sel = torch_gate(q, k, block, topk)                                   # [N, H, kk]
    if sel.shape[-1] == 0:
        out = o_self
    else:
        tok = torch.arange(n, device=dev)[:, None, None].expand_as(sel)
        head = torch.arange(h, device=dev)[None, :, None].expand_as(sel)
        valid = sel >= 0
        tok, head, blk = tok[valid], head[valid], sel[valid]
        key = head * (n // block) + blk                 # group by (head, block)
        order = torch.argsort(key, stable=True)
        tok, head, blk, key = tok[order], head[order], blk[order], key[order]
        groups, counts = torch.unique_consecutive(key, return_counts=True)
        cu_q = F.pad(counts.cumsum(0), (1, 0)).int()
        qg = q[tok, head].unsqueeze(1)                  # [M, 1, D] gathered rows
        gh, gb = groups // (n // block), groups % (n // block)
        rows = (gb[:, None] * block + torch.arange(block, device=dev)[None, :]).reshape(-1)
        kg = kr[rows, gh.repeat_interleave(block)].unsqueeze(1)
        vg = vr[rows, gh.repeat_interleave(block)].unsqueeze(1)
        cu_k = torch.arange(0, (len(groups) + 1) * block, block, device=dev, dtype=torch.int32)
        o_sel, lse_sel = torch.ops.aten._flash_attention_forward(
            qg, kg, vg, cu_q, cu_k, int(counts.max()), block, 0.0, False, False)[:2]
        # LSE merge: out = sum_i exp(lse_i - lse) o_i over the own block and every selection.
        ls = (lse_self if lse_self.shape == (h, n) else lse_self.t()).t().float()   # [N, H]
        ls_sel = lse_sel.reshape(-1).float()
        acc = torch.ones_like(ls).index_put((tok, head), (ls_sel - ls[tok, head]).exp(), accumulate=True)
        lse_tot = ls + acc.log()
        out = o_self.float() * (ls - lse_tot).exp()[..., None]
        w = (ls_sel - lse_tot[tok, head]).exp()[:, None] * o_sel[:, 0].float()
        out = out.index_put((tok, head), w, accumulate=True).to(q.dtype)
    if bwd:
        out.backward(torch.ones_like(out))
    return out


def flex_moba(q, k, v, block, topk, sel, bwd=False):
    """FlexAttention with a block mask: tiles of 128 take the union of their rows' choices, the
    mask_mod makes each token exact. q [N, H, D]."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
    n, h, d = q.shape
    kk = sel.shape[-1]
    sel_hn = sel.permute(1, 0, 2).contiguous()  # [H, N, kk]

    def mask_mod(b, hh, qi, ki):
        kb, qb = ki // block, qi // block
        ok = kb == qb
        for s in range(kk):
            ok = ok | (sel_hn[hh, qi, s] == kb)
        return ok & (ki <= qi)

    tile = 128
    nt = (n + tile - 1) // tile
    # per (head, query tile): the key tiles any of its rows needs (own block + selections)
    tiles_per_block = block // tile
    need = torch.zeros(h, nt, nt, dtype=torch.bool, device=q.device)
    qt = torch.arange(n, device=q.device) // tile
    for s in range(kk):
        b = sel_hn[:, :, s]
        ok = b >= 0
        hh = torch.arange(h, device=q.device)[:, None].expand_as(b)[ok]
        for r in range(tiles_per_block):
            need[hh, qt[None, :].expand_as(b)[ok], (b[ok] * tiles_per_block + r)] = True
    own_first = (torch.arange(nt, device=q.device) * tile // block) * tiles_per_block
    kt = torch.arange(nt, device=q.device)
    need |= ((kt[None, :] >= own_first[:, None]) & (kt[None, :] <= torch.arange(nt, device=q.device)[:, None]))[None]
    num = need.sum(-1).int()[None]
    idx = torch.argsort((~need).int(), dim=-1, stable=True).int()[None]
    bm = BlockMask.from_kv_blocks(num, idx, BLOCK_SIZE=tile, mask_mod=mask_mod, seq_lengths=(n, n))
    fa = torch.compile(flex_attention, dynamic=False)
    o = fa(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], block_mask=bm,
           enable_gqa=q.shape[1] != k.shape[1])
    if bwd:
        o.backward(torch.ones_like(o))
    return o


# ---- one shape ---------------------------------------------------------------------------------

def run_shape(name, batch, n, h, hkv, d, block, topk, dtype, bwd, peers):
    torch.manual_seed(0)
    dev = "cuda"
    total = batch * n
    need_grad = bwd
    q = torch.randn(total, h, d, device=dev, dtype=dtype, requires_grad=need_grad)
    k = torch.randn(total, hkv, d, device=dev, dtype=dtype, requires_grad=need_grad)
    v = torch.randn(total, hkv, d, device=dev, dtype=dtype, requires_grad=need_grad)
    cu = torch.arange(0, total + 1, n, device=dev, dtype=torch.int32)
    flops = fwd_flops(batch, h, n, d, block, topk) * (3.5 if bwd else 1.0)
    rows = {}

    def ours():
        o = moba.moba_attn_varlen(q, k, v, cu, n, block, topk)
        if bwd:
            o.backward(torch.ones_like(o))
    rows["moba (ours)"] = bench(ours, leaves=(q, k, v))

    cu_host = cu.cpu()  # documented option: no device->host copy (and sync) inside the op

    def ours_host_cu():
        o = moba.moba_attn_varlen(q, k, v, cu_host, n, block, topk)
        if bwd:
            o.backward(torch.ones_like(o))
    if "ours-hostcu" in peers:
        rows["moba (ours, host cu)"] = bench(ours_host_cu, leaves=(q, k, v))

    def ours_dense():
        o = moba.flash_attn_varlen(q, k, v, cu, n)
        if bwd:
            o.backward(torch.ones_like(o))
    if "ours-dense" in peers:
        rows["dense (ours)"] = bench(ours_dense, leaves=(q, k, v))

    qb, kb, vb = (x.detach().view(batch, n, x.shape[1], d).requires_grad_(need_grad) for x in (q, k, v))
    if "cudnn" in peers:
        rows["sdpa cudnn"] = bench(lambda: sdpa(qb, kb, vb, SDPBackend.CUDNN_ATTENTION, bwd=bwd), leaves=(qb, kb, vb))
    if "flash" in peers:
        rows["sdpa flash"] = bench(lambda: sdpa(qb, kb, vb, SDPBackend.FLASH_ATTENTION, bwd=bwd), leaves=(qb, kb, vb))
    if "public" in peers and batch == 1:
        qs, ks, vs = (x.detach().requires_grad_(need_grad) for x in (q, k, v))
        rows["public moba"] = bench(lambda: public_moba(qs, ks, vs, block, topk, bwd=bwd), leaves=(qs, ks, vs))
    if "flex" in peers and batch == 1:
        try:
            sel = torch_gate(q.detach(), k.detach(), block, topk)
            qs, ks, vs = (x.detach().requires_grad_(need_grad) for x in (q, k, v))
            rows["flex block-mask"] = bench(lambda: flex_moba(qs, ks, vs, block, topk, sel, bwd=bwd),
                                            leaves=(qs, ks, vs))
        except torch.OutOfMemoryError:
            rows["flex block-mask"] = (None, None)
    if "bound" in peers:
        seen = max(1, round(visible_pairs(n, block, topk) / n))  # keys per query on average
        kb2 = torch.randn(batch, seen, hkv, d, device=dev, dtype=dtype, requires_grad=need_grad)
        vb2 = torch.randn(batch, seen, hkv, d, device=dev, dtype=dtype, requires_grad=need_grad)
        rows["bound"] = bench(lambda: sdpa(qb, kb2, vb2, SDPBackend.CUDNN_ATTENTION, causal=False, bwd=bwd),
                              leaves=(qb, kb2, vb2))

    ok = {who: r[0] for who, r in rows.items() if isinstance(r[0], float)}
    dense = {k2: ok[k2] for k2 in ("sdpa cudnn", "sdpa flash") if k2 in ok}
    bound_ms = ok.get("bound")
    lines = []
    for who, (ms, mem) in rows.items():
        if ms is None or ms == "error":
            lines.append(f"| {name} | {n // K}K | {who} | {'OOM' if ms is None else 'error'} | | | | | |")
            continue
        tflops = flops / ms / 1e9
        vs = " | ".join(f"{dense[x] / ms:.2f}x" if x in dense else "-" for x in ("sdpa cudnn", "sdpa flash"))
        frac = f"{bound_ms / ms:.2f}" if bound_ms and who != "bound" else "-"
        lines.append(f"| {name} | {n // K}K | {who} | {ms:.3f} | {tflops:.0f} | {vs} | {frac} | {mem:.2f} |")
    for line in lines:
        print(line, flush=True)
    del q, k, v, qb, kb, vb
    torch.cuda.empty_cache()


SUITES = {
    # name: list of (batch, n, heads, kv_heads, d, block, topk, dtype)
    "a": [(1, n, h, h, 128, n // 64, 3, torch.bfloat16)
          for n, h in ((8 * K, 8), (32 * K, 8), (128 * K, 8), (512 * K, 2), (M, 1))],
    "b": [(1, n, 8, 8, 128, 4096, 12, torch.bfloat16) for n in (32 * K, 128 * K)],
    "c": [(1, n, 8, 8, 128, 512, 8, torch.bfloat16) for n in (8 * K, 32 * K, 128 * K)],
    "gqa": [(1, 128 * K, 32, 8, 128, 2 * K, 3, torch.bfloat16)],
    "d": [(2, n, 16, 16, 128, 128, 8, torch.float16) for n in (8 * K, 32 * K, 128 * K, 512 * K)],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="a,b,c,gqa,d")
    ap.add_argument("--bwd", action="store_true", help="time forward + backward")
    ap.add_argument("--max-n", type=int, default=M)
    ap.add_argument("--max-n-d", type=int, default=512 * K, help="longest N of suite d")
    ap.add_argument("--peers", default="ours-hostcu,ours-dense,cudnn,flash,public,flex,bound")
    ap.add_argument("--flex-n", default="32768,131072",
                    help="lengths at which FlexAttention runs (each shape compiles anew)")
    args = ap.parse_args()
    peers = set(args.peers.split(","))
    props = torch.cuda.get_device_properties(0)
    print(f"# {props.name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{'fwd+bwd' if args.bwd else 'fwd'}")
    warm_up_gpu()
    print("| suite | N | impl | ms | TFLOP/s (selected) | vs cuDNN | vs flash | of bound | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in args.suite.split(","):
        for (batch, n, h, hkv, d, block, topk, dtype) in SUITES[s]:
            if n > args.max_n or (s == "d" and n > args.max_n_d):
                continue
            p = set(peers)
            if str(n) not in args.flex_n.split(",") or s not in ("a", "c"):
                p.discard("flex")  # each shape compiles anew; the tile mask is quadratic in N
            run_shape(f"{s} B={batch} H={h}/{hkv} blk={block} top{topk}", batch, n, h, hkv, d, block,
                      topk, dtype, args.bwd, p)


if __name__ == "__main__":
    main()
