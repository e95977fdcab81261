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
    (dict(k=torch.randn(50, 2, 64, dtype=torch.float16)), ValueError, "moba: k: expected dtype f32"),
    (dict(v=torch.randn(50, 2, 32)), ValueError, "moba: v: expected shape"),
    (dict(v=torch.randn(49, 2, 64)), ValueError, "moba: v:"),
    (dict(k=torch.randn(50, 3, 64), v=torch.randn(50, 3, 64)), ValueError, "moba: k: expected num_kv_heads"),
    (dict(k=torch.randn(40, 2, 64), v=torch.randn(40, 2, 64)), ValueError, "moba: k: expected shape[0]"),
    (dict(q=torch.randn(50, 256)), ValueError, "moba: q: expected 3 dimensions"),
    (dict(q=[1, 2, 3]), TypeError, "moba: q: expected a torch.Tensor"),
    (dict(q=torch.randn(50, 4, 32), k=torch.randn(50, 2, 32), v=torch.randn(50, 2, 32)),
     ValueError, "head_dim 64 or 128"),
    (dict(cu_seqlens=torch.tensor([0, 20, 50])), ValueError, "moba: cu_seqlens: expected dtype int32"),
    (dict(cu_seqlens=torch.tensor([1, 20, 50], dtype=I32)), ValueError, "moba: cu_seqlens: expected cu_seqlens[0] == 0"),
    (dict(cu_seqlens=torch.tensor([0, 20, 49], dtype=I32)), ValueError, "moba: cu_seqlens: expected last value == total"),
    (dict(cu_seqlens=torch.tensor([0, 30, 20, 50], dtype=I32)), ValueError, "moba: cu_seqlens: expected non-decreasing"),
    (dict(cu_seqlens=torch.tensor([[0, 20, 50]], dtype=I32)), ValueError, "moba: cu_seqlens: expected 1 dimensions"),
    (dict(max_seqlen=29), ValueError, "moba: max_seqlen: expected >= the longest sequence in cu_seqlens (30)"),
    (dict(max_seqlen=-1), ValueError, "moba: max_seqlen"),
    (dict(max_seqlen=30.0), TypeError, "moba: max_seqlen: expected an int"),
    (dict(moba_chunk_size=0), ValueError, "moba: moba_chunk_size: expected a block size >= 1, got 0"),
    (dict(moba_chunk_size=1.5), TypeError, "moba: moba_chunk_size"),
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
