"""Context parallelism: one long sequence (or a varlen batch) sharded over the ranks of a
torch.distributed process group, attention computed exactly as on one process.

MoBA needs little of the other ranks' keys: the block means (tiny) and the few K/V blocks its
queries select. One forward on rank ``r``:

1. **Means.** Each rank sums (fp64) its keys of every complete block it holds part of; one
   all-reduce of those sums gives every rank the exact means the single-process gate uses
   (fp64 sum, fp32 divide, rounded to the dtype: docs/semantics.md "Gate").
2. **Gate.** The rank's queries score all past blocks of their sequence (``paged_moba_gate``:
   same means, same tie rule), giving the very selection of one process.
3. **Fetch.** The K/V positions the rank's queries see but another rank holds (selected
   blocks, the head of an own block that straddles a shard boundary) are requested from their
   owners in one all-to-all, deduplicated per (sequence, KV head, block).
4. **Attention** over the rank's own pages plus the fetched pages with the external
   selection (``paged_attention``), overlapped with the fetch: MoBA rows whose own block is
   local first attend to their own block and the locally held selected blocks while the K/V
   all-to-all is in flight, then to the fetched blocks (partials merged by log-sum-exp); full
   and MoA rows whose keys are all held here attend first, the others after the fetch.

The backward runs ``paged_attention_backward`` over the same pages: dq stays local, dK/dV of the
rank's own positions are accumulated locally and those of fetched positions go back to their
owners in one all-to-all and are summed there (fp32, rounded once). The gradients of fetched
positions are computed first and sent asynchronously while the gradients that read only local
keys compute. Full causal attention (every past block "selected": ring attention's key set)
and MoA (windows reach only neighbours plus the sink) run through the same machinery. On CUDA
tensors (bf16/f16, head_dim 64/128, a CUDA build) the paged kernels run on the GPU. The op is
the custom op ``moba::cp_attention`` (fake implementation, autograd), so torch.compile traces
around it.

Transports: ``TorchTransport`` (any torch.distributed backend: gloo on CPUs, NCCL on GPUs) and
``ThreadTransport`` (P ranks as threads of one process, used by the dry-run volume count).
Every collective is counted in bytes per rank (``CommStats``); ``ring_attention_bytes`` gives
ring attention's volume for the same layout. See docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _core
from ._core import _C

__all__ = ["Piece", "ShardLayout", "CommStats", "Transport", "TorchTransport", "ThreadTransport",
           "context_parallel_attn", "moba_attn_varlen_cp", "ring_attention_bytes",
           "context_parallel"]


def _fail(arg: str, expected: str, got: str, exc: type = ValueError):
    _core.fail(arg, expected, got, exc)


# ---------------------------------------------------------------------------------------------
# Layout: which tokens each rank holds


@dataclass(frozen=True)
class Piece:
    """Positions ``start .. end-1`` of sequence ``seq``, held as local tokens
    ``offset .. offset + end - start - 1`` of a rank."""
    seq: int
    start: int
    end: int
    offset: int


class ShardLayout:
    """How a varlen batch (global ``cu_seqlens``) is split over ``world_size`` ranks.

    A rank holds a list of pieces (runs of consecutive positions of one sequence); its local
    tensors are the pieces' tokens concatenated in order. Every token belongs to exactly one
    rank. Build with ``contiguous`` (the packed token axis cut into P near-equal runs) or
    ``zigzag`` (every sequence cut into 2P chunks, rank r holding chunks r and 2P-1-r: causal
    work balanced), or give the pieces yourself: ``ShardLayout(cu_seqlens, [[(seq, start,
    end), ...] per rank])``.
    """

    def __init__(self, cu_seqlens, ranks: Sequence[Sequence[Tuple[int, int, int]]]):
        cu = cu_seqlens.tolist() if isinstance(cu_seqlens, Tensor) else [int(x) for x in cu_seqlens]
        if len(cu) < 2 or cu[0] != 0 or any(b < a for a, b in zip(cu, cu[1:])):
            _fail("cu_seqlens", "[0, ..., total] non-decreasing with batch + 1 >= 2 entries", str(cu))
        if len(ranks) < 1:
            _fail("ranks", "pieces for at least one rank", "none")
        self.cu_seqlens: List[int] = cu
        self.seqlens = [b - a for a, b in zip(cu, cu[1:])]
        self.world_size = len(ranks)
        self._pieces: List[List[Piece]] = []
        covered = [[] for _ in self.seqlens]
        for r, lst in enumerate(ranks):
            off, pieces = 0, []
            for (s, a, b) in lst:
                s, a, b = int(s), int(a), int(b)
                if not (0 <= s < len(self.seqlens)) or not (0 <= a < b <= self.seqlens[s]):
                    _fail(f"ranks[{r}]", "pieces (seq, start, end) with 0 <= start < end <= the "
                          "sequence's length", str((s, a, b)))
                pieces.append(Piece(s, a, b, off))
                covered[s].append((a, b))
                off += b - a
            self._pieces.append(pieces)
        for s, spans in enumerate(covered):
            pos = 0
            for a, b in sorted(spans):
                if a != pos:
                    _fail("ranks", f"every position of sequence {s} held by exactly one rank",
                          f"a gap or overlap at position {min(a, pos)}")
                pos = b
            if pos != self.seqlens[s]:
                _fail("ranks", f"every position of sequence {s} held by exactly one rank",
                      f"positions {pos}..{self.seqlens[s] - 1} held by none")

    @classmethod
    def contiguous(cls, cu_seqlens, world_size: int) -> "ShardLayout":
        """The packed token axis cut into ``world_size`` consecutive runs of near-equal length."""
        cu = cu_seqlens.tolist() if isinstance(cu_seqlens, Tensor) else list(cu_seqlens)
        total = int(cu[-1])
        if world_size < 1:
            _fail("world_size", "an int >= 1", str(world_size))
        bounds = [total * r // world_size for r in range(world_size + 1)]
        ranks = []
        for r in range(world_size):
            lo, hi, lst = bounds[r], bounds[r + 1], []
            for s in range(len(cu) - 1):
                a, b = max(lo, cu[s]), min(hi, cu[s + 1])
                if a < b:
                    lst.append((s, a - cu[s], b - cu[s]))
            ranks.append(lst)
        return cls(cu, ranks)

    @classmethod
    def zigzag(cls, cu_seqlens, world_size: int) -> "ShardLayout":
        """Every sequence cut into 2P near-equal chunks; rank r holds chunks r and 2P-1-r."""
        cu = cu_seqlens.tolist() if isinstance(cu_seqlens, Tensor) else list(cu_seqlens)
        if world_size < 1:
            _fail("world_size", "an int >= 1", str(world_size))
        n2 = 2 * world_size
        ranks = [[] for _ in range(world_size)]
        for s in range(len(cu) - 1):
            n = cu[s + 1] - cu[s]
            cut = [n * c // n2 for c in range(n2 + 1)]
            for r in range(world_size):
                for c in (r, n2 - 1 - r):
                    a, b = cut[c], cut[c + 1]
                    if a >= b:
                        continue
                    lst = ranks[r]
                    if lst and lst[-1][0] == s and lst[-1][2] == a:  # adjacent: one piece
                        lst[-1] = (s, lst[-1][1], b)
                    else:
                        lst.append((s, a, b))
        return cls(cu, ranks)

    def pieces(self, rank: int) -> List[Piece]:
        return self._pieces[rank]

    def local_tokens(self, rank: int) -> int:
        return sum(p.end - p.start for p in self._pieces[rank])

    def global_index(self, rank: int) -> Tensor:
        """int64 global token indices (into the packed batch) of the rank's local tokens."""
        parts = [torch.arange(self.cu_seqlens[p.seq] + p.start, self.cu_seqlens[p.seq] + p.end)
                 for p in self._pieces[rank]]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def shard(self, x: Tensor, rank: int) -> Tensor:
        """The rank's local part of a tensor over the packed token axis (dim 0)."""
        return x.index_select(0, self.global_index(rank).to(x.device))

    def unshard(self, parts: Sequence[Tensor]) -> Tensor:
        """The packed tensor from every rank's local part (inverse of ``shard``)."""
        out = parts[0].new_empty((self.cu_seqlens[-1],) + tuple(parts[0].shape[1:]))
        for r, x in enumerate(parts):
            out.index_copy_(0, self.global_index(r).to(x.device), x)
        return out

    def owners(self, seq: int) -> List[Tuple[int, Piece]]:
        """(rank, piece) of every piece of sequence ``seq``, by position."""
        if not hasattr(self, "_owners"):
            by_seq: Dict[int, List[Tuple[int, Piece]]] = {}
            for r in range(self.world_size):
                for p in self._pieces[r]:
                    by_seq.setdefault(p.seq, []).append((r, p))
            self._owners = {s: sorted(v, key=lambda rp: rp[1].start) for s, v in by_seq.items()}
        return self._owners.get(seq, [])


