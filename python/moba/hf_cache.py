"""A transformers ``Cache`` on moba's paged KV cache, so that ``generate`` decodes with MoBA/MoA.

    import moba
    moba.register(chunk_size=512, topk=3, full_attention_layers=[-1])
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="moba")
    out = model.generate(ids, past_key_values=moba.PagedCache(model.config), max_new_tokens=64)

Each layer keeps its keys/values in a ``moba.PagedKVCache``. The prompt (prefill) and every
later step go through the same entry point: the new tokens are appended, then the layer's
attention (MoBA, MoA, or full for the layers ``full_attention_layers`` names) runs for them over
the cache, giving the rows a one-shot prefill of the whole sequence so far would give. MoBA
layers keep exact block means, so decoding selects the blocks the prefill selects; MoA layers
keep only each KV head's sink and windows (``moa_evict=True``, the default), freeing the rest.

On the GPU, a step whose sequences have no history yet (the prompt) runs the tiled one-shot
prefill kernels on the new tokens (the same rows, faster than the decode kernels' one CTA per
query row); every later step runs over the pages.

How the attention function finds the cache: ``update`` returns the new key/value states
unchanged and records them; moba's registered attention function (moba.hf) recognises these
exact tensors and runs the paged step instead of its usual path. Padding (a 2-D attention mask)
is honoured: padded positions are never appended and their outputs are zero.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from .kv_cache import PagedKVCache

try:
    from transformers.cache_utils import Cache, CacheLayerMixin
except ImportError as e:  # pragma: no cover - only without transformers
    raise ImportError("moba: PagedCache needs `transformers` (pip install 'moba[hf]')") from e

__all__ = ["PagedCache", "PagedCacheLayer"]

# id(key tensor) -> (layer, key tensor): the keys update() just returned, until the attention
# function of that layer takes them (holding the tensor keeps its id from being reused).
_PENDING: Dict[int, Tuple["PagedCacheLayer", torch.Tensor]] = {}


def take_pending(key: torch.Tensor) -> Optional["PagedCacheLayer"]:
    entry = _PENDING.pop(id(key), None)
    if entry is None or entry[1] is not key:
        return None
    return entry[0]


class PagedCacheLayer(CacheLayerMixin):
    """One layer of a PagedCache: a moba.PagedKVCache created at the first update."""

    is_compileable = False
    is_sliding = False

    def __init__(self, owner: "PagedCache", layer_idx: int):
        super().__init__()
        self.owner = owner
        self.layer_idx = layer_idx
        self.cache: Optional[PagedKVCache] = None
        self.seen = 0  # positions the model has fed, padding included (HF's view of the length)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, hkv, _, d = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        kind, params = self.owner.layer_attention(self.layer_idx)
        moa = None
        if kind == "moa" and self.owner.moa_evict:
            moa = (params["alphas"], params["betas"], params["sink"])
        self.cache = PagedKVCache(
            hkv, d, self.owner.cache_len, max_batch=b, page_size=self.owner.page_size,
            num_pages=self.owner.num_pages, dtype=key_states.dtype, device=key_states.device,
            block_size=params.get("block_size", 0) if kind == "moba" else 0,
            num_q_heads=self.owner.num_q_heads, moa=moa, max_chunk=self.owner.max_chunk)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.seen += key_states.shape[-2]
        _PENDING[id(key_states)] = (self, key_states)
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> Tuple[int, int]:
        return self.seen + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return self.owner.cache_len

    def reset(self) -> None:
        if self.cache is not None:
            self.cache.reset()
        self.seen = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("moba: PagedCache: beam search (reorder_cache) is not supported; "
                                  "use greedy or sampling decoding")

    def step(self, module, query, key, value, attention_mask, scaling, mode: str, params: dict):
        """Appends the new tokens (padding dropped) and attends for them. query/key/value are
        HF's [batch, heads, new_tokens, head_dim]; returns [batch, new_tokens, Hq, D]."""
        b, hq, sq, d = query.shape
        hkv = key.shape[1]
        q = query.transpose(1, 2).reshape(b * sq, hq, d)
        k = key.transpose(1, 2).reshape(b * sq, hkv, d)
        v = value.transpose(1, 2).reshape(b * sq, hkv, d)
        idx = None
        counts = [sq] * b
        if attention_mask is not None:
            valid = attention_mask[:, -sq:].to(torch.bool)
            if not bool(valid.all()):
                counts = valid.sum(dim=1).tolist()
                idx = torch.nonzero(valid.reshape(-1)).reshape(-1)
                q, k, v = q.index_select(0, idx), k.index_select(0, idx), v.index_select(0, idx)
        cu = torch.tensor([0] + list(torch.tensor(counts).cumsum(0).tolist()), dtype=torch.int32)
        if k.dtype != self.cache.dtype:
            k, v = k.to(self.cache.dtype), v.to(self.cache.dtype)
        fresh = all(self.cache.seq_len(r) == 0 for r in range(b))
        self.cache.append(k.contiguous(), v.contiguous(), cu, backend=params.get("backend", "auto"))
        if fresh and self._one_shot_ok(mode, params, q):
            # Empty history: the rows equal the one-shot prefill of the new tokens, which the
            # tiled prefill kernels compute faster than the decode path (one CTA per row).
            out = self._one_shot(q.to(self.cache.dtype), k, v, cu, max(counts), mode, params,
                                 scaling).to(query.dtype)
        else:
            out = self._paged(q, cu, mode, params, scaling).to(query.dtype)
        if idx is not None:
            out = out.new_zeros((b * sq, hq, d)).index_copy(0, idx, out)
        return out.reshape(b, sq, hq, d)

    @staticmethod
    def _one_shot_ok(mode, params, q) -> bool:
        if q.device.type != "cuda":
            return False  # on the CPU the paged path is the one tested against the recompute
        return mode != "moba" or params.get("block_size", 0) % 64 == 0

    @staticmethod
    def _one_shot(q, k, v, cu, max_len, mode, params, scaling):
        from . import ops

        backend = params.get("backend", "auto")
        if mode == "moba":
            return ops.moba_attn_varlen(q, k, v, cu, max_len, params["block_size"], params["topk"],
                                        softmax_scale=scaling, backend=backend)
        if mode == "moa":
            return ops.moa_attn(q, k, v, cu, max_len, params["alphas"], params["betas"],
                                sink=params["sink"], softmax_scale=scaling, backend=backend)
        return ops.flash_attn_varlen(q, k, v, cu, max_len, softmax_scale=scaling, backend=backend)

    def _paged(self, q, cu, mode, params, scaling):
        return self.cache.attend(q.to(self.cache.dtype), cu, mode=mode,
                                 block_size=params.get("block_size", 0), topk=params.get("topk", 0),
                                 alphas=params.get("alphas", ()), betas=params.get("betas", ()),
                                 sink=params.get("sink", 64), softmax_scale=scaling,
                                 backend=params.get("backend", "auto"))


