"""The bridge between torch tensors and the C++ core (moba._C).

Everything here runs eagerly on real tensors: it checks what the C++ layer cannot see (ranks
before allocating outputs, max_seqlen), makes the last dimension contiguous, allocates the
outputs with torch and hands raw pointers, shapes and strides to moba._C. The custom ops in
moba.ops call these functions from their real (non-fake) implementations.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import re
from typing import Optional, Sequence

import torch

try:
    from . import _C
except ImportError as e:  # pragma: no cover - only without a built extension
    raise ImportError(
        "moba: the compiled extension moba._C is missing; install the package with "
        "`pip install .` from the repository root (see docs/python.md)"
    ) from e


class OutOfMemoryError(torch.OutOfMemoryError, MemoryError):
    """Raised when moba cannot allocate memory; both a torch.OutOfMemoryError and a MemoryError."""


_C.set_out_of_memory_error(OutOfMemoryError)

_DTYPES = {
    torch.float32: "f32",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.int32: "i32",
    torch.float64: "f64",  # the paged KV cache's exact running key sums
}

BACKENDS = ("auto", "reference", "cpu", "cuda")


# The C++ library's dtype names -> torch's, so every message a Python user sees names dtypes
# the way torch does ("int32", not "i32").
_TORCH_NAMES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i32": "int32"}
_CPP_DTYPE = re.compile(r"\b(f32|f16|bf16|i32)\b")


def torch_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def with_torch_dtype_names(message: str) -> str:
    return _CPP_DTYPE.sub(lambda m: _TORCH_NAMES[m.group(1)], message)


def fail(arg: str, expected: str, got: str, exc: type = ValueError):
    """Raise `exc` in the C++ library's style: 'moba: ARG: expected X, got Y'."""
    raise exc(f"moba: {arg}: expected {expected}, got {got}")


def shape_str(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(int(s)) for s in t.shape) + "]"


def check_tensor(name: str, t, ndim: int, layout: str) -> None:
    """Type and rank checks that must happen before outputs are allocated from `t`'s shape."""
    if not isinstance(t, torch.Tensor):
        fail(name, "a torch.Tensor", type(t).__name__, TypeError)
    if t.dim() != ndim:
        fail(name, f"{ndim} dimensions {layout}", f"shape {shape_str(t)}")


def check_cu_seqlens_type(cu_seqlens) -> None:
    """A list or numpy array would reach the dispatcher and fail there with a RuntimeError."""
    if not isinstance(cu_seqlens, torch.Tensor):
        fail("cu_seqlens", "an int32 torch.Tensor [batch + 1]", type(cu_seqlens).__name__,
             TypeError)


def check_qkv(q, k, v, cu_seqlens=None) -> None:
    """Types and ranks of q, k, v (and cu_seqlens, when given) before any dispatch."""
    check_tensor("q", q, 3, "[total_tokens, num_q_heads, head_dim]")
    check_tensor("k", k, 3, "[total_tokens, num_kv_heads, head_dim]")
    check_tensor("v", v, 3, "[total_tokens, num_kv_heads, head_dim]")
    if cu_seqlens is not None:
        check_cu_seqlens_type(cu_seqlens)


def check_positive(name: str, value, what: str):
    if isinstance(value, torch.SymInt):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        fail(name, f"{what} as an int", repr(value), TypeError)
    if value < 1:
        fail(name, f"{what} >= 1", str(value))
    return int(value)


