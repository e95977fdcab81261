"""Bad arguments raise Python exceptions that name the argument (messages from the C++ checks
where the C++ layer sees the problem)."""

import pytest
import torch

import moba
from conftest import CUDA_SKIP


def _good():
    cu = torch.tensor([0, 20, 50], dtype=torch.int32)
    q = torch.randn(50, 4, 64)
    k = torch.randn(50, 2, 64)
    v = torch.randn(50, 2, 64)
    return dict(q=q, k=k, v=v, cu_seqlens=cu, max_seqlen=30, moba_chunk_size=16, moba_topk=2)


def _call(**changes):
    a = _good()
    a.update(changes)
    return moba.moba_attn_varlen(a["q"], a["k"], a["v"], a["cu_seqlens"], a["max_seqlen"],
                                 a["moba_chunk_size"], a["moba_topk"])


I32 = torch.int32
BAD = [
    # (changes, exception, text that must appear)
    (dict(q=torch.randn(50, 4, 64, dtype=torch.float64)), ValueError, "moba: q: expected dtype"),
    (dict(k=torch.randn(50, 2, 64, dtype=torch.float16)), ValueError,
     "moba: k: expected dtype float32 (same as q), got float16"),
    (dict(v=torch.randn(50, 2, 32)), ValueError, "moba: v: expected shape"),
    (dict(v=torch.randn(49, 2, 64)), ValueError, "moba: v:"),
    (dict(k=torch.randn(50, 3, 64), v=torch.randn(50, 3, 64)), ValueError, "moba: k: expected num_kv_heads"),
    (dict(k=torch.randn(40, 2, 64), v=torch.randn(40, 2, 64)), ValueError, "moba: k: expected shape[0]"),
    (dict(q=torch.randn(50, 256)), ValueError, "moba: q: expected 3 dimensions"),
    (dict(q=[1, 2, 3]), TypeError, "moba: q: expected a torch.Tensor"),
    (dict(q=torch.randn(50, 4, 32), k=torch.randn(50, 2, 32), v=torch.randn(50, 2, 32)),
     ValueError, "head_dim 64 or 128"),
    (dict(cu_seqlens=torch.tensor([0, 20, 50])), ValueError, "moba: cu_seqlens: expected dtype int32, got int64"),
    (dict(cu_seqlens=[0, 20, 50]), TypeError, "moba: cu_seqlens: expected an int32 torch.Tensor [batch + 1], got list"),
    (dict(cu_seqlens=torch.tensor([1, 20, 50], dtype=I32)), ValueError, "moba: cu_seqlens: expected cu_seqlens[0] == 0"),
    (dict(cu_seqlens=torch.tensor([0, 20, 49], dtype=I32)), ValueError, "moba: cu_seqlens: expected last value == total"),
    (dict(cu_seqlens=torch.tensor([0, 30, 20, 50], dtype=I32)), ValueError, "moba: cu_seqlens: expected non-decreasing"),
    (dict(cu_seqlens=torch.tensor([[0, 20, 50]], dtype=I32)), ValueError, "moba: cu_seqlens: expected 1 dimensions"),
    (dict(max_seqlen=29), ValueError, "moba: max_seqlen: expected >= the longest sequence in cu_seqlens (30)"),
    (dict(max_seqlen=-1), ValueError, "moba: max_seqlen"),
    (dict(max_seqlen=30.0), TypeError, "moba: max_seqlen: expected an int"),
    (dict(moba_chunk_size=0), ValueError, "moba: moba_chunk_size: expected a block size >= 1, got 0"),
    (dict(moba_chunk_size=1.5), TypeError, "moba: moba_chunk_size: expected a block size as an int, got 1.5"),
    (dict(moba_chunk_size=64.0), TypeError, "moba: moba_chunk_size: expected a block size as an int, got 64.0"),
    (dict(moba_topk=0), ValueError, "moba: moba_topk: expected a top-k"),
]


@pytest.mark.parametrize("changes,exc,text", BAD, ids=[f"{i}-" + "_".join(b[0]) for i, b in enumerate(BAD)])
def test_bad_moba_arguments(changes, exc, text):
    with pytest.raises(exc) as info:
        _call(**changes)
    assert text in str(info.value)


def test_good_call_works():
    assert _call().shape == (50, 4, 64)


def test_full_bad_arguments():
    g = _good()
    with pytest.raises(NotImplementedError, match="moba: causal: expected True"):
        moba.flash_attn_varlen(g["q"], g["k"], g["v"], g["cu_seqlens"], 30, causal=False)
    with pytest.raises(ValueError, match="moba: softmax_scale"):
        moba.flash_attn_varlen(g["q"], g["k"], g["v"], g["cu_seqlens"], 30, softmax_scale=float("inf"))
    with pytest.raises(ValueError, match="moba: backend: expected one of auto"):
        moba.flash_attn_varlen(g["q"], g["k"], g["v"], g["cu_seqlens"], 30, backend="gpu")


