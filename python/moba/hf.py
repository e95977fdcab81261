"""HuggingFace Transformers integration: ``attn_implementation="moba"`` for Llama-style models.

    import moba
    moba.register(chunk_size=512, topk=3, full_attention_layers=[-1])   # last layer stays full
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="moba")
    with moba.attention_mode("full"):    # every layer full causal (e.g. a warm-up phase)
        ...

`register` adds an attention function to ``transformers.AttentionInterface`` and, under the same
name, the flash-attention style mask function to ``AttentionMaskInterface`` so the attention
function receives either no mask or the 2-D padding mask. The function converts HF's
[batch, heads, seq, dim] tensors to the varlen layout (padding mask -> cu_seqlens; no padding ->
equal lengths; packed sequences from ``cu_seq_lens_q`` kwargs or restarting ``position_ids``
with batch 1), calls the moba op and returns [batch, seq, heads, dim] and no weights.

With ``past_key_values=moba.PagedCache(model.config)`` (moba.hf_cache), prefill and every
decoding step run MoBA/MoA (full on full_attention_layers) over moba's paged KV cache. With
another transformers cache, steps whose queries are fewer than the keys (decoding) run full
causal attention over the cache (plain PyTorch SDPA), as MoBA's public integration does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F

from . import ops
from .plan import MoaPlan

__all__ = [
    "register", "register_moa", "unregister", "set_mode", "get_mode", "attention_mode",
    "get_config", "MoBAConfig", "register_moba", "HFAttentionConfig", "PagedCache",
]


def __getattr__(name):
    if name in ("PagedCache", "PagedCacheLayer"):
        from . import hf_cache

        return getattr(hf_cache, name)
    raise AttributeError(f"module 'moba.hf' has no attribute {name!r}")

MODES = ("moba", "full")
# Process-wide (a plain global, so torch.compile guards on it instead of breaking the graph).
_MODE = ["moba"]


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"moba: mode: expected one of {', '.join(MODES)}, got {mode!r}")


def get_mode() -> str:
    """'moba' (registered sparse attention, hybrid layers honoured) or 'full' (all layers)."""
    return _MODE[0]


def set_mode(mode: str) -> None:
    """Switch every registered moba/MoA attention between sparse ('moba') and full causal
    attention ('full'); e.g. full attention for the last steps of training."""
    _check_mode(mode)
    _MODE[0] = mode


@contextlib.contextmanager
def attention_mode(mode: str):
    """Context manager: `set_mode(mode)` inside the block, the previous mode restored after."""
    _check_mode(mode)
    previous = _MODE[0]
    _MODE[0] = mode
    try:
        yield
    finally:
        _MODE[0] = previous


@dataclasses.dataclass
class HFAttentionConfig:
    """What one registered attention name computes."""

    name: str
    kind: str  # "moba" or "moa"
    chunk_size: int = 0
    topk: int = 0
    full_attention_layers: Tuple[int, ...] = ()
    plan: Optional[MoaPlan] = None
    backend: str = "auto"

    def layer_index_is_full(self, idx: int, num_layers: int) -> bool:
        """Whether layer `idx` of a model with `num_layers` layers keeps full attention."""
        return any((want + num_layers if want < 0 else want) == idx
                   for want in self.full_attention_layers)

    def layer_is_full(self, module: torch.nn.Module) -> bool:
        if not self.full_attention_layers:
            return False
        idx = getattr(module, "layer_idx", None)
        if idx is None:
            raise ValueError(
                f"moba: full_attention_layers: needs module.layer_idx to pick layers, but "
                f"{type(module).__name__} has none"
            )
        n = _num_layers(module)
        for want in self.full_attention_layers:
            if want < 0:
                if n is None:
                    raise ValueError(
                        "moba: full_attention_layers: negative indices need "
                        "config.num_hidden_layers on the attention module's config"
                    )
                want += n
            if want == idx:
                return True
        return False


_configs: Dict[str, HFAttentionConfig] = {}


def get_config(name: str = "moba") -> HFAttentionConfig:
    """The configuration registered under `name` (mutable: edits apply to later calls)."""
    return _configs[name]


def _num_layers(module) -> Optional[int]:
    cfg = getattr(module, "config", None)
    n = getattr(cfg, "num_hidden_layers", None)
    if n is None and cfg is not None and hasattr(cfg, "get_text_config"):
        n = getattr(cfg.get_text_config(), "num_hidden_layers", None)
    return n


def _layers_tuple(layers) -> Tuple[int, ...]:
    if layers is None:
        return ()
    if isinstance(layers, int):
        return (layers,)
    return tuple(int(x) for x in layers)


def _transformers():
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
    except ImportError as e:  # pragma: no cover - only without transformers
        raise ImportError("moba: the HuggingFace integration needs `transformers` "
                          "(pip install 'moba[hf]')") from e
    return AttentionInterface, AttentionMaskInterface, flash_attention_mask


def _install(cfg: HFAttentionConfig) -> HFAttentionConfig:
    AttentionInterface, AttentionMaskInterface, flash_attention_mask = _transformers()
    _configs[cfg.name] = cfg

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        return _attention(_configs[cfg.name], module, query, key, value, attention_mask,
                          *args, **kwargs)

    attention.__name__ = f"moba_attention_{cfg.name}"
    AttentionInterface.register(cfg.name, attention)
    # The flash-attention mask: None (no padding) or the 2-D boolean padding mask.
    AttentionMaskInterface.register(cfg.name, flash_attention_mask)
    return cfg


def register(chunk_size: int = 4096, topk: int = 12,
             full_attention_layers: Optional[Iterable[int]] = (), name: str = "moba", *,
             backend: str = "auto") -> HFAttentionConfig:
    """Register MoBA as ``attn_implementation=name`` for HuggingFace Transformers models.

    chunk_size: MoBA block size (tokens); topk: blocks per query, own block included.
    full_attention_layers: layer indices (``module.layer_idx``) that keep full causal attention,
    negative counting from the end (``[-1]``: the last layer; ``range(-3, 0)``: the last three).
    backend: "auto", "cpu", "cuda" or "reference" (fp64, any head_dim; for tests).
    Call again with the same name to change the settings.
    """
    from . import _core

    _core.check_positive("chunk_size", chunk_size, "a block size")
    _core.check_positive("topk", topk, "a top-k (it counts the own block)")
    if backend not in _core.BACKENDS:
        _core.fail("backend", "one of " + ", ".join(_core.BACKENDS), repr(backend))
    return _install(HFAttentionConfig(name=name, kind="moba", chunk_size=int(chunk_size),
                                      topk=int(topk),
                                      full_attention_layers=_layers_tuple(full_attention_layers),
                                      backend=backend))


def register_moa(plan, name: str = "moa", full_attention_layers: Optional[Iterable[int]] = (),
                 *, backend: str = "auto") -> HFAttentionConfig:
    """Register MoA (per-head window + sink from `plan`, a MoaPlan or a JSON path) as
    ``attn_implementation=name``; layer l uses ``plan.layer(l)``."""
    if not isinstance(plan, MoaPlan):
        plan = MoaPlan.load(plan)
    plan.validate()
    return _install(HFAttentionConfig(name=name, kind="moa", plan=plan, backend=backend,
                                      full_attention_layers=_layers_tuple(full_attention_layers)))


def unregister(name: str = "moba") -> None:
    """Forget a registered name (transformers keeps a function that now raises KeyError)."""
    _configs.pop(name, None)


# ---- MoonshotAI/MoBA compatibility -------------------------------------------------------------


@dataclasses.dataclass
class MoBAConfig:
    """MoBA's public config object: ``register_moba(MoBAConfig(moba_chunk_size, moba_topk))``."""

    moba_chunk_size: int
    moba_topk: int


