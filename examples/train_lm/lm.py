"""The model (a Llama-style decoder from transformers) and its attention: full (`sdpa`), MoBA,
MoBA-hybrid (the last layers full), moba's own dense kernel, or MoA with a plan."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Optional

import torch
import torch.nn.functional as F

ATTENTIONS = ("sdpa", "moba", "moba-hybrid", "moba-full", "moa")

# Model sizes (head_dim 64 everywhere: moba's fast kernels take 64 or 128).
PRESETS: Dict[str, dict] = {
    "tiny": dict(hidden=128, layers=2, heads=2, intermediate=384),     # CPU tests, ~0.5M + vocab
    "small": dict(hidden=512, layers=8, heads=8, intermediate=1536),   # ~25M + vocab
    "base": dict(hidden=768, layers=12, heads=12, intermediate=2048),  # ~85M + vocab
}


@dataclasses.dataclass
class AttentionSpec:
    """Which attention a model runs, in the terms of the command line."""

    kind: str = "sdpa"
    moba_chunk: int = 512
    moba_topk: int = 3
    full_layers: int = 2  # moba-hybrid: this many last layers keep full attention
    plan: Optional[str] = None  # moa: the plan file

    def describe(self) -> str:
        if self.kind == "moba":
            return f"moba (block {self.moba_chunk}, top-{self.moba_topk})"
        if self.kind == "moba-hybrid":
            return (f"moba-hybrid (block {self.moba_chunk}, top-{self.moba_topk}, last "
                    f"{self.full_layers} layers full)")
        if self.kind == "moba-full":
            return "moba-full (moba's dense causal kernel)"
        if self.kind == "moa":
            return f"moa (plan {self.plan})"
        return "sdpa (full causal attention, PyTorch SDPA)"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def register(spec: AttentionSpec, num_layers: int) -> str:
    """Registers the attention with transformers (through moba) and returns the name to pass as
    `attn_implementation`."""
    if spec.kind not in ATTENTIONS:
        raise ValueError(f"train_lm: attention: expected one of {', '.join(ATTENTIONS)}, got "
                         f"{spec.kind!r}")
    if spec.kind == "sdpa":
        return "sdpa"
    import moba

    if spec.kind == "moa":
        if not spec.plan:
            raise ValueError("train_lm: attention moa needs --plan FILE (a MoA plan JSON)")
        moba.register_moa(spec.plan, name="moa")
        return "moa"
    if spec.kind == "moba":
        moba.register(spec.moba_chunk, spec.moba_topk, name="moba")
        return "moba"
    if spec.kind == "moba-hybrid":
        if spec.full_layers < 1:
            raise ValueError(f"train_lm: moba-hybrid: --full-layers: expected >= 1, got "
                             f"{spec.full_layers}")
        moba.register(spec.moba_chunk, spec.moba_topk,
                      full_attention_layers=range(-spec.full_layers, 0), name="moba_hybrid")
        return "moba_hybrid"
    # moba-full: every layer "full" through the moba op (moba's own dense kernel).
    moba.register(spec.moba_chunk, spec.moba_topk, full_attention_layers=range(num_layers),
                  name="moba_full")
    return "moba_full"


def model_config(vocab_size: int, preset: str, max_len: int, *, hidden=None, layers=None,
                 heads=None, kv_heads=None, intermediate=None):
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise ValueError(f"train_lm: --model: expected one of {', '.join(PRESETS)}, got "
                         f"{preset!r}")
    p = dict(PRESETS[preset])
    for key, value in (("hidden", hidden), ("layers", layers), ("heads", heads),
                       ("intermediate", intermediate)):
        if value:
            p[key] = value
    if p["hidden"] % p["heads"]:
        raise ValueError(f"train_lm: hidden size {p['hidden']} is not a multiple of "
                         f"{p['heads']} heads")
    kv = kv_heads or p["heads"]
    return LlamaConfig(vocab_size=vocab_size, hidden_size=p["hidden"],
                       intermediate_size=p["intermediate"], num_hidden_layers=p["layers"],
                       num_attention_heads=p["heads"], num_key_value_heads=kv,
                       max_position_embeddings=max_len, tie_word_embeddings=True,
                       use_cache=False, bos_token_id=None, eos_token_id=0, pad_token_id=0)


def build_model(config, attn_name: str, seed: int):
    """A freshly initialised model (same seed -> same weights for every attention)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.set_attn_implementation(attn_name)
    return model


def load_model(path: str, attn_name: str):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32,
                                             attn_implementation=attn_name)
    model.config.use_cache = False
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_kwargs(attn_name: str, batch: int, seq_len: int) -> dict:
    """Extra model arguments: for a single sequence, moba gets its boundaries directly (instead
    of scanning position_ids for packed sequences, a host sync in every layer)."""
    if attn_name.endswith("sdpa") or batch != 1:
        return {}
    return {"cu_seq_lens_q": torch.tensor([0, seq_len], dtype=torch.int32),
            "cu_seq_lens_k": torch.tensor([0, seq_len], dtype=torch.int32),
            "max_length_q": seq_len, "max_length_k": seq_len}


def token_losses(model, tokens: torch.Tensor, attn_name: str) -> torch.Tensor:
    """Cross-entropy of each next-token prediction, f32 [batch, seq] (tokens: [batch, seq+1])."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = model(input_ids=inputs, use_cache=False,
                   **forward_kwargs(attn_name, inputs.shape[0], inputs.shape[1])).logits
    return F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")


def autocast(device: torch.device):
    """bf16 autocast on the GPU; plain f32 on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def save_checkpoint(model, tokenizer, path: str, spec: AttentionSpec, extra: dict,
                    dtype: torch.dtype = torch.bfloat16) -> None:
    """save_pretrained of the model (in `dtype`) and tokenizer, and how it was trained."""
    import copy

    os.makedirs(path, exist_ok=True)
    to_save = copy.deepcopy(model).to("cpu", dtype)
    to_save.save_pretrained(path)
    tokenizer.save_pretrained(path)
    with open(os.path.join(path, "train_lm.json"), "w") as fh:
        json.dump({"attention": spec.to_json(), **extra}, fh, indent=1)
