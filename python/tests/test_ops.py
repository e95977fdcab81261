"""The ops against the pure-PyTorch reference (reference.py), forward and gradients."""

import pytest
import torch

import moba
import reference
from conftest import cuda_rejects_f32, work_dtype
from helpers import check_selection, make_qkv, rel_l2

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (rel-L2 tolerance of out, of the gradients, abs tolerance of lse)
TOL = {torch.float32: (2e-5, 1e-4, 1e-4), torch.float16: (3e-3, 6e-3, 2e-3),
       torch.bfloat16: (1.5e-2, 3e-2, 1e-2)}

# (seqlens, hq, hkv, head_dim, block, topk); CPU cases are small because the reference is dense.
MOBA_CASES_CPU = [
    ([37, 100], 4, 2, 64, 16, 3),          # GQA, lengths not a multiple of the block
    ([130], 2, 2, 128, 32, 2),             # MHA, D = 128
    ([0, 65, 1, 40], 4, 1, 64, 16, 8),     # empty and length-1 sequences, MQA, topk > blocks
    ([96], 2, 2, 64, 32, 1),               # topk = 1: own block only
    ([50, 50], 2, 2, 64, 50, 2),           # block not a power of two
]
MOBA_CASES_CUDA = [  # the CUDA backend takes blocks that are multiples of 64
    ([150, 300], 4, 2, 64, 64, 3),
    ([0, 257, 1, 128], 4, 1, 128, 64, 8),
    ([256], 2, 2, 64, 128, 1),
]


def _cases(device, cpu, cuda):
    return cuda if device == "cuda" else cpu


def _grads_ref(q, k, v, dout, mask, scale=None):
    qd, kd, vd = (t.detach().double().cpu().requires_grad_(True) for t in (q, k, v))
    out, lse = reference.attention(qd, kd, vd, mask, scale)
    out.backward(dout.detach().double().cpu())
    return out.detach(), lse.detach(), (qd.grad, kd.grad, vd.grad)


def _check(dtype, out, lse, grads, ref_out, ref_lse, ref_grads):
    t_out, t_grad, t_lse = TOL[dtype]
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert rel_l2(out, ref_out) < t_out, rel_l2(out, ref_out)
    if lse.numel():
        assert float((lse.cpu().double() - ref_lse).abs().max()) < t_lse
    for name, g, r in zip("qkv", grads, ref_grads):
        assert g.dtype == dtype
        assert rel_l2(g, r) < t_grad, (name, rel_l2(g, r))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).split(".")[-1])
@pytest.mark.parametrize("case", range(5))
def test_moba_matches_reference(device, dtype, case):
    cases = _cases(device, MOBA_CASES_CPU, MOBA_CASES_CUDA)
    if case >= len(cases):
        pytest.skip("no such case on this device")
    seqlens, hq, hkv, d, block, topk = cases[case]
    q, k, v, cu, max_len = make_qkv(seqlens, hq, hkv, d, dtype, device, requires_grad=True)
    if cuda_rejects_f32(device, dtype, lambda: moba.moba_attn_varlen(q, k, v, cu, max_len, block, topk)):
        return
    out, lse = moba.moba_attn_varlen(q, k, v, cu, max_len, block, topk, return_lse=True)
    dout = torch.randn_like(out)
    out.backward(dout)

    sel = moba.moba_gate(q.detach(), k.detach(), cu, max_len, block, topk)
    check_selection(sel, q, k, cu, block, topk)
    # The forward's own selection is the one it attended with.
    _, _, fsel = torch.ops.moba.moba_attn_varlen(q.detach(), k.detach(), v.detach(), cu, max_len,
                                                 block, sel.shape[2] + 1, 0.0, "auto", False)
    assert torch.equal(fsel.cpu(), sel.cpu())

    mask = reference.key_mask("moba", cu.tolist(), hq, block=block, selection=sel.cpu())
    ref_out, ref_lse, ref_grads = _grads_ref(q, k, v, dout, mask)
    _check(dtype, out, lse, (q.grad, k.grad, v.grad), ref_out, ref_lse, ref_grads)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).split(".")[-1])
def test_full_matches_reference(device, dtype):
    seqlens = [45, 0, 83] if device == "cpu" else [300, 0, 129]
    q, k, v, cu, max_len = make_qkv(seqlens, 4, 2, 64, dtype, device, requires_grad=True)
    if cuda_rejects_f32(device, dtype, lambda: moba.flash_attn_varlen(q, k, v, cu, max_len)):
        return
    out, lse = moba.flash_attn_varlen(q, k, v, cu, max_len, softmax_scale=0.2, return_lse=True)
    dout = torch.randn_like(out)
    out.backward(dout)
    mask = reference.key_mask("full", cu.tolist(), 4)
    ref_out, ref_lse, ref_grads = _grads_ref(q, k, v, dout, mask, scale=0.2)
    _check(dtype, out, lse, (q.grad, k.grad, v.grad), ref_out, ref_lse, ref_grads)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).split(".")[-1])
