"""MoA plan search (moba.moa): influence sums against brute-force N x N dS, the MILP against
enumeration, plan formats on the resulting masks, the whole flow on a tiny Llama, named errors."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

import moba
import reference
from conftest import CUDA_SKIP
from helpers import make_qkv

moa = pytest.importorskip("moba.moa")
highspy = pytest.importorskip("highspy", reason="the MoA plan search needs highspy")


# ---- influence ----------------------------------------------------------------------------


def brute_influence(dout, q, k, v, cu, edges, sink, scale=None):
    """[2, Hq, 2, bins] from the full N x N dS of every head (fp64)."""
    hq, d = q.shape[1], q.shape[2]
    mask = reference.key_mask("full", cu.tolist(), hq)
    qd = q.double().requires_grad_(False)
    _, lse = reference.attention(q, k, v, mask, scale)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    g = hq // k.shape[1]
    kd = k.double().repeat_interleave(g, 1).transpose(0, 1)
    vd = v.double().repeat_interleave(g, 1).transpose(0, 1)
    p = torch.exp(scale * qd.transpose(0, 1) @ kd.transpose(1, 2) - lse.unsqueeze(-1)) * mask
    dp = dout.double().transpose(0, 1) @ vd.transpose(1, 2)
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))              # [Hq, T, T]
    total = q.shape[0]
    pos = torch.zeros(total, dtype=torch.long)
    for a, b in zip(cu.tolist(), cu.tolist()[1:]):
        pos[a:b] = torch.arange(b - a)
    dist = pos.view(-1, 1) - pos.view(1, -1)
    bins = torch.bucketize(dist.clamp(min=0), torch.tensor(edges), right=True) - 1
    flag = (pos.view(1, -1) < sink).expand(total, total).long()
    out = torch.zeros(2, hq, 2, len(edges), dtype=torch.float64)
    for h in range(hq):
        sel = mask[h]
        idx = (flag[sel] * len(edges) + bins[sel])
        out[0, h].view(-1).index_add_(0, idx, -ds[h][sel])
        out[1, h].view(-1).index_add_(0, idx, ds[h][sel].abs())
    return out


CASES = [  # seqlens, hq, hkv, edges, sink
    ([1], 2, 2, [0], 0),
    ([37], 4, 2, [0, 1, 5, 16], 4),
    ([130, 0, 1, 65], 4, 1, [0, 8, 64, 100], 64),
    ([200], 2, 2, [0, 3, 33, 129, 150], 7),
]


@pytest.mark.parametrize("backend", ["cpu", "reference", "torch"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}/{c[2]}")
def test_influence_matches_brute_force(case, backend):
    seqlens, hq, hkv, edges, sink = case
    q, k, v, cu, mx = make_qkv(seqlens, hq, hkv, 64, torch.float32, "cpu")
    q = q * 2  # sharper attention than randn's
    dout = torch.randn_like(q)
    out, lse = moba.flash_attn_varlen(q, k, v, cu, mx, return_lse=True)
    got = moa.attention_influence(dout, q, k, v, out, lse, cu, mx, edges, sink, backend=backend,
                                  chunk_elements=3000)
    want = brute_influence(dout, q, k, v, cu, edges, sink)
    assert got.shape == (2, hq, 2, len(edges)) and got.dtype == torch.float64
    tol = 1e-12 if backend == "reference" else 2e-5
    # fp32 backends: D_t = <dout_t, out_t> is formed from the fp32 out, an error relative to
    # the O(1) scale of dP, not to dS (a length-1 row has dS = 0 exactly).
    assert (got - want).abs().max() <= tol * max(float(want.abs().max()), 1.0)
    # dS sums to zero over every row, so the signed sums of a head do too.
    assert want[0].sum(dim=(1, 2)).abs().max() <= 1e-9 * float(want[1].sum())


@pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))
def test_influence_cuda_matches_cpu():
    q, k, v, cu, mx = make_qkv([300, 77], 8, 2, 64, torch.bfloat16, "cuda")
    dout = torch.randn_like(q)
    out, lse = moba.flash_attn_varlen(q, k, v, cu, mx, return_lse=True)
    edges, sink = [0, 16, 64, 200], 32
    got = moa.attention_influence(dout, q, k, v, out, lse, cu, mx, edges, sink).cpu()
    want = moa.attention_influence(dout.cpu().float(), q.cpu().float(), k.cpu().float(),
                                   v.cpu().float(), out.cpu().float(), lse.cpu(), cu, mx, edges,
                                   sink, backend="torch")
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_influence_errors():
    q, k, v, cu, mx = make_qkv([20], 2, 2, 64, torch.float32, "cpu")
    out, lse = moba.flash_attn_varlen(q, k, v, cu, mx, return_lse=True)
    with pytest.raises(ValueError, match="edges"):
        moa.attention_influence(q, q, k, v, out, lse, cu, mx, [1, 4])
    with pytest.raises(ValueError, match="edges"):
        moa.attention_influence(q, q, k, v, out, lse, cu, mx, [0, 4, 4])
    with pytest.raises(ValueError, match="sink"):
        moa.attention_influence(q, q, k, v, out, lse, cu, mx, [0], sink=-1)
    with pytest.raises(ValueError, match="lse"):
        moa.attention_influence(q, q, k, v, out, lse[:, :5], cu, mx, [0])


# ---- rules and the expected loss -----------------------------------------------------------


def test_rule_loss_is_the_influence_beyond_the_window():
    """The loss of each rule from the binned sums equals the brute-force sum of -dS / |dS| over
    exactly the pairs the rule's MoA mask drops (reference.key_mask of docs/semantics.md)."""
    n, hq, sink = 150, 3, 5
    q, k, v, cu, mx = make_qkv([n], hq, hq, 64, torch.float32, "cpu")
    q = q * 2
    dout = torch.randn_like(q)
    out, lse = moba.flash_attn_varlen(q, k, v, cu, mx, return_lse=True)
    rules = [(0.0, 0.0), (10.0, 0.0), (3.0, 0.25), (0.0, 0.5), (40.0, 0.1), (0.0, 1.0)]
    edges = moa.bin_edges(rules, n)
    sums = moa.attention_influence(dout, q, k, v, out, lse, cu, mx, edges, sink,
                                  backend="reference").numpy()
    prof = moa.Profile(n, sink, edges, 1, hq, sums)
    for measure in moa.MEASURES:
        table = moa.rule_table(rules, [prof], sink, measure)
        # Brute force: dS of every pair, summed where the rule's mask is False.
        per_pair = None
        for ri, (a, b) in enumerate(rules):
            m = reference.key_mask("moa", [0, n], hq, alphas=[a] * hq, betas=[b] * hq, sink=sink)
            causal = reference.key_mask("full", [0, n], hq)
            dropped = causal & ~m
            assert table.kept[ri, 0] == int(m[0].sum())
            # Recompute per-pair dS to sum over the dropped set.
            if per_pair is None:
                per_pair = _pair_ds(dout, q, k, v, cu)
            val = (-per_pair if measure == "signed" else per_pair.abs())[dropped].view(hq, -1)
            np.testing.assert_allclose(table.loss[:, ri, 0], val.sum(-1).numpy(), rtol=1e-9,
                                       atol=1e-12)


