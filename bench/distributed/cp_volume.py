"""Bytes each rank moves for context-parallel MoBA vs ring attention, by a dry run of the real
code (moba.distributed with dry_run=True on the in-process ThreadTransport: the gate runs on
real q and the exact block means, requests are planned and exchanged as in a real run; K/V and
gradients are counted, not moved, and no attention is computed).

    python bench/distributed/cp_volume.py --tokens 1048576 --blocks 64 --topk 3 --world 8

Data (--data): "recency" gives q and k RoPE-like positional features (nearby keys score
highest: the gate picks the most recent past blocks, the best case for selective fetching).
"random" draws q, k i.i.d. normal: every query's top blocks are uniform over
its past, the worst case for selective fetching. "drift" puts a smooth latent m(t) (random
Fourier features, correlation length --corr blocks) under q and k plus noise, so nearby blocks
score highest: the locality trained MoBA gates show (recent context). Bytes do not depend on
head_dim's value beyond a factor, so a small head_dim keeps the run cheap.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time

import torch

from moba import distributed as mdist


def rank_data(args, lay, rank, gen_seed):
    idx = lay.global_index(rank)  # global positions (one sequence)
    L, D = idx.numel(), args.dim
    g = torch.Generator().manual_seed(gen_seed * 1000 + rank)
    if args.data == "random":
        q = torch.randn(L, args.hq, D, generator=g)
        k = torch.randn(L, args.hkv, D, generator=g)
    elif args.data == "recency":
        # RoPE-like: half the dims carry cos/sin of the position at geometric frequencies
        # (periods 2 .. 64 blocks), the rest noise; q.k then peaks at nearby positions and
        # decays with distance, so a query's best past blocks are the most recent ones.
        B = args.tokens // args.blocks
        F = D // 4
        periods = B * 2.0 * (32.0 ** (torch.arange(F, dtype=torch.float64) / max(F - 1, 1)))
        ang = 2 * math.pi * idx.double()[:, None] / periods[None, :]
        feats = torch.cat([torch.cos(ang), torch.sin(ang)], 1).float() * args.signal
        pad = D - feats.shape[1]
        k = torch.cat([feats[:, None].expand(L, args.hkv, -1),
                       args.noise * torch.randn(L, args.hkv, pad, generator=g)], 2)
        q = torch.cat([feats[:, None].expand(L, args.hq, -1),
                       args.noise * torch.randn(L, args.hq, pad, generator=g)], 2)
        q = q + args.noise * torch.randn(L, args.hq, D, generator=g)
    else:
        # m(t) = sqrt(2/F) * sum_f w_f cos(2 pi t / lambda_f + phi_f): one shared latent per
        # KV head (same seed on every rank), length scales around --corr blocks.
        B = args.tokens // args.blocks
        F = 64
        shared = torch.Generator().manual_seed(gen_seed)
        lam = args.corr * B * torch.exp(torch.randn(args.hkv, F, generator=shared) * 0.5)
        phi = torch.rand(args.hkv, F, generator=shared) * 2 * math.pi
        w = torch.randn(args.hkv, F, D, generator=shared)
        t = idx.double()
        m = torch.empty(L, args.hkv, D)
        for h in range(args.hkv):
            feats = torch.cos(2 * math.pi * t[:, None] / lam[h].double()[None, :] + phi[h].double())
            m[:, h] = (feats.float() @ w[h]) * math.sqrt(2.0 / F)
        G = args.hq // args.hkv
        k = m + args.noise * torch.randn(L, args.hkv, D, generator=g)
        q = m.repeat_interleave(G, 1) + args.noise * torch.randn(L, args.hq, D, generator=g)
    return q.to(torch.bfloat16), k.to(torch.bfloat16)


def run(args, layout_kind):
    cu = [0, args.tokens]
    lay = (mdist.ShardLayout.zigzag if layout_kind == "zigzag" else mdist.ShardLayout.contiguous)(cu, args.world)
    tps = mdist.ThreadTransport.group(args.world)
    stats, errors, hybrid = [None] * args.world, [], [None] * args.world
    B = args.tokens // args.blocks

    def work(r):
        try:
            q, k = rank_data(args, lay, r, args.seed)
            info = {}
            mdist.moba_attn_varlen_cp(q, k, k, lay, B, args.topk, transport=tps[r], dry_run=True,
                                      info=info)
            stats[r] = tps[r].stats
            hybrid[r] = hybrid_estimate(args, lay, r, info["selection"])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            tps[r].hub.barrier.abort()

    torch.set_num_threads(max(1, torch.get_num_threads() // args.world))
    ts = [threading.Thread(target=work, args=(r,)) for r in range(args.world)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return lay, stats, hybrid


def hybrid_estimate(args, lay, rank, sel):
    """NOT implemented, an estimate from the same selections: bytes (fwd, fwd+bwd) if each remote
    (block, KV head) were served the cheaper way: fetch its K/V (as now; backward returns fp32
    dK/dV) or send the n queries that chose it to the owner (q bf16 there, fp32 partial out and
    lse back, merged by LSE; backward: dout and out bf16 plus lse there, fp32 dq back)."""
    B, D, G = args.tokens // args.blocks, args.dim, args.hq // args.hkv
    own = torch.zeros(args.blocks, dtype=torch.bool)
    for p in lay.pieces(rank):
        for j in range(p.start // B, -(-p.end // B)):
            own[j] |= p.start <= j * B and (j + 1) * B <= p.end
    fetch_f, fetch_b = 2 * B * D * 2, 2 * B * D * 4
    send_f, send_b = D * 2 + D * 4 + 4, 2 * D * 2 + 4 + D * 4
    fwd = both = 0
    for g in range(args.hkv):
        s = sel[:, g * G:(g + 1) * G].reshape(-1).long()
        n = torch.bincount(s[s >= 0], minlength=args.blocks)
        for j in range(args.blocks):
            if n[j] == 0 or own[j]:
                continue
            f, b = fetch_f, fetch_f + fetch_b
            qf, qb = int(n[j]) * send_f, int(n[j]) * (send_f + send_b)
            both += min(b, qb)
            fwd += f if b <= qb else qf
    return fwd, both


def fmt(n):
    return f"{n / 2**20:,.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1 << 20)
    ap.add_argument("--blocks", type=int, default=64)
    ap.add_argument("--topk", type=int, default=3)
    ap.add_argument("--world", type=int, default=8)
    ap.add_argument("--hq", type=int, default=4)
    ap.add_argument("--hkv", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--data", nargs="+", default=["random", "recency"], choices=["random", "recency", "drift"])
    ap.add_argument("--layouts", nargs="+", default=["contiguous", "zigzag"])
    ap.add_argument("--corr", type=float, default=2.0, help="drift: latent correlation length in blocks")
    ap.add_argument("--noise", type=float, default=0.3, help="recency, drift: noise std on q and k")
    ap.add_argument("--signal", type=float, default=3.0, help="recency: scale of the positional features")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also append the markdown to this file")
    args = ap.parse_args()
    kv_bytes, grad_bytes = 2, 4  # bf16 K/V; fp32 dK/dV (both schemes)
    lines = [f"### {args.tokens} tokens, {args.blocks} blocks of {args.tokens // args.blocks}, top-{args.topk}, "
             f"P = {args.world}, Hq = {args.hq}, Hkv = {args.hkv}, head_dim = {args.dim}, bf16 K/V, fp32 dK/dV",
             "", "`" + " ".join(["python"] + sys.argv) + "`", ""]
    for data in args.data:
        args.data = data
        for kind in args.layouts:
            t0 = time.time()
            lay, stats, hyb = run(args, kind)
            lines += [f"**data = {data}, layout = {kind}** (dry run {time.time() - t0:.0f} s); MiB per rank",
                      "",
                      "| rank | K/V recv | K/V sent | means+requests+sizes sent | dK/dV sent | fwd sent+recv | ring fwd sent+recv | fwd % | fwd+bwd % |",
                      "|---|---|---|---|---|---|---|---|---|"]
            hyb_f = sum(h[0] for h in hyb) * 2  # each byte is sent once and received once
            hyb_b = sum(h[1] for h in hyb) * 2
            tot = dict(ours_f=0, ring_f=0, ours_b=0, ring_b=0)
            for r, st in enumerate(stats):
                ring = mdist.ring_attention_bytes(lay, r, args.hkv, args.dim, kv_bytes, grad_bytes)
                meta = st.total_sent(["means", "requests", "sizes"])
                meta_r = st.total_received(["means", "requests", "sizes"])
                # The backward returns dK/dV of exactly the fetched positions (fp32): what the rank
                # received as K/V it sends back as gradients, and vice versa.
                grad_sent = st.received["kv"] // kv_bytes * grad_bytes
                grad_recv = st.sent["kv"] // kv_bytes * grad_bytes
                ours_f = st.sent["kv"] + st.received["kv"] + meta + meta_r
                ours_b = ours_f + grad_sent + grad_recv
                ring_f = 2 * ring["forward"]
                ring_b = 2 * ring["backward"]
                for key, val in (("ours_f", ours_f), ("ring_f", ring_f), ("ours_b", ours_b), ("ring_b", ring_b)):
                    tot[key] += val
                lines.append(f"| {r} | {fmt(st.received['kv'])} | {fmt(st.sent['kv'])} | {fmt(meta)} | {fmt(grad_sent)} | "
                             f"{fmt(ours_f)} | {fmt(ring_f)} | {100 * ours_f / ring_f:.1f} | {100 * ours_b / ring_b:.1f} |")
            lines.append(f"| all | | | | | {fmt(tot['ours_f'])} | {fmt(tot['ring_f'])} | "
                         f"**{100 * tot['ours_f'] / tot['ring_f']:.1f}** | **{100 * tot['ours_b'] / tot['ring_b']:.1f}** |")
            lines.append("")
            lines.append(f"Estimate only (not implemented): a per-block hybrid that sends queries instead of "
                         f"K/V for rarely chosen blocks would move {100 * hyb_f / tot['ring_f']:.1f} % (fwd) / "
                         f"{100 * hyb_b / tot['ring_b']:.1f} % (fwd+bwd) of ring attention's bytes here.")
            lines.append("")
            print("\n".join(lines[-(len(stats) + 7):]), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
