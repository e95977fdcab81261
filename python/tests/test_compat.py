"""Code written against MoonshotAI/MoBA's public API runs unchanged on this package.

The call sites below are written in the style of that project's README and examples (our own
code): import `moba_attn_varlen` from `moba`, pack a batch into the varlen layout, and call it
with positional arguments; and `register_moba(MoBAConfig(...))` with attn_implementation="moba".
"""

import torch

import moba
import reference
from helpers import check_selection, rel_l2

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


def _reference_moba(q, k, v, cu, block, topk):
    """fp64 MoBA on the varlen layout (python/tests/reference.py), differentiable."""
    cu_l = cu.tolist()
    sel = reference.moba_selection(q.detach(), k.detach(), cu_l, block, topk)
    mask = reference.key_mask("moba", cu_l, q.shape[1], block=block, selection=sel)
    return reference.attention(q, k, v, mask)[0]


def test_positional_call_site():
    torch.manual_seed(0)
    query = torch.randn(2, 4, 80, 64, requires_grad=True)
    key = torch.randn(2, 4, 80, 64, requires_grad=True)
    value = torch.randn(2, 4, 80, 64, requires_grad=True)
    out = moba_self_attention(query, key, value)
    assert out.shape == (2, 80, 4, 64)
    dout = torch.randn_like(out)
    (out * dout).sum().backward()

    # The same call site on the fp64 reference: values and gradients agree.
    qd, kd, vd = (x.detach().double().requires_grad_(True) for x in (query, key, value))
    pack = lambda x: x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3])  # noqa: E731
    cu = torch.arange(0, 3 * 80, step=80, dtype=torch.int32)
    ref = _reference_moba(pack(qd), pack(kd), pack(vd), cu, 16, 3).view(2, 80, 4, 64)
    assert rel_l2(out, ref) < 1e-5, rel_l2(out, ref)
    (ref * dout.double()).sum().backward()
    for got, want in ((query.grad, qd.grad), (key.grad, kd.grad), (value.grad, vd.grad)):
        assert rel_l2(got, want) < 1e-4, rel_l2(got, want)


def test_keyword_call_site():
    q = torch.randn(96, 2, 64, dtype=torch.bfloat16)
    k = torch.randn(96, 2, 64, dtype=torch.bfloat16)
    v = torch.randn(96, 2, 64, dtype=torch.bfloat16)
    cu = torch.tensor([0, 50, 96], dtype=torch.int32)
    a = moba_attn_varlen(q=q, k=k, v=v, cu_seqlens=cu, max_seqlen=50, moba_chunk_size=16,
                         moba_topk=2)
    b = moba_attn_varlen(q, k, v, cu, 50, 16, 2)
    assert a.dtype == torch.bfloat16 and torch.equal(a, b)
    # Against the fp64 reference on the same bf16 values: the error of one bf16 rounding of
    # the output (2^-8 relative) is what a correct kernel may add, doubled for fp32 sums.
    assert check_selection(moba.moba_gate(q, k, cu, 50, 16, 2), q, k, cu, 16, 2) == 0
    ref = _reference_moba(q.double(), k.double(), v.double(), cu, 16, 2)
    rounding = rel_l2(ref.to(torch.bfloat16), ref)
    assert rel_l2(a, ref) <= 2 * rounding + 1e-5, (rel_l2(a, ref), rounding)


def test_register_moba_call_site():
    from transformers import AutoModelForCausalLM, LlamaConfig

    from moba import MoBAConfig, register_moba

    register_moba(MoBAConfig(moba_chunk_size=16, moba_topk=2))
    config = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="moba")
    assert model.config._attn_implementation == "moba"
    ids = torch.randint(0, 64, (1, 40))
    out = model(ids)
    assert out.logits.shape == (1, 40, 64)
    # 40 tokens in blocks of 16 with top-2: the first 16 tokens see only their own block, the
    # causal prefix, so their logits equal the eager (dense causal) model's; later ones differ.
    model.set_attn_implementation("eager")
    dense = model(ids).logits
    assert torch.allclose(out.logits[0, :16], dense[0, :16], atol=1e-5)
    assert not torch.allclose(out.logits[0, 32:], dense[0, 32:], atol=1e-3)
