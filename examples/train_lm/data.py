"""Offline training data: the Python sources installed on this machine, a BPE tokenizer trained
on them, token streams, and synthetic needle (passkey) samples spliced into real code.

The corpus exists wherever the project's dependencies are installed: the standard library and
every site-packages directory (torch, transformers, numpy, ...). Files are split into train and
validation by a hash of their content (identical copies, e.g. vendored modules, are kept once),
and each split is the concatenation of its files in path order with an end-of-text separator, so
neighbouring documents come from the same package (names defined in one file are used in the
next: long-range structure that a longer context can exploit).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import site
import sysconfig
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

EOS = "<|endoftext|>"
MIN_FILE_BYTES = 256
MAX_FILE_BYTES = 1 << 20  # larger files are mostly generated tables
PRUNED_DIRS = {"__pycache__", "site-packages", "dist-packages", ".git"}


# ---- the corpus --------------------------------------------------------------------------------


@dataclasses.dataclass
class Corpus:
    """Train and validation documents as (name, text), each split in path order."""

    train: List[Tuple[str, str]]
    val: List[Tuple[str, str]]
    roots: List[str]

    def stats(self) -> dict:
        def size(docs):
            return sum(len(t.encode()) for _, t in docs)
        return {"roots": self.roots, "train_files": len(self.train), "val_files": len(self.val),
                "train_bytes": size(self.train), "val_bytes": size(self.val)}


def source_roots() -> List[Tuple[str, str]]:
    """(label, directory) of the standard library and each site-packages directory, once each."""
    paths = sysconfig.get_paths()
    candidates = [("stdlib", paths.get("stdlib")), ("site", paths.get("purelib")),
                  ("site", paths.get("platlib"))]
    candidates += [("site", p) for p in site.getsitepackages()]
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    candidates.append(("user", user))
    roots, seen = [], set()
    for label, path in candidates:
        if not path or not os.path.isdir(path):
            continue
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            roots.append((label, real))
    return roots


def list_sources(roots: Sequence[Tuple[str, str]]) -> List[Tuple[str, str, int]]:
    """(name, path, bytes) of every .py file of a sensible size under the roots. Names are
    "label/relative/path.py"; site-packages below the stdlib root are listed by their own root."""
    found, seen = [], set()
    for label, root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in PRUNED_DIRS)
            for fname in sorted(filenames):
                if not fname.endswith(".py"):
                    continue
                path = os.path.join(dirpath, fname)
                try:
                    real = os.path.realpath(path)
                    size = os.path.getsize(real)
                except OSError:
                    continue
                if real in seen or not MIN_FILE_BYTES <= size <= MAX_FILE_BYTES:
                    continue
                seen.add(real)
                found.append((f"{label}/{os.path.relpath(path, root)}", real, size))
    return found


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.sha1(data).digest()[:8], "little")


def collect_corpus(max_mb: float, val_permille: int = 30,
                   roots: Optional[Sequence[Tuple[str, str]]] = None) -> Corpus:
    """Read up to `max_mb` MB of Python sources and split them by content hash.

    Which files are read is decided by a hash of their names (a deterministic sample across all
    packages, not the first packages alphabetically); a file goes to validation when the hash of
    its content falls in the first `val_permille` of 1000 buckets.
    """
    if roots is None:
        roots = source_roots()
    files = list_sources(roots)
    if not files:
        raise RuntimeError(f"train_lm: corpus: no Python sources found under {roots}")
    files.sort(key=lambda f: _hash(f[0].encode()))
    budget = int(max_mb * (1 << 20))
    train, val, contents, total = [], [], set(), 0
    for name, path, size in files:
        if total >= budget:
            break
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        digest = _hash(raw)
        if digest in contents:
            continue
        contents.add(digest)
        total += len(raw)
        (val if digest % 1000 < val_permille else train).append((name, text))
    train.sort()
    val.sort()
    if not train or not val:
        raise RuntimeError(
            f"train_lm: corpus: expected files in both splits, got {len(train)} train and "
            f"{len(val)} validation files from {total} bytes (raise --corpus-mb or "
            f"--val-permille)")
    return Corpus(train, val, [r for _, r in roots])


# ---- tokenizer ---------------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts`; every digit is a token of its own (so the
    digits of a passkey are copied one token at a time). Returns a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


def tokenizer_sample(docs: Sequence[Tuple[str, str]], max_mb: float) -> List[str]:
    """Every k-th document, about `max_mb` MB in all (BPE training time grows with the text)."""
    total = sum(len(t) for _, t in docs)
    step = max(1, int(total / max(1.0, max_mb * (1 << 20))))
    return [t for _, t in docs[::step]]


def encode_stream(tokenizer, docs: Sequence[Tuple[str, str]]) -> np.ndarray:
    """All documents' tokens, each followed by the end-of-text token, as one array."""
    backend = tokenizer.backend_tokenizer
    texts = [t for _, t in docs]
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    encodings = encode(texts, add_special_tokens=False)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max else np.int32
    parts = []
    for enc in encodings:
        parts.append(np.asarray(enc.ids, dtype=dtype))
        parts.append(np.asarray([eos], dtype=dtype))
    return np.concatenate(parts)


