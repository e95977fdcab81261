"""Evaluation: validation loss per token position, and needle retrieval accuracy over
(context length x needle depth)."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch

from data import NeedleMaker
from lm import autocast, forward_kwargs, token_losses


def position_edges(seq_len: int) -> List[int]:
    """Bucket edges doubling up to seq_len: 0, L/32, L/16, L/8, L/4, L/2, L."""
    edges = [0] + [seq_len >> k for k in range(5, 0, -1) if seq_len >> k > 0] + [seq_len]
    return sorted(set(edges))


@torch.no_grad()
def validation_loss(model, attn_name: str, windows: np.ndarray, device: torch.device,
                    tokens_per_batch: int) -> dict:
    """Mean next-token loss over validation windows [N, L+1]: overall, per position, and per
    position bucket (does a sparse attention lose more late in the context?)."""
    was_training = model.training
    model.eval()
    n, seq_len = windows.shape[0], windows.shape[1] - 1
    batch = max(1, tokens_per_batch // seq_len)
    total = torch.zeros(seq_len, dtype=torch.float64, device=device)
    for i in range(0, n, batch):
        tokens = torch.from_numpy(windows[i:i + batch]).to(device)
        with autocast(device):
            losses = token_losses(model, tokens, attn_name)
        total += losses.double().sum(0)
    model.train(was_training)
    per_position = (total / n).cpu().numpy()
    edges = position_edges(seq_len)
    buckets = [(lo, hi, float(per_position[lo:hi].mean())) for lo, hi in zip(edges, edges[1:])]
    return {"loss": float(per_position.mean()), "windows": int(n), "seq_len": int(seq_len),
            "buckets": buckets}


@torch.no_grad()
def _answer_logits(model, attn_name: str, tokens: torch.Tensor, rows: torch.Tensor,
                   cols: torch.Tensor) -> torch.Tensor:
    """Logits at the given (row, position) pairs only (full logits of long contexts are big)."""
    out = model.model(input_ids=tokens, use_cache=False,
                      **forward_kwargs(attn_name, tokens.shape[0], tokens.shape[1]))
    hidden = out.last_hidden_state[rows, cols]
    return model.lm_head(hidden)


@torch.no_grad()
def needle_accuracy(model, attn_name: str, maker: NeedleMaker, stream: np.ndarray,
                    lengths: Sequence[int], depths: Sequence[float], samples: int, seed: int,
                    device: torch.device, tokens_per_batch: int) -> dict:
    """Share of samples whose five key digits are all predicted (argmax, teacher-forced, which
    equals greedy decoding of the answer) for each (depth, length); one needle per sample, in
    held-out code. Lengths too short for a needle, or longer than the validation code, are left
    out (NaN)."""
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(seed)
    acc = np.full((len(depths), len(lengths)), np.nan)
    for j, length in enumerate(lengths):
        if len(stream) < length + 1:
            continue
        cases: List[Tuple[int, object]] = []
        try:
            for i, depth in enumerate(depths):
                for _ in range(samples):
                    start = int(rng.integers(0, len(stream) - length))
                    code = stream[start:start + length]
                    cases.append((i, maker.sample(code, length, [depth], rng)))
        except ValueError:  # too short to hold a needle and its question
            continue
        batch = max(1, tokens_per_batch // length)
        correct = np.zeros(len(depths))
        for b in range(0, len(cases), batch):
            chunk = cases[b:b + batch]
            tokens = torch.from_numpy(np.stack([s.tokens for _, s in chunk])).to(device)
            answer = torch.from_numpy(np.stack([s.answer for _, s in chunk])).to(device)
            rows, cols = torch.nonzero(answer, as_tuple=True)
            with autocast(device):
                logits = _answer_logits(model, attn_name, tokens, rows, cols - 1)
            hit = (logits.argmax(-1) == tokens[rows, cols]).view(len(chunk), -1).all(-1)
            for (i, _), h in zip(chunk, hit.tolist()):
                correct[i] += h
        acc[:, j] = correct / samples
    model.train(was_training)
    return {"lengths": [int(x) for x in lengths], "depths": [float(d) for d in depths],
            "samples": int(samples), "accuracy": acc.tolist()}
