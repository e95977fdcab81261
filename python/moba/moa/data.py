"""Calibration and validation data for the MoA plan search.

The MoA paper's finding: a compression plan is best judged on data with long-range
dependencies, supervised by the *dense model's own answers* rather than by a generic corpus's
next tokens (the dense model is what the sparse one should reproduce). So a sample here is
``(input_ids, targets)`` where ``targets[t]`` is the token expected after position ``t`` or -100
(not supervised), and ``dense_targets`` turns data into that form from the dense model's
greedy predictions.

Sources:
* ``synthetic_retrieval``: no download; key-value records scattered over a sequence of random
  filler and, at the end, queries repeating keys whose values must be recalled from far back.
* any tokenised corpus the user has: ``load_tokens`` (.npy, .pt, raw uint16 .bin, or text
  through a tokenizer) and ``token_windows`` to cut it into sequences; ``copy_retrieval``
  makes long-range recall samples from it (a span of the window's start repeated at its end).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import torch

IGNORE = -100


@dataclasses.dataclass
class Samples:
    """Sequences of one length: ids [n, length] and data targets [n, length] (the next token
    where supervised, else -100)."""

    ids: torch.Tensor
    targets: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def batches(self, batch_size: int = 1, targets: Optional[torch.Tensor] = None,
                device=None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        tg = self.targets if targets is None else targets
        for i in range(0, len(self), batch_size):
            yield self.ids[i:i + batch_size].to(device), tg[i:i + batch_size].to(device)

    def split(self, first: int) -> Tuple["Samples", "Samples"]:
        return (Samples(self.ids[:first], self.targets[:first]),
                Samples(self.ids[first:], self.targets[first:]))

    @staticmethod
    def concat(*parts: "Samples") -> "Samples":
        return Samples(torch.cat([p.ids for p in parts]), torch.cat([p.targets for p in parts]))


def synthetic_retrieval(vocab_size: int, length: int, num_sequences: int, seed: int = 0,
                        key_tokens: int = 2, value_tokens: int = 2, queries: int = 4,
                        records: Optional[int] = None) -> Samples:
    """Long-dependency sequences: ``[KEY k.. v..]`` records spread over random filler, then
    ``queries`` of ``[ASK k..]`` whose answers ``v..`` are the supervised targets. KEY and ASK
    are the two highest token ids; filler, keys and values are drawn from the rest (ids >= 2
    up to vocab_size - 3), keys distinct within a sequence."""
    rec_len = 1 + key_tokens + value_tokens
    tail = queries * rec_len
    if vocab_size < 16:
        raise ValueError(f"moba: vocab_size: expected >= 16, got {vocab_size}")
    if records is None:
        records = max(queries, (length - tail) // (4 * rec_len))
    if records < queries or records * rec_len + tail > length:
        raise ValueError(f"moba: length: expected room for {max(records, queries)} records and "
                         f"{queries} queries of {rec_len} tokens, got length {length}")
    key_id, ask_id = vocab_size - 1, vocab_size - 2
    g = torch.Generator().manual_seed(int(seed))
    ids = torch.randint(2, vocab_size - 2, (num_sequences, length), generator=g)
    targets = torch.full((num_sequences, length), IGNORE, dtype=torch.long)
    body = length - tail
    for n in range(num_sequences):
        # Records at random non-overlapping slots of the body.
        slots = body // rec_len
        where = torch.randperm(slots, generator=g)[:records].sort().values * rec_len
        keys = torch.randint(2, vocab_size - 2, (records, key_tokens), generator=g)
        while len({tuple(k.tolist()) for k in keys}) < records:
            keys = torch.randint(2, vocab_size - 2, (records, key_tokens), generator=g)
        values = torch.randint(2, vocab_size - 2, (records, value_tokens), generator=g)
        for r in range(records):
            p = int(where[r])
            ids[n, p] = key_id
            ids[n, p + 1:p + 1 + key_tokens] = keys[r]
            ids[n, p + 1 + key_tokens:p + rec_len] = values[r]
        asked = torch.randperm(records, generator=g)[:queries]
        for i, r in enumerate(asked.tolist()):
            p = body + i * rec_len
            ids[n, p] = ask_id
            ids[n, p + 1:p + 1 + key_tokens] = keys[r]
            ids[n, p + 1 + key_tokens:p + rec_len] = values[r]
            # Position t predicts token t + 1: the value tokens are supervised.
            for v in range(value_tokens):
                at = p + key_tokens + v
                targets[n, at] = ids[n, at + 1]
    return Samples(ids, targets)


def copy_retrieval(tokens: np.ndarray, length: int, num_sequences: int, span: int = 32,
                   prefix: int = 8, start: int = 0, seed: int = 0) -> Samples:
    """Long-range recall in any corpus: windows of `tokens` whose last `span` tokens repeat a
    span from the first quarter of the window. The continuation after the first `prefix`
    repeated tokens is supervised: a head that can see the source copies it, a window that
    cannot is left guessing. Works for any trained LM (induction / copying)."""
    if span <= prefix or span > length // 4:
        raise ValueError(f"moba: span: expected prefix < span <= length / 4 = {length // 4}, "
                         f"got span {span}, prefix {prefix}")
    base = token_windows(tokens, length, num_sequences, start=start)
    ids = base.ids.clone()
    targets = torch.full_like(ids, IGNORE)
    g = torch.Generator().manual_seed(int(seed))
    for n in range(num_sequences):
        src = int(torch.randint(0, length // 4 - span + 1, (1,), generator=g))
        ids[n, length - span:] = ids[n, src:src + span]
        at = torch.arange(length - span + prefix - 1, length - 1)
        targets[n, at] = ids[n, at + 1]
    return Samples(ids, targets)


TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst", ".c", ".h", ".cpp", ".hpp", ".json")


def _read_text(path: str, max_bytes: int) -> str:
    """A text file, or the text files under a directory (sorted, up to max_bytes in all)."""
    if os.path.isfile(path):
        with open(path, errors="replace") as f:
            return f.read(max_bytes)
    parts, size = [], 0
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith(TEXT_SUFFIXES):
                continue
            with open(os.path.join(root, name), errors="replace") as f:
                text = f.read(max_bytes - size)
            parts.append(text)
            size += len(text)
            if size >= max_bytes:
                return "\n".join(parts)
    return "\n".join(parts)


def load_tokens(path: Union[str, os.PathLike], tokenizer=None, max_text_bytes: int = 8 << 20
                ) -> np.ndarray:
    """A 1-D array of token ids: .npy / .pt (any shape, flattened), .bin (raw uint16, the
    nanoGPT convention), or a text file / a directory of text files (up to `max_text_bytes`)
    encoded with `tokenizer` (a transformers tokenizer or a path to one)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"moba: data: no such file {path!r}")
    if path.endswith(".npy"):
        arr = np.load(path, mmap_mode="r")
    elif path.endswith(".pt"):
        t = torch.load(path, map_location="cpu")
        arr = (t if isinstance(t, torch.Tensor) else torch.as_tensor(t)).numpy()
    elif path.endswith(".bin"):
        arr = np.memmap(path, dtype=np.uint16, mode="r")
    else:
        if tokenizer is None:
            raise ValueError(f"moba: data: {path!r} is not .npy/.pt/.bin token ids; text needs "
                             "a tokenizer")
        if isinstance(tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
        text = _read_text(path, max_text_bytes)
        arr = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    return np.asarray(arr).reshape(-1)


def token_windows(tokens: np.ndarray, length: int, num_sequences: int, start: int = 0,
                  stride: Optional[int] = None) -> Samples:
    """`num_sequences` consecutive windows of `length` tokens from `start` (next-token targets
    everywhere but the last position)."""
    stride = stride or length
    need = start + (num_sequences - 1) * stride + length + 1
    if need > len(tokens):
        raise ValueError(f"moba: data: expected at least {need} tokens for {num_sequences} "
                         f"sequences of {length} from offset {start}, got {len(tokens)}")
    rows = [np.asarray(tokens[start + i * stride:start + i * stride + length + 1], dtype=np.int64)
            for i in range(num_sequences)]
    seq = torch.from_numpy(np.stack(rows))
    return Samples(seq[:, :-1].contiguous(), seq[:, 1:].contiguous())


@torch.no_grad()
def dense_targets(model, samples: Samples, batch_size: int = 1, device=None) -> torch.Tensor:
    """The dense model's own greedy predictions where `samples` are supervised (-100 elsewhere):
    the reference the plan search measures a sparse model against."""
    from .profile import _ModelState

    out = []
    with _ModelState(model) as m:
        for ids, tg in samples.batches(batch_size, device=device):
            pred = m(input_ids=ids).logits.argmax(-1)
            out.append(torch.where(tg != IGNORE, pred, torch.full_like(pred, IGNORE)).cpu())
    return torch.cat(out)
