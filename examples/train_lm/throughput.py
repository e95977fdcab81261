"""Training throughput of the whole model (forward, backward, optimizer step) and the share of
each step spent in attention.

Attention time is taken with events around every attention call: a pair of autograd functions
wraps the attention function (registered under a new name, `timed_<name>`), stamping the start
and end of its forward and, on the way back, the start and end of its backward. On the GPU the
stamps are CUDA events on the current stream, so they bracket the attention kernels exactly;
on the CPU they are wall-clock stamps (CPU ops run synchronously).
"""

from __future__ import annotations

import gc
import time
from typing import Callable, Dict, List

import numpy as np
import torch

from lm import autocast, token_losses


class _Stamp:
    def __init__(self, device: torch.device):
        self.event = torch.cuda.Event(enable_timing=True) if device.type == "cuda" else None
        self.t = 0.0

    def record(self):
        if self.event is not None:
            self.event.record()
        else:
            self.t = time.perf_counter()

    def ms_to(self, later: "_Stamp") -> float:
        if self.event is not None:
            return self.event.elapsed_time(later.event)
        return (later.t - self.t) * 1e3


class _Call:
    """The four stamps of one attention call."""

    def __init__(self, device):
        self.fwd0, self.fwd1, self.bwd0, self.bwd1 = (_Stamp(device) for _ in range(4))
        self.backward_ran = False


class _Enter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call, q, k, v):
        call.fwd0.record()
        ctx.call = call
        return q.view_as(q), k.view_as(k), v.view_as(v)

    @staticmethod
    def backward(ctx, dq, dk, dv):
        ctx.call.bwd1.record()
        return None, dq, dk, dv


class _Exit(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call, out):
        call.fwd1.record()
        ctx.call = call
        return out.view_as(out)

    @staticmethod
    def backward(ctx, dout):
        ctx.call.bwd0.record()
        ctx.call.backward_ran = True
        return None, dout


class AttentionTimer:
    """Wraps registered attention functions; while `active`, records every call."""

    def __init__(self):
        self.active = False
        self.calls: List[_Call] = []

    def wrap(self, name: str) -> str:
        """Registers `timed_<name>`: the attention function and mask function of `name`, timed."""
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        inner = ALL_ATTENTION_FUNCTIONS[name]
        timer = self

        def timed(module, query, key, value, attention_mask, *args, **kwargs):
            if not timer.active or not torch.is_grad_enabled():
                return inner(module, query, key, value, attention_mask, *args, **kwargs)
            call = _Call(query.device)
            query, key, value = _Enter.apply(call, query, key, value)
            out, weights = inner(module, query, key, value, attention_mask, *args, **kwargs)
            out = _Exit.apply(call, out)
            timer.calls.append(call)
            return out, weights

        timed_name = f"timed_{name}"
        AttentionInterface.register(timed_name, timed)
        AttentionMaskInterface.register(timed_name, ALL_MASK_ATTENTION_FUNCTIONS[name])
        return timed_name

    def take_ms(self) -> Dict[str, float]:
        """Forward and backward attention milliseconds of the calls since the last take (call
        after a synchronize)."""
        fwd = sum(c.fwd0.ms_to(c.fwd1) for c in self.calls)
        bwd = sum(c.bwd0.ms_to(c.bwd1) for c in self.calls if c.backward_ran)
        self.calls = []
        return {"fwd": fwd, "bwd": bwd}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def training_step(model, attn_name: str, optimizer, tokens: torch.Tensor,
                  device: torch.device) -> None:
    with autocast(device):
        loss = token_losses(model, tokens, attn_name).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(model, optimizer, attn_name: str, timer: AttentionTimer, seq_len: int, batch: int,
            device: torch.device, steps: int, warmup: int = 1) -> dict:
    """Times `steps` training steps (after `warmup`) on random tokens of one shape. Returns
    tokens/s, ms per step, attention ms (forward, backward) per step and its share, peak memory;
    or {"status": "OOM"} when the shape does not fit."""
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seq_len)
    tokens = torch.randint(0, vocab, (batch, seq_len + 1), generator=gen).to(device)
    row = {"attention": attn_name, "seq_len": seq_len, "batch": batch}
    _free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    failure = None
    try:
        for _ in range(warmup):
            t0 = time.perf_counter()
            training_step(model, attn_name, optimizer, tokens, device)
            _sync(device)
            row["warmup_s"] = time.perf_counter() - t0
        timer.active, timer.calls = True, []
        times, attn = [], []
        for _ in range(steps):
            t0 = time.perf_counter()
            training_step(model, attn_name, optimizer, tokens, device)
            _sync(device)
            times.append(time.perf_counter() - t0)
            attn.append(timer.take_ms())
    except torch.OutOfMemoryError:
        failure = "OOM"
    except RuntimeError as exc:  # e.g. a kernel refusing a shape this large
        failure = f"error: {str(exc).splitlines()[0][:120]}"
    finally:
        timer.active, timer.calls = False, []
    if failure is not None:
        # The exception (and the activations its frames held) is gone here.
        optimizer.zero_grad(set_to_none=True)
        del tokens
        _free(device)
        row["status"] = failure
        return row
    del tokens
    _free(device)
    step_s = float(np.median(times))
    attn_fwd = float(np.median([a["fwd"] for a in attn]))
    attn_bwd = float(np.median([a["bwd"] for a in attn]))
    row.update(status="ok", steps=steps, step_ms=step_s * 1e3,
               tokens_per_s=batch * seq_len / step_s, attn_fwd_ms=attn_fwd, attn_bwd_ms=attn_bwd,
               attn_share=(attn_fwd + attn_bwd) / (step_s * 1e3))
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def longest_that_fits(measure_at: Callable[[int], dict], start: int, max_len: int,
                      max_step_s: float, deadline: float, growth: float) -> List[dict]:
    """Doubles the length from `start` while the step fits in memory, takes at most
    `max_step_s` (predicted from the last length with `growth` per doubling: 4 for full causal
    attention, ~2 for MoBA) and the deadline allows. Returns the rows measured, the last of which
    may be OOM."""
    rows: List[dict] = []
    length, last = start, None
    while length <= max_len:
        if last is not None:
            predicted = last["step_ms"] / 1e3 * growth
            if predicted > max_step_s:
                rows.append({"seq_len": length, "status": f"skipped: predicted step "
                             f"{predicted:.1f} s > {max_step_s:.0f} s"})
                break
            if time.time() + predicted * 4 + 5 > deadline:
                rows.append({"seq_len": length, "status": "skipped: deadline"})
                break
        row = measure_at(length)
        rows.append(row)
        if row.get("status") != "ok":
            break
        last = row
        length *= 2
    return rows