def _pair_ds(dout, q, k, v, cu):
    hq, d = q.shape[1], q.shape[2]
    mask = reference.key_mask("full", cu.tolist(), hq)
    _, lse = reference.attention(q, k, v, mask)
    p = torch.exp(q.double().transpose(0, 1) @ k.double().transpose(0, 1).transpose(1, 2)
                  / math.sqrt(d) - lse.unsqueeze(-1)) * mask
    dp = dout.double().transpose(0, 1) @ v.double().transpose(0, 1).transpose(1, 2)
    return p * (dp - (p * dp).sum(-1, keepdim=True))


def test_window_and_density_match_the_engine_mask():
    for n in (1, 7, 64, 300):
        for rule in [(0.0, 0.0), (5.0, 0.3), (1000.0, 0.0), (0.0, 0.05), (12.7, 0.5)]:
            for sink in (0, 3, 64):
                m = reference.key_mask("moa", [0, n], 1, alphas=[rule[0]], betas=[rule[1]],
                                       sink=sink)
                assert moa.kept_pairs(moa.window(rule, n), sink, n) == int(m.sum())


# ---- the MILP --------------------------------------------------------------------------------


def _random_table(rng, heads, nrules, lengths, sink=4):
    rules = [(float(a), float(b)) for a, b in zip(rng.integers(0, 40, nrules),
                                                  rng.uniform(0, 1, nrules))]
    rules[0] = (0.0, 0.0)  # the sparsest rule, so most budgets are feasible
    kept = np.array([[moa.kept_pairs(moa.window(r, n), sink, n) for n in lengths] for r in rules])
    # Loss falls as a rule keeps more (a head loses less when it sees more), noise on top.
    loss = rng.uniform(0, 1, (heads, nrules, len(lengths))) * (kept.max(0) - kept + 1)[None]
    return moa.RuleTable(rules, list(lengths), sink, kept.astype(np.int64), loss,
                         loss.sum(axis=(0, 1)))


