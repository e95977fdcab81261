"""A HuggingFace model trained context-parallel: each rank runs a tiny Llama on its local tokens
inside moba.distributed.context_parallel; logits and the summed parameter gradients equal the
single-process model's (MoBA layers and a full layer, contiguous and zig-zag shards)."""

import copy

import pytest
import torch

pytest.importorskip("transformers")

import moba  # noqa: E402
import moba.hf  # noqa: E402
from moba import distributed as mdist  # noqa: E402
from helpers import rel_l2  # noqa: E402
from test_distributed import _threads  # noqa: E402
from test_hf import tiny_llama  # noqa: E402

SEQ = 96


def _loss(logits):
    return logits.float().square().sum() / (SEQ * logits.shape[-1])


@pytest.mark.parametrize("kind,world", [("contiguous", 2), ("zigzag", 3)])
def test_hf_llama_context_parallel_matches_one_process(kind, world):
    moba.register(chunk_size=16, topk=2, name="moba_cp", full_attention_layers=(0,))
    model = tiny_llama("moba_cp")
    ids = torch.randint(0, 96, (1, SEQ), generator=torch.Generator().manual_seed(3))
    model.zero_grad()
    ref = model(ids).logits
    _loss(ref).backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    layout = getattr(mdist.ShardLayout, kind)([0, SEQ], world)
    replicas = [copy.deepcopy(model) for _ in range(world)]

    def rank(r, tp):
        m = replicas[r]
        m.zero_grad()
        pos = layout.global_index(r)
        with mdist.context_parallel(layout, transport=tp):
            logits = m(ids[:, pos], position_ids=pos[None]).logits
            _loss(logits).backward()
        return logits.detach(), {n: p.grad for n, p in m.named_parameters()}

    out = _threads(world, rank)
    logits = layout.unshard([o[0][0] for o in out])
    assert float((logits - ref[0].detach()).abs().max()) < 1e-4
    for name, g in ref_grads.items():
        total = sum(o[1][name] for o in out)  # what a data-parallel all-reduce would sum
        assert rel_l2(total, g) < 1e-4, name
