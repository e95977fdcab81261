"""Validation: run candidate plans on held-out data and compare them with the dense model.

Each plan runs through ``moba.register_moa`` (the engine's MoA attention). Metrics over the
supervised positions of the held-out samples:

* ``ref_loss``: cross-entropy against the dense model's own greedy predictions (the reference
  the search optimises for; the plan with the lowest value is chosen),
* ``data_loss``: cross-entropy against the data's targets (held-out LM loss; on synthetic
  retrieval data, the loss of recalling the right values),
* ``accuracy``: greedy predictions equal to the data's targets (retrieval accuracy),
* ``agreement``: greedy predictions equal to the dense model's.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from ..plan import MoaPlan
from .data import IGNORE, Samples
from .profile import model_shape

EVAL_ATTENTION = "moba_moa_search"


@dataclasses.dataclass
class Metrics:
    ref_loss: float
    data_loss: float
    accuracy: float
    agreement: float
    positions: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_plan(model, plan: MoaPlan) -> MoaPlan:
    """ValueError unless `plan` has the model's layers and (query or KV) heads."""
    layers, heads, kv = model_shape(model)[:3]
    plan.validate(num_layers=layers)
    for l, row in enumerate(plan.alphas):
        if len(row) not in (heads, kv):
            raise ValueError(f"moba: plan.alphas[{l}]: expected {heads} query heads or {kv} KV "
                             f"heads (the model's), got {len(row)} heads")
    return plan


@torch.no_grad()
def evaluate(model, plan: Optional[MoaPlan], samples: Samples, reference: torch.Tensor,
             batch_size: int = 1, device=None, backend: str = "auto") -> Metrics:
    """Metrics of `model` running `plan` (None: dense, through the engine) on `samples`;
    `reference` holds the dense model's targets (data.dense_targets)."""
    from .. import hf
    from .profile import _ModelState

    if plan is not None:
        check_plan(model, plan)
        hf.register_moa(plan, name=EVAL_ATTENTION, backend=backend)
    tot = dict(ref=0.0, data=0.0, acc=0, agree=0, n=0)
    with _ModelState(model) as m:
        if plan is not None:
            m.set_attn_implementation(EVAL_ATTENTION)
        for i in range(0, len(samples), batch_size):
            ids = samples.ids[i:i + batch_size].to(device)
            data = samples.targets[i:i + batch_size].to(device)
            ref = reference[i:i + batch_size].to(device)
            logits = m(input_ids=ids).logits.float()
            sup = ref != IGNORE
            lp = logits[sup].log_softmax(-1)
            tot["ref"] += float(F.nll_loss(lp, ref[sup], reduction="sum"))
            tot["data"] += float(F.nll_loss(lp, data[sup], reduction="sum"))
            pred = lp.argmax(-1)
            tot["acc"] += int((pred == data[sup]).sum())
            tot["agree"] += int((pred == ref[sup]).sum())
            tot["n"] += int(sup.sum())
    n = max(tot["n"], 1)
    return Metrics(tot["ref"] / n, tot["data"] / n, tot["acc"] / n, tot["agree"] / n, tot["n"])


def pick_best(results: Dict[str, List[Metrics]]) -> str:
    """The candidate with the lowest mean ref_loss over the validation sets."""
    return min(results, key=lambda k: sum(m.ref_loss for m in results[k]) / len(results[k]))