# ---------------------------------------------------------------------------------------------
# Transports


@dataclass
class CommStats:
    """Bytes this rank sent to / received from other ranks, per kind of message."""
    sent: Dict[str, int] = field(default_factory=dict)
    received: Dict[str, int] = field(default_factory=dict)
    notes: Dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, sent: int, received: int) -> None:
        self.sent[kind] = self.sent.get(kind, 0) + int(sent)
        self.received[kind] = self.received.get(kind, 0) + int(received)

    def total_sent(self, kinds: Optional[Sequence[str]] = None) -> int:
        return sum(v for k, v in self.sent.items() if kinds is None or k in kinds)

    def total_received(self, kinds: Optional[Sequence[str]] = None) -> int:
        return sum(v for k, v in self.received.items() if kinds is None or k in kinds)


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


class Transport:
    """The two collectives context parallelism needs, with byte counting.

    ``all_to_all(send)`` takes one 1-D tensor per rank (``send[rank]`` is ignored: a rank
    never sends to itself) and returns one per rank, all of one dtype. ``all_reduce_sum``
    sums a tensor over the ranks. Subclasses implement ``_all_to_all`` / ``_all_reduce``.
    """

    rank: int
    world_size: int

    def __init__(self):
        self.stats = CommStats()

    def all_to_all(self, send: List[Tensor], kind: str) -> List[Tensor]:
        """Tensors on the meta device (a dry run) are counted, not moved: the ranks exchange
        only their sizes and receive meta tensors."""
        send = list(send)
        send[self.rank] = send[self.rank][:0]
        recv = self._all_to_all(send)
        self.stats.add(kind, sum(_nbytes(t) for t in send), sum(_nbytes(t) for t in recv))
        return recv

    def all_to_all_start(self, send: List[Tensor], kind: str):
        """Starts ``all_to_all`` and returns a function that waits for it and returns what it
        received, so the caller can compute meanwhile. Transports that cannot overlap finish
        here and the function returns at once."""
        recv = self.all_to_all(send, kind)
        return lambda: recv

    def all_reduce_sum(self, t: Tensor, kind: str) -> Tensor:
        out = self._all_reduce(t)
        # A ring all-reduce sends and receives 2 (P - 1) / P of the buffer per rank.
        moved = 2 * (self.world_size - 1) * _nbytes(t) // self.world_size
        self.stats.add(kind, moved, moved)
        return out

    def _all_to_all(self, send: List[Tensor]) -> List[Tensor]:
        raise NotImplementedError

    def _all_reduce(self, t: Tensor) -> Tensor:
        raise NotImplementedError


class TorchTransport(Transport):
    """torch.distributed collectives on ``group`` (None: the default group). Tensors must live
    where the backend wants them (gloo: CPU; NCCL: the rank's GPU)."""

    def __init__(self, group=None):
        super().__init__()
        import torch.distributed as dist
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("moba.distributed: torch.distributed is not initialised; call "
                               "torch.distributed.init_process_group first (or pass a transport)")
        self._dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def all_to_all_start(self, send: List[Tensor], kind: str):
        send = list(send)
        send[self.rank] = send[self.rank][:0]
        if self.world_size == 1 or send[0].device.type == "meta":
            return super().all_to_all_start(send, kind)
        out, rc, work = self._launch(send, async_op=True)
        self.stats.add(kind, sum(_nbytes(t) for t in send), _nbytes(out))

        def finish():
            work.wait()
            return list(out.split(rc))
        return finish

    def _all_to_all(self, send: List[Tensor]) -> List[Tensor]:
        if send[0].device.type == "meta" or self.world_size == 1:
            return self._sizes_only(send)
        out, rc, _ = self._launch(send, async_op=False)
        return list(out.split(rc))

    def _exchange_counts(self, send: List[Tensor], dev) -> List[int]:
        counts = torch.tensor([t.numel() for t in send], dtype=torch.int64, device=dev)
        recv_counts = torch.empty_like(counts)
        self._dist.all_to_all_single(recv_counts, counts, group=self.group)
        self.stats.add("sizes", 8 * (self.world_size - 1), 8 * (self.world_size - 1))
        return recv_counts.tolist()

    def _launch(self, send: List[Tensor], async_op: bool):
        dev, dtype = send[0].device, send[0].dtype
        rc = self._exchange_counts(send, dev)
        flat = torch.cat([t.reshape(-1) for t in send])
        out = torch.empty(sum(rc), dtype=dtype, device=dev)
        work = self._dist.all_to_all_single(out, flat, output_split_sizes=rc,
                                            input_split_sizes=[t.numel() for t in send],
                                            group=self.group, async_op=async_op)
        return out, rc, work

    def _sizes_only(self, send: List[Tensor]) -> List[Tensor]:
        """World size 1 (nothing to send) or a dry run (meta tensors): only sizes travel."""
        dtype = send[0].dtype
        if self.world_size == 1:
            return [send[0][:0]]
        # sizes travel on the backend's device (gloo: CPU; NCCL: this rank's GPU)
        dev = torch.device("cuda", torch.cuda.current_device()) \
            if self._dist.get_backend(self.group) == "nccl" else torch.device("cpu")
        rc = self._exchange_counts(send, dev)
        return [torch.empty(n, dtype=dtype, device="meta") for n in rc]

    def _all_reduce(self, t: Tensor) -> Tensor:
        if self.world_size > 1:
            t = t.clone()
            self._dist.all_reduce(t, group=self.group)
        return t


class _Hub:
    def __init__(self, world_size: int):
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size)
        self.slots: List[object] = [None] * world_size


class ThreadTransport(Transport):
    """P ranks as threads of one process sharing a hub: ``ThreadTransport.group(P)`` returns one
    transport per rank. Used to run the same code for every rank without processes (the dry-run
    volume count, quick checks); tensors move by reference."""

    def __init__(self, hub: _Hub, rank: int):
        super().__init__()
        self.hub, self.rank, self.world_size = hub, rank, hub.world_size

    @staticmethod
    def group(world_size: int) -> List["ThreadTransport"]:
        hub = _Hub(world_size)
        return [ThreadTransport(hub, r) for r in range(world_size)]

    def _exchange(self, item):
        self.hub.barrier.wait()
        self.hub.slots[self.rank] = item
        self.hub.barrier.wait()
        items = list(self.hub.slots)
        self.hub.barrier.wait()
        return items

    def _all_to_all(self, send: List[Tensor]) -> List[Tensor]:
        items = self._exchange(send)
        return [items[src][self.rank] for src in range(self.world_size)]

    def _all_reduce(self, t: Tensor) -> Tensor:
        items = self._exchange(t)
        out = items[0].clone()
        for x in items[1:]:
            out += x  # rank order: the same sum on every rank
        return out


