"""Pure-PyTorch reference of docs/semantics.md: dense masked attention in fp64 with the MoBA gate
computed exactly as specified (key mean: exact sum -> fp32 divide -> round to the input dtype;
scores <q, mean> in fp64; ties to the earlier block). Small shapes only (O(N^2) per sequence)."""

from __future__ import annotations

import math

import torch


def block_scores(q: torch.Tensor, k: torch.Tensor, cu: list, block: int):
    """Per sequence: fp64 scores [Hq, N, n_blocks] of every token against every block's key mean
    (full blocks only; a block that is not complete is never a past block)."""
    hq, hkv = q.shape[1], k.shape[1]
    out = []
    for b in range(len(cu) - 1):
        s, e = cu[b], cu[b + 1]
        n = e - s
        nfull = n // block
        if nfull == 0:
            out.append(None)
            continue
        kk = k[s:s + nfull * block].double().reshape(nfull, block, hkv, -1)
        mean = (kk.sum(dim=1).float() / block).to(k.dtype).double()  # [nfull, hkv, D]
        mean = mean.repeat_interleave(hq // hkv, dim=1)  # per query head
        out.append(torch.einsum("thd,jhd->htj", q[s:e].double(), mean))
    return out


def moba_selection(q, k, cu: list, block: int, topk: int) -> torch.Tensor:
    """int32 [total, Hq, topk - 1]: the chosen past blocks, ascending, -1 unused."""
    total, hq = q.shape[0], q.shape[1]
    slots = max(topk - 1, 0)
    sel = torch.full((total, hq, slots), -1, dtype=torch.int32)
    if slots == 0:
        return sel
    for b, scores in enumerate(block_scores(q, k, cu, block)):
        s, e = cu[b], cu[b + 1]
        for t in range(e - s):
            i = t // block  # own block; past blocks 0 .. i-1
            if i == 0:
                continue
            sc = scores[:, t, :i]  # [Hq, i]
            # Stable descending sort: equal scores keep ascending block order (earlier wins).
            order = torch.sort(sc, dim=1, descending=True, stable=True).indices[:, :slots]
            chosen = torch.sort(order, dim=1).values
            sel[s + t, :, :chosen.shape[1]] = chosen.to(torch.int32)
    return sel


def key_mask(mode: str, cu: list, hq: int, *, block=0, selection=None, alphas=None, betas=None,
             sink=64) -> torch.Tensor:
    """bool [Hq, total, total]: which key each (head, query) sees."""
    total = cu[-1]
    mask = torch.zeros((hq, total, total), dtype=torch.bool)
    for b in range(len(cu) - 1):
        s, e = cu[b], cu[b + 1]
        n = e - s
        t = torch.arange(n).view(n, 1)
        j = torch.arange(n).view(1, n)
        causal = j <= t
        if mode == "full":
            m = causal.expand(hq, n, n)
        elif mode == "moba":
            own = (j // block) == (t // block)
            m = (causal & own).expand(hq, n, n).clone()
            if selection is not None and selection.shape[2] > 0:
                sel = selection[s:e].long()  # [n, hq, slots]
                jb = (torch.arange(n) // block).view(1, 1, n)
                for slot in range(sel.shape[2]):
                    blk = sel[:, :, slot].transpose(0, 1).unsqueeze(-1)  # [hq, n, 1]
                    m |= (blk >= 0) & (jb == blk)
        elif mode == "moa":
            rows = []
            for h in range(hq):
                w = math.floor(float(alphas[h]) + float(betas[h]) * n)
                w = min(max(w, 1), max(n, 1))
                rows.append(causal & ((j < sink) | (j > t - w)))
            m = torch.stack(rows) if rows else causal.expand(hq, n, n)
        else:
            raise ValueError(mode)
        mask[:, s:e, s:e] = m
    return mask


def attention(q, k, v, mask: torch.Tensor, scale=None):
    """fp64 masked attention; differentiable. Returns out [total, Hq, D] (fp64), lse [Hq, total]."""
    hq, hkv, d = q.shape[1], k.shape[1], q.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qd = q.double().transpose(0, 1)  # [Hq, T, D]
    kd = k.double().repeat_interleave(hq // hkv, dim=1).transpose(0, 1)
    vd = v.double().repeat_interleave(hq // hkv, dim=1).transpose(0, 1)
    s = scale * qd @ kd.transpose(1, 2)
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1))
    out = (p @ vd).transpose(0, 1)
    return out, lse


def expand_per_head(xs, hq, hkv):
    xs = list(xs)
    if len(xs) == hq:
        return xs
    return [xs[h // (hq // hkv)] for h in range(hq)]