def effective_topk(max_seqlen: int, block_size: int, topk: int) -> int:
    """top-k clamped to the most blocks any sequence of `max_seqlen` tokens has.

    Gives the same key sets (every past block is kept either way) but keeps the saved
    selection [total, heads, topk - 1] from growing with a huge top-k.
    """
    if block_size < 1 or topk < 1:
        return topk  # invalid; the C++ checks report it
    blocks = max(1, -(-max(int(max_seqlen), 0) // block_size))
    return min(topk, blocks)


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The C++ API needs stride 1 on the last dimension; other strides are passed through."""
    if t.dim() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        return t.contiguous()
    return t


def describe(name: str, t: Optional[torch.Tensor]):
    """The tuple moba._C reads a tensor from (see python/src/bindings.cpp)."""
    if t is None:
        return None
    dtype = _DTYPES.get(t.dtype)
    if dtype is None:
        expected = "int32" if name in ("cu_seqlens", "selection") else "float32, float16 or bfloat16"
        fail(name, f"dtype {expected}", torch_dtype_name(t.dtype))
    index = t.device.index if t.device.index is not None else 0
    strides = tuple(t.stride())
    if t.numel() == 0:
        # torch gives empty tensors strides as if each size were >= 1; the C++ contiguity check
        # multiplies the real sizes. Any strides address no element, so pass the C++ ones.
        st, acc = [], 1
        for s in reversed(t.shape):
            st.append(acc)
            acc *= int(s)
        strides = tuple(reversed(st))
    return (name, t.data_ptr(), dtype, t.device.type, index, tuple(t.shape), strides)


def host_cu_seqlens(cu_seqlens):
    """cu_seqlens in host memory: the C++ layer plans launches from it, so a device tensor is
    copied once here (one stream sync) and the host copy serves every check and the call.
    Pass cu_seqlens on the CPU to avoid that sync altogether."""
    if isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.device.type != "cpu":
        return cu_seqlens.cpu()
    return cu_seqlens


def call_cu_seqlens(cu_seqlens, like: torch.Tensor):
    """cu_seqlens as the C++ call takes it. A tensor on the GPU of `like` stays there: the CUDA
    backend plans from it on the device (no device-to-host copy, no stream sync), so a training
    step can be captured in a CUDA graph. Any other device's copy comes to the host."""
    if (isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.device.type == "cuda"
            and cu_seqlens.device == like.device):
        return cu_seqlens
    return host_cu_seqlens(cu_seqlens)


def check_max_seqlen_arg(cu_seqlens, max_seqlen) -> None:
    """check_max_seqlen for a host cu_seqlens; for one on the GPU only the type and sign (reading
    the lengths back would synchronise; there max_seqlen is not used to plan the kernels)."""
    if isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.device.type == "cuda":
        if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, numbers.Integral):
            fail("max_seqlen", "an int", type(max_seqlen).__name__, TypeError)
        if max_seqlen < 0:
            fail("max_seqlen", "a value >= 0", str(max_seqlen))
        return
    check_max_seqlen(cu_seqlens, max_seqlen)


def topk_clamp_length(cu_seqlens, max_seqlen, q: torch.Tensor):
    """The length effective_topk may clamp top-k with: max_seqlen, checked against a host
    cu_seqlens; for one that stays on the GPU (not read back) the total token count."""
    if isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.device.type == "cuda" \
            and cu_seqlens.device == q.device:
        return q.shape[0]
    return max_seqlen


def check_max_seqlen(cu_seqlens: torch.Tensor, max_seqlen: int) -> None:
    """max_seqlen must bound every sequence of cu_seqlens (host copy; as in flash-attn's API).

    Only checked when cu_seqlens is otherwise well formed; the C++ layer reports the rest.
    """
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, numbers.Integral):
        fail("max_seqlen", "an int", type(max_seqlen).__name__, TypeError)
    if max_seqlen < 0:
        fail("max_seqlen", "a value >= 0", str(max_seqlen))
    if not isinstance(cu_seqlens, torch.Tensor):
        fail("cu_seqlens", "an int32 torch.Tensor", type(cu_seqlens).__name__, TypeError)
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        return
    cu = cu_seqlens.tolist()  # plain ints: a few torch ops here cost more than the check
    lens = [b - a for a, b in zip(cu, cu[1:])]
    if cu[0] != 0 or min(lens) < 0:
        return
    longest = max(lens)
    if max_seqlen < longest:
        fail(
            "max_seqlen",
            f">= the longest sequence in cu_seqlens ({longest})",
            str(max_seqlen),
        )


# The C++ API's names of parameters -> the Python functions' argument names.
_RENAMES = {
    "moba": (("block_size:", "moba_chunk_size:"), ("topk:", "moba_topk:")),
    "moa": (("moa.alpha", "alphas"), ("moa.beta", "betas"), ("moa.sink:", "sink:")),
    "full": (),
}


@contextlib.contextmanager
def _python_names(mode: str):
    """Report C++ errors with the Python argument names (moba_chunk_size, alphas, ...)."""
    try:
        yield
    except (ValueError, NotImplementedError) as e:
        msg = with_torch_dtype_names(str(e))
        for cpp, py in _RENAMES.get(mode, ()):
            if msg.startswith("moba: " + cpp):
                msg = "moba: " + py + msg[len("moba: " + cpp):]
                break
        if msg == str(e):
            raise
        raise type(e)(msg) from None


