"""HuggingFace Transformers: a tiny Llama (built from a config, no downloads) with
attn_implementation set to names registered by moba.register."""

import collections

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import moba  # noqa: E402
import moba.hf  # noqa: E402
from helpers import rel_l2  # noqa: E402

SEQ = 64


def tiny_llama(attn="sdpa", layers=3):
    cfg = LlamaConfig(vocab_size=96, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=256)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.set_attn_implementation(attn)
    return model


def logits_and_grads(model, ids, mask=None):
    model.zero_grad()
    logits = model(ids, attention_mask=mask).logits
    valid = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    (logits[valid].float().square().mean()).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("padded", [False, True])
def test_all_blocks_matches_sdpa(padded):
    moba.register(chunk_size=16, topk=SEQ // 16, name="moba_all")
    model = tiny_llama()
    ids = torch.randint(0, 96, (2, SEQ))
    mask = None
    if padded:
        mask = torch.ones(2, SEQ, dtype=torch.long)
        mask[1, :11] = 0  # left padding
        mask[0, -5:] = 0  # right padding
    ref, ref_grads = logits_and_grads(model, ids, mask)
    model.set_attn_implementation("moba_all")
    got, grads = logits_and_grads(model, ids, mask)
    valid = torch.ones(2, SEQ, dtype=torch.bool) if mask is None else mask.bool()
    assert float((got - ref)[valid].abs().max()) < 1e-4
    for name, g in grads.items():
        assert rel_l2(g, ref_grads[name]) < 1e-4, name


def test_sparse_training_step():
    moba.register(chunk_size=16, topk=2, name="moba_sparse")
    model = tiny_llama("moba_sparse")
    ids = torch.randint(0, 96, (2, SEQ))
    logits = model(ids).logits
    model.set_attn_implementation("sdpa")
    dense = model(ids).logits
    model.set_attn_implementation("moba_sparse")
    assert float((logits - dense)[:, 32:].abs().max()) > 1e-3  # blocks were dropped
    assert float((logits - dense)[:, :32].abs().max()) < 1e-4  # the first two blocks: all kept

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for _ in range(3):
        out = model(ids, labels=ids)
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
        opt.step()
        opt.zero_grad()
        losses.append(float(out.loss))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any("self_attn" in n for n in changed)


@pytest.fixture
def spy(monkeypatch):
    calls = collections.Counter()
    layers = collections.defaultdict(list)
    real_moba, real_full = moba.hf._run_moba, moba.hf._run_full

    def run_moba(cfg, *args):
        calls["moba"] += 1
        return real_moba(cfg, *args)

    def run_full(cfg, *args):
        calls["full"] += 1
        return real_full(cfg, *args)

    monkeypatch.setattr(moba.hf, "_run_moba", run_moba)
    monkeypatch.setattr(moba.hf, "_run_full", run_full)
    yield calls
    moba.set_mode("moba")


def test_hybrid_layers_and_mode_switch(spy):
    moba.register(chunk_size=16, topk=2, full_attention_layers=[-1], name="moba_hybrid")
    model = tiny_llama("moba_hybrid", layers=4)
    ids = torch.randint(0, 96, (1, SEQ))
    model(ids)
    assert spy == {"moba": 3, "full": 1}  # the last layer stays full

    spy.clear()
    with moba.attention_mode("full"):
        full_logits = model(ids).logits
    assert spy == {"full": 4}
    model.set_attn_implementation("sdpa")
    assert float((full_logits - model(ids).logits).abs().max()) < 1e-4
    model.set_attn_implementation("moba_hybrid")

    spy.clear()
    model(ids)
    assert spy == {"moba": 3, "full": 1}  # restored after the block

    spy.clear()
    moba.set_mode("full")
    assert moba.get_mode() == "full"
    model(ids)
    moba.set_mode("moba")
    model(ids)
    assert spy == {"full": 4 + 1, "moba": 3}

    # Settings can be changed on the registered config.
    spy.clear()
    moba.get_config("moba_hybrid").full_attention_layers = (0, 1)
    model(ids)
    assert spy == {"full": 2, "moba": 2}
    with pytest.raises(ValueError, match="mode"):
        moba.set_mode("sparse")


def test_generate_with_cache_matches_sdpa():
    moba.register(chunk_size=16, topk=8, name="moba_gen")
    model = tiny_llama("moba_gen")
    ids = torch.randint(0, 96, (2, 20))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    got = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    model.set_attn_implementation("sdpa")
    want = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(got, want)


def test_packed_sequences_from_position_ids():
    moba.register(chunk_size=16, topk=2, name="moba_packed")
    model = tiny_llama("moba_packed")
    a = torch.randint(0, 96, (1, 40))
    b = torch.randint(0, 96, (1, 30))
    packed = torch.cat([a, b], dim=1)
    pos = torch.cat([torch.arange(40), torch.arange(30)]).unsqueeze(0)
    got = model(packed, position_ids=pos).logits
    want = torch.cat([model(a).logits, model(b).logits], dim=1)
    assert float((got - want).abs().max()) < 1e-4
    # the same through flash-attn style kwargs (DataCollatorWithFlattening)
    cu = torch.tensor([0, 40, 70], dtype=torch.int32)
    got2 = model(packed, position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=40,
                 max_length_k=40).logits
    assert float((got2 - want).abs().max()) < 1e-4


def test_moa_registration_matches_sdpa_with_wide_windows(tmp_path):
    plan = moba.MoaPlan([[1000.0, 1000.0]] * 3, [[0.0, 0.0]] * 3, sink=4)
    path = tmp_path / "plan.json"
    plan.save(path)
    moba.register_moa(path, name="moa_wide")
    model = tiny_llama()
    ids = torch.randint(0, 96, (2, 48))
    want = model(ids).logits
    model.set_attn_implementation("moa_wide")
    assert float((model(ids).logits - want).abs().max()) < 1e-4
    moba.register_moa(moba.MoaPlan([[4.0, 8.0]] * 3, [[0.0, 0.1]] * 3, sink=4), name="moa_wide")
    assert float((model(ids).logits - want)[:, 20:].abs().max()) > 1e-3


def test_unsupported_settings_raise():
    moba.register(chunk_size=16, topk=2, name="moba_err")
    model = tiny_llama("moba_err")
    model.config.attention_dropout = 0.1
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    model.train()
    with pytest.raises(NotImplementedError, match="moba: dropout"):
        model(torch.randint(0, 96, (1, 16)))
    with pytest.raises(ValueError, match="moba: chunk_size"):
        moba.register(chunk_size=0, topk=2, name="moba_err")
    with pytest.raises(ValueError, match="moba: topk"):
        moba.register(chunk_size=16, topk=0, name="moba_err")