@pytest.mark.parametrize("at", ["all", "last"])
@pytest.mark.parametrize("seed", range(6))
def test_milp_is_optimal_and_respects_the_budget(seed, at):
    rng = np.random.default_rng(seed)
    heads, nrules, lengths = 3, 4, [50, 90]
    table = _random_table(rng, heads, nrules, lengths)
    density = float(rng.uniform(0.3, 0.9))
    limit = moa.budgets(table, density)
    budget_lengths = None
    if at == "last":  # the budget holds at the last length only
        budget_lengths = lengths[-1:]
        limit = np.array([np.iinfo(np.int64).max, limit[-1]])
    for weights in moa.trade_offs(len(lengths)):
        best, best_rules = math.inf, None
        norm = table.total
        for combo in itertools.product(range(nrules), repeat=heads):
            kept = table.kept[list(combo)].sum(axis=0)
            if (kept > limit).any():
                continue
            cost = sum((table.loss[h, r] / norm * weights).sum() for h, r in enumerate(combo))
            if cost < best:
                best, best_rules = cost, combo
        if best_rules is None:
            with pytest.raises(ValueError, match="density"):
                moa.solve(table, density, weights, budget_lengths=budget_lengths)
            continue
        c = moa.solve(table, density, weights, budget_lengths=budget_lengths)
        kept = table.kept[c.rules].sum(axis=0)
        assert (kept <= limit).all()                       # exact integer budget
        assert c.density[-1] <= density + 1e-12
        cost = sum((table.loss[h, r] / norm * weights).sum() for h, r in enumerate(c.rules))
        assert cost <= best + 1e-9


def test_pareto_set_has_no_dominated_plan():
    rng = np.random.default_rng(7)
    table = _random_table(rng, 6, 8, [60, 120, 240])
    found = moa.pareto_set(table, 0.6)
    assert found
    for a in found:
        for b in found:
            if a is not b:
                assert not ((b.loss <= a.loss).all() and (b.loss < a.loss).any())


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan"), True, "0.5"])
def test_density_outside_the_unit_interval_is_named(bad):
    table = _random_table(np.random.default_rng(0), 2, 3, [40])
    with pytest.raises(ValueError, match="density"):
        moa.solve(table, bad)


# ---- plan formats ---------------------------------------------------------------------------


def reference_mask(alpha, beta, n):
    """The reference's meaning: budget b = clamp(64 floor((a + b N) / 64), 128, N) keys per
    query: the first min(b, 64) tokens and the last b - min(b, 64)."""
    b = moa.reference_budget(alpha, beta, n)
    sink, win = min(b, 64), b - min(b, 64)
    t = torch.arange(n).view(-1, 1)
    j = torch.arange(n).view(1, -1)
    return (j <= t) & ((j < sink) | (t - j < win) | (j == t))


def test_moaplan_json_round_trip(tmp_path):
    plan = moba.MoaPlan([[1.0, 2.5], [300.0, 0.0]], [[0.0, 0.5], [0.125, 1.0]], sink=64)
    plan.save(tmp_path / "p.json")
    assert moba.MoaPlan.load(tmp_path / "p.json") == plan
    ref = moa.to_reference(plan)
    assert moa.from_reference(json.loads(json.dumps(ref))) == plan


@pytest.mark.parametrize("n", [100, 128, 500, 1000, 2000])
def test_reference_plan_masks_at_a_length(n):
    rng = np.random.default_rng(n)
    alphas = [[float(a) for a in rng.choice([0, 32, 64, 100, 128, 512, 2000], 4)]]
    betas = [[float(b) for b in rng.choice([0.0, 0.1, 0.25, 0.5, 1.0], 4)]]
    ours = moa.from_reference({"alphas": alphas, "betas": betas}, length=n)
    for h in range(4):
        m = reference.key_mask("moa", [0, n], 1, alphas=[ours.alphas[0][h]],
                               betas=[ours.betas[0][h]], sink=ours.sink)[0]
        assert torch.equal(m, reference_mask(alphas[0][h], betas[0][h], n)), (h, n)
    # And back: the exact mapping at n reproduces the same masks in the reference's terms.
    back = moa.to_reference(ours, length=n)
    for h in range(4):
        assert torch.equal(reference_mask(back["alphas"][0][h], back["betas"][0][h], n),
                           reference_mask(alphas[0][h], betas[0][h], n))