def _run_options(t: torch.Tensor, backend: str, deterministic: bool) -> dict:
    if backend not in BACKENDS:
        fail("backend", "one of " + ", ".join(BACKENDS), repr(backend))
    stream = 0
    threads = 0
    if t.device.type == "cuda":
        stream = torch.cuda.current_stream(t.device).cuda_stream
    elif t.device.type == "cpu":
        threads = torch.get_num_threads()
    return dict(backend=backend, cuda_stream=stream, deterministic=deterministic, num_threads=threads)


def _device_guard(t: torch.Tensor):
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def params(mode: str, block_size: int = 0, topk: int = 0, softmax_scale: float = 0.0,
           alphas: Sequence[float] = (), betas: Sequence[float] = (), sink: int = 64) -> dict:
    return dict(mode=mode, block_size=block_size, topk=topk, softmax_scale=float(softmax_scale),
                alpha=[float(a) for a in alphas], beta=[float(b) for b in betas], sink=sink)


def forward(q, k, v, cu_seqlens, max_seqlen: int, prm: dict, backend: str = "auto",
            deterministic: bool = False):
    """Returns (out, lse, selection or None); selection only for MoBA."""
    check_qkv(q, k, v)
    cu_seqlens = call_cu_seqlens(cu_seqlens, q)
    check_max_seqlen_arg(cu_seqlens, max_seqlen)
    q, k, v = last_dim_contiguous(q), last_dim_contiguous(k), last_dim_contiguous(v)
    total, hq = q.shape[0], q.shape[1]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((hq, total), dtype=torch.float32, device=q.device)
    sel = None
    if prm["mode"] == "moba":
        sel = torch.empty((total, hq, max(prm["topk"] - 1, 0)), dtype=torch.int32, device=q.device)
    with _device_guard(q), _python_names(prm["mode"]):
        _C.forward(
            describe("q", q), describe("k", k), describe("v", v),
            describe("cu_seqlens", cu_seqlens), describe("out", out), describe("lse", lse),
            describe("selection", sel), **prm, **_run_options(q, backend, deterministic),
        )
    return out, lse, sel


def backward(dout, q, k, v, out, lse, selection, cu_seqlens, prm: dict, backend: str = "auto",
             deterministic: bool = False):
    """Returns (dq, dk, dv) given the forward's out, lse and selection."""
    check_qkv(q, k, v)
    cu_seqlens = call_cu_seqlens(cu_seqlens, q)
    q, k, v = last_dim_contiguous(q), last_dim_contiguous(k), last_dim_contiguous(v)
    out, dout = last_dim_contiguous(out), last_dim_contiguous(dout)
    if dout.dtype != q.dtype:
        dout = dout.to(q.dtype)
    dq = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.zeros(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.zeros(v.shape, dtype=v.dtype, device=v.device)
    with _device_guard(q), _python_names(prm["mode"]):
        _C.backward(
            describe("q", q), describe("k", k), describe("v", v), describe("out", out),
            describe("lse", lse), describe("dout", dout), describe("cu_seqlens", cu_seqlens),
            describe("selection", selection), describe("dq", dq), describe("dk", dk),
            describe("dv", dv), **prm, **_run_options(q, backend, deterministic),
        )
    return dq, dk, dv


def gate(q, k, cu_seqlens, max_seqlen: int, prm: dict, backend: str = "auto"):
    check_tensor("q", q, 3, "[total_tokens, num_q_heads, head_dim]")
    check_tensor("k", k, 3, "[total_tokens, num_kv_heads, head_dim]")
    cu_seqlens = host_cu_seqlens(cu_seqlens)
    check_max_seqlen(cu_seqlens, max_seqlen)
    q, k = last_dim_contiguous(q), last_dim_contiguous(k)
    sel = torch.empty((q.shape[0], q.shape[1], max(prm["topk"] - 1, 0)), dtype=torch.int32,
                      device=q.device)
    with _device_guard(q), _python_names(prm["mode"]):
        _C.gate(describe("q", q), describe("k", k), describe("cu_seqlens", cu_seqlens),
                describe("selection", sel), **prm, **_run_options(q, backend, False))
    return sel


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
