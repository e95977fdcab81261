import torch

import reference


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


def make_qkv(seqlens, hq, hkv, d, dtype, device, requires_grad=False):
    total = sum(seqlens)
    cu = torch.tensor([0] + list(torch.tensor(seqlens).cumsum(0).tolist()), dtype=torch.int32)
    q = torch.randn(total, hq, d, dtype=dtype, device=device)
    k = torch.randn(total, hkv, d, dtype=dtype, device=device)
    v = torch.randn(total, hkv, d, dtype=dtype, device=device)
    if requires_grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    return q, k, v, cu, max(seqlens) if seqlens else 0


def check_selection(got: torch.Tensor, q, k, cu, block, topk, rel_tol=1e-5):
    """got equals the reference selection except where the swapped blocks' fp64 scores are
    within rel_tol (fp32 rounding in fast backends). Returns the number of such near ties."""
    cu_l = cu.tolist()
    want = reference.moba_selection(q.detach().cpu(), k.detach().cpu(), cu_l, block, topk)
    got = got.cpu()
    # The ops clamp top-k to the most blocks a sequence has; the extra slots would all be -1.
    assert got.shape[:2] == want.shape[:2] and got.shape[2] <= want.shape[2]
    assert bool((want[:, :, got.shape[2]:] == -1).all())
    want = want[:, :, :got.shape[2]]
    diff = (got != want).any(dim=-1).nonzero().tolist()
    if not diff:
        return 0
    scores = reference.block_scores(q.detach().cpu(), k.detach().cpu(), cu_l, block)
    for t, h in diff:
        b = max(i for i in range(len(cu_l) - 1) if cu_l[i] <= t)
        sc = scores[b][h, t - cu_l[b]]
        g = set(got[t, h].tolist()) - {-1}
        w = set(want[t, h].tolist()) - {-1}
        assert len(g) == len(w), f"token {t} head {h}: selected {sorted(g)}, expected {sorted(w)}"
        scale = float(sc.abs().max()) + 1e-30
        for x in g - w:
            for y in w - g:
                assert abs(float(sc[x] - sc[y])) <= rel_tol * scale, (
                    f"token {t} head {h}: selected {sorted(g)}, expected {sorted(w)} "
                    f"(scores {float(sc[x])} vs {float(sc[y])})")
    return len(diff)
