"""Choosing one rule per head: a multiple-choice MILP solved with HiGHS (open source, no licence).

For a trade-off ``weights`` over the profiled lengths, minimise
``sum_l weights[l] * sum_h loss[h, rule(h), l] / total[l]`` (each length's expected loss as a
fraction of its whole influence, so lengths are comparable) subject to, at every profiled
length (or the chosen ``budget_lengths``),
``sum_h kept_pairs(rule(h), l) <= floor(density * heads * N_l (N_l + 1) / 2)``: the
plan's mean density never exceeds the budget. The kept pairs are exact integers and every
solution is re-checked in integer arithmetic (a solver's feasibility tolerance could otherwise
admit a few pairs too many; the bound is then tightened and the MILP solved again).
Several trade-offs give the Pareto set the validation picks from.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import numpy as np

from .rules import RuleTable, causal_pairs


def check_density(density: float) -> float:
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not (
            0.0 < float(density) <= 1.0):
        raise ValueError(f"moba: density: expected a fraction in (0, 1], got {density!r}")
    return float(density)


def _highs():
    try:
        import highspy
    except ImportError as e:  # pragma: no cover - only without highspy
        raise ImportError("moba: the MoA plan search needs HiGHS: pip install 'moba[moa]' "
                          "(highspy)") from e
    return highspy


@dataclasses.dataclass
class Choice:
    """One solved plan: the rule index of every head, its per-length normalised expected loss
    and density, and the trade-off that produced it."""

    rules: np.ndarray          # int [heads]
    loss: np.ndarray           # [lengths], fraction of the length's total influence
    density: np.ndarray        # [lengths]
    weights: np.ndarray        # [lengths]


def budgets(table: RuleTable, density: float) -> np.ndarray:
    """Most kept pairs allowed at each length (all heads together), an exact integer."""
    h = table.num_heads
    return np.array([int(np.floor(density * h * causal_pairs(n) + 1e-9)) for n in table.lengths],
                    dtype=np.int64)


def evaluate(table: RuleTable, rules: np.ndarray) -> tuple:
    """(normalised loss per length, density per length) of a choice of rule per head."""
    heads = np.arange(table.num_heads)
    loss = table.loss[heads, rules, :].sum(axis=0) / np.where(table.total > 0, table.total, 1.0)
    kept = table.kept[rules, :].sum(axis=0)
    dens = kept / np.array([table.num_heads * causal_pairs(n) for n in table.lengths])
    return loss, dens


def _objective(table: RuleTable, weights: np.ndarray) -> np.ndarray:
    norm = np.where(table.total > 0, table.total, 1.0)
    return (table.loss / norm * weights).sum(axis=2)  # [heads, rules]


def _budget_rows(table: RuleTable, budget_lengths) -> np.ndarray:
    if budget_lengths is None:
        return np.arange(len(table.lengths))
    rows = []
    for n in budget_lengths:
        if n not in table.lengths:
            raise ValueError(f"moba: budget_lengths: expected profiled lengths "
                             f"{table.lengths}, got {n}")
        rows.append(table.lengths.index(n))
    if not rows:
        raise ValueError("moba: budget_lengths: expected at least one length")
    return np.array(sorted(set(rows)))


def solve(table: RuleTable, density: float, weights: Optional[Sequence[float]] = None,
          time_limit: float = 60.0, budget_lengths: Optional[Sequence[int]] = None) -> Choice:
    """The optimal rule per head for one trade-off (default: lengths weighted equally), the
    density budget holding at `budget_lengths` (default: every profiled length)."""
    density = check_density(density)
    highspy = _highs()
    heads, nrules, nlen = table.loss.shape
    w = np.full(nlen, 1.0 / nlen) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (nlen,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"moba: weights: expected {nlen} non-negative values, not all 0, got "
                         f"{list(w)}")
    rows = _budget_rows(table, budget_lengths)
    limit = budgets(table, density)[rows]
    kept_rows = table.kept[:, rows]
    lightest = kept_rows.min(axis=0) * heads
    for li, n in enumerate(np.array(table.lengths)[rows]):
        if lightest[li] > limit[li]:
            raise ValueError(
                f"moba: density: expected at least {lightest[li] / (heads * causal_pairs(n)):.4f}"
                f" (the sparsest candidate rule on every head at length {n}), got {density}")
    cost = _objective(table, w)
    bound = limit.astype(float)
    for _ in range(8):
        rules = _solve_milp(highspy, cost, kept_rows, bound, time_limit)
        kept = kept_rows[rules, :].sum(axis=0)
        over = kept - limit
        if (over <= 0).all():
            loss, dens = evaluate(table, rules)
            return Choice(rules, loss, dens, w)
        bound = bound - np.maximum(over, 0) - 0.5
    raise RuntimeError("moba: the MILP solution kept exceeding the density budget")


def _solve_milp(highspy, cost: np.ndarray, kept: np.ndarray, bound: np.ndarray,
                time_limit: float) -> np.ndarray:
    heads, nrules = cost.shape
    nlen = kept.shape[1]
    ncol = heads * nrules
    lp = highspy.HighsLp()
    lp.num_col_ = ncol
    lp.num_row_ = heads + nlen
    lp.col_cost_ = cost.reshape(-1).astype(float)
    lp.col_lower_ = np.zeros(ncol)
    lp.col_upper_ = np.ones(ncol)
    inf = highspy.kHighsInf
    lp.row_lower_ = np.concatenate([np.ones(heads), np.full(nlen, -inf)])
    lp.row_upper_ = np.concatenate([np.ones(heads), bound])
    # Column (h, r): 1 in row h (one rule per head), kept[r, l] in density row heads + l.
    index, value, start = [], [], [0]
    for h in range(heads):
        for r in range(nrules):
            index.append(h)
            value.append(1.0)
            for li in range(nlen):
                index.append(heads + li)
                value.append(float(kept[r, li]))
            start.append(len(index))
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.array(start, dtype=np.int32)
    lp.a_matrix_.index_ = np.array(index, dtype=np.int32)
    lp.a_matrix_.value_ = np.array(value)
    lp.integrality_ = [highspy.HighsVarType.kInteger] * ncol
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 0.0)
    h.setOptionValue("time_limit", float(time_limit))
    h.passModel(lp)
    h.run()
    status = h.modelStatusToString(h.getModelStatus())
    x = np.asarray(h.getSolution().col_value)
    if x.size != ncol or status not in ("Optimal", "Time limit reached"):
        raise RuntimeError(f"moba: HiGHS found no plan ({status})")
    return x.reshape(heads, nrules).argmax(axis=1)


def trade_offs(num_lengths: int) -> List[np.ndarray]:
    """The default trade-offs: each length alone, then all lengths equally."""
    out = [np.eye(num_lengths)[i] for i in range(num_lengths)]
    if num_lengths > 1:
        out.append(np.full(num_lengths, 1.0 / num_lengths))
    return out


def pareto_set(table: RuleTable, density: float, weights: Optional[Sequence] = None,
               time_limit: float = 60.0, budget_lengths: Optional[Sequence[int]] = None
               ) -> List[Choice]:
    """One MILP per trade-off; the distinct solutions that no other solution beats at every
    length (lower or equal loss everywhere, lower somewhere)."""
    found: List[Choice] = []
    for w in (weights if weights is not None else trade_offs(len(table.lengths))):
        c = solve(table, density, w, time_limit, budget_lengths)
        if not any(np.array_equal(c.rules, f.rules) for f in found):
            found.append(c)
    keep = []
    for c in found:
        dominated = any((o.loss <= c.loss + 1e-15).all() and (o.loss < c.loss - 1e-15).any()
                        for o in found if o is not c)
        if not dominated:
            keep.append(c)
    return keep
