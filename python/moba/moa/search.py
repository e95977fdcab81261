"""The MoA plan search, end to end: profile -> optimise -> validate -> plan.

    from moba import moa
    result = moa.search(model, density=0.5, lengths=[1024, 2048], calibration=cal,
                        validation=val)
    result.plan.save("plan.json")          # moba's MoaPlan JSON
    moba.register_moa(result.plan)         # then attn_implementation="moa"
"""

from __future__ import annotations

import dataclasses
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..plan import MoaPlan
from . import optimise as opt
from .data import Samples, dense_targets, synthetic_retrieval
from .profile import Profile, check_length, model_shape, profile_model
from .rules import (Rule, RuleTable, bin_edges, causal_pairs, default_rules, kept_pairs,
                    rule_table, window)
from .validate import Metrics, evaluate, pick_best


def plan_from_choice(table: RuleTable, rules_of_heads: np.ndarray, num_layers: int,
                     num_heads: int) -> MoaPlan:
    """The MoaPlan of a choice of rule per head (heads ordered layer by layer)."""
    alphas, betas = [], []
    for l in range(num_layers):
        chosen = [table.rules[int(r)] for r in rules_of_heads[l * num_heads:(l + 1) * num_heads]]
        alphas.append([a for a, _ in chosen])
        betas.append([b for _, b in chosen])
    return MoaPlan(alphas, betas, sink=table.sink)


def uniform_window(density: float, length: int, sink: int = 64) -> int:
    """The largest window w whose density with `sink` at `length` is <= `density`: the uniform
    sliding-window + sink baseline (StreamingLLM's pattern) at the same density."""
    opt.check_density(density)
    lo, hi = 1, length
    if kept_pairs(1, sink, length) > density * causal_pairs(length):
        raise ValueError(f"moba: density: expected at least "
                         f"{kept_pairs(1, sink, length) / causal_pairs(length):.4f} for sink "
                         f"{sink} at length {length}, got {density}")
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if kept_pairs(mid, sink, length) <= density * causal_pairs(length):
            lo = mid
        else:
            hi = mid - 1
    return lo


def uniform_plan(num_layers: int, num_heads: int, density: float, length: int,
                 sink: int = 64) -> MoaPlan:
    w = float(uniform_window(density, length, sink))
    return MoaPlan([[w] * num_heads for _ in range(num_layers)],
                   [[0.0] * num_heads for _ in range(num_layers)], sink=sink)


def rules_for(lengths: Sequence[int], density: float, sink: int = 64) -> List[Rule]:
    """moa.default_rules plus, at each length, the uniform window of `density` as a fixed
    (alpha = w) and as an elastic (beta = w / N) rule: the search can then always do at least
    as well (in expected loss) as the uniform baseline, whatever the grid's spacing."""
    extra = []
    for n in lengths:
        try:
            w = uniform_window(density, n, sink)
        except ValueError:
            continue
        beta = np.float32(w / n)
        while window((0.0, float(beta)), n) < w:  # the float32 nearest w / n may floor below
            beta = np.nextafter(beta, np.float32(2))
        extra += [(float(w), 0.0), (0.0, float(beta))]
    rules = default_rules(lengths)
    seen = {tuple(window(r, n) for n in lengths) for r in rules}
    for r in extra:
        key = tuple(window(r, n) for n in lengths)
        if key not in seen:
            seen.add(key)
            rules.append(r)
    return rules


@dataclasses.dataclass
class SearchResult:
    plan: MoaPlan                          # the validated best
    candidates: Dict[str, MoaPlan]         # the Pareto set (and the uniform baseline)
    metrics: Dict[str, List[Metrics]]      # per candidate, per validation length
    profiles: List[Profile]
    table: RuleTable
    seconds: Dict[str, float]

    def report(self) -> str:
        lines = [f"{'plan':<14} " + " ".join(
            f"{'ref_loss ' + name:>16} {'acc':>6}" for name in self.validation_sets)]
        for name, ms in self.metrics.items():
            mark = " *" if self.candidates.get(name) is self.plan else ""
            lines.append(f"{name:<14} " + " ".join(f"{m.ref_loss:>16.4f} {m.accuracy:>6.3f}"
                                                    for m in ms) + mark)
        return "\n".join(lines)

    validation_sets: List[str] = dataclasses.field(default_factory=list)