# ---- needles: synthetic passkey retrieval ----------------------------------------------------

KEY_DIGITS = 5
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclasses.dataclass
class Sample:
    """One sequence of tokens and which of them are passkey digits asked for at the end."""

    tokens: np.ndarray  # int64 [n]
    answer: np.ndarray  # bool [n]: token i is an answer digit (predicted from position i - 1)


class NeedleMaker:
    """Splices "# the secret key of NAME is 12345." lines into code and asks for them at the end:

        ...code... # the secret key of kamuri is 40913. ...code...
        # question: what is the secret key of kamuri?
        # answer: the secret key of kamuri is 40913.

    The answer's five digits are the retrieval targets: predicting them needs the needle, which
    may be anywhere in the context (its depth)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.digit_ids = [self._encode(str(d)) for d in range(10)]
        if any(len(ids) != 1 for ids in self.digit_ids):
            raise ValueError("train_lm: the tokenizer must map each digit to one token")
        self.digit_ids = [ids[0] for ids in self.digit_ids]

    def _encode(self, text: str) -> List[int]:
        return self.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids

    @staticmethod
    def random_name(rng: np.random.Generator) -> str:
        return "".join(_CONSONANTS[rng.integers(len(_CONSONANTS))] + _VOWELS[rng.integers(5)]
                       for _ in range(3))

    @staticmethod
    def random_key(rng: np.random.Generator) -> str:
        return "".join(str(d) for d in rng.integers(0, 10, KEY_DIGITS))

    def _statement(self, prefix: str, name: str, key: str) -> Tuple[List[int], List[int]]:
        """Tokens of `prefix` + "the secret key of NAME is KEY.\n" and the key digits' offsets."""
        head = self._encode(f"{prefix}the secret key of {name} is ")
        digits = [self.digit_ids[int(c)] for c in key]
        tail = self._encode(".\n")
        return head + digits + tail, list(range(len(head), len(head) + len(digits)))

    def needle(self, name: str, key: str) -> List[int]:
        return self._statement("\n# ", name, key)[0]

    def question(self, name: str, key: str) -> Tuple[List[int], List[int]]:
        ids, offsets = self._statement(
            f"\n# question: what is the secret key of {name}?\n# answer: ", name, key)
        return ids, offsets

    def sample(self, code: np.ndarray, length: int, depths: Sequence[float],
               rng: np.random.Generator, ask_depths: Optional[Sequence[float]] = None) -> Sample:
        """`length` tokens: code with one needle per depth (0 = start of the context, 1 = the
        end of the code) and one question per needle. Questions go at `ask_depths` (each at or
        after its needle), or all after the code, in random order (the evaluation's layout)."""
        k = len(depths)
        names: List[str] = []
        while len(names) < k:  # distinct names
            name = self.random_name(rng)
            if name not in names:
                names.append(name)
        keys = [self.random_key(rng) for _ in range(k)]
        needles = [self.needle(n, key) for n, key in zip(names, keys)]
        questions = [self.question(n, key) for n, key in zip(names, keys)]
        n_code = length - sum(len(q) for q, _ in questions) - sum(len(x) for x in needles)
        if n_code < 1 or len(code) < n_code:
            raise ValueError(f"train_lm: needle sample: {length} tokens cannot hold "
                             f"{k} needle(s) and their questions")
        ask = [1.0] * k if ask_depths is None else [max(a, d) for a, d in zip(ask_depths, depths)]
        order = rng.permutation(k)  # among questions at the same place (e.g. the end)
        # (cut in the code, needle 0 / question 1, order, which): a needle comes before its
        # question even at the same cut.
        events = sorted([(int(round(d * n_code)), 0, 0, i) for i, d in enumerate(depths)]
                        + [(int(round(a * n_code)), 1, int(order[i]), i)
                           for i, a in enumerate(ask)])
        pieces, answers, start, pos = [], [], 0, 0
        for cut, is_question, _, i in events:
            pieces.append(np.asarray(code[start:cut], dtype=np.int64))
            pos += cut - start
            start = cut
            if is_question:
                ids, offsets = questions[i]
                answers += [pos + o for o in offsets]
            else:
                ids = needles[i]
            pieces.append(np.asarray(ids, dtype=np.int64))
            pos += len(ids)
        pieces.append(np.asarray(code[start:n_code], dtype=np.int64))
        tokens = np.concatenate(pieces)
        assert len(tokens) == length
        answer = np.zeros(length, dtype=bool)
        answer[answers] = True
        return Sample(tokens, answer)


