"""moba.PagedKVCache and moba.PagedCache: decode and chunked prefill equal the one-shot prefill
rows (the varlen ops), `generate` with a tiny Llama equals a full recompute at every step."""

import collections

import pytest
import torch

import moba
from conftest import work_dtype
from helpers import rel_l2


def one_shot(mode, q, k, v, n, **kw):
    """The one-shot prefill rows, on the CPU backend (verified against fp64 elsewhere)."""
    q, k, v = q.cpu(), k.cpu(), v.cpu()
    cu = torch.tensor([0, n], dtype=torch.int32)
    if mode == "moba":
        return moba.moba_attn_varlen(q, k, v, cu, n, kw["block_size"], kw["topk"])
    if mode == "moa":
        return moba.moa_attn(q, k, v, cu, n, kw["alphas"], kw["betas"], sink=kw["sink"])
    return moba.flash_attn_varlen(q, k, v, cu, n)


MODES = {
    "full": {},
    "moba": dict(block_size=16, topk=3),
    "moa": dict(alphas=[8.0, 24.0], betas=[0.0, 0.25], sink=4),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("page_size", [1, 5, 16])
def test_chunks_and_decode_match_one_shot_prefill(device, mode, dtype, page_size):
    if device == "cuda" and dtype == torch.float32:
        dtype = torch.bfloat16
    kw = MODES[mode]
    hq, hkv, d, n = 4, 2, 64, 72
    q = torch.randn(n, hq, d, dtype=dtype, device=device)
    k = torch.randn(n, hkv, d, dtype=dtype, device=device)
    v = torch.randn(n, hkv, d, dtype=dtype, device=device)
    cache = moba.PagedKVCache(hkv, d, 128, page_size=page_size, dtype=dtype, device=device,
                              block_size=kw.get("block_size", 0), num_q_heads=hq)
    bounds = [0, 1, 37, 38, 50, 51, 52] + list(range(53, n + 1))  # empty history, a chunk, decode
    for a, b in zip(bounds, bounds[1:]):
        cu = torch.tensor([0, b - a], dtype=torch.int32)
        cache.append(k[a:b], v[a:b], cu)
        got = cache.attend(q[a:b], cu, mode=mode, **kw)
        # MoA's window uses the length so far: the prefill of the prefix [0, b).
        want = one_shot(mode, q[:b], k[:b], v[:b], b, **kw)[a:b]
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        assert rel_l2(got, want) < tol, (a, b)
    assert cache.seq_len(0) == n


def test_mixed_batch_slots_and_lse(device):
    dtype = work_dtype(device)
    hq, hkv, d = 8, 1, 128  # MQA
    lens = [40, 0, 17, 70]
    cache = moba.PagedKVCache(hkv, d, 96, max_batch=6, page_size=8, dtype=dtype, device=device,
                              block_size=16)
    slots = [5, 0, 3, 1]
    data = [(torch.randn(L, hq, d, dtype=dtype, device=device),
             torch.randn(L, hkv, d, dtype=dtype, device=device),
             torch.randn(L, hkv, d, dtype=dtype, device=device)) for L in lens]
    done = [0] * 4
    steps = [[30, 0, 17, 64], [1, 0, 0, 1], [9, 0, 0, 5]]
    for step in steps:
        cu = torch.tensor([0] + list(torch.tensor(step).cumsum(0).tolist()), dtype=torch.int32)
        ks = torch.cat([data[b][1][done[b]:done[b] + step[b]] for b in range(4)])
        vs = torch.cat([data[b][2][done[b]:done[b] + step[b]] for b in range(4)])
        qs = torch.cat([data[b][0][done[b]:done[b] + step[b]] for b in range(4)])
        cache.append(ks, vs, cu, slots)
        out, lse = cache.attend(qs, cu, slots, mode="moba", block_size=16, topk=2, return_lse=True)
        for b in range(4):
            if step[b] == 0:
                continue
            end = done[b] + step[b]
            q, k, v = (x[:end].cpu() for x in data[b])
            want, want_lse = moba.moba_attn_varlen(q, k, v, torch.tensor([0, end], dtype=torch.int32),
                                                   end, 16, 2, return_lse=True)
            rows = slice(int(cu[b]), int(cu[b + 1]))
            assert rel_l2(out[rows], want[done[b]:end]) < (1e-5 if dtype == torch.float32 else 2e-2)
            assert float((lse[:, rows].cpu() - want_lse[:, done[b]:end]).abs().max()) < 1e-3
        done = [done[b] + step[b] for b in range(4)]


def test_errors_leave_the_cache_unchanged():
    cache = moba.PagedKVCache(2, 64, 16, page_size=4, num_pages=4, dtype=torch.float32)
    k = torch.randn(8, 2, 64)
    cache.append(k, k)
    state = (cache.page_table.clone(), cache.seq_lens.clone(), cache.k_pages.clone(), cache.free_pages)
    with pytest.raises(moba.OutOfMemoryError, match="kv cache full"):
        cache.append(k[:1], k[:1])
    with pytest.raises(ValueError, match="moba: k: expected"):
        cache.append(torch.randn(1, 3, 64), torch.randn(1, 3, 64))  # head mismatch
    with pytest.raises(ValueError, match="slots"):
        cache.append(k[:1], k[:1], torch.tensor([0, 1], dtype=torch.int32), [4])
    with pytest.raises(ValueError, match="max_seqlen"):
        big = moba.PagedKVCache(2, 64, 16, page_size=4, dtype=torch.float32)
        big.append(torch.randn(17, 2, 64), torch.randn(17, 2, 64))
    assert torch.equal(state[0], cache.page_table) and torch.equal(state[1], cache.seq_lens)
    assert torch.equal(state[2], cache.k_pages) and state[3] == cache.free_pages
    with pytest.raises(ValueError, match="page_table"):
        table = cache.page_table.clone()
        table[0, 0, 1] = 77
        cu = torch.tensor([0, 1], dtype=torch.int32)
        torch.ops.moba.paged_attention(torch.randn(1, 2, 64), cu, torch.tensor([0], dtype=torch.int32),
                                       cache.k_pages, cache.v_pages, table, cache.seq_lens,
                                       cache.block_means, None, "full", 0, 0, 0.0, [], [], 64, True,
                                       "auto")


def test_selected_blocks_merge_with_the_own_block():
    cache = moba.PagedKVCache(1, 64, 64, page_size=4, dtype=torch.float32, block_size=8)
    k, v, q = torch.randn(30, 1, 64), torch.randn(30, 1, 64), torch.randn(2, 2, 64)
    cache.append(k, v)
    cu = torch.tensor([0, 2], dtype=torch.int32)
    slots = torch.tensor([0], dtype=torch.int32)
    whole = moba.paged_attention(q, cu, slots, cache, mode="moba", block_size=8, topk=3)
    _, _, sel = cache.attend(q, cu, mode="moba", block_size=8, topk=3, return_lse=True,
                             return_selection=True)
    none = torch.full_like(sel, -1)
    own = moba.paged_attention(q, cu, slots, cache, none, mode="moba", block_size=8, topk=3)
    picked = moba.paged_attention(q, cu, slots, cache, sel, mode="moba", block_size=8, topk=3,
                                  include_own_block=False)
    out, lse = moba.merge_attention_states(*own, *picked)
    assert float((out - whole[0]).abs().max()) < 1e-5
    assert float((lse - whole[1]).abs().max()) < 1e-5


def test_ops_have_fake_implementations():
    cache = moba.PagedKVCache(2, 64, 32, page_size=8, dtype=torch.float32, block_size=8)
    k = torch.randn(12, 2, 64)
    cache.append(k, k)
    q = torch.randn(3, 4, 64)
    cu = torch.tensor([0, 3], dtype=torch.int32)
    slots = torch.tensor([0], dtype=torch.int32)
    args = (q, cu, slots, cache.k_pages, cache.v_pages, cache.page_table, cache.seq_lens,
            cache.block_means, None, "moba", 8, 2, 0.0, [], [], 64, True, "auto")
    torch.library.opcheck(torch.ops.moba.paged_attention.default, args)
    fresh = moba.PagedKVCache(2, 64, 32, page_size=8, dtype=torch.float32, block_size=8)
    fresh._impl.reserve([5], [0], 0)
    torch.library.opcheck(torch.ops.moba.paged_kv_append.default,
                          (k[:5], k[:5], torch.tensor([0, 5], dtype=torch.int32), slots,
                           fresh.k_pages, fresh.v_pages, fresh.page_table, fresh.seq_lens,
                           fresh.block_means, fresh.block_sums, 8, "auto"),
                          test_utils=("test_schema", "test_faketensor"))
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fargs = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        out, lse, sel = torch.ops.moba.paged_attention(*fargs)
        assert out.shape == q.shape and lse.shape == (4, 3) and sel.shape == (3, 4, 1)


def test_moa_cache_memory_follows_the_plan():
    alphas, betas, sink = [16.0, 16.0], [0.0, 0.0], 8
    full = moba.PagedKVCache(2, 64, 2048, page_size=16, dtype=torch.bfloat16)
    sparse = moba.PagedKVCache(2, 64, 2048, page_size=16, dtype=torch.bfloat16, num_q_heads=2,
                               moa=(alphas, betas, sink))
    k = torch.randn(600, 2, 64, dtype=torch.bfloat16)
    q = torch.randn(600, 2, 64, dtype=torch.bfloat16)
    for cache in (full, sparse):
        cache.append(k[:400], k[:400])
        for t in range(400, 600):
            cache.append(k[t:t + 1], k[t:t + 1])
            out = cache.attend(q[t:t + 1], mode="moa", alphas=alphas, betas=betas, sink=sink)
    want = moba.moa_attn(q, k, k, torch.tensor([0, 600], dtype=torch.int32), 600, alphas, betas,
                         sink=sink)[-1:]
    assert rel_l2(out, want) < 2e-2
    assert sparse.memory_bytes() <= 0.15 * full.memory_bytes()


# ---- HuggingFace generate ----------------------------------------------------------------------

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import moba.hf_cache  # noqa: E402


def tiny_llama(attn, layers=3):
    cfg = LlamaConfig(vocab_size=96, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=256)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.set_attn_implementation(attn)
    model.generation_config.eos_token_id = None  # decode the full length every time
    model.generation_config.pad_token_id = 0
    return model.eval()


def recompute_greedy(model, ids, steps):
    """Greedy decoding by a full forward (one-shot MoBA prefill) of the whole sequence per step."""
    for _ in range(steps):
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.fixture
def paged_modes(monkeypatch):
    seen = collections.Counter()
    real = moba.hf_cache.PagedCacheLayer.step

    def step(self, module, query, key, value, mask, scaling, mode, params):
        seen[(self.layer_idx, mode, query.shape[2] > 1)] += 1
        return real(self, module, query, key, value, mask, scaling, mode, params)

    monkeypatch.setattr(moba.hf_cache.PagedCacheLayer, "step", step)
    return seen


def test_generate_runs_moba_decoding_and_matches_recompute(paged_modes):
    moba.register(chunk_size=16, topk=2, full_attention_layers=[-1], name="moba_paged")
    model = tiny_llama("moba_paged")
    ids = torch.randint(0, 96, (1, 41))
    cache = moba.PagedCache(model.config, max_cache_len=128, page_size=8)
    got = model.generate(ids, past_key_values=cache, max_new_tokens=20, do_sample=False)
    want = recompute_greedy(model, ids, 20)
    assert torch.equal(got, want)
    # Every layer went through the paged cache, the last one in full, the others in MoBA;
    # one prefill call and 19 decode calls per layer.
    assert paged_modes == {(0, "moba", True): 1, (1, "moba", True): 1, (2, "full", True): 1,
                           (0, "moba", False): 19, (1, "moba", False): 19, (2, "full", False): 19}


def test_generate_batch_with_left_padding():
    moba.register(chunk_size=16, topk=2, name="moba_paged_pad")
    model = tiny_llama("moba_paged_pad")
    ids = torch.randint(0, 96, (2, 36))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    got = model.generate(ids, attention_mask=mask, past_key_values=moba.PagedCache(model.config),
                         max_new_tokens=12, do_sample=False)
    for b, start in ((0, 0), (1, 5)):
        want = recompute_greedy(model, ids[b:b + 1, start:], 12)
        assert torch.equal(got[b:b + 1, 36:], want[:, -12:])


def test_generate_moa_one_layer_matches_recompute():
    # One layer: its K/V do not depend on attention outputs, so a recompute with MoA's
    # length-dependent windows (N = current length) sees the same keys as the cached decode.
    plan = moba.MoaPlan([[12.0, 20.0]], [[0.0, 0.2]], sink=4)
    moba.register_moa(plan, name="moa_paged")
    model = tiny_llama("moa_paged", layers=1)
    ids = torch.randint(0, 96, (1, 50))
    cache = moba.PagedCache(model.config, max_cache_len=128, page_size=4)
    got = model.generate(ids, past_key_values=cache, max_new_tokens=20, do_sample=False)
    want = recompute_greedy(model, ids, 20)
    assert torch.equal(got, want)
    # Per-head windows: the cache holds far fewer than the 70 positions per head.
    assert cache.layers[0].cache.used_pages * 4 < 60