def test_reference_elastic_mapping_where_the_budget_is_on_the_grid():
    ref = {"alphas": [[64.0, 192.0]], "betas": [[0.125, 0.0625]]}
    ours = moa.from_reference(ref)
    for n in (1024, 2048):  # a + b N is a multiple of 64 in [128, N] for both heads
        for h in range(2):
            m = reference.key_mask("moa", [0, n], 1, alphas=[ours.alphas[0][h]],
                                   betas=[ours.betas[0][h]], sink=64)[0]
            assert torch.equal(m, reference_mask(ref["alphas"][0][h], ref["betas"][0][h], n))


def test_converted_plan_runs_the_reference_pattern_in_the_engine():
    n, hq = 384, 4
    ref = {"alphas": [[0.0, 200.0, 64.0, 5000.0]], "betas": [[0.5, 0.0, 0.2, 0.0]]}
    plan = moa.from_reference(ref, length=n)
    q, k, v, cu, mx = make_qkv([n], hq, hq, 64, torch.float32, "cpu")
    alphas, betas, sink = plan.layer(0)
    got = moba.moa_attn(q, k, v, cu, mx, alphas, betas, sink=sink)
    mask = torch.stack([reference_mask(ref["alphas"][0][h], ref["betas"][0][h], n)
                        for h in range(hq)])
    want, _ = reference.attention(q, k, v, mask)
    assert (got.double() - want).abs().max() < 1e-4


def test_reference_conversion_errors():
    plan = moba.MoaPlan([[100.0]], [[0.0]], sink=64)
    with pytest.raises(ValueError, match="layer 0 head 0"):
        moa.to_reference(plan, length=1000)   # window 100: not a 64-multiple budget
    with pytest.raises(ValueError, match="sink"):
        moa.to_reference(moba.MoaPlan([[64.0]], [[0.0]], sink=8))
    with pytest.raises(ValueError, match=r"alphas\[0\]\[0\]"):
        moa.from_reference({"alphas": [[10.0]], "betas": [[0.0]]})
    with pytest.raises(ValueError, match="alphas"):
        moa.from_reference({"alpha": [[10.0]]})


# ---- the whole flow on a tiny Llama ---------------------------------------------------------


def tiny_llama(layers=2, heads=2, kv=1, positions=512):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64 * heads, intermediate_size=256,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, max_position_embeddings=positions)
    return LlamaForCausalLM(cfg)


def test_search_profile_optimise_validate_apply():
    pytest.importorskip("transformers")
    model = tiny_llama()
    density, lengths, sink = 0.5, [96, 160], 8
    res = moa.search(model, density, lengths, num_sequences=2, sink=sink, log=lambda s: None)
    plan = res.plan
    plan.validate(num_layers=2, num_heads=2)
    for n in lengths:  # the plan's mean density at every profiled length is within budget
        d = np.mean([moa.density((a, b), sink, n) for la, lb in zip(plan.alphas, plan.betas)
                     for a, b in zip(la, lb)])
        assert d <= density + 1e-12
    assert any(k.startswith("uniform") for k in res.metrics)
    assert all(len(ms) == 1 and math.isfinite(ms[0].ref_loss) for ms in res.metrics.values())
    # Profiles: every head of every layer got influence.
    for p in res.profiles:
        assert (p.histogram().sum(axis=1) > 0).all()
    # Apply: the plan runs in transformers through register_moa.
    moba.register_moa(plan, name="moa_test_search")
    model.set_attn_implementation("moa_test_search")
    ids = torch.randint(0, 128, (1, 160))
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_profile_gqa_heads_and_lengths():
    model = tiny_llama(layers=3, heads=4, kv=2)
    rules = moa.default_rules([64])
    cal = moa.synthetic_retrieval(128, 64, 2, seed=1)
    ref = moa.dense_targets(model, cal)
    prof = moa.profile_model(model, cal.batches(2, ref), 64, moa.bin_edges(rules, 64), sink=4)
    assert prof.sums.shape == (2, 12, 2, len(prof.edges)) and prof.sequences == 2
    # The hooks leave the model as it was.
    assert all(p.requires_grad for p in model.parameters())
    assert model.config._attn_implementation != moa.profile.PROFILE_ATTENTION


