"""Candidate MoA rules and what they cost: windows, exact density, expected loss from profiles.

A rule is a pair ``(alpha, beta)``; at input length ``N`` its head sees the first ``sink``
tokens plus a window of ``w = clamp(floor(alpha + beta * N), 1, N)`` tokens (docs/semantics.md,
computed here exactly as the C++ library does: float32 alpha/beta, the sum in float64).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, List, Sequence, Tuple

import numpy as np

Rule = Tuple[float, float]


def _f32(x: float) -> float:
    return float(np.float32(x))


def window(rule: Rule, length: int) -> int:
    """The window (own token included) of `rule` in a sequence of `length` tokens."""
    span = math.floor(_f32(rule[0]) + _f32(rule[1]) * float(length))
    if span < 1:
        return 1
    return max(length, 1) if span > length else int(span)


def kept_pairs(window_size: int, sink: int, length: int) -> int:
    """Visible (query, key) pairs of one head over a sequence of `length` tokens: for each t,
    the keys j <= t with j < sink or j > t - window_size."""
    t = np.arange(length, dtype=np.int64)
    in_window = np.minimum(window_size, t + 1)
    in_sink_only = np.clip(np.minimum(sink, t - window_size + 1), 0, None)
    return int((in_window + in_sink_only).sum())


def causal_pairs(length: int) -> int:
    return length * (length + 1) // 2


def density(rule: Rule, sink: int, length: int) -> float:
    """Fraction of the causal (query, key) pairs a head with `rule` computes at `length`."""
    return kept_pairs(window(rule, length), sink, length) / causal_pairs(length)


def default_rules(lengths: Sequence[int], num_alphas: int = 12, betas: Iterable[float] = None
                  ) -> List[Rule]:
    """A search space like the MoA paper's: alphas on a geometric grid from 0 to the longest
    length, betas from 0 to 1; rules with the same windows at every profiled length are kept
    once, and the dense rule (window = N) is always present."""
    longest = max(lengths)
    alphas = [0.0] + [float(round(x)) for x in np.geomspace(16, longest, num_alphas - 1)]
    betas = list(betas) if betas is not None else [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                                                   0.6, 0.75, 1.0]
    seen = {}
    for b in betas:
        for a in alphas:
            key = tuple(window((a, b), n) for n in lengths)
            if key not in seen:
                seen[key] = (a, b)
    dense = tuple(lengths)
    if dense not in seen:
        seen[dense] = (0.0, 1.0)
    return list(seen.values())


def bin_edges(rules: Sequence[Rule], length: int) -> List[int]:
    """Distance-bin edges for profiling at `length`: every candidate window is an edge, so the
    influence beyond any candidate's window is an exact sum of whole bins."""
    edges = {0}
    for r in rules:
        w = window(r, length)
        if w < length:
            edges.add(w)
    return sorted(edges)


@dataclasses.dataclass
class RuleTable:
    """Per candidate rule and profiled length: the window, the kept pairs (exact integers) and,
    per head, the expected loss increase of the rule (influence beyond its window)."""

    rules: List[Rule]
    lengths: List[int]
    sink: int
    kept: np.ndarray      # int64 [rules, lengths]
    loss: np.ndarray      # float64 [heads, rules, lengths]
    total: np.ndarray     # float64 [lengths]: the influence of all non-sink pairs, all heads

    @property
    def num_heads(self) -> int:
        return self.loss.shape[0]


def rule_table(rules: Sequence[Rule], profiles, sink: int, measure: str = "magnitude"
               ) -> RuleTable:
    """Expected loss of every rule on every head from `profiles` (one moba.moa.Profile per
    length, same sink), without running the model again."""
    lengths = [p.length for p in profiles]
    heads = profiles[0].heads
    kept = np.zeros((len(rules), len(lengths)), dtype=np.int64)
    loss = np.zeros((heads, len(rules), len(lengths)))
    total = np.zeros(len(lengths))
    for li, prof in enumerate(profiles):
        if prof.sink != sink:
            raise ValueError(f"moba: profiles: expected sink {sink} in every profile, got "
                             f"{prof.sink} at length {prof.length}")
        if prof.heads != heads:
            raise ValueError(f"moba: profiles: expected {heads} heads in every profile, got "
                             f"{prof.heads} at length {prof.length}")
        hist = prof.histogram(measure)            # [heads, bins], keys outside the sink
        tail = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # tail[:, b] = sum of bins >= b
        edges = list(prof.edges)
        total[li] = float(hist.sum())
        for ri, r in enumerate(rules):
            w = window(r, prof.length)
            kept[ri, li] = kept_pairs(w, sink, prof.length)
            if w >= prof.length:
                continue
            if w not in edges:
                raise ValueError(
                    f"moba: profiles: the profile at length {prof.length} has no bin edge at "
                    f"window {w} of rule {r}; profile with bin_edges(rules, length)")
            loss[:, ri, li] = tail[:, edges.index(w)]
    return RuleTable(list(rules), lengths, sink, kept, loss, total)