def register_moba(cfg: MoBAConfig) -> None:
    """Drop-in for MoBA's ``register_moba``: registers "moba" and "moba_naive"."""
    for name in ("moba", "moba_naive"):
        register(cfg.moba_chunk_size, cfg.moba_topk, name=name)


# ---- the attention function ---------------------------------------------------------------------
# The three calls below are module globals so that tests can spy on which path each layer takes.


def _run_moba(cfg, q, k, v, cu_seqlens, max_seqlen, scale):
    return ops.moba_attn_varlen(q, k, v, cu_seqlens, max_seqlen, cfg.chunk_size, cfg.topk,
                                softmax_scale=scale, backend=cfg.backend)


def _run_moa(cfg, layer_idx, q, k, v, cu_seqlens, max_seqlen, scale):
    alphas, betas, sink = cfg.plan.layer(layer_idx)
    return ops.moa_attn(q, k, v, cu_seqlens, max_seqlen, alphas, betas, sink=sink,
                        softmax_scale=scale, backend=cfg.backend)


def _run_full(cfg, q, k, v, cu_seqlens, max_seqlen, scale):
    return ops.flash_attn_varlen(q, k, v, cu_seqlens, max_seqlen, softmax_scale=scale,
                                 backend=cfg.backend)


def _to_varlen(x: torch.Tensor) -> torch.Tensor:
    """[B, H, S, D] -> [B*S, H, D] (a view for B == 1, one copy otherwise)."""
    b, h, s, d = x.shape
    x = x.transpose(1, 2)
    return x[0] if b == 1 else x.reshape(b * s, h, d)