def test_named_errors_for_bad_input():
    model = tiny_llama(positions=128)
    with pytest.raises(ValueError, match="length"):
        moa.search(model, 0.5, [256], num_sequences=1, sink=4, log=lambda s: None)
    with pytest.raises(ValueError, match="density"):
        moa.search(model, 1.5, [64], num_sequences=1, sink=4, log=lambda s: None)
    with pytest.raises(ValueError, match="density"):
        moa.search(model, 0.0, [64], num_sequences=1, sink=4, log=lambda s: None)
    wrong_layers = moba.MoaPlan([[8.0, 8.0]] * 3, [[0.0, 0.0]] * 3, sink=4)
    wrong_heads = moba.MoaPlan([[8.0] * 3] * 2, [[0.0] * 3] * 2, sink=4)
    cal = moa.synthetic_retrieval(128, 64, 1)
    ref = moa.dense_targets(model, cal)
    with pytest.raises(ValueError, match="layers"):
        moa.evaluate(model, wrong_layers, cal, ref)
    with pytest.raises(ValueError, match="heads"):
        moa.evaluate(model, wrong_heads, cal, ref)
    with pytest.raises(ValueError, match="length 64"):
        moa.profile_model(model, [(cal.ids[:, :32], ref[:, :32])], 64, [0])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        moa.profile_model(model, [], 4096, [0])


def test_cli_search_and_convert(tmp_path, capsys):
    from moba.moa.__main__ import main

    model = tiny_llama()
    model.save_pretrained(tmp_path / "m")
    out = tmp_path / "plan.json"
    rc = main(["search", "--model", str(tmp_path / "m"), "--device", "cpu", "--density", "0.6",
               "--lengths", "96", "--sequences", "1", "--sink", "4", "--out", str(out)])
    assert rc == 0
    plan = moba.MoaPlan.load(out)
    plan.validate(num_layers=2, num_heads=2)
    ref = tmp_path / "ref.json"
    conv = moba.MoaPlan([[0.0, 64.0]], [[0.25, 0.0]], sink=64)
    conv.save(tmp_path / "c.json")
    assert main(["convert", "--plan", str(tmp_path / "c.json"), "--to-reference", str(ref)]) == 0
    assert json.loads(ref.read_text()) == {"alphas": [[64.0, 128.0]], "betas": [[0.25, 0.0]]}
    assert main(["optimise", "--profiles", str(ref), "--density", "0.5",
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "profile file" in capsys.readouterr().err


def test_influence_op_passes_opcheck():
    q, k, v, cu, mx = make_qkv([40, 9], 4, 2, 64, torch.float32, "cpu")
    dout = torch.randn_like(q)
    out, lse = moba.flash_attn_varlen(q, k, v, cu, mx, return_lse=True)
    args = (dout, q, k, v, out, lse, cu, mx, [0, 4, 16], 3, 0.0, "auto", 1 << 20)
    torch.library.opcheck(torch.ops.moba.attention_influence.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_cli_profile_optimise_validate_chain(tmp_path):
    from moba.moa.__main__ import main

    tiny_llama().save_pretrained(tmp_path / "m")
    m = str(tmp_path / "m")
    prof, cand, plan = (str(tmp_path / f) for f in ("prof.json", "cand.json", "plan.json"))
    assert main(["profile", "--model", m, "--device", "cpu", "--lengths", "96", "128",
                 "--sequences", "1", "--sink", "4", "--density", "0.6", "--out", prof]) == 0
    profiles, rules = moa.load_profiles(prof, with_rules=True)
    assert [p.length for p in profiles] == [96, 128] and rules
    assert main(["optimise", "--profiles", prof, "--density", "0.6", "--out", cand]) == 0
    cands = json.loads(open(cand).read())["moba_moa_candidates"]
    assert cands and all(max(c["density"]) <= 0.6 for c in cands.values())
    assert main(["validate", "--model", m, "--device", "cpu", "--candidates", cand,
                 "--lengths", "128", "--sequences", "1", "--density", "0.6",
                 "--out", plan]) == 0
    moba.MoaPlan.load(plan).validate(num_layers=2, num_heads=2)
