"""PyTorch ops: MoBA, dense causal and MoA attention on flash-attn's varlen layout.

Each public function wraps a `torch.library.custom_op` (namespace ``moba``) that has a fake
implementation (shapes only, for meta tensors and torch.compile) and an autograd formula whose
backward reuses the forward's saved out, lse and (MoBA) block selection. So the ops work under
autograd, ``torch.compile(fullgraph=True)`` without graph breaks, and ``torch.library.opcheck``.

Layout (docs/semantics.md): q [total, Hq, D], k/v [total, Hkv, D] with Hq % Hkv == 0,
cu_seqlens int32 [batch + 1] on the CPU or on the tensors' device, lse f32 [Hq, total].
The last dimension of q/k/v must be contiguous; inputs whose last dimension is strided are
copied with ``.contiguous()`` first (other strides are used as they are, no copy).
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import _core

__all__ = ["moba_attn_varlen", "flash_attn_varlen", "moa_attn", "moba_gate"]


# ---------------------------------------------------------------------------------------------
# MoBA


@torch.library.custom_op("moba::moba_attn_varlen", mutates_args=())
def _moba_fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int,
              moba_chunk_size: int, moba_topk: int, softmax_scale: float, backend: str,
              deterministic: bool) -> tuple[Tensor, Tensor, Tensor]:
    prm = _core.params("moba", moba_chunk_size, moba_topk, softmax_scale)
    out, lse, sel = _core.forward(q, k, v, cu_seqlens, max_seqlen, prm, backend, deterministic)
    return out, lse, sel


@_moba_fwd.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, moba_chunk_size, moba_topk, softmax_scale, backend,
      deterministic):
    _core.check_qkv(q, k, v)
    total, hq = q.shape[0], q.shape[1]
    out = q.new_empty(q.shape)
    lse = q.new_empty((hq, total), dtype=torch.float32)
    sel = q.new_empty((total, hq, max(moba_topk - 1, 0)), dtype=torch.int32)
    return out, lse, sel


def _moba_setup(ctx, inputs, output):
    q, k, v, cu_seqlens, _, chunk, topk, scale, backend, deterministic = inputs
    out, lse, sel = output
    ctx.save_for_backward(q, k, v, out, lse, sel, cu_seqlens)
    ctx.moba = ("moba", chunk, topk, scale, backend, deterministic)
    ctx.mark_non_differentiable(lse, sel)


def _moba_backward(ctx, dout, dlse, dsel):
    q, k, v, out, lse, sel, cu_seqlens = ctx.saved_tensors
    mode, chunk, topk, scale, backend, deterministic = ctx.moba
    dq, dk, dv = torch.ops.moba.attn_backward(dout, q, k, v, out, lse, sel, cu_seqlens, mode,
                                              chunk, topk, scale, [], [], 0, backend,
                                              deterministic)
    return dq, dk, dv, None, None, None, None, None, None, None


_moba_fwd.register_autograd(_moba_backward, setup_context=_moba_setup)


# ---------------------------------------------------------------------------------------------
# Full causal


@torch.library.custom_op("moba::flash_attn_varlen", mutates_args=())
def _full_fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int,
              softmax_scale: float, backend: str, deterministic: bool) -> tuple[Tensor, Tensor]:
    prm = _core.params("full", softmax_scale=softmax_scale)
    out, lse, _ = _core.forward(q, k, v, cu_seqlens, max_seqlen, prm, backend, deterministic)
    return out, lse


@_full_fwd.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, softmax_scale, backend, deterministic):
    _core.check_qkv(q, k, v)
    return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


def _full_setup(ctx, inputs, output):
    q, k, v, cu_seqlens, _, scale, backend, deterministic = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.moba = (scale, backend, deterministic)
    ctx.mark_non_differentiable(lse)


def _full_backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    scale, backend, deterministic = ctx.moba
    dq, dk, dv = torch.ops.moba.attn_backward(dout, q, k, v, out, lse, None, cu_seqlens, "full",
                                              0, 0, scale, [], [], 0, backend, deterministic)
    return dq, dk, dv, None, None, None, None, None


_full_fwd.register_autograd(_full_backward, setup_context=_full_setup)


# ---------------------------------------------------------------------------------------------
# MoA


@torch.library.custom_op("moba::moa_attn", mutates_args=())
def _moa_fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int,
             alphas: list[float], betas: list[float], sink: int, softmax_scale: float,
             backend: str, deterministic: bool) -> tuple[Tensor, Tensor]:
    prm = _core.params("moa", softmax_scale=softmax_scale, alphas=alphas, betas=betas, sink=sink)
    out, lse, _ = _core.forward(q, k, v, cu_seqlens, max_seqlen, prm, backend, deterministic)
    return out, lse


@_moa_fwd.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, alphas, betas, sink, softmax_scale, backend,
      deterministic):
    _core.check_qkv(q, k, v)
    return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


def _moa_setup(ctx, inputs, output):
    q, k, v, cu_seqlens, _, alphas, betas, sink, scale, backend, deterministic = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.moba = (list(alphas), list(betas), sink, scale, backend, deterministic)
    ctx.mark_non_differentiable(lse)


def _moa_backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    alphas, betas, sink, scale, backend, deterministic = ctx.moba
    dq, dk, dv = torch.ops.moba.attn_backward(dout, q, k, v, out, lse, None, cu_seqlens, "moa",
                                              0, 0, scale, alphas, betas, sink, backend,
                                              deterministic)
    return dq, dk, dv, None, None, None, None, None, None, None, None


_moa_fwd.register_autograd(_moa_backward, setup_context=_moa_setup)


# ---------------------------------------------------------------------------------------------
# Shared backward and the gate


@torch.library.custom_op("moba::attn_backward", mutates_args=())
def _attn_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
              selection: Optional[Tensor], cu_seqlens: Tensor, mode: str, block_size: int,
              topk: int, softmax_scale: float, alphas: list[float], betas: list[float],
              sink: int, backend: str, deterministic: bool) -> tuple[Tensor, Tensor, Tensor]:
    prm = _core.params(mode, block_size, topk, softmax_scale, alphas, betas, sink)
    return _core.backward(dout, q, k, v, out, lse, selection, cu_seqlens, prm, backend,
                          deterministic)


@_attn_bwd.register_fake
def _(dout, q, k, v, out, lse, selection, cu_seqlens, mode, block_size, topk, softmax_scale,
      alphas, betas, sink, backend, deterministic):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@torch.library.custom_op("moba::moba_gate", mutates_args=())
def _gate(q: Tensor, k: Tensor, cu_seqlens: Tensor, max_seqlen: int, moba_chunk_size: int,
          moba_topk: int, backend: str) -> Tensor:
    prm = _core.params("moba", moba_chunk_size, moba_topk)
    return _core.gate(q, k, cu_seqlens, max_seqlen, prm, backend)


@_gate.register_fake
def _(q, k, cu_seqlens, max_seqlen, moba_chunk_size, moba_topk, backend):
    _core.check_tensor("q", q, 3, "[total_tokens, num_q_heads, head_dim]")
    return q.new_empty((q.shape[0], q.shape[1], max(moba_topk - 1, 0)), dtype=torch.int32)


# ---------------------------------------------------------------------------------------------
# Public functions


def _scale(softmax_scale) -> float:
    if softmax_scale is None:
        return 0.0  # the library's 1/sqrt(head_dim)
    return float(softmax_scale)


def _int_arg(name: str, value):
    """An int argument; also a SymInt (torch.compile), a numpy integer or a 1-element int tensor."""
    if isinstance(value, torch.SymInt):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _core.fail(name, "an int", type(value).__name__, TypeError)
    return int(value)


def moba_attn_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int,
                     moba_chunk_size: int, moba_topk: int, *,
                     softmax_scale: Optional[float] = None, return_lse: bool = False,
                     backend: str = "auto", deterministic: bool = False):
    """MoBA attention, a drop-in for MoonshotAI/MoBA's ``moba_attn_varlen``.

    Same positional arguments, layout and causal semantics: keys are cut into blocks of
    ``moba_chunk_size`` tokens from the start of each sequence; every query attends causally to
    its own block plus the ``moba_topk - 1`` past blocks whose mean key scores highest against
    it (ties to the earlier block). Returns ``out`` [total, Hq, D], or ``(out, lse)`` with
    ``return_lse=True`` (lse f32 [Hq, total], not differentiable). Gradients flow to q, k, v;
    the backward reuses the forward's out, lse and block selection.

    ``backend``: "auto" (the tensors' device: fast CPU backend or CUDA), "cpu", "cuda" or
    "reference" (fp64 loops, any head_dim). ``deterministic`` asks for a backward without
    float atomics.
    """
    _core.check_qkv(q, k, v, cu_seqlens)
    max_seqlen = _int_arg("max_seqlen", max_seqlen)
    chunk = _core.check_positive("moba_chunk_size", moba_chunk_size, "a block size")
    topk = _core.check_positive("moba_topk", moba_topk, "a top-k (it counts the own block)")
    # The clamp must hold for every sequence: a GPU cu_seqlens is not read back to check
    # max_seqlen, so there the bound is the total token count.
    topk = _core.effective_topk(_core.topk_clamp_length(cu_seqlens, max_seqlen, q), chunk, topk)
    out, lse, _ = _moba_fwd(q, k, v, cu_seqlens, max_seqlen, chunk, topk, _scale(softmax_scale),
                            backend, bool(deterministic))
    return (out, lse) if return_lse else out


def flash_attn_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, *,
                      causal: bool = True, softmax_scale: Optional[float] = None,
                      return_lse: bool = False, backend: str = "auto",
                      deterministic: bool = False):
    """Dense causal attention on the varlen layout (each token sees its sequence up to itself).

    Only ``causal=True`` is supported. Returns ``out`` or ``(out, lse)``.
    """
    if causal is not True:
        _core.fail("causal", "True (moba computes causal attention only)", repr(causal),
                   NotImplementedError)
    _core.check_qkv(q, k, v, cu_seqlens)
    max_seqlen = _int_arg("max_seqlen", max_seqlen)
    out, lse = _full_fwd(q, k, v, cu_seqlens, max_seqlen, _scale(softmax_scale), backend,
                         bool(deterministic))
    return (out, lse) if return_lse else out


def _float_list(name: str, xs) -> list:
    if isinstance(xs, torch.Tensor):
        if xs.dim() > 1:
            _core.fail(name, "one value per head (a 1-D sequence)", f"shape {_core.shape_str(xs)}")
        return [float(x) for x in xs.detach().reshape(-1).tolist()]
    if isinstance(xs, (int, float)):
        return [float(xs)]
    try:
        return [float(x) for x in xs]
    except TypeError:
        _core.fail(name, "a sequence of floats, one per head", type(xs).__name__, TypeError)


def moa_attn(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int,
             alphas: Union[Sequence[float], Tensor], betas: Union[Sequence[float], Tensor], *,
             sink: int = 64, softmax_scale: Optional[float] = None, return_lse: bool = False,
             backend: str = "auto", deterministic: bool = False):
    """MoA attention: per-head sliding window plus an attention sink.

    Head h of a sequence of N tokens sees the first ``sink`` tokens and the last
    ``clamp(floor(alphas[h] + betas[h] * N), 1, N)`` tokens up to itself. ``alphas``/``betas``
    hold one value per query head or per KV head (e.g. ``MoaPlan.layer(i)``). Returns ``out`` or
    ``(out, lse)``.
    """
    _core.check_qkv(q, k, v, cu_seqlens)
    max_seqlen = _int_arg("max_seqlen", max_seqlen)
    sink = _int_arg("sink", sink)
    out, lse = _moa_fwd(q, k, v, cu_seqlens, max_seqlen, _float_list("alphas", alphas),
                        _float_list("betas", betas), sink, _scale(softmax_scale), backend,
                        bool(deterministic))
    return (out, lse) if return_lse else out


def moba_gate(q: Tensor, k: Tensor, cu_seqlens: Tensor, max_seqlen: int, moba_chunk_size: int,
              moba_topk: int, *, backend: str = "auto") -> Tensor:
    """The MoBA block selection alone: int32 [total, Hq, slots], ascending block indices per
    token and head, -1 in unused slots. ``slots = min(moba_topk, ceil(max_seqlen /
    moba_chunk_size)) - 1`` (no token has more past blocks than that)."""
    _core.check_tensor("q", q, 3, "[total_tokens, num_q_heads, head_dim]")
    _core.check_tensor("k", k, 3, "[total_tokens, num_kv_heads, head_dim]")
    _core.check_cu_seqlens_type(cu_seqlens)
    max_seqlen = _int_arg("max_seqlen", max_seqlen)
    chunk = _core.check_positive("moba_chunk_size", moba_chunk_size, "a block size")
    topk = _core.check_positive("moba_topk", moba_topk, "a top-k (it counts the own block)")
    topk = _core.effective_topk(max_seqlen, chunk, topk)
    return _gate(q, k, cu_seqlens, max_seqlen, chunk, topk, backend)