def ring_attention_bytes(layout: ShardLayout, rank: int, num_kv_heads: int, head_dim: int,
                         kv_bytes: int, grad_bytes: int) -> Dict[str, int]:
    """Bytes ring attention sends per rank for the same layout (what it receives is the same
    by symmetry of the ring, up to shard sizes).

    Forward: P - 1 steps, at step s rank r forwards the K/V shard of rank r - s.
    Backward (ring-flash-attn's scheme): K/V go around again (P - 1 steps) and the dK/dV
    accumulators of each shard travel P steps back to their owner, in ``grad_bytes`` per element.
    """
    P = layout.world_size
    per_token = num_kv_heads * head_dim * 2  # K and V
    sizes = [layout.local_tokens(r) for r in range(P)]
    fwd = sum(sizes[(rank - s) % P] for s in range(P - 1)) * per_token * kv_bytes
    grads = sum(sizes[(rank - s) % P] for s in range(P)) * per_token * grad_bytes if P > 1 else 0
    return {"forward": fwd, "backward": fwd + grads}


# ---------------------------------------------------------------------------------------------
# Parameters of one call


@dataclass
class _Params:
    mode: str               # "moba", "full" or "moa"
    block_size: int         # MoBA block; the page (= fetch unit) size for every mode
    topk: int               # MoBA, effective (clamped like the single-process op)
    scale: float            # 0: 1/sqrt(D)
    alphas: List[float]     # MoA, per query head
    betas: List[float]
    sink: int
    backend: str

    def window(self, h: int, seqlen: int) -> int:
        """MoA window of query head h in a sequence of ``seqlen`` tokens, exactly as the C++
        core computes it (fp32 parameters, fp64 floor)."""
        a = float(torch.tensor(self.alphas[h], dtype=torch.float32))
        b = float(torch.tensor(self.betas[h], dtype=torch.float32))
        span = math.floor(a + b * float(seqlen))
        return 1 if span < 1 else min(int(span), max(seqlen, 1))

    def kernel(self, window: Optional[List[int]] = None) -> dict:
        """Keyword arguments of the paged kernels. MoA passes the windows of this call's
        sequences as alpha (beta 0): the kernel sees only a prefix of each sequence, whose
        length must not change the window."""
        if self.mode == "moa":
            return _core.params("moa", softmax_scale=self.scale, alphas=[float(w) for w in window],
                                betas=[0.0] * len(window), sink=self.sink)
        if self.mode == "moba":
            return _core.params("moba", self.block_size, self.topk, self.scale)
        return _core.params("full", softmax_scale=self.scale)


def _run_options(t: Tensor, backend: str) -> dict:
    return _core._run_options(t, backend, False)


def _d(name, t):
    return _core.describe(name, t)


# ---------------------------------------------------------------------------------------------
# One rank's forward and backward


def _expand(starts: Tensor, lengths: Tensor) -> Tensor:
    """concat(arange(s, s + n) for s, n in zip(starts, lengths)) as int64."""
    total = int(lengths.sum()) if lengths.numel() else 0
    if total == 0:
        return torch.zeros(0, dtype=torch.long)
    first = torch.cumsum(lengths, 0) - lengths
    return torch.repeat_interleave(starts - first, lengths) + torch.arange(total)