def _packed_from_position_ids(position_ids: torch.Tensor, seq: int):
    """cu_seqlens (CPU int32) and max length of sequences packed in one row, where positions
    restart; None if they never do."""
    pos = position_ids.reshape(-1)
    if pos.numel() != seq or seq < 2:
        return None
    restart = pos[1:] <= pos[:-1]
    if not bool(restart.any()):
        return None
    starts = (torch.nonzero(restart).reshape(-1) + 1).to("cpu", torch.int32)
    zero = torch.zeros(1, dtype=torch.int32)
    end = torch.full((1,), seq, dtype=torch.int32)
    cu = torch.cat([zero, starts, end])
    return cu, int((cu[1:] - cu[:-1]).max())


def _full_with_cache(module, query, key, value, attention_mask, scale):
    """Causal attention of the last Sq positions over Skv cached keys (decode / cached steps)."""
    b, hq, sq, d = query.shape
    skv = key.shape[2]
    if key.shape[1] != hq:
        key = key.repeat_interleave(hq // key.shape[1], dim=1)
        value = value.repeat_interleave(hq // value.shape[1], dim=1)
    qpos = torch.arange(skv - sq, skv, device=query.device).view(sq, 1)
    kpos = torch.arange(skv, device=query.device).view(1, skv)
    allowed = (kpos <= qpos).view(1, 1, sq, skv)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, -skv:].to(torch.bool).view(b, 1, 1, skv)
    # A row with no visible key (a padding query) would be NaN; let it see everything instead.
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scale)
    return out.transpose(1, 2)


def _context_parallel_attention(cfg, module, query, key, value, attention_mask, scaling):
    """moba.distributed.context_parallel's path, or None outside it (never imports it)."""
    cp = sys.modules.get(__package__ + ".distributed")
    if cp is None or cp._HF.current is None:
        return None
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError("moba: attention_mask: expected no padding under "
                         "moba.distributed.context_parallel (local tokens of one sequence row)")
    layer_full = get_mode() == "full" or cfg.layer_is_full(module)
    return cp.hf_attention(cfg, module, query, key, value, scaling, layer_full)


def _take_paged(key):
    """The PagedCache layer that just returned `key` from its update, if any."""
    import sys

    hf_cache = sys.modules.get(__package__ + ".hf_cache")
    return hf_cache.take_pending(key) if hf_cache is not None else None


def _autocast_inputs(query, key, value):
    """Under autocast (mixed-precision training with f32 weights), q/k/v in the autocast dtype,
    as SDPA takes them: RoPE's f32 cos/sin promote the low-precision projections back to f32,
    which the CUDA kernels do not take."""
    device_type = query.device.type
    if not torch.is_autocast_enabled(device_type):
        return query, key, value
    dtype = torch.get_autocast_dtype(device_type)
    return query.to(dtype), key.to(dtype), value.to(dtype)


