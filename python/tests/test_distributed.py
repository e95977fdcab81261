"""moba.distributed: context parallelism agrees with one process (forward, lse, selection and
gradients) for P = 1..4 ranks over gloo, every mode, dtype, GQA, varlen and shard layout
(cases in distributed_cases.py); byte counts; errors. GPU (NCCL) variant: test_distributed_gpu.py."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.distributed as dist

from moba import distributed as mdist

import distributed_cases as dc

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is unavailable")


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_gloo_matches_single_process(world):
    """P processes over gloo, every case: exact agreement with single-process moba."""
    import torch.multiprocessing as mp
    mp.spawn(dc.worker, args=(world, dc.free_port(), "gloo", None), nprocs=world, join=True)


def _threads(world, fn):
    """fn(rank, transport) on `world` threads sharing a ThreadTransport group."""
    tps = mdist.ThreadTransport.group(world)
    errors, results = [], [None] * world

    def run(r):
        try:
            results[r] = fn(r, tps[r])
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
            tps[r].hub.barrier.abort()

    ts = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]
    return results


@pytest.mark.parametrize("world", [3, 5])
def test_thread_transport_matches_single_process(world):
    """The same code on the in-process transport (used by the dry run), P = 3 and 5."""
    for c in dc.cases()[:3]:
        _threads(world, lambda r, tp: dc.check_case(c, r, world, "cpu", tp))


def _full_case_bytes(world):
    c = dc.Case("full bytes", mode="full", seqlens=[257], hq=2, hkv=1, block=16)
    q, k, v, dout, cu = dc._data(c)
    lay = mdist.ShardLayout.contiguous(cu, world)

    def run(r, tp):
        stats = dc._distributed(c, lay, r, q, k, v, dout, "cpu", tp)[6]
        return stats
    return c, lay, _threads(world, run)


def test_full_attention_moves_exactly_the_past_keys():
    """Full causal, contiguous shards: rank r receives exactly the K/V of every earlier token
    (forward) and sends back exactly their dK/dV (fp32); ring attention moves more."""
    world = 4
    c, lay, stats = _full_case_bytes(world)
    elem, per_tok = 4, c.hkv * c.dim * 2
    for r, st in enumerate(stats):
        start = lay.pieces(r)[0].start
        assert st.received["kv"] == start * per_tok * elem
        assert st.sent["grad_kv"] == start * per_tok * 4
        ring = mdist.ring_attention_bytes(lay, r, c.hkv, c.dim, elem, 4)
        assert st.total_sent(["kv"]) <= ring["forward"]
    assert sum(s.sent["kv"] for s in stats) == sum(s.received["kv"] for s in stats)


def test_dry_run_counts_what_the_real_run_moves():
    """dry_run=True plans and counts the same bytes without moving K/V or computing."""
    c = dc.Case("dry", seqlens=[300, 77], hq=4, hkv=2, block=16, topk=3, seed=11)
    q, k, v, dout, cu = dc._data(c)
    world = 3
    lay = mdist.ShardLayout.zigzag(cu, world)

    def run(dry):
        def fn(r, tp):
            info = {}
            ql, kl, vl = (lay.shard(x, r) for x in (q, k, v))
            mdist.moba_attn_varlen_cp(ql, kl, vl, lay, c.block, c.topk, transport=tp, info=info,
                                      dry_run=dry)
            return tp.stats
        return _threads(world, fn)
    real, dry = run(False), run(True)
    for a, b in zip(real, dry):
        assert a.sent == b.sent and a.received == b.received
        assert a.sent["kv"] > 0 or a.received["kv"] > 0


def test_layouts_partition_the_tokens():
    cu = torch.tensor([0, 5, 5, 40, 41], dtype=torch.int32)
    for make in (mdist.ShardLayout.contiguous, mdist.ShardLayout.zigzag):
        for world in (1, 2, 3, 7, 50):
            lay = make(cu, world)
            idx = torch.cat([lay.global_index(r) for r in range(world)])
            assert sorted(idx.tolist()) == list(range(41))
            x = torch.arange(41.0)[:, None]
            assert torch.equal(lay.unshard([lay.shard(x, r) for r in range(world)]), x)
    z = mdist.ShardLayout.zigzag([0, 16], 2)
    assert [(p.start, p.end) for p in z.pieces(0)] == [(0, 4), (12, 16)]
    assert [(p.start, p.end) for p in z.pieces(1)] == [(4, 12)]  # chunks 1 and 2 merge


def test_errors_are_named():
    with pytest.raises(ValueError, match="ranks"):
        mdist.ShardLayout([0, 10], [[(0, 0, 4)], [(0, 5, 10)]])  # position 4 held by none
    with pytest.raises(ValueError, match="ranks\\[1\\]"):
        mdist.ShardLayout([0, 10], [[(0, 0, 5)], [(0, 5, 11)]])
    lay = mdist.ShardLayout.contiguous([0, 64], 2)
    tp = mdist.ThreadTransport.group(1)[0]
    q = torch.randn(32, 2, 64)
    with pytest.raises(ValueError, match="layout"):
        mdist.moba_attn_varlen_cp(q, q, q, lay, 16, 2, transport=tp)
    lay1 = mdist.ShardLayout.contiguous([0, 64], 1)
    with pytest.raises(ValueError, match="moba: q"):
        mdist.moba_attn_varlen_cp(q, q, q, lay1, 16, 2, transport=tp)
    with pytest.raises(ValueError, match="mode"):
        mdist.context_parallel_attn(q, q, q, lay1, mode="ring", transport=tp)
    with pytest.raises(RuntimeError, match="init_process_group"):
        if not dist.is_initialized():
            mdist.moba_attn_varlen_cp(q, q, q, lay1, 16, 2)
        else:  # pragma: no cover
            raise RuntimeError("init_process_group")


def test_more_ranks_than_tokens():
    """Ranks holding no token still take part in every collective; tiny sequences, one block."""
    for c in (dc.Case("tiny", seqlens=[3], block=2, topk=2),
              dc.Case("tiny full", mode="full", seqlens=[2, 0, 1], block=4),
              dc.Case("tiny moa", mode="moa", seqlens=[5], alphas=[1.0, 2.0], betas=[0.0, 0.5],
                      sink=1, block=2),
              dc.Case("one block", seqlens=[16], block=64, topk=3)):
        for world in (4, 6):
            _threads(world, lambda r, tp: dc.check_case(c, r, world, "cpu", tp))


def test_overlap_is_real():
    """Rows are computed while the fetch is in flight (forward) and while the dK/dV return is in
    flight (backward): MoBA body rows; MoA rows whose window stays on the rank; the results
    still agree with one process (check_case)."""
    moa = dc.Case("moa short windows", mode="moa", seqlens=[400], hq=2, hkv=1,
                  alphas=[12.0, 20.0], betas=[0.0, 0.0], sink=0, block=16)
    for c in (dc.cases()[0], moa):
        q, k, v, dout, cu = dc._data(c)
        lay = mdist.ShardLayout.contiguous(cu, 2)

        def run(r, tp, c=c, lay=lay):
            dc.check_case(c, r, 2, "cpu", tp)
            return dc._distributed(c, lay, r, q, k, v, dout, "cpu", tp)[7]["overlap"]
        for r, ov in enumerate(_threads(2, run)):
            assert ov["forward_rows_during_fetch"] > 0, (c.name, r, ov)
            assert ov["backward_rows_during_grad_send"] > 0, (c.name, r, ov)


def test_torch_compile_forward_backward_gloo():
    """torch.compile(fullgraph=False) of a CP forward + backward (2 ranks over gloo): the same
    numbers as eager and as one process, for MoBA, full and MoA. aot_eager keeps CI fast; the
    op is opaque to the compiler, so inductor runs the same code (checked by hand)."""
    import torch.multiprocessing as mp
    mp.spawn(dc.compile_worker, args=(2, dc.free_port(), "aot_eager"), nprocs=2, join=True)