def default_calibration(model, length: int, num_sequences: int, seed: int) -> Samples:
    """Synthetic long-dependency sequences in the model's vocabulary."""
    vocab = int(model.get_input_embeddings().num_embeddings)
    return synthetic_retrieval(vocab, length, num_sequences, seed=seed)


def search(model, density: float, lengths: Sequence[int],
           calibration: Optional[Dict[int, Samples]] = None,
           validation: Optional[Dict[int, Samples]] = None, rules: Optional[List[Rule]] = None,
           sink: int = 64, measure: str = "magnitude", num_sequences: int = 8,
           batch_size: int = 1, device=None, backend: str = "auto", time_limit: float = 30.0,
           include_uniform: bool = True, budget_lengths: Optional[Sequence[int]] = None,
           log=print) -> SearchResult:
    """Profile `model` at each of `lengths`, solve the MILPs at `density`, validate the Pareto
    set (and, if `include_uniform`, the uniform window baseline) and return the best plan.

    calibration: {length: Samples}; lengths without one get synthetic retrieval data.
    validation: {name: Samples} (any names, e.g. lengths; several sets may share a length);
    default: synthetic retrieval at the longest length. Targets are replaced by the dense
    model's own predictions where supervised; the plan with the lowest mean ref_loss over the
    validation sets wins. The density budget holds at `budget_lengths` (default: every
    profiled length); validate at those lengths.
    """
    opt.check_density(density)
    lengths = sorted({check_length(model, int(n)) for n in lengths})
    if not lengths:
        raise ValueError("moba: lengths: expected at least one profiling length")
    layers, heads = model_shape(model)[:2]
    rules = rules or rules_for(lengths, density, sink)
    calibration = dict(calibration or {})
    seconds = {}

    t0 = time.perf_counter()
    profiles = []
    for n in lengths:
        cal = calibration.get(n) or default_calibration(model, n, num_sequences, seed=n)
        ref = dense_targets(model, cal, batch_size, device)
        prof = profile_model(model, cal.batches(batch_size, targets=ref, device=device), n,
                             bin_edges(rules, n), sink=sink)
        profiles.append(prof)
        log(f"moba.moa: profiled length {n}: {len(cal)} sequences, {len(prof.edges)} bins")
    seconds["profile"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    table = rule_table(rules, profiles, sink, measure)
    choices = opt.pareto_set(table, density, time_limit=time_limit,
                             budget_lengths=budget_lengths)
    candidates = {}
    for i, c in enumerate(choices):
        candidates[f"moa{i}"] = plan_from_choice(table, c.rules, layers, heads)
        log(f"moba.moa: candidate moa{i}: trade-off {np.round(c.weights, 3).tolist()}, expected "
            f"loss {np.round(c.loss, 5).tolist()}, density {np.round(c.density, 4).tolist()}")
    seconds["optimise"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if validation is None:
        validation = {lengths[-1]: default_calibration(model, lengths[-1], num_sequences,
                                                       seed=10_000 + lengths[-1])}
    val_names = list(validation)
    if include_uniform:
        for n in sorted({validation[k].length for k in val_names}):
            candidates[f"uniform@{n}"] = uniform_plan(layers, heads, density, n, sink)
    metrics: Dict[str, List[Metrics]] = {k: [] for k in candidates}
    for key in val_names:
        val = validation[key]
        check_length(model, val.length)
        ref = dense_targets(model, val, batch_size, device)
        for name, plan in candidates.items():
            metrics[name].append(evaluate(model, plan, val, ref, batch_size, device, backend))
    seconds["validate"] = time.perf_counter() - t0
    searched = {k: v for k, v in metrics.items() if not k.startswith("uniform")}
    best = candidates[pick_best(searched)]
    return SearchResult(best, candidates, metrics, profiles, table, seconds,
                        [str(k) for k in val_names])