def _attention(cfg: HFAttentionConfig, module, query, key, value, attention_mask,
               dropout: float = 0.0, scaling: Optional[float] = None, *,
               sliding_window=None, softcap=None, is_causal=None, position_ids=None,
               cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None,
               **kwargs):
    if dropout:
        raise NotImplementedError(
            f"moba: dropout: expected 0.0 (attention dropout is not supported), got {dropout}")
    if sliding_window is not None:
        raise NotImplementedError(
            f"moba: sliding_window: expected None (use register_moa for windows), got "
            f"{sliding_window}")
    if softcap is not None:
        raise NotImplementedError(f"moba: softcap: expected None, got {softcap}")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if not causal:
        raise NotImplementedError(
            "moba: is_causal: expected a causal (decoder) attention module, got is_causal=False")
    if query.dim() != 4:
        raise ValueError(f"moba: query: expected [batch, heads, seq, head_dim], got shape "
                         f"{list(query.shape)}")
    b, hq, sq, d = query.shape
    skv = key.shape[2]
    paged = _take_paged(key)
    if paged is not None:  # moba.PagedCache: append, then this layer's attention over the pages
        mode, prm = paged.owner.layer_attention(paged.layer_idx)
        return paged.step(module, query, key, value, attention_mask, scaling, mode, prm), None


    query, key, value = _autocast_inputs(query, key, value)
    if key.dtype != query.dtype:
        key = key.to(query.dtype)
    if value.dtype != query.dtype:
        value = value.to(query.dtype)
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(
                "moba: attention_mask: expected None or a 2-D padding mask [batch, seq] (the "
                "mask function moba.register installs), got shape "
                f"{list(attention_mask.shape)}; pass a 2-D attention_mask to the model")
        attention_mask = attention_mask.to(torch.bool)

    if sq != skv:  # a KV cache holds earlier tokens: full attention over it
        out = _full_with_cache(module, query, key, value, attention_mask, scaling)
        return out, None

    cp = _context_parallel_attention(cfg, module, query, key, value, attention_mask, scaling)
    if cp is not None:  # inside moba.distributed.context_parallel
        return cp, None

    # Sequences of the varlen layout.
    q, k, v = _to_varlen(query), _to_varlen(key), _to_varlen(value)
    indices = None
    if attention_mask is not None and not bool(attention_mask[:, -skv:].all()):
        mask = attention_mask[:, -skv:]
        seqlens = mask.sum(dim=1, dtype=torch.int32).to("cpu")
        cu = F.pad(torch.cumsum(seqlens, 0, dtype=torch.int32), (1, 0))
        max_seqlen = int(seqlens.max())
        indices = torch.nonzero(mask.reshape(-1)).reshape(-1)
        q, k, v = q.index_select(0, indices), k.index_select(0, indices), v.index_select(0, indices)
    elif cu_seq_lens_q is not None and b == 1:
        cu = cu_seq_lens_q.to("cpu", torch.int32)
        max_seqlen = int(max_length_q) if max_length_q is not None else int((cu[1:] - cu[:-1]).max())
    else:
        packed = None
        # Looking for restarts reads the positions (a host sync), which torch.compile cannot
        # trace without a graph break: when compiling, pass cu_seq_lens_q for packed rows.
        if (position_ids is not None and b == 1 and attention_mask is None
                and not torch.compiler.is_compiling()):
            packed = _packed_from_position_ids(position_ids, sq)
        if packed is not None:
            cu, max_seqlen = packed
        else:
            cu = torch.arange(0, (b + 1) * sq, sq, dtype=torch.int32)
            max_seqlen = sq

    layer_full = get_mode() == "full" or cfg.layer_is_full(module)
    if layer_full:
        out = _run_full(cfg, q, k, v, cu, max_seqlen, scaling)
    elif cfg.kind == "moa":
        out = _run_moa(cfg, getattr(module, "layer_idx", 0), q, k, v, cu, max_seqlen, scaling)
    else:
        out = _run_moba(cfg, q, k, v, cu, max_seqlen, scaling)

    if indices is not None:
        out = out.new_zeros((b * sq, hq, d)).index_copy(0, indices, out)
    return out.reshape(b, sq, hq, d), None
