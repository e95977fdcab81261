#!/usr/bin/env python3
"""Decode step on the GPU over moba's paged KV cache, against torch SDPA on contiguous K/V and
the bandwidth bound, in one run (issue 13's table).

For each context N and batch b (as memory allows): one decode query per sequence, Hq=32, Hkv=8,
D=128, bf16 (a Llama-3-8B layer). Rows:
  full      our split-KV decode over every cached page (group 4: the tensor-core kernel; and
            over the same cache with Hq=16, group 2, also tensor cores, and Hq=8, MHA: the
            CUDA-core kernel)
  moba128   MoBA with block 128, top-8
  moa50     MoA at 50% density (window 0.5 N + sink 64), same kernel, only window pages read
  moba64    MoBA with 64 blocks (block N/64), top-3: gate over the cached means + the blocks.
            A KV head's pages are read once for its 4 query heads, so the step reads the union
            of their picks (random queries pick independently: ~8.6 of 64 blocks, not 3)
  moba64 shared  the same with the 4 query heads of a KV head equal, so they pick the same 3
            blocks (the best case of GQA sharing: 1/21 of the full read)
  sdpa      torch SDPA (enable_gqa) on contiguous [b, Hkv, N, D] K and V. K and V are distinct
            tensors: with V = K (as this bench had before) the V tile is the K tile just read,
            served from L2, and SDPA showed 105-192% of the bandwidth bound
  bound     bytes a step must read (K/V it attends to, MoBA's union of the selected blocks, the
            gate's means) / HBM bandwidth measured here (the faster of a device copy and a
            read-only reduction: with the copy alone SDPA read at 101-110% of the bound)
Each step is captured in a CUDA graph (device cu_seqlens/slots; no host sync) and replayed with
L2 flushed before each replay. Then MoA's serving claim: cache memory of a per-head MoA cache
vs full, and tokens/s at the largest batch that fits a fixed memory budget.

Run: python3 bench/cuda/bench_decode.py [--contexts 32768,131072,1048576] [--batches 1,8,64]
     [--budget-gib 100] [--moa-context 131072 (0: skip)] [--out results.md]
"""
import argparse
import datetime
import math
import subprocess
import sys

import torch
import torch.nn.functional as F

import moba

HQ, HKV, D = 32, 8, 128
DT = torch.bfloat16
K = 1024


def measure_bandwidth():
    """GB/s of HBM: the faster of a large device-to-device copy (read + write counted) and a
    read-only reduction over the same bytes. A decode step only reads, and reads stream faster
    than a copy's mixed traffic (a copy alone made SDPA look faster than the bound)."""
    n = 2 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    words = a.view(torch.float32)
    words.zero_()

    def rate(fn, bytes_moved):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(10):
            fn()
        e.record()
        torch.cuda.synchronize()
        return bytes_moved / (s.elapsed_time(e) / 10 * 1e-3) / 1e9

    copy = rate(lambda: b.copy_(a), 2 * n)
    read = rate(lambda: words.sum(), n)
    del a, b, words
    return max(copy, read)


_FLUSH = None


def flush_l2():
    """Overwrite a buffer larger than L2, so a step reads its K/V from HBM as it would after the
    other layers of a model (not from the L2 the previous replay left warm)."""
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    _FLUSH.zero_()


