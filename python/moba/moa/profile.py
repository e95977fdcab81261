"""Profiling a HuggingFace causal LM: one backward pass per calibration batch fills, for every
layer and query head, the influence sums of moba.moa.attention_influence.

The model runs with ``attn_implementation="moba_profile"``: dense causal attention through
moba's engine (``moba.flash_attn_varlen``), with a gradient hook on each layer's attention
output. When the backward reaches that output, the hook receives ``dout`` and calls the
influence op with the forward's saved q, k, v, out and lse, adding the per-head sums to the
layer's total. Weights are frozen; only the input embeddings require a gradient so that the
backward runs through every layer. The loss is cross-entropy against the calibration targets
(by default the dense model's own greedy predictions, see moba.moa.data).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .. import ops
from .influence import MEASURES, attention_influence

PROFILE_ATTENTION = "moba_profile"


@dataclasses.dataclass
class Profile:
    """Influence sums of one model at one input length."""

    length: int
    sink: int
    edges: List[int]
    num_layers: int
    num_heads: int            # query heads per layer
    sums: np.ndarray          # float64 [2 measures, layers * heads, 2 sink flags, bins]
    sequences: int = 0        # calibration sequences profiled

    @property
    def heads(self) -> int:
        return self.num_layers * self.num_heads

    def histogram(self, measure: str = "magnitude", sink_keys: bool = False) -> np.ndarray:
        """[layers * heads, bins]: the summed influence of keys outside (or inside) the sink."""
        if measure not in MEASURES:
            raise ValueError(f"moba: measure: expected one of {', '.join(MEASURES)}, got "
                             f"{measure!r}")
        return self.sums[MEASURES.index(measure), :, 1 if sink_keys else 0, :]

    def to_dict(self) -> dict:
        return {"length": self.length, "sink": self.sink, "edges": self.edges,
                "num_layers": self.num_layers, "num_heads": self.num_heads,
                "sequences": self.sequences, "sums": self.sums.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        return cls(int(d["length"]), int(d["sink"]), [int(e) for e in d["edges"]],
                   int(d["num_layers"]), int(d["num_heads"]), np.asarray(d["sums"], dtype=float),
                   int(d.get("sequences", 0)))


def save_profiles(profiles: Sequence[Profile], path: Union[str, os.PathLike],
                  rules: Optional[Sequence] = None) -> None:
    """Write profiles (and the candidate rules their bins were cut for) as JSON."""
    d = {"moba_moa_profiles": [p.to_dict() for p in profiles]}
    if rules is not None:
        d["rules"] = [[float(a), float(b)] for a, b in rules]
    with open(os.fspath(path), "w") as f:
        json.dump(d, f)


def load_profiles(path: Union[str, os.PathLike], with_rules: bool = False):
    """The profiles of a file written by save_profiles (and its rules if `with_rules`)."""
    with open(os.fspath(path)) as f:
        d = json.load(f)
    if not isinstance(d, dict) or "moba_moa_profiles" not in d:
        raise ValueError(f"moba: {os.fspath(path)}: expected a profile file written by "
                         "moba.moa (key 'moba_moa_profiles')")
    profiles = [Profile.from_dict(p) for p in d["moba_moa_profiles"]]
    if with_rules:
        return profiles, [tuple(r) for r in d.get("rules", [])] or None
    return profiles


class _Recorder:
    """The sums of one profiling run, per layer, kept on the model's device until the end."""

    def __init__(self, edges: List[int], sink: int, backend: str, chunk_elements: int):
        self.edges, self.sink, self.backend = edges, sink, backend
        self.chunk_elements = chunk_elements
        self.layers: Dict[int, torch.Tensor] = {}

    def add(self, layer: int, dout, q, k, v, out, lse, cu, max_seqlen, scale):
        sums = attention_influence(dout, q, k, v, out, lse, cu, max_seqlen, self.edges,
                                   self.sink, softmax_scale=scale, backend=self.backend,
                                   chunk_elements=self.chunk_elements)
        if layer in self.layers:
            self.layers[layer] += sums
        else:
            self.layers[layer] = sums


_ACTIVE: List[Optional[_Recorder]] = [None]
_ENGINE_BACKEND = ["auto"]


