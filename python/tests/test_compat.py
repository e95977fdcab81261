"""Code written against MoonshotAI/MoBA's public API runs unchanged on this package.

The call sites below are written in the style of that project's README and examples (our own
code): import `moba_attn_varlen` from `moba`, pack a batch into the varlen layout, and call it
with positional arguments; and `register_moba(MoBAConfig(...))` with attn_implementation="moba".
"""

import torch

# ---- a typical call site, as user code would contain it --------------------------------------
from moba import moba_attn_varlen


def moba_self_attention(query, key, value, moba_chunk_size=16, moba_topk=3):
    """query/key/value: [batch, heads, seqlen, head_dim] -> [batch, seqlen, heads, head_dim]."""
    batch, q_heads, seqlen, head_dim = query.shape
    kv_heads = key.shape[1]
    q = query.transpose(1, 2).reshape(-1, q_heads, head_dim)
    k = key.transpose(1, 2).reshape(-1, kv_heads, head_dim)
    v = value.transpose(1, 2).reshape(-1, kv_heads, head_dim)
    cu_seqlens = torch.arange(0, (batch + 1) * seqlen, step=seqlen, dtype=torch.int32,
                              device=q.device)
    max_seqlen = seqlen
    out = moba_attn_varlen(q, k, v, cu_seqlens, max_seqlen, moba_chunk_size, moba_topk)
    return out.view(batch, seqlen, q_heads, head_dim)
# -------------------------------------------------------------------------------------------------


def test_positional_call_site():
    query = torch.randn(2, 4, 80, 64, requires_grad=True)
    key = torch.randn(2, 4, 80, 64, requires_grad=True)
    value = torch.randn(2, 4, 80, 64, requires_grad=True)
    out = moba_self_attention(query, key, value)
    assert out.shape == (2, 80, 4, 64)
    out.sum().backward()
    assert query.grad.shape == query.shape and torch.isfinite(key.grad).all()


def test_keyword_call_site():
    q = torch.randn(96, 2, 64, dtype=torch.bfloat16)
    k = torch.randn(96, 2, 64, dtype=torch.bfloat16)
    v = torch.randn(96, 2, 64, dtype=torch.bfloat16)
    cu = torch.tensor([0, 50, 96], dtype=torch.int32)
    a = moba_attn_varlen(q=q, k=k, v=v, cu_seqlens=cu, max_seqlen=50, moba_chunk_size=16,
                         moba_topk=2)
    b = moba_attn_varlen(q, k, v, cu, 50, 16, 2)
    assert a.dtype == torch.bfloat16 and torch.equal(a, b)


def test_register_moba_call_site():
    from transformers import AutoModelForCausalLM, LlamaConfig

    from moba import MoBAConfig, register_moba

    register_moba(MoBAConfig(moba_chunk_size=16, moba_topk=2))
    config = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="moba")
    assert model.config._attn_implementation == "moba"
    out = model(torch.randint(0, 64, (1, 40)))
    assert out.logits.shape == (1, 40, 64)
