"""``moba.moa.attention_influence``: the MoA profiling measure, computed by the attention engine.

For dense causal attention with probabilities ``P`` (row ``t``, key ``j <= t``), the loss
gradient at the softmax input is ``dS = P * (dP - D)`` with ``dP_j = <dout_t, v_j>`` and
``D_t = sum_j P_j dP_j`` (docs/semantics.md, "Backward"). Masking the entry ``(t, j)`` and
renormalising the row changes the loss, to first order, by ``-dS[t, j]``: removing ``P_j``
from the row and scaling the rest by ``1 / (1 - P_j)`` moves the output by
``-P_j (v_j - out_t) + O(P_j^2)``, whose inner product with ``dout_t`` is ``-dS[t, j]``. This is
the MoA paper's attention influence, ``dL/dA * A`` with the renormalisation term.
The sums of a masked set add up (first order), so a rule's expected loss increase is the sum of
the influence of the pairs it drops. We keep two measures:

* ``signed``: sum of ``-dS`` (the first-order loss change itself; its sum over a full row is 0),
* ``magnitude``: sum of ``|dS|`` (per sample, an upper bound of ``|loss change|``; summed over
  a calibration set it does not cancel between samples, which makes it the robust default).

Both are reduced on the fly into ``[measure, query head, sink flag, distance bin]`` sums: never
an N x N matrix. CPU tensors run the C++ library (``moba::attention_influence``: tiled, OpenMP;
``backend="reference"``: fp64 loops). CUDA tensors run a chunked PyTorch path (a block of query
rows against all earlier keys at a time, ``chunk_elements`` scores per block; never N x N), as
the C++ library has no CUDA kernel for it yet.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from .. import _core

MEASURES = ("signed", "magnitude")


def _check_edges(edges: Sequence[int]) -> List[int]:
    edges = [int(e) for e in edges]
    if not edges or edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"moba: edges: expected strictly ascending distances starting at 0, got "
                         f"{edges[:8]}{'...' if len(edges) > 8 else ''}")
    return edges


@torch.library.custom_op("moba::attention_influence", mutates_args=())
def _influence_op(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                  cu_seqlens: Tensor, max_seqlen: int, edges: List[int], sink: int,
                  softmax_scale: float, backend: str, chunk_elements: int) -> Tensor:
    if q.device.type == "cuda" or backend == "torch":
        return _influence_chunked(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, edges, sink,
                                  softmax_scale, chunk_elements)
    _core.check_qkv(q, k, v)
    cu = _core.host_cu_seqlens(cu_seqlens)
    _core.check_max_seqlen(cu, max_seqlen)
    q, k, v = (_core.last_dim_contiguous(x) for x in (q, k, v))
    out, dout = _core.last_dim_contiguous(out), _core.last_dim_contiguous(dout)
    if dout.dtype != q.dtype:
        dout = dout.to(q.dtype)
    d = _core.describe
    flat = _core._C.influence(d("q", q), d("k", k), d("v", v), d("out", out), d("lse", lse),
                              d("dout", dout), d("cu_seqlens", cu), softmax_scale=softmax_scale,
                              edges=list(edges), sink=sink, backend=backend,
                              num_threads=torch.get_num_threads())
    return torch.tensor(flat, dtype=torch.float64).view(2, q.shape[1], 2, len(edges))


@_influence_op.register_fake
def _(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, edges, sink, softmax_scale, backend,
      chunk_elements):
    return q.new_empty((2, q.shape[1], 2, len(edges)), dtype=torch.float64)


def attention_influence(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                        cu_seqlens: Tensor, max_seqlen: int, edges: Sequence[int], sink: int = 64,
                        softmax_scale: Optional[float] = None, backend: str = "auto",
                        chunk_elements: int = 1 << 25) -> Tensor:
    """Influence sums of dense causal attention, f64 ``[2, Hq, 2, len(edges)]``:
    ``[measure (0 signed, 1 magnitude), query head, sink flag (1: key j < sink), bin]``; bin
    ``b`` holds distances ``t - j`` in ``[edges[b], edges[b + 1])``, the last bin open-ended.

    Inputs as the attention backward's (varlen layout): the forward's ``out`` and ``lse`` and
    ``dout = dL/dout``. ``backend``: "auto"/"cpu"/"reference" (C++), or "torch" (the chunked
    PyTorch path, which CUDA tensors always take).
    """
    edges = _check_edges(edges)
    if isinstance(sink, bool) or not isinstance(sink, int) or sink < 0:
        raise ValueError(f"moba: sink: expected an int >= 0, got {sink!r}")
    if backend not in _core.BACKENDS + ("torch",):
        raise ValueError(f"moba: backend: expected one of {', '.join(_core.BACKENDS + ('torch',))}"
                         f", got {backend!r}")
    scale = float(softmax_scale) if softmax_scale is not None else 0.0
    return _influence_op(dout, q, k, v, out, lse, cu_seqlens, int(max_seqlen), edges, int(sink),
                         scale, backend, int(chunk_elements))


def _influence_chunked(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, edges, sink, scale,
                       chunk_elements):
    """Query blocks x all earlier keys; scores in fp32, sums in fp64.

    A distance bin of a query row t is a contiguous run of keys (distances [e_b, e_b+1) are
    keys (t - e_b+1, t - e_b]), so per row the bin sums are differences of a prefix sum over
    the keys, read at the bin edges: no scatter (whose atomics would all hit a few bins).
    Keys j < sink get their own prefix sum. Memory ~ 6 x chunk_elements x 8 bytes.
    """
    _core.check_qkv(q, k, v)
    dev = q.device
    hq, hkv, dim = q.shape[1], k.shape[1], q.shape[2]
    group = hq // hkv
    scale = scale if scale > 0 else 1.0 / math.sqrt(dim)
    bins = len(edges)
    cu = _core.host_cu_seqlens(cu_seqlens).tolist()
    lower = torch.tensor(edges, device=dev)                       # e_b
    upper = torch.tensor(edges[1:] + [1 << 30], device=dev)        # e_b+1 (last bin: open)
    res = torch.zeros(2, hq, 2, bins, dtype=torch.float64, device=dev)
    for s0, s1 in zip(cu, cu[1:]):
        n = s1 - s0
        if n == 0:
            continue
        heads = lambda x: x[s0:s1].transpose(0, 1).float()  # noqa: E731 [heads, n, D]
        qs, dos, outs = heads(q), heads(dout), heads(out)
        ks = heads(k).repeat_interleave(group, 0)
        vs = heads(v).repeat_interleave(group, 0)
        delta = (dos * outs).sum(-1)             # [hq, n]
        ls = lse[:, s0:s1].float()
        rows = max(1, int(chunk_elements) // (hq * n))
        for c0 in range(0, n, rows):
            c1 = min(n, c0 + rows)
            t = torch.arange(c0, c1, device=dev).view(-1, 1)
            j = torch.arange(c1, device=dev).view(1, -1)
            visible = j <= t
            sc = torch.matmul(qs[:, c0:c1], ks[:, :c1].transpose(1, 2)).mul_(scale)
            p = torch.exp(sc.sub_(ls[:, c0:c1, None])).masked_fill_(~visible, 0.0)
            del sc
            dp = torch.matmul(dos[:, c0:c1], vs[:, :c1].transpose(1, 2))
            ds = p.mul_(dp.sub_(delta[:, c0:c1, None])).double()
            del p, dp
            # Prefix-sum positions (x + 1 for "keys j <= x") of each row's bin edges.
            hi = (t - lower.view(1, -1) + 1).clamp(min=0)          # [rows, bins]
            lo = (t - upper.view(1, -1) + 1).clamp(min=0)
            nsink = min(sink, c1)
            for m, vals in enumerate((ds.neg(), ds.abs())):
                for flag, part in ((0, vals[:, :, nsink:]), (1, vals[:, :, :nsink])):
                    width = part.shape[2]
                    if width == 0:
                        continue
                    off = nsink if flag == 0 else 0
                    pre = torch.nn.functional.pad(part.cumsum(-1), (1, 0))
                    h_i = (hi - off).clamp(0, width).expand(hq, -1, -1)
                    l_i = (lo - off).clamp(0, width).expand(hq, -1, -1)
                    sums = pre.gather(2, h_i) - pre.gather(2, l_i)  # [hq, rows, bins]
                    res[m, :, flag] += sums.sum(1)
    return res
