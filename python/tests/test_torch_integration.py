"""torch.library.opcheck on every op, torch.compile(fullgraph=True), autograd plumbing."""

import pytest
import torch

import moba
from conftest import work_dtype
from helpers import make_qkv, rel_l2


def _inputs(device, dtype=None, grad=True):
    return make_qkv([37, 0, 60], 4, 2, 64, dtype or work_dtype(device), device, requires_grad=grad)


def test_opcheck_moba(device):
    q, k, v, cu, n = _inputs(device)
    block = 64 if device == "cuda" else 16
    torch.library.opcheck(torch.ops.moba.moba_attn_varlen.default,
                          (q, k, v, cu, n, block, 3, 0.0, "auto", False))


def test_opcheck_full(device):
    q, k, v, cu, n = _inputs(device)
    torch.library.opcheck(torch.ops.moba.flash_attn_varlen.default,
                          (q, k, v, cu, n, 0.0, "auto", False))


def test_opcheck_moa(device):
    q, k, v, cu, n = _inputs(device)
    torch.library.opcheck(torch.ops.moba.moa_attn.default,
                          (q, k, v, cu, n, [2.0, 9.0], [0.1, 0.3], 4, 0.0, "auto", False))


def test_opcheck_gate(device):
    q, k, v, cu, n = _inputs(device, grad=False)
    block = 64 if device == "cuda" else 16
    torch.library.opcheck(torch.ops.moba.moba_gate.default, (q, k, cu, n, block, 3, "auto"))


def test_opcheck_backward(device):
    q, k, v, cu, n = _inputs(device, grad=False)
    out, lse = moba.flash_attn_varlen(q, k, v, cu, n, return_lse=True)
    dout = torch.randn_like(out)
    torch.library.opcheck(torch.ops.moba.attn_backward.default,
                          (dout, q, k, v, out, lse, None, cu, "full", 0, 0, 0.0, [], [], 0,
                           "auto", False))


class TinyAttention(torch.nn.Module):
    def __init__(self, dim=128, hq=2, hkv=1, d=64, block=16, topk=2):
        super().__init__()
        self.hq, self.hkv, self.d, self.block, self.topk = hq, hkv, d, block, topk
        self.q = torch.nn.Linear(dim, hq * d)
        self.kv = torch.nn.Linear(dim, 2 * hkv * d)
        self.o = torch.nn.Linear(hq * d, dim)

    def forward(self, x, cu_seqlens, max_seqlen: int):
        t = x.shape[0]
        q = self.q(x).view(t, self.hq, self.d)
        kv = self.kv(x).view(t, 2 * self.hkv, self.d)
        k, v = kv[:, :self.hkv], kv[:, self.hkv:]  # strided views go straight to the op
        a = moba.moba_attn_varlen(q, k, v, cu_seqlens, max_seqlen, self.block, self.topk)
        b = moba.flash_attn_varlen(q, k, v, cu_seqlens, max_seqlen)
        return self.o((a + b).reshape(t, -1))


def test_compile_fullgraph():
    torch._dynamo.reset()
    model = TinyAttention()
    x = torch.randn(70, 128, requires_grad=True)
    cu = torch.tensor([0, 30, 70], dtype=torch.int32)
    eager = model(x, cu, 40)
    eager.square().sum().backward()
    g_eager = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x, cu, 40)
    out.square().sum().backward()
    assert rel_l2(out, eager) < 1e-5
    for g, ge in zip((p.grad for p in model.parameters()), g_eager):
        assert rel_l2(g, ge) < 1e-4


def test_lse_and_selection_not_differentiable():
    q, k, v, cu, n = _inputs("cpu")
    out, lse = moba.moba_attn_varlen(q, k, v, cu, n, 16, 2, return_lse=True)
    assert out.requires_grad and not lse.requires_grad


def test_gradients_only_where_needed():
    q, k, v, cu, n = _inputs("cpu", grad=False)
    q.requires_grad_(True)
    moba.moba_attn_varlen(q, k, v, cu, n, 16, 2).sum().backward()
    assert q.grad is not None and k.grad is None


def test_no_grad_and_inference_mode():
    q, k, v, cu, n = _inputs("cpu")
    with torch.no_grad():
        a = moba.moba_attn_varlen(q, k, v, cu, n, 16, 2)
    with torch.inference_mode():
        b = moba.moba_attn_varlen(q, k, v, cu, n, 16, 2)
    assert not a.requires_grad and torch.equal(a, b)


def test_meta_tensors_give_shapes():
    q = torch.empty(10, 4, 64, device="meta")
    k = torch.empty(10, 2, 64, device="meta")
    cu = torch.tensor([0, 10], dtype=torch.int32)
    out, lse = moba.moba_attn_varlen(q, k, k, cu, 10, 4, 2, return_lse=True)
    assert out.shape == (10, 4, 64) and lse.shape == (4, 10) and out.device.type == "meta"


def test_out_of_memory_error_class():
    assert issubclass(moba.OutOfMemoryError, torch.OutOfMemoryError)
    assert issubclass(moba.OutOfMemoryError, MemoryError)