def test_moa_bad_arguments():
    g = _good()
    args = (g["q"], g["k"], g["v"], g["cu_seqlens"], 30)
    with pytest.raises(ValueError, match=r"moba: alphas\[1\]: expected a finite value >= 0"):
        moba.moa_attn(*args, [1.0, -2.0], [0.0, 0.0])
    with pytest.raises(ValueError, match=r"moba: betas\[0\]: expected a finite value >= 0"):
        moba.moa_attn(*args, [1.0, 2.0], [float("nan"), 0.0])
    with pytest.raises(ValueError, match=r"moba: alphas: expected one value per query head \(4\)"):
        moba.moa_attn(*args, [1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="moba: sink: expected a sink size >= 0"):
        moba.moa_attn(*args, [1.0, 2.0], [0.0, 0.0], sink=-1)
    with pytest.raises(TypeError, match="moba: alphas"):
        moba.moa_attn(*args, None, [0.0, 0.0])


def test_cuda_backend_on_cpu_tensors():
    g = _good()
    with pytest.raises((ValueError, NotImplementedError), match="moba: "):
        moba.flash_attn_varlen(g["q"], g["k"], g["v"], g["cu_seqlens"], 30, backend="cuda")


@pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))
def test_device_mismatch_cuda():
    g = _good()
    q = g["q"].cuda()
    with pytest.raises(ValueError, match="moba: k: expected device cuda:0"):
        moba.flash_attn_varlen(q, g["k"], g["v"].cuda(), g["cu_seqlens"], 30)
    with pytest.raises(ValueError, match="moba: moba_chunk_size: expected a block size >= 16"):
        moba.moba_attn_varlen(q, g["k"].cuda(), g["v"].cuda(), g["cu_seqlens"], 30, 8, 2)


def test_moa_plan_errors(tmp_path):
    with pytest.raises(ValueError, match=r"plan.betas\[0\]"):
        moba.MoaPlan([[1.0, 2.0]], [[0.1]]).validate()
    with pytest.raises(ValueError, match=r"plan.alphas\[0\]\[1\]"):
        moba.MoaPlan([[1.0, -2.0]], [[0.1, 0.1]]).validate()
    with pytest.raises(ValueError, match="plan"):
        moba.MoaPlan([[1.0, 2.0]], [[0.1, 0.1]]).validate(num_layers=2)
    with pytest.raises((ValueError, RuntimeError), match="moba: "):
        moba.MoaPlan.load(tmp_path / "missing.json")
    with pytest.raises((ValueError, RuntimeError), match="moba: "):
        moba.MoaPlan.from_json("{not json")


def test_non_tensor_cu_seqlens_everywhere():
    g = _good()
    for call in (lambda cu: moba.flash_attn_varlen(g["q"], g["k"], g["v"], cu, 30),
                 lambda cu: moba.moa_attn(g["q"], g["k"], g["v"], cu, 30, [1.0, 2.0], [0.0, 0.0]),
                 lambda cu: moba.moba_gate(g["q"], g["k"], cu, 30, 16, 2)):
        with pytest.raises(TypeError, match="moba: cu_seqlens: expected an int32 torch.Tensor"):
            call([0, 20, 50])


def test_cpp_dtype_names_are_torch_names():
    g = _good()
    with pytest.raises(ValueError) as info:
        moba.flash_attn_varlen(g["q"], g["k"].half(), g["v"], g["cu_seqlens"], 30)
    assert "float16" in str(info.value) and "f16" not in str(info.value).replace("float16", "")


# ---- edge cases (docs/python.md, "Edge cases") ------------------------------------------------

def test_nan_stays_within_its_sequence():
    g = _good()
    clean = moba.flash_attn_varlen(g["q"], g["k"], g["v"], g["cu_seqlens"], 30)
    for name in ("q", "k", "v"):
        for backend in ("cpu", "reference"):
            t = {n: g[n].clone() for n in ("q", "k", "v")}
            t[name][25, 0, 3] = float("nan")  # sequence 1 holds tokens 20..49
            out = moba.flash_attn_varlen(t["q"], t["k"], t["v"], g["cu_seqlens"], 30,
                                         backend=backend)
            assert torch.equal(out[:20], clean[:20]) or backend == "reference", (name, backend)
            assert torch.allclose(out[:20], clean[:20], atol=1e-5), (name, backend)
    # The reference propagates: every row that sees the NaN is NaN.
    k = g["k"].clone()
    k[25, 0, 3] = float("nan")
    out = moba.flash_attn_varlen(g["q"], k, g["v"], g["cu_seqlens"], 30, backend="reference")
    assert torch.isnan(out[25:, :2]).all() and torch.isfinite(out[20:25]).all()


def test_no_tokens():
    q = torch.randn(0, 2, 64, requires_grad=True)
    k = torch.randn(0, 2, 64, requires_grad=True)
    v = torch.randn(0, 2, 64, requires_grad=True)
    for cu in (torch.tensor([0], dtype=torch.int32), torch.tensor([0, 0, 0], dtype=torch.int32)):
        out, lse = moba.moba_attn_varlen(q, k, v, cu, 0, 16, 2, return_lse=True)
        assert out.shape == (0, 2, 64) and lse.shape == (2, 0)
        out.sum().backward()
        assert q.grad.shape == q.shape and k.grad.shape == k.shape


def test_meta_tensors_use_the_fake_implementations():
    q = torch.randn(50, 4, 64, device="meta", requires_grad=True)
    k = torch.randn(50, 2, 64, device="meta", requires_grad=True)
    v = torch.randn(50, 2, 64, device="meta", requires_grad=True)
    cu = torch.tensor([0, 20, 50], dtype=torch.int32, device="meta")
    for out in (moba.moba_attn_varlen(q, k, v, cu, 30, 16, 2),
                moba.flash_attn_varlen(q, k, v, cu, 30),
                moba.moa_attn(q, k, v, cu, 30, [4.0, 8.0], [0.0, 0.1])):
        assert out.device.type == "meta" and out.shape == (50, 4, 64) and out.dtype == q.dtype
        dq, dk = torch.autograd.grad(out.sum(), (q, k))
        assert dq.device.type == "meta" and dq.shape == q.shape and dk.shape == k.shape
    sel = moba.moba_gate(q, k, cu, 30, 16, 2)
    assert sel.device.type == "meta" and sel.shape == (50, 4, 1) and sel.dtype == torch.int32
