"""The MoA reference implementation's plan files, ``{"alphas": [L][H], "betas": [L][H]}``.

What the reference means (thu-nics/MoA, as the plan search's issue states it): for a request
of ``N`` tokens (the input plus the new tokens planned), head ``h`` has a budget

    b = clamp(64 * floor((alpha + beta * N) / 64), 128, N)

of keys per query: a sink of the first ``min(b, 64)`` tokens and a local window of the last
``b - min(b, 64)`` tokens. (Our reading of "clamped to [128, N], rounded to a multiple of
64": rounded down, then clamped, so the budget always lies in [min(128, N), N].)

moba's plans (docs/semantics.md) add the sink *to* the window: ``sink`` first tokens plus a
window of ``clamp(floor(alpha + beta * N), 1, N)`` tokens. So with ``sink = 64``:

* elastic mapping (every N): ``alpha_moba = alpha_ref - 64``, ``beta_moba = beta_ref``. The
  masks are identical at every N where ``alpha_ref + beta_ref * N`` is a multiple of 64 in
  [128, N]; elsewhere the reference's rounding moves its window by less than 64 tokens.
* exact mapping at one N (``length=N``): ``alpha_moba = b - min(b, 64)``, ``beta_moba = 0``:
  the masks are identical at that N (tested mask by mask in python/tests/test_moa_search.py).

Writing a moba plan in the reference's format uses the inverse maps; the exact one raises if a
head's window cannot be expressed as a 64-multiple budget of the reference.
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional, Union

from ..plan import MoaPlan
from .rules import window

REFERENCE_SINK = 64
MIN_BUDGET = 128
GRANULE = 64


def reference_budget(alpha: float, beta: float, length: int) -> int:
    """Keys per query (sink included) the reference gives a head at `length` tokens."""
    rounded = GRANULE * math.floor((alpha + beta * length) / GRANULE)
    return int(min(max(rounded, MIN_BUDGET), length))


def reference_window(alpha: float, beta: float, length: int) -> int:
    """The reference's local window (sink excluded) at `length` tokens."""
    b = reference_budget(alpha, beta, length)
    return b - min(b, REFERENCE_SINK)


def _check_lists(obj, what: str):
    if not isinstance(obj, dict) or "alphas" not in obj or "betas" not in obj:
        raise ValueError(f"moba: {what}: expected an object with 'alphas' and 'betas', got "
                         f"{type(obj).__name__}{' keys ' + str(sorted(obj)) if isinstance(obj, dict) else ''}")
    a, b = obj["alphas"], obj["betas"]
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b)):
        raise ValueError(f"moba: {what}: expected 'alphas' and 'betas' of the same [layers][heads]"
                         " shape")
    return a, b


def from_reference(obj: Union[dict, str, os.PathLike], length: Optional[int] = None) -> MoaPlan:
    """A moba plan from the reference's plan (a dict, or a path to its JSON).

    length None: the elastic mapping (needs every alpha >= 64). length N: the exact mapping at N.
    """
    if not isinstance(obj, dict):
        with open(os.fspath(obj)) as f:
            obj = json.load(f)
    alphas_ref, betas_ref = _check_lists(obj, "reference plan")
    alphas, betas = [], []
    for l, (la, lb) in enumerate(zip(alphas_ref, betas_ref)):
        ra, rb = [], []
        for h, (a, b) in enumerate(zip(la, lb)):
            if length is None:
                if a < REFERENCE_SINK:
                    raise ValueError(
                        f"moba: reference plan alphas[{l}][{h}]: expected >= {REFERENCE_SINK} for "
                        f"the elastic mapping (the reference's sink is part of alpha), got {a}; "
                        "pass length=N for the exact mapping at N tokens")
                ra.append(float(a) - REFERENCE_SINK)
                rb.append(float(b))
            else:
                ra.append(float(reference_window(a, b, int(length))))
                rb.append(0.0)
        alphas.append(ra)
        betas.append(rb)
    return MoaPlan(alphas, betas, sink=REFERENCE_SINK).validate()


def to_reference(plan: MoaPlan, length: Optional[int] = None) -> dict:
    """The reference's ``{"alphas", "betas"}`` for a moba plan with sink 64.

    length None: the elastic mapping. length N: a plan whose masks at N equal this plan's
    (raises ValueError naming the head whose window is not expressible at N).
    """
    if plan.sink != REFERENCE_SINK:
        raise ValueError(f"moba: plan.sink: expected {REFERENCE_SINK} (the reference's fixed sink),"
                         f" got {plan.sink}")
    plan.validate()
    out = {"alphas": [], "betas": []}
    for l, (la, lb) in enumerate(zip(plan.alphas, plan.betas)):
        ra, rb = [], []
        for h, (a, b) in enumerate(zip(la, lb)):
            if length is None:
                ra.append(a + REFERENCE_SINK)
                rb.append(b)
                continue
            n = int(length)
            w = window((a, b), n)
            if w + REFERENCE_SINK >= n:
                budget = n + GRANULE  # rounds down to >= n, clamped to n: every key
            elif w % GRANULE == 0 and w + REFERENCE_SINK >= MIN_BUDGET:
                budget = w + REFERENCE_SINK
            else:
                raise ValueError(
                    f"moba: plan layer {l} head {h}: window {w} at length {n} has no reference "
                    f"equivalent (expected a multiple of {GRANULE} >= {MIN_BUDGET - REFERENCE_SINK},"
                    f" or >= {n - REFERENCE_SINK})")
            ra.append(float(budget))
            rb.append(0.0)
        out["alphas"].append(ra)
        out["betas"].append(rb)
    return out


def save_reference(plan: MoaPlan, path: Union[str, os.PathLike],
                   length: Optional[int] = None) -> None:
    with open(os.fspath(path), "w") as f:
        json.dump(to_reference(plan, length), f, indent=1)
