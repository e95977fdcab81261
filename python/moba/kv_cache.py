"""Paged KV cache, decode and chunked prefill for full, MoBA and MoA attention.

    cache = moba.PagedKVCache(num_kv_heads=8, head_dim=128, max_seqlen=32768, max_batch=4,
                              block_size=512, dtype=torch.bfloat16, device="cuda")
    cache.append(k, v, cu_seqlens)                   # new tokens of each sequence, varlen layout
    out = cache.attend(q, cu_seqlens, mode="moba", block_size=512, topk=3)

The cache holds pages of ``page_size`` positions of one KV head (``k_pages``/``v_pages``
[num_pages, page_size, head_dim]), a page table per sequence and KV head, the sequence lengths,
and for MoBA the mean key of every completed block (kept exact and incrementally, so decoding
selects the very blocks a one-shot prefill selects). ``attend`` computes, for the last tokens of
each sequence, the rows a one-shot prefill of the sequence so far would give
(docs/semantics.md; MoA's window uses the length N after the append).

The compute runs through two ``torch.library`` custom ops with fake implementations:
``moba::paged_kv_append`` (mutates the cache tensors) and ``moba::paged_attention``. The page
bookkeeping (free list, page table) is host work done by the C++ ``PagedKVCache`` before the
append. C++ API: include/moba/kv_cache.hpp and include/moba/paged_attention.hpp.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _core
from ._core import _C

__all__ = ["PagedKVCache", "paged_attention", "merge_attention_states"]

_STORAGE = ("k_pages", "v_pages", "page_table", "seq_lens", "block_means", "block_sums")


# ---------------------------------------------------------------------------------------------
# Custom ops


@torch.library.custom_op("moba::paged_kv_append",
                         mutates_args=("k_pages", "v_pages", "seq_lens", "block_means", "block_sums"))
def _kv_append(k_new: Tensor, v_new: Tensor, cu_seqlens: Tensor, slots: Tensor, k_pages: Tensor,
               v_pages: Tensor, page_table: Tensor, seq_lens: Tensor, block_means: Tensor,
               block_sums: Tensor, block_size: int, backend: str) -> None:
    k_new, v_new = _core.last_dim_contiguous(k_new), _core.last_dim_contiguous(v_new)
    d = _core.describe
    with _core._device_guard(k_new):
        _C.kv_append(d("k_new", k_new), d("v_new", v_new), d("cu_seqlens", cu_seqlens),
                     d("slots", slots), d("k_pages", k_pages), d("v_pages", v_pages),
                     d("page_table", page_table), d("seq_lens", seq_lens),
                     d("block_means", block_means) if block_size > 0 else None,
                     d("block_sums", block_sums) if block_size > 0 else None,
                     block_size=block_size, **_stream_kwargs(k_new, backend))


@_kv_append.register_fake
def _(k_new, v_new, cu_seqlens, slots, k_pages, v_pages, page_table, seq_lens, block_means,
      block_sums, block_size, backend):
    return None


@torch.library.custom_op("moba::paged_attention", mutates_args=())
def _paged_attention(q: Tensor, cu_seqlens: Tensor, slots: Tensor, k_pages: Tensor,
                     v_pages: Tensor, page_table: Tensor, seq_lens: Tensor, block_means: Tensor,
                     selection: Optional[Tensor], mode: str, block_size: int, topk: int,
                     softmax_scale: float, alphas: list[float], betas: list[float], sink: int,
                     include_own_block: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    q = _core.last_dim_contiguous(q)
    total, hq = q.shape[0], q.shape[1]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((hq, total), dtype=torch.float32, device=q.device)
    run_gate = mode == "moba" and selection is None
    if mode == "moba":
        sel = selection if selection is not None else torch.empty(
            (total, hq, max(topk - 1, 0)), dtype=torch.int32, device=q.device)
    else:
        sel = torch.empty((total, hq, 0), dtype=torch.int32, device=q.device)
    prm = _core.params(mode, block_size, topk, softmax_scale, alphas, betas, sink)
    d = _core.describe
    with _core._device_guard(q), _core._python_names(mode):
        _C.paged_attention(d("q", q), d("cu_seqlens", cu_seqlens), d("slots", slots),
                           d("k_pages", k_pages), d("v_pages", v_pages), d("page_table", page_table),
                           d("seq_lens", seq_lens),
                           d("block_means", block_means) if mode == "moba" else None,
                           d("selection", sel) if mode == "moba" else None, run_gate,
                           include_own_block, d("out", out), d("lse", lse), **prm,
                           **_core._run_options(q, backend, False))
    return out, lse, sel if selection is None else sel.clone()


@_paged_attention.register_fake
def _(q, cu_seqlens, slots, k_pages, v_pages, page_table, seq_lens, block_means, selection, mode,
      block_size, topk, softmax_scale, alphas, betas, sink, include_own_block, backend):
    _core.check_tensor("q", q, 3, "[total_tokens, num_q_heads, head_dim]")
    total, hq = q.shape[0], q.shape[1]
    slots_k = max(topk - 1, 0) if mode == "moba" else 0
    return (q.new_empty(q.shape), q.new_empty((hq, total), dtype=torch.float32),
            q.new_empty((total, hq, slots_k), dtype=torch.int32))


def _stream_kwargs(t: Tensor, backend: str) -> dict:
    o = _core._run_options(t, backend, False)
    return dict(backend=o["backend"], cuda_stream=o["cuda_stream"], num_threads=o["num_threads"])


# ---------------------------------------------------------------------------------------------
# The cache


def _int_list(name: str, xs, n: Optional[int] = None) -> list:
    if isinstance(xs, Tensor):
        xs = xs.tolist()
    out = [int(x) for x in xs]
    if n is not None and len(out) != n:
        _core.fail(name, f"{n} entries", f"{len(out)}")
    return out


class PagedKVCache:
    """A paged KV cache for ``max_batch`` sequences of up to ``max_seqlen`` tokens.

    num_kv_heads, head_dim: of the keys/values appended. page_size: positions per page.
    num_pages: pages in the pool (default: every row can reach max_seqlen on every KV head).
    block_size: MoBA block size whose block means the cache maintains (0: no MoBA).
    moa: ``(alphas, betas, sink)`` of one layer (per query or KV head) to keep per-head MoA
    caches: each KV head then holds only its sink and the windows of its query heads, pages
    leaving every window return to the pool; appends after the first may add up to
    ``max_chunk`` tokens per sequence. num_q_heads: query heads (needed with ``moa``).
    """

    def __init__(self, num_kv_heads: int, head_dim: int, max_seqlen: int, *, max_batch: int = 1,
                 page_size: int = 16, num_pages: Optional[int] = None,
                 dtype: torch.dtype = torch.bfloat16, device="cpu", block_size: int = 0,
                 num_q_heads: Optional[int] = None, moa=None, max_chunk: int = 1):
        device = torch.device(device)
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            _core.fail("dtype", "torch.float32, float16 or bfloat16", str(dtype))
        pages_per_seq = -(-int(max_seqlen) // max(int(page_size), 1))
        if num_pages is None:
            num_pages = max(1, int(max_batch) * int(num_kv_heads) * pages_per_seq)
        alphas, betas, sink = ([], [], 64) if moa is None else (list(moa[0]), list(moa[1]), int(moa[2]))
        self.config = dict(dtype=_core._DTYPES[dtype], num_q_heads=int(num_q_heads or num_kv_heads),
                           num_kv_heads=int(num_kv_heads), head_dim=int(head_dim),
                           page_size=int(page_size), num_pages=int(num_pages),
                           max_rows=int(max_batch), max_seqlen=int(max_seqlen),
                           block_size=int(block_size), moa_evict=moa is not None,
                           alpha=[float(a) for a in alphas], beta=[float(b) for b in betas],
                           sink=sink, max_chunk=int(max_chunk))
        shapes = _C.kv_cache_shapes(**self.config)
        self.dtype, self.device = dtype, device
        self.k_pages = torch.zeros(shapes["k_pages"], dtype=dtype, device=device)
        self.v_pages = torch.zeros(shapes["v_pages"], dtype=dtype, device=device)
        self.page_table = torch.full(shapes["page_table"], -1, dtype=torch.int32, device=device)
        self.seq_lens = torch.zeros(shapes["seq_lens"], dtype=torch.int32, device=device)
        self.device = self.k_pages.device  # "cuda" -> "cuda:<current>"
        means = shapes["block_means"] or [0]
        sums = shapes["block_sums"] or [0]
        self.block_means = torch.zeros(means, dtype=dtype, device=device)
        self.block_sums = torch.zeros(sums, dtype=torch.float64, device=device)
        d = _core.describe
        with _core._device_guard(self.k_pages):
            self._impl = _C.PagedKVCache(
                d("k_pages", self.k_pages), d("v_pages", self.v_pages),
                d("page_table", self.page_table), d("seq_lens", self.seq_lens),
                d("block_means", self.block_means) if block_size > 0 else None,
                d("block_sums", self.block_sums) if block_size > 0 else None, **self.config)

    # -- bookkeeping
    @property
    def num_kv_heads(self) -> int:
        return self.config["num_kv_heads"]

    @property
    def head_dim(self) -> int:
        return self.config["head_dim"]

    @property
    def block_size(self) -> int:
        return self.config["block_size"]

    @property
    def max_batch(self) -> int:
        return self.config["max_rows"]

    @property
    def free_pages(self) -> int:
        return self._impl.free_pages

    @property
    def used_pages(self) -> int:
        return self._impl.used_pages

    def memory_bytes(self) -> int:
        """Bytes of K/V in the pages in use (the pool itself is allocated once)."""
        per_page = self.k_pages[0].numel() * self.k_pages.element_size() * 2
        return self.used_pages * per_page

    def seq_len(self, slot: int = 0) -> int:
        return self._impl.seq_len(int(slot))

    def release(self, slot: int) -> None:
        """Frees every page of a sequence; its length becomes 0."""
        self._impl.release(int(slot))

    def reset(self) -> None:
        self._impl.reset()

    # -- compute
    def _batch(self, cu_seqlens, slots, total: int):
        """Host lists of counts and slots, and the device tensors the kernels read."""
        if cu_seqlens is None:
            cu_host = [0, total]
        else:
            if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1:
                _core.fail("cu_seqlens", "an int32 torch.Tensor [batch + 1]", repr(cu_seqlens), TypeError)
            cu_host = cu_seqlens.tolist()
        batch = len(cu_host) - 1
        slot_list = list(range(batch)) if slots is None else _int_list("slots", slots, batch)
        counts = [b - a for a, b in zip(cu_host, cu_host[1:])]
        cu_t = torch.tensor(cu_host, dtype=torch.int32)
        slots_t = torch.tensor(slot_list, dtype=torch.int32)
        if self.device.type != "cpu":
            cu_t = cu_t.to(self.device, non_blocking=True)
            slots_t = slots_t.to(self.device, non_blocking=True)
        return counts, slot_list, cu_t, slots_t

    def append(self, k: Tensor, v: Tensor, cu_seqlens: Optional[Tensor] = None,
               slots: Optional[Sequence[int]] = None, *, backend: str = "auto") -> None:
        """Appends new keys/values k, v [new_tokens, num_kv_heads, head_dim] (varlen layout cut
        by cu_seqlens; None: one sequence) to the sequences in cache rows ``slots`` (default
        0 .. batch-1). Refused appends (cache full, a row beyond max_seqlen, wrong heads)
        raise and leave the cache unchanged."""
        _core.check_tensor("k", k, 3, "[new_tokens, num_kv_heads, head_dim]")
        _core.check_tensor("v", v, 3, "[new_tokens, num_kv_heads, head_dim]")
        want = (self.num_kv_heads, self.head_dim)
        if tuple(k.shape[1:]) != want:
            _core.fail("k", f"[new_tokens, {want[0]}, {want[1]}] (the cache's KV heads and head_dim)",
                       f"shape {_core.shape_str(k)}")
        if v.shape != k.shape or v.dtype != k.dtype or v.device != k.device:
            _core.fail("v", f"shape {_core.shape_str(k)}, dtype and device of k",
                       f"{v.dtype} {_core.shape_str(v)} on {v.device}")
        if k.dtype != self.dtype or k.device != self.device:
            _core.fail("k", f"dtype {self.dtype} on {self.device} (the cache's)", f"{k.dtype} on {k.device}")
        counts, slot_list, cu_t, slots_t = self._batch(cu_seqlens, slots, k.shape[0])
        if sum(counts) != k.shape[0]:
            _core.fail("cu_seqlens", f"a last value of {k.shape[0]} (tokens of k)", str(sum(counts)))
        stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
        with _core._device_guard(self.k_pages):
            self._impl.reserve(counts, slot_list, stream)
        torch.ops.moba.paged_kv_append(k, v, cu_t, slots_t, self.k_pages, self.v_pages,
                                       self.page_table, self.seq_lens, self.block_means,
                                       self.block_sums, self.block_size, backend)

    def attend(self, q: Tensor, cu_seqlens: Optional[Tensor] = None,
               slots: Optional[Sequence[int]] = None, *, mode: str = "full", block_size: int = 0,
               topk: int = 0, alphas=(), betas=(), sink: int = 64,
               softmax_scale: Optional[float] = None, return_lse: bool = False,
               return_selection: bool = False, backend: str = "auto"):
        """Attention of q [tokens, num_q_heads, head_dim], the LAST tokens of each sequence
        (appended before), over the cache: mode "full", "moba" (block_size must be the cache's;
        topk counts the own block) or "moa" (alphas/betas/sink of the layer). Returns out, or a
        tuple with lse f32 [num_q_heads, tokens] and/or the MoBA selection."""
        _core.check_tensor("q", q, 3, "[tokens, num_q_heads, head_dim]")
        if mode == "moba" and int(block_size) != self.block_size:
            _core.fail("block_size", f"the cache's block_size {self.block_size} (its block means)",
                       str(block_size))
        _, _, cu_t, slots_t = self._batch(cu_seqlens, slots, q.shape[0])
        scale = 0.0 if softmax_scale is None else float(softmax_scale)
        out, lse, sel = torch.ops.moba.paged_attention(
            q, cu_t, slots_t, self.k_pages, self.v_pages, self.page_table, self.seq_lens,
            self.block_means, None, mode, int(block_size), int(topk), scale,
            [float(a) for a in alphas], [float(b) for b in betas], int(sink), True, backend)
        if not (return_lse or return_selection):
            return out
        res = (out,) + ((lse,) if return_lse else ()) + ((sel,) if return_selection else ())
        return res


def paged_attention(q: Tensor, cu_seqlens: Tensor, slots: Tensor, cache: PagedKVCache,
                    selection: Optional[Tensor] = None, *, mode: str = "moba",
                    block_size: int = 0, topk: int = 0, include_own_block: bool = True,
                    softmax_scale: Optional[float] = None, backend: str = "auto"):
    """The page-table entry point (moba/paged_attention.hpp): attention of q over the cache's
    pages with an external MoBA ``selection`` [tokens, Hq, topk - 1] (block indices, -1 unused;
    None: the gate chooses), optionally without the own block. Returns (out, lse); rows that see
    no key give out 0 and lse -inf, ready for ``merge_attention_states``."""
    scale = 0.0 if softmax_scale is None else float(softmax_scale)
    out, lse, _ = torch.ops.moba.paged_attention(
        q, cu_seqlens, slots, cache.k_pages, cache.v_pages, cache.page_table, cache.seq_lens,
        cache.block_means, selection, mode, int(block_size), int(topk), scale, [], [], 64,
        bool(include_own_block), backend)
    return out, lse


def merge_attention_states(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor):
    """Attention over the union of two disjoint key sets from the two partial results
    (out [tokens, heads, D], lse f32 [heads, tokens]). Returns (out, lse)."""
    out = torch.empty_like(out_a)
    lse = torch.empty_like(lse_a)
    d = _core.describe
    stream = torch.cuda.current_stream(out_a.device).cuda_stream if out_a.device.type == "cuda" else 0
    with _core._device_guard(out_a):
        _C.merge_states(d("out_a", out_a), d("lse_a", lse_a), d("out_b", out_b), d("lse_b", lse_b),
                        d("out", out), d("lse", lse), stream)
    return out, lse