@pytest.mark.parametrize("per_kv_head", [False, True])
def test_moa_matches_reference(device, dtype, per_kv_head):
    seqlens = [70, 33] if device == "cpu" else [260, 70]
    hq, hkv = 4, 2
    q, k, v, cu, max_len = make_qkv(seqlens, hq, hkv, 64, dtype, device, requires_grad=True)
    alphas = [3.0, 20.0] if per_kv_head else [3.0, 20.0, 0.0, 500.0]
    betas = [0.1, 0.0] if per_kv_head else [0.1, 0.0, 0.5, 0.0]
    sink = 8
    if cuda_rejects_f32(device, dtype, lambda: moba.moa_attn(q, k, v, cu, max_len, alphas, betas)):
        return
    out, lse = moba.moa_attn(q, k, v, cu, max_len, alphas, betas, sink=sink, return_lse=True)
    dout = torch.randn_like(out)
    mask = reference.key_mask("moa", cu.tolist(), hq, sink=sink,
                              alphas=reference.expand_per_head(alphas, hq, hkv),
                              betas=reference.expand_per_head(betas, hq, hkv))
    ref_out, ref_lse, ref_grads = _grads_ref(q, k, v, dout, mask)
    out.backward(dout)
    _check(dtype, out, lse, (q.grad, k.grad, v.grad), ref_out, ref_lse, ref_grads)


def test_moba_full_topk_equals_full_attention(device):
    q, k, v, cu, max_len = make_qkv([64, 128], 2, 2, 64, work_dtype(device), device)
    block = 64 if device == "cuda" else 16
    a = moba.moba_attn_varlen(q, k, v, cu, max_len, block, 1000)
    b = moba.flash_attn_varlen(q, k, v, cu, max_len)
    # the same key sets; on the GPU two bf16 roundings of differently ordered fp32 sums
    assert rel_l2(a, b) < (1e-2 if device == "cuda" else 1e-5)


def test_reference_backend_any_head_dim():
    # The fp64 reference backend takes any head_dim (the fast backends take 64 and 128).
    q, k, v, cu, max_len = make_qkv([20, 13], 2, 1, 24, torch.float32, "cpu", requires_grad=True)
    out = moba.moba_attn_varlen(q, k, v, cu, max_len, 4, 2, backend="reference")
    out.sum().backward()
    sel = moba.moba_gate(q.detach(), k.detach(), cu, max_len, 4, 2, backend="reference")
    check_selection(sel, q, k, cu, 4, 2)
    mask = reference.key_mask("moba", cu.tolist(), 2, block=4, selection=sel)
    ref_out, _, ref_grads = _grads_ref(q, k, v, torch.ones_like(out), mask)
    assert rel_l2(out, ref_out) < 1e-6
    assert rel_l2(q.grad, ref_grads[0]) < 1e-5


def test_strided_inputs(device):
    """Token/head strides are passed through; a strided last dim is copied first (documented)."""
    total, hq, hkv, d = 90, 4, 2, 64
    cu = torch.tensor([0, 41, 90], dtype=torch.int32)
    base_q = torch.randn(hq, total, 2 * d, device=device, dtype=work_dtype(device))
    q = base_q.transpose(0, 1)[..., ::2]            # last dim stride 2, token stride != H*D
    kv = torch.randn(total, 2 * hkv, d, device=device, dtype=work_dtype(device))
    k, v = kv[:, :hkv], kv[:, hkv:]                  # views of one packed tensor
    for t in (q, k, v):
        t.requires_grad_(False)
    assert q.stride(-1) == 2 and not k.is_contiguous()
    got = moba.moba_attn_varlen(q, k, v, cu, 49, 16 if device == "cpu" else 64, 2)
    want = moba.moba_attn_varlen(q.contiguous(), k.contiguous(), v.contiguous(), cu, 49,
                                 16 if device == "cpu" else 64, 2)
    assert torch.equal(got, want)
    # gradients of strided leaves come back in the leaves' layout
    ql = q.detach().clone().requires_grad_(True)
    moba.flash_attn_varlen(ql.transpose(0, 1).contiguous().transpose(0, 1), k, v, cu, 49).sum().backward()
    assert ql.grad.shape == q.shape


def test_softmax_scale(device):
    q, k, v, cu, max_len = make_qkv([40], 2, 2, 64, work_dtype(device), device)
    a = moba.flash_attn_varlen(q, k, v, cu, max_len, softmax_scale=0.125)
    b = moba.flash_attn_varlen(q, k, v, cu, max_len)  # default 1/sqrt(64) = 0.125
    assert torch.equal(a, b)
    c = moba.flash_attn_varlen(q, k, v, cu, max_len, softmax_scale=0.3)
    assert not torch.equal(a, c)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")
def test_cuda_cu_seqlens_on_device():
    from conftest import CUDA_SKIP

    if CUDA_SKIP:
        pytest.skip(CUDA_SKIP)
    q, k, v, cu, max_len = make_qkv([100, 200], 2, 2, 64, torch.bfloat16, "cuda")
    a = moba.moba_attn_varlen(q, k, v, cu, max_len, 64, 2)
    b = moba.moba_attn_varlen(q, k, v, cu.cuda(), max_len, 64, 2)
    assert torch.equal(a, b)