class PagedCache(Cache):
    """A transformers Cache whose layers live in moba paged KV caches (see the module doc).

    config: the model's config (number of layers and heads, ``_attn_implementation`` naming a
    moba.register / moba.register_moa registration). max_cache_len: longest sequence (default
    config.max_position_embeddings). page_size: positions per page. num_pages: pages per layer
    pool (default: every sequence can reach max_cache_len). moa_evict: MoA layers free pages
    outside their windows; later calls may then add at most max_chunk tokens per sequence
    (generate adds one).
    """

    def __init__(self, config, *, max_cache_len: Optional[int] = None, page_size: int = 16,
                 num_pages: Optional[int] = None, moa_evict: bool = True, max_chunk: int = 1):
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.model_config = text
        self.num_layers = int(text.num_hidden_layers)
        self.num_q_heads = int(text.num_attention_heads)
        self.cache_len = int(max_cache_len or text.max_position_embeddings)
        self.page_size = int(page_size)
        self.num_pages = num_pages
        self.moa_evict = bool(moa_evict)
        self.max_chunk = int(max_chunk)
        super().__init__(layers=[PagedCacheLayer(self, i) for i in range(self.num_layers)])

    def layer_attention(self, layer_idx: int) -> Tuple[str, dict]:
        """("full" | "moba" | "moa", parameters) of a layer under the model's registered
        attention (moba.hf); full for the registration's full_attention_layers."""
        from . import hf

        name = getattr(self.model_config, "_attn_implementation", None)
        cfg = hf._configs.get(name)
        if cfg is None:
            raise ValueError(f"moba: PagedCache: expected a model whose attn_implementation is "
                             f"registered with moba.register/register_moa, got {name!r}")
        if hf.get_mode() == "full" or cfg.layer_index_is_full(layer_idx, self.num_layers):
            return "full", dict(backend=cfg.backend)
        if cfg.kind == "moa":
            alphas, betas, sink = cfg.plan.layer(layer_idx)
            return "moa", dict(alphas=list(alphas), betas=list(betas), sink=int(sink),
                               backend=cfg.backend)
        return "moba", dict(block_size=cfg.chunk_size, topk=cfg.topk, backend=cfg.backend)

    def memory_bytes(self) -> int:
        """Bytes of K/V held in the pages in use, over all layers."""
        return sum(l.cache.memory_bytes() for l in self.layers if l.cache is not None)