def _profile_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                       scaling: Optional[float] = None, **kwargs):
    """Dense causal attention through moba's engine, hooked for the influence sums."""
    if dropout:
        raise NotImplementedError("moba: profiling needs attention dropout 0 (model.eval())")
    if attention_mask is not None and not bool(attention_mask.to(torch.bool).all()):
        raise NotImplementedError("moba: profiling takes unpadded batches of equal lengths")
    b, hq, s, d = query.shape
    if key.dtype != query.dtype:
        key, value = key.to(query.dtype), value.to(query.dtype)
    varlen = lambda x: x.transpose(1, 2).reshape(b * s, x.shape[1], d)  # noqa: E731
    q, k, v = varlen(query), varlen(key), varlen(value)
    cu = torch.arange(0, (b + 1) * s, s, dtype=torch.int32)
    out, lse = ops.flash_attn_varlen(q, k, v, cu, s, softmax_scale=scaling, return_lse=True,
                                     backend=_ENGINE_BACKEND[0])
    rec = _ACTIVE[0]
    if rec is not None and out.requires_grad:
        layer = int(getattr(module, "layer_idx", 0))
        saved = (q.detach(), k.detach(), v.detach(), out.detach(), lse)

        def hook(dout, layer=layer, saved=saved):
            rec.add(layer, dout, *saved, cu, s, scaling)

        out.register_hook(hook)
    return out.view(b, s, hq, d), None


def register_profile_attention() -> str:
    """Register ``attn_implementation="moba_profile"`` (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(PROFILE_ATTENTION, _profile_attention)
    AttentionMaskInterface.register(PROFILE_ATTENTION, flash_attention_mask)
    return PROFILE_ATTENTION


def model_shape(model) -> tuple:
    """(layers, query heads, KV heads, head_dim, longest input) of a transformers causal LM."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = int(cfg.num_hidden_layers)
    heads = int(cfg.num_attention_heads)
    kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    longest = getattr(cfg, "max_position_embeddings", None)
    return layers, heads, kv, head_dim, (int(longest) if longest else None)


def check_length(model, length: int) -> int:
    longest = model_shape(model)[4]
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 2:
        raise ValueError(f"moba: length: expected an int >= 2, got {length!r}")
    if longest is not None and length > longest:
        raise ValueError(f"moba: length: expected <= {longest} (the model's "
                         f"max_position_embeddings), got {length}")
    return int(length)


class _ModelState:
    """Swaps the model into profiling (eval, frozen, hooked attention) and back."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        m = self.model
        self.training = m.training
        self.grads = [p.requires_grad for p in m.parameters()]
        self.attn = getattr(m.config, "_attn_implementation", None)
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
        m.set_attn_implementation(register_profile_attention())
        return m

    def __exit__(self, *exc):
        m = self.model
        for p, g in zip(m.parameters(), self.grads):
            p.requires_grad_(g)
        if self.attn is not None:
            m.set_attn_implementation(self.attn)
        m.train(self.training)
        return False


def profile_model(model, batches: Iterable, length: int, edges: Sequence[int], sink: int = 64,
                  backend: str = "auto", chunk_elements: int = 1 << 25) -> Profile:
    """Profile `model` on `batches` of (input_ids [B, length], targets [B, length]) where
    targets[b, t] is the token expected after position t (-100: not supervised).

    backend: the influence backend ("auto": C++ on CPU, chunked PyTorch on CUDA); the
    attention itself runs on moba's engine ("auto" backend).
    """
    length = check_length(model, length)
    layers, heads = model_shape(model)[:2]
    rec = _Recorder(list(edges), int(sink), backend, chunk_elements)
    count = 0
    with _ModelState(model) as m:
        emb = m.get_input_embeddings()
        _ACTIVE[0] = rec
        try:
            for ids, targets in batches:
                if ids.shape[-1] != length:
                    raise ValueError(f"moba: batches: expected sequences of length {length}, "
                                     f"got shape {list(ids.shape)}")
                x = emb(ids).detach().requires_grad_(True)
                logits = m(inputs_embeds=x).logits
                loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.reshape(-1),
                                       ignore_index=-100)
                if torch.isfinite(loss) and targets.ne(-100).any():
                    loss.backward()
                count += ids.shape[0]
        finally:
            _ACTIVE[0] = None
    bins = len(edges)
    sums = np.zeros((2, layers * heads, 2, bins))
    for layer, s in rec.layers.items():
        sums[:, layer * heads:(layer + 1) * heads] = s.double().cpu().numpy()
    return Profile(length, int(sink), list(edges), layers, heads, sums, count)