class _RankState:
    """Everything one rank's forward builds and its backward reuses."""

    def __init__(self, layout: ShardLayout, prm: _Params, transport: Transport):
        self.layout, self.prm, self.tp = layout, prm, transport
        self.rank = transport.rank
        if layout.world_size != transport.world_size:
            _fail("layout", f"a layout for the group's {transport.world_size} ranks",
                  f"{layout.world_size} ranks")
        self.pieces = layout.pieces(self.rank)
        self.L = layout.local_tokens(self.rank)
        # Overlap accounting (info["overlap"]): query rows computed while the forward's K/V
        # fetch was in flight, and rows whose gradients computed while the dK/dV went back.
        self.rows_before_fetch = 0
        self.rows_during_grad_send = 0

    # -- step 1: block means ------------------------------------------------------------------

    def block_means(self, k: Tensor) -> Tensor:
        """[num_complete_blocks_of_all_sequences, Hkv, D] in k's dtype, from one all-reduce of
        exact fp64 partial sums."""
        B, lay = self.prm.block_size, self.layout
        nblocks = [n // B for n in lay.seqlens]
        self.block_base = [0]
        for n in nblocks:
            self.block_base.append(self.block_base[-1] + n)
        sums = torch.zeros((self.block_base[-1],) + tuple(k.shape[1:]), dtype=torch.float64,
                           device=k.device)
        for p in self.pieces:
            hi = min(p.end, nblocks[p.seq] * B)  # keys of complete blocks only
            if hi <= p.start:
                continue
            pos = torch.arange(p.start, hi, device=k.device)
            rows = k[p.offset:p.offset + hi - p.start].to(torch.float64)
            sums.index_add_(0, self.block_base[p.seq] + pos // B, rows)
        sums = self.tp.all_reduce_sum(sums, "means")
        return (sums.to(torch.float32) / float(B)).to(k.dtype)

    # -- step 2: the gate ---------------------------------------------------------------------

    def gate(self, q: Tensor, means: Tensor, hkv: int) -> Tensor:
        B, K = self.prm.block_size, self.prm.topk - 1
        sel = torch.full((self.L, q.shape[1], max(K, 0)), -1, dtype=torch.int32)
        if K <= 0 or self.L == 0:
            return sel
        rows = len(self.pieces)
        max_blocks = max(1, max(p.end // B for p in self.pieces))
        D = q.shape[2]
        bm = torch.zeros((rows, hkv, max_blocks, D), dtype=q.dtype)
        for i, p in enumerate(self.pieces):
            n = min(p.end // B, self.layout.seqlens[p.seq] // B)
            base = self.block_base[p.seq]
            bm[i, :, :n] = means[base:base + n].permute(1, 0, 2).cpu()
        pages_per_seq = max(1, -(-max(p.end for p in self.pieces) // B))
        table = torch.full((rows, hkv, pages_per_seq), -1, dtype=torch.int32)
        seq_lens = torch.tensor([p.end for p in self.pieces], dtype=torch.int32)
        dummy = torch.zeros((1, B, D), dtype=q.dtype)
        qc = q.detach().cpu() if q.device.type != "cpu" else q.detach()
        qc = _core.last_dim_contiguous(qc)
        _C.paged_gate(_d("q", qc), _d("cu_seqlens", self.cu_q), _d("k_pages", dummy),
                      _d("v_pages", dummy), _d("page_table", table), _d("seq_lens", seq_lens),
                      _d("block_means", bm), _d("selection", sel), None,
                      **self.prm.kernel(), **_run_options(qc, "auto"))
        return sel

    # -- step 3: which positions of which (sequence, KV head, page) this rank needs -----------

    def needed(self, sel: Optional[Tensor], hq: int, hkv: int) -> Dict[Tuple[int, int, int], List[int]]:
        """{(seq, g, page): [lo, hi)}: the positions of each page some local query row sees."""
        C, prm = self.prm.block_size, self.prm
        need: Dict[Tuple[int, int, int], List[int]] = {}

        def add(seq, g, lo, hi):
            for j in range(lo // C, (hi - 1) // C + 1):
                a, b = max(lo, j * C), min(hi, (j + 1) * C)
                cur = need.get((seq, g, j))
                need[(seq, g, j)] = [a, b] if cur is None else [min(cur[0], a), max(cur[1], b)]

        G = hq // hkv
        for p in self.pieces:
            N = self.layout.seqlens[p.seq]
            for g in range(hkv):
                if prm.mode == "full":
                    add(p.seq, g, 0, p.end)
                elif prm.mode == "moba":  # own blocks causally: from the first one's start
                    add(p.seq, g, (p.start // C) * C, p.end)
                else:
                    w = max(prm.window(h, N) for h in range(g * G, (g + 1) * G))
                    sink_end = min(prm.sink, p.end)
                    win_begin = max(0, p.start - w + 1)
                    if sink_end >= win_begin:  # the sink reaches the window: one run
                        add(p.seq, g, 0, p.end)
                    else:
                        if sink_end > 0:
                            add(p.seq, g, 0, sink_end)
                        add(p.seq, g, win_begin, p.end)
        if prm.mode == "moba" and sel is not None and sel.numel():
            # Selected past blocks: unique (piece, KV head, block) over all rows and heads.
            piece_of = torch.empty(self.L, dtype=torch.long)
            for i, p in enumerate(self.pieces):
                piece_of[p.offset:p.offset + p.end - p.start] = i
            K = sel.shape[2]
            g_of = torch.arange(hq) // G
            blocks = sel.long()
            valid = blocks >= 0
            nb = max(1, max(n // C for n in self.layout.seqlens))
            key = (piece_of[:, None, None] * hkv + g_of[None, :, None]) * nb + blocks
            for kk in torch.unique(key[valid]).tolist():
                j = kk % nb
                g = (kk // nb) % hkv
                p = self.pieces[kk // nb // hkv]
                add(p.seq, g, j * C, (j + 1) * C)
            del K
        return need

    # -- step 4: pages, requests and the fetch ------------------------------------------------

    def build_pages(self, need, k: Tensor, v: Tensor, hkv: int, dry_run: bool):
        """Page pool over the needed positions: local ones copied, remote ones fetched."""
        C, lay, P = self.prm.block_size, self.layout, self.tp.world_size
        keys = sorted(need)
        self.page_of = {key: i for i, key in enumerate(keys)}
        npages, D, dev = len(keys), k.shape[2], k.device
        # Where each needed run of positions lives: (owner rank, owner local token, length,
        # g, page, offset in page).
        local_src, local_dst = [], []   # flat (token * hkv + g) local rows -> flat page rows
        req = [[] for _ in range(P)]    # per owner: (g, owner_token, length)
        dst = [[] for _ in range(P)]    # per owner: (page row start, length)
        owners = {s: lay.owners(s) for s in {key[0] for key in keys}}
        for key in keys:
            seq, g, j = key
            lo, hi = need[key]
            for r, pc in owners[seq]:
                a, b = max(lo, pc.start), min(hi, pc.end)
                if a >= b:
                    continue
                tok = pc.offset + a - pc.start
                row0 = self.page_of[key] * C + a - j * C
                if r == self.rank:
                    local_src.append((tok * hkv + g, b - a))
                    local_dst.append((row0, b - a))
                else:
                    req[r].append((g, tok, b - a))
                    dst[r].append((row0, b - a))

        def flat(runs):
            if not runs:
                return torch.zeros(0, dtype=torch.long)
            t = torch.tensor(runs, dtype=torch.long)
            return t

        def rows_of(runs, stride=1):
            t = flat(runs)
            if t.numel() == 0:
                return t
            # runs of (first row, length) where consecutive tokens step by `stride` rows
            starts, lens = t[:, 0], t[:, 1]
            idx = _expand(torch.zeros_like(starts), lens)
            return torch.repeat_interleave(starts, lens) + idx * stride

        self.local_src = rows_of(local_src, hkv)   # into k.view(L * hkv, D)
        self.local_dst = rows_of(local_dst)        # into pages.view(npages * C, D)
        # Requests to owners: (g, token, length) triples, int64.
        send_req = [flat(r).reshape(-1).to(dev) for r in req]
        got_req = self.tp.all_to_all(send_req, "requests")
        self.served = []  # per requester: flat local rows it was sent (for the backward)
        for r in range(P):
            t = got_req[r].cpu().reshape(-1, 3)
            if t.numel() == 0:
                self.served.append(torch.zeros(0, dtype=torch.long))
                continue
            g, tok, n = t[:, 0], t[:, 1], t[:, 2]
            starts = tok * hkv + g
            self.served.append(torch.repeat_interleave(starts, n) +
                               _expand(torch.zeros_like(n), n) * hkv)
        self.fetched_dst = [rows_of(d) for d in dst]  # per owner: page rows of what it sends
        kv_local = torch.stack([k.reshape(-1, D), v.reshape(-1, D)], 1) if self.L else \
            torch.zeros((0, 2, D), dtype=k.dtype, device=dev)
        if dry_run:  # shapes only: count the bytes, move nothing
            send_kv = [torch.empty((int(s.numel()), 2, D), dtype=k.dtype, device="meta").reshape(-1)
                       for s in self.served]
        else:
            send_kv = [kv_local[s.to(dev)].reshape(-1) for s in self.served]
        wait_kv = self.tp.all_to_all_start(send_kv, "kv")
        if dry_run:
            wait_kv()
            return None, None, None
        k_pages = torch.zeros((max(npages, 1) * C, D), dtype=k.dtype, device=dev)
        v_pages = torch.zeros_like(k_pages)
        if self.local_src.numel():
            src = kv_local[self.local_src.to(dev)]
            k_pages[self.local_dst.to(dev)] = src[:, 0]
            v_pages[self.local_dst.to(dev)] = src[:, 1]
        shape = (max(npages, 1), C, D)

        def complete():
            """Waits for the fetch and places the remote positions into the pages."""
            got_kv = wait_kv()
            for r in range(P):
                if self.fetched_dst[r].numel():
                    x = got_kv[r].reshape(-1, 2, D)
                    k_pages[self.fetched_dst[r].to(dev)] = x[:, 0]
                    v_pages[self.fetched_dst[r].to(dev)] = x[:, 1]
        return k_pages.reshape(shape), v_pages.reshape(shape), complete

    def page_table(self, hkv: int) -> Tuple[Tensor, Tensor]:
        C = self.prm.block_size
        rows = len(self.pieces)
        pps = max(1, -(-max([p.end for p in self.pieces] + [1]) // C))
        table = torch.full((max(rows, 1), hkv, pps), -1, dtype=torch.int32)
        rows_of_seq: Dict[int, List[int]] = {}
        for i, p in enumerate(self.pieces):
            rows_of_seq.setdefault(p.seq, []).append(i)
        for (seq, g, j), page in self.page_of.items():
            for i in rows_of_seq.get(seq, ()):
                table[i, g, j] = page
        seq_lens = torch.tensor([p.end for p in self.pieces] or [0], dtype=torch.int32)
        return table, seq_lens

    # -- splitting the work so that communication overlaps compute ---------------------------

    def part_rows(self, parts, table: Tensor, cdev) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Local token indices, cu_seqlens, page-table rows and lengths of sub-rows (piece,
        first position, end position): every sub-row is one sequence of a paged call whose
        query rows are the last of a cache row cut at the sub-row's end."""
        toks, cu = [], [0]
        for i, a, b in parts:
            p = self.pieces[i]
            toks.append(torch.arange(p.offset + a - p.start, p.offset + b - p.start))
            cu.append(cu[-1] + b - a)
        sub_table = table[[i for i, _, _ in parts]].contiguous().to(cdev)
        lens = torch.tensor([b for _, _, b in parts], dtype=torch.int32).to(cdev)
        return torch.cat(toks).to(cdev), torch.tensor(cu, dtype=torch.int32), sub_table, lens

    def local_runs(self) -> Dict[int, List[Tuple[int, int]]]:
        """Per sequence, the maximal runs of positions this rank holds (adjacent pieces merged)."""
        runs: Dict[int, List[Tuple[int, int]]] = {}
        for p in sorted(self.pieces, key=lambda x: (x.seq, x.start)):
            lst = runs.setdefault(p.seq, [])
            if lst and lst[-1][1] == p.start:
                lst[-1] = (lst[-1][0], p.end)
            else:
                lst.append((p.start, p.end))
        return runs

    def split_rows(self, idx: List[int], window: Optional[List[int]]):
        """Full / MoA: the rows of pieces ``idx`` as runs (piece, a, b, local), ``local`` when
        every key the rows see is held by this rank (they need nothing fetched). A row at t sees
        full: [0, t]; MoA head h: [0, min(sink, wb)) and [wb, t], wb = max(0, t - w_h + 1)."""
        runs = self.local_runs()
        out = []
        for i in idx:
            p = self.pieces[i]
            rs = next(a for a, b in runs[p.seq] if a <= p.start < b)   # run holding the piece
            first_end = next((b for a, b in runs[p.seq] if a == 0), 0)  # held prefix [0, first_end)
            t = torch.arange(p.start, p.end)
            if self.prm.mode == "full":
                ok = torch.full((t.numel(),), rs == 0, dtype=torch.bool)
            else:
                ok = torch.ones(t.numel(), dtype=torch.bool)
                for w in sorted(set(window)):
                    wb = (t - w + 1).clamp(min=0)
                    ok &= (wb >= rs) & (wb.clamp(max=self.prm.sink) <= first_end)
            cuts = (torch.nonzero(ok[1:] != ok[:-1]).flatten() + 1).tolist()
            bounds = [0] + cuts + [t.numel()]
            for x, y in zip(bounds, bounds[1:]):
                out.append((i, p.start + x, p.start + y, bool(ok[x])))
        return out

    # -- full / MoA forward: rows needing nothing fetched first -------------------------------

    def dense_overlapped(self, q: Tensor, k_pages: Tensor, v_pages: Tensor, complete,
                         table: Tensor, cdev) -> Tuple[Tensor, Tensor]:
        """out, lse of every local row (full / MoA). Rows whose keys are all held here attend
        while the K/V fetch is in flight; the others after it landed. Every row is computed by
        exactly one call (no merge), so the result is the single call's."""
        L, hq, D = self.L, q.shape[1], q.shape[2]
        out = torch.zeros((L, hq, D), dtype=q.dtype, device=cdev)
        lse = torch.full((hq, L), -math.inf, dtype=torch.float32, device=cdev)
        opts = _run_options(q, self.prm.backend)
        self.dense_plan = []
        for idx, window in self.groups(hq):
            parts = self.split_rows(idx, window)
            self.dense_plan.append((window, [x[:3] for x in parts if x[3]],
                                    [x[:3] for x in parts if not x[3]]))

        def run(parts, window, kp, vp):
            if not parts:
                return
            toks, cu, sub_table, lens = self.part_rows(parts, table, cdev)
            qg = q[toks].contiguous()
            og = torch.empty_like(qg)
            lg = torch.empty((hq, toks.numel()), dtype=torch.float32, device=cdev)
            _C.paged_attention(_d("q", qg), _d("cu_seqlens", cu), None, _d("k_pages", kp),
                               _d("v_pages", vp), _d("page_table", sub_table),
                               _d("seq_lens", lens), None, None, False, True, _d("out", og),
                               _d("lse", lg), **self.prm.kernel(window), **opts)
            out[toks] = og
            lse[:, toks] = lg

        kp, vp = k_pages.to(cdev), v_pages.to(cdev)
        for window, local, _ in self.dense_plan:  # overlapped with the fetch
            run(local, window, kp, vp)
            self.rows_before_fetch += sum(b - a for _, a, b in local)
        complete()
        kp, vp = k_pages.to(cdev), v_pages.to(cdev)
        for window, _, remote in self.dense_plan:
            run(remote, window, kp, vp)
        return out, lse

    # -- MoBA forward overlapped with the K/V fetch ---------------------------------------------

    def moba_split(self, sel: Tensor):
        """Head rows (own block begun on another rank), body rows (own block local) and, for the
        body rows, their selection cut into blocks held entirely here and the others."""
        B = self.prm.block_size
        head, body = [], []
        local_block = {}
        for i, p in enumerate(self.pieces):
            cut = min(p.end, -(-p.start // B) * B)
            if cut > p.start:
                head.append((i, p.start, cut))
            if p.end > cut:
                body.append((i, cut, p.end))
            first, last = -(-p.start // B), p.end // B  # blocks entirely inside the piece
            local_block.setdefault(p.seq, set()).update(range(first, last))
        sel_local = sel_remote = None
        if body:
            toks = torch.cat([torch.arange(self.pieces[i].offset + a - self.pieces[i].start,
                                           self.pieces[i].offset + b - self.pieces[i].start)
                              for i, a, b in body])
            sb = sel[toks]
            is_local = torch.zeros(sb.shape, dtype=torch.bool)
            at = 0
            for i, a, b in body:
                n, mine = b - a, local_block.get(self.pieces[i].seq, set())
                if mine and sb.shape[2]:
                    chunk = sb[at:at + n].long()
                    lookup = torch.zeros(self.layout.seqlens[self.pieces[i].seq] // B + 1,
                                         dtype=torch.bool)
                    lookup[torch.tensor(sorted(mine), dtype=torch.long)] = True
                    is_local[at:at + n] = (chunk >= 0) & lookup[chunk.clamp(min=0)]
                at += n
            sel_local = torch.where(is_local, sb, torch.full_like(sb, -1)).contiguous()
            sel_remote = torch.where(is_local, torch.full_like(sb, -1), sb).contiguous()
        return head, body, sel_local, sel_remote

    def moba_overlapped(self, q: Tensor, sel: Tensor, k_pages: Tensor, v_pages: Tensor,
                        complete, table: Tensor, cdev) -> Tuple[Tensor, Tensor]:
        """out, lse of every local row, computing while the K/V fetch is in flight.

        Each piece is cut at its first block boundary: "head" rows (own block begun on another
        rank) and "body" rows (own block local). While the fetch runs, body rows attend to their
        own block and the selected blocks held entirely here (call A); once it has landed, to
        the other selected blocks (call B, no own block); A and B are merged by log-sum-exp in
        fp32 and rounded once. Head rows attend to everything in one call (C) after the fetch.
        On the CPU, A and B run on fp32 copies, so the merge adds no rounding of the input
        dtype; the CUDA kernels take bf16/f16 only, so there A and B are rounded to the dtype
        before the fp32 merge (one extra rounding of each partial).
        """
        L, hq, D = self.L, q.shape[1], q.shape[2]
        head, body, sel_local, sel_remote = self.moba_split(sel)
        self.moba_parts = (head, body, sel_local, sel_remote)
        kernel, opts = self.prm.kernel(), _run_options(q, self.prm.backend)
        part_dtype = torch.float32 if cdev.type == "cpu" else q.dtype

        def call(qg, cu, kp, vp, sub_table, lens, sg, own, out, lse):
            _C.paged_attention(_d("q", qg), _d("cu_seqlens", cu), None, _d("k_pages", kp),
                               _d("v_pages", vp), _d("page_table", sub_table),
                               _d("seq_lens", lens), None, _d("selection", sg), False, own,
                               _d("out", out), _d("lse", lse), **kernel, **opts)

        out = torch.zeros((L, hq, D), dtype=q.dtype, device=cdev)
        lse = torch.full((hq, L), -math.inf, dtype=torch.float32, device=cdev)
        if body:
            toks, cu, sub_table, lens = self.part_rows(body, table, cdev)
            qb = q[toks].to(part_dtype).contiguous()
            n = toks.numel()
            out_a = torch.empty((n, hq, D), dtype=part_dtype, device=cdev)
            lse_a = torch.empty((hq, n), dtype=torch.float32, device=cdev)
            kp, vp = k_pages.to(cdev, part_dtype), v_pages.to(cdev, part_dtype)
            call(qb, cu, kp, vp, sub_table, lens, sel_local.to(cdev), True, out_a, lse_a)  # overlapped
            self.rows_before_fetch += n
            complete()
            kp, vp = k_pages.to(cdev, part_dtype), v_pages.to(cdev, part_dtype)
            out_b = torch.empty_like(out_a)
            lse_b = torch.empty_like(lse_a)
            call(qb, cu, kp, vp, sub_table, lens, sel_remote.to(cdev), False, out_b, lse_b)
            m = torch.maximum(lse_a, lse_b)
            wa = torch.where(lse_a == -math.inf, 0.0, torch.exp(lse_a - m))
            wb = torch.where(lse_b == -math.inf, 0.0, torch.exp(lse_b - m))
            tot = wa + wb
            merged = (out_a.float() * wa.t()[:, :, None] + out_b.float() * wb.t()[:, :, None]) \
                / tot.t()[:, :, None]
            out[toks] = merged.to(q.dtype)
            lse[:, toks] = m + torch.log(tot)
        else:
            complete()
        if head:
            toks, cu, sub_table, lens = self.part_rows(head, table, cdev)
            qh, sh = q[toks].contiguous(), sel[toks.cpu()].contiguous().to(cdev)
            out_h = torch.empty((toks.numel(), hq, D), dtype=q.dtype, device=cdev)
            lse_h = torch.empty((hq, toks.numel()), dtype=torch.float32, device=cdev)
            call(qh, cu, k_pages.to(cdev), v_pages.to(cdev), sub_table, lens, sh, True, out_h, lse_h)
            out[toks] = out_h
            lse[:, toks] = lse_h
        return out, lse

    # -- the backward: gradients of fetched keys first, sent while the local ones compute -----

    def backward(self, q: Tensor, out: Tensor, lse: Tensor, dout: Tensor, sel: Optional[Tensor],
                 k_pages: Tensor, v_pages: Tensor, table: Tensor, cdev, dev, hkv: int):
        """dq [L, Hq, D] (q's dtype, on cdev) and the fp32 dK/dV of the rank's own tokens
        [L, Hkv, 2, D] (on dev). Phase 1 computes every row that reads fetched keys (MoBA: the
        head rows and the body rows' remote selected blocks) and starts the all-to-all that
        returns the fetched pages' dK/dV to their owners; phase 2 (the rows / key sets that read
        only keys held here) runs while it is in flight, then the received gradients are added."""
        L, hq, D = self.L, q.shape[1], q.shape[2]
        opts = _run_options(q, self.prm.backend)
        dq = torch.zeros((L, hq, D), dtype=q.dtype, device=cdev)
        dkp = torch.zeros(k_pages.shape, dtype=torch.float32, device=cdev)
        dvp = torch.zeros_like(dkp)
        moba = self.prm.mode == "moba"
        body_dq: List[Tensor] = []

        def call(parts, window, sg, own, dtype=None):
            """One paged backward over sub-rows; adds its page gradients, returns (toks, dq)."""
            toks, cu, sub_table, lens = self.part_rows(parts, table, cdev)
            dt = dtype or q.dtype
            qg, og, dg = (x[toks].to(dt).contiguous() for x in (q, out, dout))
            lg = lse[:, toks].contiguous()
            kp, vp = k_pages.to(dt), v_pages.to(dt)
            dqg = torch.empty_like(qg)
            dkg, dvg = torch.empty_like(dkp), torch.empty_like(dvp)
            sg = None if sg is None else sg.to(cdev)
            _C.paged_backward(_d("q", qg), _d("cu_seqlens", cu), _d("k_pages", kp),
                              _d("v_pages", vp), _d("page_table", sub_table),
                              _d("seq_lens", lens), _d("selection", sg), None, own,
                              _d("out", og), _d("lse", lg), _d("dout", dg), _d("dq", dqg),
                              _d("dk_pages", dkg), _d("dv_pages", dvg),
                              **self.prm.kernel(window), **opts)
            dkp.add_(dkg)
            dvp.add_(dvg)
            return toks, dqg

        part_dtype = torch.float32 if cdev.type == "cpu" else q.dtype
        # Phase 1: everything that reads fetched keys.
        if moba:
            head, body, sel_local, sel_remote = self.moba_parts
            if head:
                htoks = self.part_rows(head, table, cdev)[0]
                toks, dqg = call(head, None, sel[htoks.cpu()].contiguous(), True)
                dq[toks] = dqg
            if body:
                body_dq.append(call(body, None, sel_remote, False, part_dtype)[1])
        else:
            for window, _, remote in self.dense_plan:
                if remote:
                    toks, dqg = call(remote, window, None, True)
                    dq[toks] = dqg
        grad_pages = torch.stack([dkp.reshape(-1, D), dvp.reshape(-1, D)], 1).to(dev)
        send = [grad_pages[d.to(dev)].reshape(-1) for d in self.fetched_dst]
        wait = self.tp.all_to_all_start(send, "grad_kv")
        # Phase 2, overlapped with the send: what reads only keys held here.
        if moba:
            if body:
                toks, dqa = call(body, None, sel_local, True, part_dtype)
                dq[toks] = (dqa.float() + body_dq[0].float()).to(q.dtype)
                self.rows_during_grad_send += toks.numel()
        else:
            for window, local, _ in self.dense_plan:
                if local:
                    toks, dqg = call(local, window, None, True)
                    dq[toks] = dqg
                    self.rows_during_grad_send += toks.numel()
        grad_pages = torch.stack([dkp.reshape(-1, D), dvp.reshape(-1, D)], 1).to(dev)
        mine = torch.zeros((L * hkv, 2, D), dtype=torch.float32, device=dev)
        if self.local_src.numel():
            mine.index_add_(0, self.local_src.to(dev), grad_pages[self.local_dst.to(dev)])
        got = wait()
        for r, rows in enumerate(self.served):
            if rows.numel():
                mine.index_add_(0, rows.to(dev), got[r].reshape(-1, 2, D))
        return dq, mine.reshape(L, hkv, 2, D)

    # -- calls of the paged kernels: one per group of pieces with the same MoA windows --------

    def groups(self, hq: int) -> List[Tuple[List[int], Optional[List[int]]]]:
        if not self.pieces:
            return []
        if self.prm.mode != "moa":
            return [(list(range(len(self.pieces))), None)]
        by_len: Dict[int, List[int]] = {}
        for i, p in enumerate(self.pieces):
            by_len.setdefault(self.layout.seqlens[p.seq], []).append(i)
        return [(idx, [self.prm.window(h, N) for h in range(hq)]) for N, idx in sorted(by_len.items())]


# ---------------------------------------------------------------------------------------------
# The autograd op


_CUDA_COMPILED: Optional[bool] = None


def _cuda_compiled() -> bool:
    global _CUDA_COMPILED
    if _CUDA_COMPILED is None:
        _CUDA_COMPILED = any(b.get("name") == "cuda" and b.get("compiled") for b in _C.backends())
    return _CUDA_COMPILED


def _compute_device(t: Tensor, prm: "_Params", hq: int) -> torch.device:
    """Where the paged kernels run: t's GPU when this build has the CUDA paged forward and
    backward and they take the problem (bf16/f16, head_dim 64 or 128, MoBA topk <= 65, MoA
    <= 256 query heads), else the CPU (the result moves back; communication stays on t's
    device). ``backend="cpu"`` forces the CPU."""
    if t.device.type != "cuda" or prm.backend in ("cpu", "reference") or not _cuda_compiled():
        return torch.device("cpu")
    if t.dtype not in (torch.bfloat16, torch.float16) or t.shape[-1] not in (64, 128):
        return torch.device("cpu")
    if (prm.mode == "moba" and prm.topk - 1 > 64) or (prm.mode == "moa" and hq > 256):
        return torch.device("cpu")
    return t.device


class _Saved:
    """What one forward keeps for its backward."""

    def __init__(self, st, sel, table, cdev, info, q, out, lse, k_pages, v_pages, kv_meta):
        self.st, self.sel, self.table, self.cdev, self.info = st, sel, table, cdev, info
        self.q, self.out, self.lse, self.k_pages, self.v_pages = q, out, lse, k_pages, v_pages
        self.kv_meta = kv_meta


def _cp_forward(q, k, v, layout, prm, transport, dry_run, info) -> Tuple[Tensor, Tensor, Optional[_Saved]]:
    st = _RankState(layout, prm, transport)
    hq, hkv = q.shape[1], k.shape[1]
    if q.shape[0] != st.L or k.shape[0] != st.L or v.shape[0] != st.L:
        _fail("q", f"the {st.L} local tokens of rank {st.rank} in the layout (k, v too)",
              f"q/k/v with {q.shape[0]}/{k.shape[0]}/{v.shape[0]} tokens")
    cu = [0]
    for p in st.pieces:
        cu.append(cu[-1] + p.end - p.start)
    st.cu_q = torch.tensor(cu, dtype=torch.int32)
    sel = None
    if prm.mode == "moba":
        means = st.block_means(k)
        sel = st.gate(q, means, hkv)
    need = st.needed(sel, hq, hkv)
    k_pages, v_pages, complete = st.build_pages(need, k, v, hkv, dry_run)
    info["selection"] = sel
    info["stats"] = transport.stats
    if dry_run:
        return q.new_zeros(q.shape), q.new_zeros((hq, st.L), dtype=torch.float32), None
    cdev = _compute_device(q, prm, hq)
    info["compute_device"] = str(cdev)
    table, _ = st.page_table(hkv)
    qc = _core.last_dim_contiguous(q.detach().to(cdev))
    if not st.pieces:
        complete()
        out = torch.zeros(q.shape, dtype=q.dtype, device=cdev)
        lse = torch.full((hq, st.L), -math.inf, dtype=torch.float32, device=cdev)
    elif prm.mode == "moba":
        out, lse = st.moba_overlapped(qc, sel, k_pages, v_pages, complete, table, cdev)
    else:
        out, lse = st.dense_overlapped(qc, k_pages, v_pages, complete, table, cdev)
    out, lse = out.to(q.device), lse.to(q.device)
    info["overlap"] = {"rows": st.L, "forward_rows_during_fetch": st.rows_before_fetch,
                       "backward_rows_during_grad_send": 0}
    saved = _Saved(st, sel, table, cdev, info, q.detach(), out, lse, k_pages, v_pages,
                   (k.shape, k.dtype, v.dtype))
    return out, lse, saved


def _cp_backward(s: _Saved, dout: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    q, st, cdev, dev = s.q, s.st, s.cdev, s.q.device
    kshape, kdtype, vdtype = s.kv_meta
    if not st.pieces:
        send = [torch.zeros(0, dtype=torch.float32, device=dev) for _ in st.fetched_dst]
        st.tp.all_to_all(send, "grad_kv")
        return (torch.zeros(q.shape, dtype=q.dtype, device=dev),
                torch.zeros(kshape, dtype=kdtype, device=dev), torch.zeros(kshape, dtype=vdtype, device=dev))
    qc = _core.last_dim_contiguous(q.to(cdev))
    oc = _core.last_dim_contiguous(s.out.to(cdev))
    lc = s.lse.to(cdev).contiguous()
    dc = _core.last_dim_contiguous(dout.to(cdev).to(q.dtype))
    dq, mine = st.backward(qc, oc, lc, dc, s.sel, s.k_pages.to(cdev), s.v_pages.to(cdev),
                           s.table, cdev, dev, kshape[1])
    s.info["overlap"]["backward_rows_during_grad_send"] = st.rows_during_grad_send
    # fresh tensors (a custom op's outputs may not alias each other)
    return dq.to(dev), mine[:, :, 0].to(kdtype, copy=True), mine[:, :, 1].to(vdtype, copy=True)


# The op torch sees: moba::cp_attention(q, k, v, config, keep) -> (out, lse, token) (keep: a
# backward will follow, so the forward's state is saved), a custom op with
# a fake implementation, so torch.compile traces around it (output shapes follow from the
# inputs) and never into the host planning, the collectives or the raw-pointer kernel calls.
# `config` names the (layout, parameters, transport, info) of the call in _CONFIGS (a stable
# int per configuration: the compiled graph keeps it as a constant); `token` (int64 [1]) names
# the forward's saved state in _SAVED for moba::cp_attention_backward, which frees it; a
# forward whose graph is dropped without a backward frees it when the token tensor dies.
_CONFIGS: Dict[int, tuple] = {}
_CONFIG_IDS: Dict[tuple, int] = {}
_SAVED: Dict[int, _Saved] = {}
_NEXT_TOKEN = [0]
_REG_LOCK = threading.Lock()


def _config_id(layout, prm, tp, info) -> int:
    key = (id(layout), id(tp), prm.mode, prm.block_size, prm.topk, prm.scale, tuple(prm.alphas),
           tuple(prm.betas), prm.sink, prm.backend)
    with _REG_LOCK:
        cid = _CONFIG_IDS.setdefault(key, len(_CONFIG_IDS))
        _CONFIGS[cid] = (layout, prm, tp, info)  # strong references: ids stay unique
    return cid


@torch.library.custom_op("moba::cp_attention", mutates_args=())
def _cp_attention_op(q: Tensor, k: Tensor, v: Tensor, config: int,
                     keep: bool) -> Tuple[Tensor, Tensor, Tensor]:
    layout, prm, tp, info = _CONFIGS[config]
    out, lse, saved = _cp_forward(q, k, v, layout, prm, tp, False, info)
    with _REG_LOCK:
        tok = _NEXT_TOKEN[0]
        _NEXT_TOKEN[0] += 1
    token = torch.tensor([tok], dtype=torch.int64)
    if keep:
        _SAVED[tok] = saved
        import weakref
        weakref.finalize(token, _SAVED.pop, tok, None)
    return out, lse, token


@_cp_attention_op.register_fake
def _(q, k, v, config, keep):
    return (q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32),
            torch.empty((1,), dtype=torch.int64, device="cpu"))


@torch.library.custom_op("moba::cp_attention_backward", mutates_args=())
def _cp_attention_backward_op(dout: Tensor, token: Tensor, q: Tensor, k: Tensor,
                              v: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    saved = _SAVED.pop(int(token.item()), None)
    if saved is None:
        raise RuntimeError("moba.distributed: the forward's state is gone (a second backward "
                           "through one context-parallel attention, or a forward run without "
                           "grad); call backward once per forward")
    return _cp_backward(saved, dout)


@_cp_attention_backward_op.register_fake
def _(dout, token, q, k, v):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _cp_setup_context(ctx, inputs, output):
    q, k, v, _, _ = inputs
    ctx.save_for_backward(q, k, v, output[2])
    ctx.mark_non_differentiable(output[1], output[2])  # lse, token (as the single-process ops)


def _cp_attention_grad(ctx, dout, dlse, dtoken):
    q, k, v, token = ctx.saved_tensors
    dq, dk, dv = _cp_attention_backward_op(dout.contiguous(), token, q, k, v)
    return dq, dk, dv, None, None


_cp_attention_op.register_autograd(_cp_attention_grad, setup_context=_cp_setup_context)


# ---------------------------------------------------------------------------------------------
# Public functions


def _default_transport(group, transport):
    if transport is not None:
        return transport
    return TorchTransport(group)


def context_parallel_attn(q: Tensor, k: Tensor, v: Tensor, layout: ShardLayout, *,
                          mode: str = "moba", moba_chunk_size: Optional[int] = None,
                          moba_topk: Optional[int] = None, alphas=None, betas=None,
                          sink: int = 64, page_size: int = 256,
                          softmax_scale: Optional[float] = None, group=None,
                          transport: Optional[Transport] = None, return_lse: bool = False,
                          info: Optional[dict] = None, backend: str = "auto",
                          dry_run: bool = False):
    """Attention of this rank's local tokens, exact as on one process, with autograd.

    ``q`` [L, Hq, D], ``k``/``v`` [L, Hkv, D] are the rank's local tokens of ``layout`` (e.g.
    ``layout.shard(global_q, rank)``). ``mode``: "moba" (``moba_chunk_size``, ``moba_topk`` as
    in ``moba_attn_varlen``), "full" (causal, every past key: ring attention's key set) or "moa"
    (``alphas``/``betas`` per query or KV head, ``sink``). ``page_size``: the unit of fetching
    for full and MoA (MoBA fetches whole blocks). Communication goes over ``group`` (default
    group) or an explicit ``transport``. Returns ``out`` [L, Hq, D] or ``(out, lse)``.
    ``info`` (a dict) receives ``"selection"`` (MoBA, global block indices), ``"stats"``
    (the transport's CommStats, cumulative), ``"compute_device"`` (where the paged kernels
    ran) and ``"overlap"`` (query rows computed while the K/V fetch / the dK/dV return was in
    flight; the backward's entry is filled when it has run). ``dry_run=True`` plans and counts bytes without
    moving K/V or computing attention (returns zeros).
    """
    _core.check_qkv(q, k, v)
    if not isinstance(layout, ShardLayout):
        _fail("layout", "a moba.distributed.ShardLayout", type(layout).__name__, TypeError)
    tp = _default_transport(group, transport)
    hq, hkv = q.shape[1], k.shape[1]
    if hkv < 1 or hq % hkv != 0:
        _fail("k", f"num_kv_heads dividing num_q_heads = {hq}", f"shape {_core.shape_str(k)}")
    max_seqlen = max(layout.seqlens) if layout.seqlens else 0
    scale = 0.0 if softmax_scale is None else float(softmax_scale)
    if mode == "moba":
        B = _core.check_positive("moba_chunk_size", moba_chunk_size, "a block size")
        topk = _core.check_positive("moba_topk", moba_topk, "a top-k (it counts the own block)")
        topk = _core.effective_topk(max_seqlen, B, topk)
        prm = _Params("moba", B, topk, scale, [], [], 0, backend)
    elif mode == "full":
        prm = _Params("full", _core.check_positive("page_size", page_size, "a page size"), 0,
                      scale, [], [], 0, backend)
    elif mode == "moa":
        from .ops import _float_list
        a, b = _float_list("alphas", alphas), _float_list("betas", betas)
        for name, xs in (("alphas", a), ("betas", b)):
            if len(xs) == hkv and hkv != hq:
                xs[:] = [xs[h // (hq // hkv)] for h in range(hq)]
            if len(xs) != hq:
                _fail(name, f"one value per query head ({hq}) or per KV head ({hkv})",
                      f"{len(xs)} values")
            for i, x in enumerate(xs):
                if not math.isfinite(x) or x < 0:
                    _fail(f"{name}[{i}]", "a finite value >= 0", str(x))
        if sink < 0:
            _fail("sink", "a value >= 0", str(sink))
        prm = _Params("moa", _core.check_positive("page_size", page_size, "a page size"), 0,
                      scale, a, b, int(sink), backend)
    else:
        _fail("mode", "one of 'moba', 'full', 'moa'", repr(mode))
    info = {} if info is None else info
    if dry_run:
        out, lse, _ = _cp_forward(q.detach(), k.detach(), v.detach(), layout, prm, tp, True, info)
    else:
        keep = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
        out, lse, _ = _cp_attention_op(q, k, v, _config_id(layout, prm, tp, info), keep)
    return (out, lse) if return_lse else out


def moba_attn_varlen_cp(q: Tensor, k: Tensor, v: Tensor, layout: ShardLayout,
                        moba_chunk_size: int, moba_topk: int, **kwargs):
    """``moba_attn_varlen`` over a sequence sharded by ``layout`` (context parallelism).
    Keyword arguments as ``context_parallel_attn``."""
    return context_parallel_attn(q, k, v, layout, mode="moba", moba_chunk_size=moba_chunk_size,
                                 moba_topk=moba_topk, **kwargs)


# ---------------------------------------------------------------------------------------------
# HuggingFace: attention registered with moba.register / register_moa, context-parallel


class _HFContext(threading.local):
    current = None


_HF = _HFContext()


@contextlib.contextmanager
def context_parallel(layout: ShardLayout, *, group=None, transport: Optional[Transport] = None,
                     page_size: int = 256, info: Optional[dict] = None):
    """Inside this block (per thread), HuggingFace models whose ``attn_implementation`` is a
    name registered by ``moba.register`` / ``register_moa`` attend context-parallel over
    ``layout``: each rank runs the model on its local tokens only, ``input_ids`` [1, L] and
    ``position_ids`` [1, L] = the tokens' global positions (``layout.global_index(rank)`` for
    one sequence; RoPE needs them), no attention mask, no KV cache. Layers the registration
    keeps full (``full_attention_layers``, ``set_mode("full")``) run full causal attention
    through the same machinery. ``info`` receives the last layer's selection and the stats.

        with moba.distributed.context_parallel(layout):
            loss = model(local_ids, position_ids=local_pos).logits.float().square().sum()
        loss.backward()   # gradients are this rank's part; all-reduce them as in data parallel
    """
    prev = _HF.current
    tp = transport if transport is not None else TorchTransport(group)
    _HF.current = (layout, tp, page_size, {} if info is None else info)
    try:
        yield
    finally:
        _HF.current = prev


def hf_attention(cfg, module, query: Tensor, key: Tensor, value: Tensor, scaling,
                 layer_full: bool) -> Optional[Tensor]:
    """moba.hf's attention under ``context_parallel``: [1, H, L, D] in, [1, L, H, D] out; None
    when no context-parallel block is active (the caller computes as usual)."""
    if _HF.current is None:
        return None
    layout, tp, page_size, info = _HF.current
    if query.shape[0] != 1:
        _fail("query", "batch 1 under moba.distributed.context_parallel (one row of local "
              "tokens per rank)", f"shape {list(query.shape)}")
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))
    kw = dict(layout=layout, transport=tp, softmax_scale=scaling, info=info, backend=cfg.backend,
              page_size=page_size)
    if layer_full:
        out = context_parallel_attn(q, k, v, mode="full", **kw)
    elif cfg.kind == "moa":
        alphas, betas, sink = cfg.plan.layer(getattr(module, "layer_idx", 0))
        out = context_parallel_attn(q, k, v, mode="moa", alphas=alphas, betas=betas, sink=sink,
                                    **kw)
    else:
        out = context_parallel_attn(q, k, v, mode="moba", moba_chunk_size=cfg.chunk_size,
                                    moba_topk=cfg.topk, **kw)
    return out.unsqueeze(0)
