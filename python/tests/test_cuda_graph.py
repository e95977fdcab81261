"""A training step (forward + backward through autograd) captured in a torch.cuda.CUDAGraph.

With cu_seqlens on the GPU neither the ops nor the C++ layer read anything back (no .cpu(), no
.item(), no stream sync: the CUDA backend plans on the device), so capture works, a replay gives
the eager step's bits (deterministic mode), and after new values and new lengths are written
into the same tensors a replay gives the eager result of the new inputs.
"""
import pytest
import torch

import moba

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

LENS = [300, 0, 1, 517]
NEW_LENS = [200, 200, 200, 218]  # same total and batch


def _cu(lens, device):
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32, device=device)


def _attn(mode):
    if mode == "moba":
        return lambda q, k, v, cu, m: moba.moba_attn_varlen(q, k, v, cu, m, 64, 3, deterministic=True)
    if mode == "full":
        return lambda q, k, v, cu, m: moba.flash_attn_varlen(q, k, v, cu, m, deterministic=True)
    return lambda q, k, v, cu, m: moba.moa_attn(q, k, v, cu, m, [40.0, 300.0], [0.1, 0.0], sink=16,
                                                deterministic=True)


@pytest.mark.parametrize("mode", ["moba", "full", "moa"])
def test_training_step_replays_eager_and_reads_new_inputs(mode):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    total, hq, hkv, d = sum(LENS), 4, 2, 64
    q = torch.randn(total, hq, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(total, hkv, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(total, hkv, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    dout = torch.randn(total, hq, d, device=dev, dtype=torch.bfloat16)
    cu = _cu(LENS, dev)
    max_seqlen = total  # a bound; the GPU lengths are never read back
    attn = _attn(mode)

    def step():
        out = attn(q, k, v, cu, max_seqlen)
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
        return out.detach(), dq, dk, dv

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as torch.cuda.graph asks
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    eager = [t.clone() for t in step()]

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        for name, got, want in zip(("out", "dq", "dk", "dv"), static, eager):
            assert torch.equal(got, want), f"{mode}: replayed {name} differs from the eager step"

    with torch.no_grad():
        q.copy_(torch.randn_like(q))
        k.copy_(torch.randn_like(k))
        v.copy_(torch.randn_like(v))
        dout.copy_(torch.randn_like(dout))
        cu.copy_(_cu(NEW_LENS, dev))
    eager2 = [t.clone() for t in step()]
    assert not torch.equal(eager2[2], eager[2])
    graph.replay()
    torch.cuda.synchronize()
    for name, got, want in zip(("out", "dq", "dk", "dv"), static, eager2):
        assert torch.equal(got, want), f"{mode}: {name} after new inputs differs from the eager step"
