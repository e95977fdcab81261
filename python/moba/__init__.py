"""moba: trainable sparse attention (MoBA, MoA) and full causal attention for PyTorch.

    from moba import moba_attn_varlen          # MoonshotAI/MoBA's signature
    out = moba_attn_varlen(q, k, v, cu_seqlens, max_seqlen, moba_chunk_size, moba_topk)

    import moba
    moba.register(chunk_size=512, topk=3)      # attn_implementation="moba" in transformers

See docs/python.md and docs/semantics.md.
"""

from . import _core
from ._core import OutOfMemoryError
from .kv_cache import PagedKVCache, merge_attention_states, paged_attention
from .ops import flash_attn_varlen, moa_attn, moba_attn_varlen, moba_gate
from .plan import MoaPlan

__version__ = _core._C.__version__

# The HuggingFace integration imports transformers only when used.
_HF_NAMES = {"register", "register_moa", "unregister", "set_mode", "get_mode", "attention_mode",
             "get_config", "MoBAConfig", "register_moba", "HFAttentionConfig", "PagedCache"}


def __getattr__(name):
    if name in _HF_NAMES:
        from . import hf

        return getattr(hf, name)
    if name == "hf":
        import importlib

        return importlib.import_module(".hf", __name__)
    raise AttributeError(f"module 'moba' has no attribute {name!r}")


def backends():
    """The backends of this build: [{'name', 'compiled', 'available', 'detail'}, ...]."""
    return _core._C.backends()


def build_info() -> str:
    """Version, compiler, SIMD flags and CUDA architectures of the compiled core."""
    return _core._C.build_info()


def cuda_workspace_peak_bytes(device: int = 0, reset: bool = False) -> int:
    """High-water mark (bytes) of the CUDA backend's scratch on `device` since the last reset.
    The scratch comes from moba's own memory pool, not PyTorch's allocator, so add this to
    torch.cuda.max_memory_allocated() for a call's peak. reset=True starts a new mark."""
    return int(_core._C.cuda_workspace_peak_bytes(int(device), bool(reset)))


__all__ = sorted({"moba_attn_varlen", "flash_attn_varlen", "moa_attn", "moba_gate", "MoaPlan",
                  "OutOfMemoryError", "backends", "build_info", "cuda_workspace_peak_bytes", "__version__",
                  "PagedKVCache", "paged_attention", "merge_attention_states"} | _HF_NAMES)