def time_ms(fn, iters=10):
    """Median ms of fn, replayed from a CUDA graph when capture works (eager otherwise), L2
    flushed before every timed replay."""
    fn()
    torch.cuda.synchronize()
    run = fn
    try:
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
            with torch.cuda.graph(g, stream=s):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        run = g.replay
    except Exception as e:  # noqa: BLE001 - report and time eagerly
        print(f"  (graph capture failed: {str(e)[:80]}; timing eagerly)", file=sys.stderr)
    run()
    times = []
    for _ in range(iters):
        flush_l2()
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record()
        run()
        en.record()
        torch.cuda.synchronize()
        times.append(st.elapsed_time(en))
    times.sort()
    return times[len(times) // 2]


def filled_cache(batch, n, block_size, moa=None, chunk=65536, page_size=16):
    """A cache of `batch` sequences of n random tokens (appended in chunks). A MoA cache's pool
    holds only what its windows keep (plus a chunk in flight), as a server would size it."""
    max_chunk = chunk if moa is not None else 1
    num_pages = None
    if moa is not None:
        keep = int(max(moa[1]) * (n + 1 + chunk)) + moa[2] + 2 * chunk + 2 * page_size
        num_pages = batch * HKV * (keep // page_size + 2)
    cache = moba.PagedKVCache(HKV, D, n + 16, max_batch=batch, page_size=page_size, dtype=DT,
                              device="cuda", block_size=block_size, num_q_heads=HQ, moa=moa,
                              max_chunk=max_chunk, num_pages=num_pages)
    done = 0
    while done < n:
        c = min(chunk, n - done)
        k = torch.randn(batch * c, HKV, D, dtype=DT, device="cuda")
        cu = torch.arange(0, batch * c + 1, c, dtype=torch.int32)
        cache.append(k, k, cu)
        done += c
    return cache


def step_fn(cache, q, mode, **kw):
    b = q.shape[0]
    cu = torch.arange(0, b + 1, dtype=torch.int32, device="cuda")
    slots = torch.arange(0, b, dtype=torch.int32, device="cuda")
    alphas = kw.get("alphas", [])
    betas = kw.get("betas", [])

    def fn():
        return torch.ops.moba.paged_attention(q, cu, slots, cache.k_pages, cache.v_pages,
                                              cache.page_table, cache.seq_lens, cache.block_means,
                                              None, mode, kw.get("block_size", 0),
                                              kw.get("topk", 0), 0.0, alphas, betas,
                                              kw.get("sink", 64), True, "auto")
    return fn


def moba_bytes(fn, n, block, batch):
    """Bytes a MoBA step must read: per (sequence, KV head) the union of its query heads'
    selected blocks (one read serves the group) plus the own block, and the block means the gate
    scores. Also the union's size in blocks, averaged."""
    sel = fn()[2].view(batch, HKV, -1).long()
    own = (n - 1) // block
    onehot = torch.zeros(batch, HKV, own + 1, dtype=torch.bool, device=sel.device)
    onehot.scatter_(2, torch.where(sel >= 0, sel, own), True)
    past = int(onehot[..., :own].sum())
    own_keys = n - own * block
    keys = past * block + batch * HKV * own_keys
    return keys * D * 2 * 2 + batch * HKV * own * D * 2, past / (batch * HKV) + 1


def fmt_row(name, ms, bytes_read, bw, full_ms, sdpa_ms, note=""):
    if ms is None:
        return f"| {name} | OOM | | | | | | {note} |"
    bound = bytes_read / (bw * 1e9) * 1e3
    vs_full = f"{full_ms / ms:.1f}x" if full_ms else ""
    vs_sdpa = f"{sdpa_ms / ms:.2f}x" if sdpa_ms else ""
    return (f"| {name} | {ms:.3f} | {bytes_read / 1e6:.0f} | {bound:.3f} | {100 * bound / ms:.0f}% | "
            f"{vs_full} | {vs_sdpa} | {note} |")


def grouped_queries(batch):
    """Queries whose heads of one KV head are equal: the group selects the same blocks (MoBA's
    best case for GQA, 3 blocks read per KV head)."""
    q = torch.randn(batch, HKV, 1, D, dtype=DT, device="cuda")
    return q.expand(batch, HKV, HQ // HKV, D).reshape(batch, HQ, D).contiguous()


def run_point(n, batch, bw, lines, summary):
    kv_bytes = 2 * n * HKV * D * 2  # K and V of one sequence
    q = torch.randn(batch, HQ, D, dtype=DT, device="cuda")
    rows = []  # (name, ms, bytes, note)
    cache = filled_cache(batch, n, 128)
    full_ms = time_ms(step_fn(cache, q, "full"))
    rows.append(("full (ours)", full_ms, batch * kv_bytes, "tensor-core kernel (group 4)"))
    q16 = torch.randn(batch, HQ // 2, D, dtype=DT, device="cuda")
    rows.append(("full (ours), Hq=16", time_ms(step_fn(cache, q16, "full")), batch * kv_bytes,
                 "group 2: tensor-core kernel"))
    q8 = torch.randn(batch, HQ // 4, D, dtype=DT, device="cuda")
    rows.append(("full (ours), Hq=8 (MHA)", time_ms(step_fn(cache, q8, "full")), batch * kv_bytes,
                 "group 1: the CUDA-core kernel"))
    fn = step_fn(cache, q, "moba", block_size=128, topk=8)
    by, blocks = moba_bytes(fn, n, 128, batch)
    rows.append(("MoBA block 128 top-8", time_ms(fn), by, f"{blocks:.1f} blocks read per KV head"))
    w = n // 2
    ms = time_ms(step_fn(cache, q, "moa", alphas=[0.0] * HQ, betas=[0.5] * HQ, sink=64))
    rows.append(("MoA 50%", ms, batch * (w + 64) * HKV * D * 4, ""))
    del cache
    torch.cuda.empty_cache()
    blk = n // 64
    cache = filled_cache(batch, n, blk)
    fn = step_fn(cache, q, "moba", block_size=blk, topk=3)
    by, blocks = moba_bytes(fn, n, blk, batch)
    moba_ms = time_ms(fn)
    rows.append((f"MoBA 64 blocks ({blk}) top-3", moba_ms, by,
                 f"{blocks:.1f} blocks read per KV head (union of its 4 heads' picks)"))
    fn = step_fn(cache, grouped_queries(batch), "moba", block_size=blk, topk=3)
    by, blocks = moba_bytes(fn, n, blk, batch)
    shared_ms = time_ms(fn)
    rows.append((f"MoBA 64 blocks ({blk}) top-3, group-shared picks", shared_ms, by,
                 f"{blocks:.1f} blocks per KV head: a group's heads pick alike"))
    del cache
    torch.cuda.empty_cache()
    sdpa_ms = None
    try:
        k = torch.randn(batch, HKV, n, D, dtype=DT, device="cuda")
        v = torch.randn(batch, HKV, n, D, dtype=DT, device="cuda")  # its own memory: K != V
        qq = q.view(batch, HQ, 1, D)
        sdpa_ms = time_ms(lambda: F.scaled_dot_product_attention(qq, k, v, enable_gqa=True))
        del k, v
    except torch.OutOfMemoryError:
        pass
    rows.append(("torch SDPA (contiguous K, V; enable_gqa)", sdpa_ms, batch * kv_bytes, ""))
    torch.cuda.empty_cache()
    lines.append(f"\n### N = {n // K}K, batch {batch}\n")
    lines.append("| kernel | step ms | must read MB | bound ms | % of bandwidth | vs full (ours) | vs SDPA | note |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for name, ms, by, note in rows:
        lines.append(fmt_row(name, ms, by, bw, full_ms if not name.startswith("full (ours)") else None,
                             sdpa_ms if not name.startswith("torch") else None, note))
    summary.append((n, batch, full_ms, batch * kv_bytes / (bw * 1e9) * 1e3, moba_ms, shared_ms))


def moa_serving(n, budget_gib, bw, lines):
    """MoA 50% vs full: cache memory and tokens/s at the largest batch within the budget."""
    per_full = 2 * n * HKV * D * 2
    moa = ([0.0] * HQ, [0.5] * HQ, 64)
    probe = filled_cache(1, n, 0, moa=moa, chunk=2048)
    probe.append(torch.randn(1, HKV, D, dtype=DT, device="cuda"),
                 torch.randn(1, HKV, D, dtype=DT, device="cuda"))  # frees what left the windows
    per_moa = probe.memory_bytes()
    del probe
    torch.cuda.empty_cache()
    budget = budget_gib * (1 << 30)
    b_full, b_moa = max(1, budget // per_full), max(1, budget // per_moa)
    q_full = torch.randn(b_full, HQ, D, dtype=DT, device="cuda")
    cache = filled_cache(b_full, n, 0)
    full_ms = time_ms(step_fn(cache, q_full, "full"))
    del cache
    torch.cuda.empty_cache()
    q_moa = torch.randn(b_moa, HQ, D, dtype=DT, device="cuda")
    cache = filled_cache(b_moa, n, 0, moa=moa, chunk=2048)
    moa_ms = time_ms(step_fn(cache, q_moa, "moa", alphas=moa[0], betas=moa[1], sink=64))
    del cache
    torch.cuda.empty_cache()
    lines.append(f"\n### MoA 50% serving at N = {n // K}K, {budget_gib} GiB of K/V\n")
    lines.append("| cache | bytes / sequence | batch in budget | step ms | tokens/s |")
    lines.append("|---|---|---|---|---|")
    lines.append(f"| full | {per_full / 2**20:.0f} MiB | {b_full} | {full_ms:.3f} | {b_full / full_ms * 1e3:.0f} |")
    lines.append(f"| MoA 50% (per-head) | {per_moa / 2**20:.0f} MiB ({per_moa / per_full:.2f}x) | {b_moa} | "
                 f"{moa_ms:.3f} | {b_moa / moa_ms * 1e3:.0f} ({(b_moa / moa_ms) / (b_full / full_ms):.2f}x) |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", default="32768,131072,1048576")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--budget-gib", type=float, default=100.0, help="K/V memory a point may use")
    ap.add_argument("--moa-context", type=int, default=131072)
    ap.add_argument("--moa-budget-gib", type=int, default=32)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.manual_seed(0)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    bw = measure_bandwidth()
    cmd = "python3 " + " ".join(sys.argv)
    lines = [f"# Decode step, {torch.cuda.get_device_name()}, {datetime.date.today()}, commit {commit}",
             "", f"Command: `{cmd}`", "",
             f"Hq={HQ}, Hkv={HKV}, D={D}, bf16; page 16; HBM bandwidth measured in this run (the "
             f"faster of a device copy and a read-only reduction) {bw:.0f} GB/s. Step ms: median of 10 CUDA-graph replays of one "
             "decode step (attention incl. the MoBA gate, every launch), L2 flushed before each. "
             "must read = bytes the step has to read (K/V it attends to, MoBA's union of the "
             "selected blocks over a KV head's query heads plus the gate's means); bound = must "
             "read / bandwidth; % of bandwidth = bound / step."]
    summary = []
    for n in [int(x) for x in args.contexts.split(",")]:
        for b in [int(x) for x in args.batches.split(",")]:
            need = 2 * (2 * n * HKV * D * 2) * b  # cache + contiguous copy for SDPA
            if need > args.budget_gib * (1 << 30):
                lines.append(f"\n(N = {n // K}K, batch {b}: {need / 2**30:.0f} GiB > budget, skipped)")
                continue
            run_point(n, b, bw, lines, summary)
            print("\n".join(lines[-12:]), flush=True)
    if args.moa_context > 0:
        moa_serving(args.moa_context, args.moa_budget_gib, bw, lines)
    lines.append("\n### Targets (issue 13)\n")
    lines.append("| N | batch | full % of bandwidth (>= 75% at batch >= 8) | MoBA 64 blocks top-3 vs full (>= 10x at 1M) | same, group-shared picks |")
    lines.append("|---|---|---|---|---|")
    for n, b, full_ms, bound, moba_ms, shared_ms in summary:
        lines.append(f"| {n // K}K | {b} | {100 * bound / full_ms:.0f}% | {full_ms / moba_ms:.1f}x | "
                     f"{full_ms / shared_ms:.1f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