# ---- batches -------------------------------------------------------------------------------------


class TrainBatches:
    """Random windows of the training stream, a share of them turned into needle samples
    (1..max_needles needles, each asked once later in the sequence).

    Rows are `seq_len + 1` tokens (inputs and shifted targets). Same seed -> same batches, so
    every attention variant sees the same data in the same order."""

    def __init__(self, stream: np.ndarray, needles: Optional[NeedleMaker], seq_len: int,
                 batch: int, needle_frac: float, max_needles: int, seed: int):
        if len(stream) < seq_len + 2:
            raise ValueError(f"train_lm: training stream has {len(stream)} tokens, fewer than "
                             f"one sequence of {seq_len + 1}")
        self.stream, self.needles = stream, needles
        self.seq_len, self.batch = seq_len, batch
        self.needle_frac, self.max_needles = needle_frac, max_needles
        self.rng = np.random.default_rng(seed)

    def depths(self, count: int) -> np.ndarray:
        """Needle depths: half uniform over the context (what the evaluation asks), half at a
        log-uniform distance from the end (16 tokens .. the whole context), so that many
        needles are close enough for a weak, freshly formed retrieval circuit to find them;
        what it learns there carries over to far needles."""
        uniform = self.rng.random(count)
        distance = np.exp(self.rng.uniform(np.log(16), np.log(self.seq_len), count))
        near = 1.0 - np.minimum(distance / self.seq_len, 1.0)
        return np.where(self.rng.random(count) < 0.5, uniform, near)

    def next(self) -> Tuple[np.ndarray, np.ndarray]:
        n = self.seq_len + 1
        tokens = np.empty((self.batch, n), dtype=np.int64)
        answer = np.zeros((self.batch, n), dtype=bool)
        for row in range(self.batch):
            start = int(self.rng.integers(0, len(self.stream) - n))
            window = self.stream[start:start + n]
            if self.needles is not None and self.rng.random() < self.needle_frac:
                count = int(self.rng.integers(1, self.max_needles + 1))
                s = None
                while s is None:
                    depths = self.depths(count)
                    # Half of the questions right after the code (as in the evaluation), half
                    # anywhere after their needle: more retrieval per sequence.
                    ask = np.where(self.rng.random(count) < 0.5, 1.0,
                                   depths + (1 - depths) * self.rng.random(count))
                    try:
                        s = self.needles.sample(window, n, depths, self.rng, ask)
                    except ValueError:  # a short sequence: fewer needles
                        if count == 1:
                            raise
                        count -= 1
                tokens[row], answer[row] = s.tokens, s.answer
            else:
                tokens[row] = window
        return tokens, answer


def val_windows(stream: np.ndarray, seq_len: int, count: int) -> np.ndarray:
    """Up to `count` evenly spaced, non-overlapping windows of `seq_len + 1` tokens."""
    n = seq_len + 1
    available = len(stream) // n
    if available < 1:
        raise ValueError(f"train_lm: validation stream has {len(stream)} tokens, fewer than one "
                         f"window of {n}; raise --corpus-mb or --val-permille")
    count = min(count, available)
    starts = np.linspace(0, len(stream) - n, count).astype(np.int64)
    return np.stack([np.asarray(stream[s:s + n], dtype=np.int64) for s in starts])
