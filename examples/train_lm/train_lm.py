#!/usr/bin/env python3
"""Train a small Llama-style language model with full, MoBA, MoBA-hybrid or MoA attention.

Data: the Python sources installed on this machine (no downloads), a BPE tokenizer trained on
them, and synthetic passkey samples mixed in (see data.py). Evaluation: validation loss per
token position and needle retrieval accuracy over (context length x depth) (evaluate.py).

    python examples/train_lm/train_lm.py --attention moba --seq-len 8192 --steps 1000 \\
        --out runs/moba --save runs/moba/ckpt
    python examples/train_lm/train_lm.py --device cpu --model tiny --seq-len 256 --steps 20 ...
    # MoA with a plan, evaluated on a trained checkpoint (MoA also trains, on CPU and GPU):
    python examples/train_lm/train_lm.py --init runs/full/ckpt --attention moa --plan plan.json \\
        --steps 0 --out runs/moa-eval

run_study.py trains and compares several attentions in one process (the GPU study).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

# On the CPU, torch's and moba's OpenMP threads share the cores; waiting passively keeps idle
# threads of one pool from spinning against the other (set before OpenMP starts).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import data  # noqa: E402
import evaluate  # noqa: E402
import lm  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- arguments ---------------------------------------------------------------------------------


def int_list(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x]


def float_list(text: str) -> List[float]:
    return [float(x) for x in text.split(",") if x]


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--corpus-mb", type=float, default=64,
                   help="MB of installed Python sources to read (default 64)")
    g.add_argument("--val-permille", type=int, default=30,
                   help="files (by content hash) per 1000 held out for validation (default 30)")
    g.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary size (default 8192)")
    g.add_argument("--tokenizer-mb", type=float, default=8,
                   help="MB of training text the tokenizer is trained on (default 8)")
    g.add_argument("--tokenizer", default=None,
                   help="load this saved tokenizer instead of training one")
    g.add_argument("--needle-frac", type=float, default=0.75,
                   help="share of training sequences with passkey needles (default 0.75)")
    g.add_argument("--max-needles", type=int, default=4,
                   help="needles per retrieval sample, 1..N, each asked later (default 4)")
    g.add_argument("--answer-weight", type=float, default=8.0,
                   help="loss weight of the passkey answer digits in training (default 8)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and attention")
    g.add_argument("--model", default="small", choices=sorted(lm.PRESETS),
                   help="size preset (default small: 512 wide, 8 layers, 8 heads)")
    g.add_argument("--hidden", type=int, default=None)
    g.add_argument("--layers", type=int, default=None)
    g.add_argument("--heads", type=int, default=None)
    g.add_argument("--kv-heads", type=int, default=None, help="key/value heads (GQA)")
    g.add_argument("--intermediate", type=int, default=None)
    g.add_argument("--moba-chunk", type=int, default=512, help="MoBA block size (default 512)")
    g.add_argument("--moba-topk", type=int, default=3,
                   help="MoBA blocks per query, own block included (default 3)")
    g.add_argument("--full-layers", type=int, default=2,
                   help="moba-hybrid: last layers that keep full attention (default 2)")
    g.add_argument("--plan", default=None, help="moa: MoA plan JSON")


def add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    g.add_argument("--seq-len", type=int, default=8192, help="training length (default 8192)")
    g.add_argument("--batch-tokens", type=int, default=16384,
                   help="tokens per step; batch = batch_tokens / seq_len (default 16384: two "
                        "8K sequences, many optimizer steps in a short run)")
    g.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    g.add_argument("--min-lr-frac", type=float, default=0.1,
                   help="final learning rate as a share of the peak (cosine; default 0.1)")
    g.add_argument("--warmup", type=float, default=0.05,
                   help="warm-up: a share of the steps (< 1) or a step count (default 0.05)")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--log-every", type=int, default=20)
    g.add_argument("--eval-every", type=int, default=100,
                   help="steps between small validation evaluations (0: never)")
    g.add_argument("--eval-windows", type=int, default=8,
                   help="validation windows of the periodic evaluation (default 8)")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--val-windows", type=int, default=64,
                   help="validation windows for the final loss (default 64)")
    g.add_argument("--needle-lengths", type=int_list, default=None,
                   help="context lengths of the needle test (default L/8,L/4,L/2,L)")
    g.add_argument("--needle-depths", type=float_list,
                   default=[round(0.1 * i, 1) for i in range(11)],
                   help="needle depths, 0 = start (default 0,0.1,...,1)")
    g.add_argument("--needle-samples", type=int, default=20, help="samples per cell (default 20)")
    g.add_argument("--eval-tokens", type=int, default=65536,
                   help="tokens per evaluation forward (default 65536)")


def attention_spec(args, kind: Optional[str] = None) -> lm.AttentionSpec:
    return lm.AttentionSpec(kind=kind or args.attention, moba_chunk=args.moba_chunk,
                            moba_topk=args.moba_topk, full_layers=args.full_layers,
                            plan=args.plan)


def pick_device(name: Optional[str]) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_needle_lengths(seq_len: int) -> List[int]:
    return [seq_len // 8, seq_len // 4, seq_len // 2, seq_len]


# ---- data --------------------------------------------------------------------------------------


class Data:
    """Tokenizer, token streams and the needle maker, prepared once."""

    def __init__(self, args):
        t0 = time.time()
        corpus = data.collect_corpus(args.corpus_mb, args.val_permille)
        self.stats = corpus.stats()
        log(f"corpus: {self.stats['train_files']} train / {self.stats['val_files']} validation "
            f"files, {self.stats['train_bytes'] / 2**20:.1f} / "
            f"{self.stats['val_bytes'] / 2**20:.2f} MB ({time.time() - t0:.1f} s)")
        if args.tokenizer:
            self.tokenizer = data.load_tokenizer(args.tokenizer)
        else:
            self.tokenizer = data.train_tokenizer(
                data.tokenizer_sample(corpus.train, args.tokenizer_mb), args.vocab)
        self.train = data.encode_stream(self.tokenizer, corpus.train)
        self.val = data.encode_stream(self.tokenizer, corpus.val)
        self.needles = data.NeedleMaker(self.tokenizer)
        self.stats.update(vocab=len(self.tokenizer), train_tokens=int(len(self.train)),
                          val_tokens=int(len(self.val)), seconds=round(time.time() - t0, 1))
        log(f"tokens: {len(self.train):,} train / {len(self.val):,} validation, vocab "
            f"{len(self.tokenizer)} ({time.time() - t0:.1f} s)")

    def batches(self, args, seq_len: int, batch: int) -> data.TrainBatches:
        return data.TrainBatches(self.train, self.needles, seq_len, batch, args.needle_frac,
                                 args.max_needles, args.seed)


def batch_size(args, seq_len: int) -> int:
    return max(1, args.batch_tokens // seq_len)


# ---- training ----------------------------------------------------------------------------------


def progress_bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * done / max(1, total))
    return "[" + "#" * filled + "." * (width - filled) + f"] {100 * done / max(1, total):3.0f}%"


def lr_at(step: int, steps: int, warmup: int, peak: float, min_frac: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model, lr: float, weight_decay: float, device: torch.device):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8,
                             fused=device.type == "cuda")


def train(model, attn_name: str, batches: data.TrainBatches, args, steps: int,
          device: torch.device, deadline: float,
          validate: Optional[Callable[[], float]] = None) -> Dict:
    """AdamW with linear warm-up and cosine decay over `steps`; stops early at `deadline`
    (time.time()), which the history records as truncated. Loss: next-token cross-entropy, the
    passkey answer digits weighted by --answer-weight."""
    optimizer = make_optimizer(model, args.lr, args.weight_decay, device)
    warmup = int(args.warmup * steps) if args.warmup < 1 else int(args.warmup)
    warmup = max(1, min(warmup, steps))
    forward_model = torch.compile(model) if args.compile else model
    model.train()
    hist = {"step": [], "tokens": [], "loss": [], "answer_loss": [], "seconds": [], "val": [],
            "steps_planned": steps, "truncated": False}
    tokens_per_step = batches.batch * batches.seq_len
    sum_loss = torch.zeros((), device=device)
    sum_answer = torch.zeros((), device=device)
    n_answer = torch.zeros((), device=device)
    n_since = 0
    t0 = time.time()
    step = 0
    for step in range(steps):
        if time.time() > deadline:
            hist["truncated"] = True
            log(f"time budget reached after {step} of {steps} steps")
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, warmup, args.lr, args.min_lr_frac)
        tokens, answer = batches.next()
        tokens = torch.from_numpy(tokens).to(device, non_blocking=True)
        answer = torch.from_numpy(answer[:, 1:]).to(device, non_blocking=True)
        with lm.autocast(device):
            losses = lm.token_losses(forward_model, tokens, attn_name)
        weights = 1.0 + (args.answer_weight - 1.0) * answer.float()
        loss = (losses * weights).sum() / weights.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            sum_loss += losses.mean()
            sum_answer += (losses * answer).sum()
            n_answer += answer.sum()
        n_since += 1
        done = step + 1
        if done % args.log_every == 0 or done == steps:
            elapsed = time.time() - t0
            mean_loss = sum_loss.item() / n_since
            answer_loss = sum_answer.item() / max(1.0, n_answer.item())
            hist["step"].append(done)
            hist["tokens"].append(done * tokens_per_step)
            hist["loss"].append(mean_loss)
            hist["answer_loss"].append(answer_loss)
            hist["seconds"].append(elapsed)
            log(f"{progress_bar(done, steps)} step {done}/{steps} | loss {mean_loss:.3f} | "
                f"passkey-digit loss {answer_loss:.3f} | lr "
                f"{optimizer.param_groups[0]['lr']:.2e} | "
                f"{done * tokens_per_step / elapsed / 1e3:.1f}K tok/s | {elapsed:.0f} s, "
                f"~{elapsed / done * (steps - done):.0f} s left")
            sum_loss.zero_(), sum_answer.zero_(), n_answer.zero_()
            n_since = 0
        if validate is not None and args.eval_every and (done % args.eval_every == 0
                                                         or done == steps):
            t_val = time.time()
            val = validate()
            hist["val"].append([done, done * tokens_per_step, val])
            log(f"step {done}: validation loss {val:.4f}")
            t0 += time.time() - t_val  # tokens/s counts training time only
    steps_done = step + 1 if not hist["truncated"] else step
    if hist["truncated"] and validate is not None and args.eval_every and steps_done and (
            not hist["val"] or hist["val"][-1][0] != steps_done):
        t_val = time.time()
        hist["val"].append([steps_done, steps_done * tokens_per_step, validate()])
        t0 += time.time() - t_val
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.time() - t0
    hist.update(steps_done=steps_done, seconds_total=elapsed,
                tokens_total=steps_done * tokens_per_step,
                tokens_per_s=steps_done * tokens_per_step / max(elapsed, 1e-9))
    del optimizer
    return hist


def evaluate_model(model, attn_name: str, d: Data, args, seq_len: int,
                   device: torch.device) -> Dict:
    t0 = time.time()
    windows = data.val_windows(d.val, seq_len, args.val_windows)
    val = evaluate.validation_loss(model, attn_name, windows, device, args.eval_tokens)
    log(f"validation loss {val['loss']:.4f} over {val['windows']} windows of {seq_len}; by "
        f"position: " + ", ".join(f"[{lo},{hi}) {v:.3f}" for lo, hi, v in val["buckets"]))
    lengths = args.needle_lengths or default_needle_lengths(seq_len)
    needle = evaluate.needle_accuracy(model, attn_name, d.needles, d.val, lengths,
                                      args.needle_depths, args.needle_samples, args.seed + 7,
                                      device, args.eval_tokens)
    acc = np.asarray(needle["accuracy"])
    log("needle accuracy by length: " + ", ".join(
        f"{n}: {np.nanmean(acc[:, j]):.2f}" for j, n in enumerate(lengths)))
    return {"val": val, "needle": needle, "seconds": round(time.time() - t0, 1)}


# ---- main --------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--attention", default="sdpa", choices=lm.ATTENTIONS)
    p.add_argument("--steps", type=int, default=1000, help="training steps (0: evaluate only)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="stop training after this many seconds (the schedule still assumes "
                        "--steps)")
    p.add_argument("--out", default=None, help="write metrics.json here")
    p.add_argument("--save", default=None, help="save the model + tokenizer here")
    p.add_argument("--init", default=None, help="start from this checkpoint (and its tokenizer)")
    add_model_args(p)
    add_train_args(p)
    add_data_args(p)
    add_eval_args(p)
    args = p.parse_args(argv)
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    if args.init and not args.tokenizer:
        args.tokenizer = args.init
    d = Data(args)
    spec = attention_spec(args)
    if args.init:
        import transformers
        n_layers = transformers.AutoConfig.from_pretrained(args.init).num_hidden_layers
        attn_name = lm.register(spec, n_layers)
        model = lm.load_model(args.init, attn_name)
    else:
        config = lm.model_config(len(d.tokenizer), args.model, args.seq_len, hidden=args.hidden,
                                 layers=args.layers, heads=args.heads, kv_heads=args.kv_heads,
                                 intermediate=args.intermediate)
        attn_name = lm.register(spec, config.num_hidden_layers)
        model = lm.build_model(config, attn_name, args.seed)
    model.to(device)
    log(f"model: {lm.count_parameters(model) / 1e6:.1f}M parameters, attention "
        f"{spec.describe()}, device {device}")
    result = {"args": vars(args), "attention": spec.to_json(), "data": d.stats,
              "parameters": lm.count_parameters(model)}
    if args.steps > 0:
        batches = d.batches(args, args.seq_len, batch_size(args, args.seq_len))
        windows = data.val_windows(d.val, args.seq_len, args.eval_windows)

        def validate():
            return evaluate.validation_loss(model, attn_name, windows, device,
                                            args.eval_tokens)["loss"]

        deadline = time.time() + (args.time_budget or float("inf"))
        result["train"] = train(model, attn_name, batches, args, args.steps, device, deadline,
                                validate)
    result["eval"] = evaluate_model(model, attn_name, d, args, args.seq_len, device)
    if args.save:
        lm.save_checkpoint(model, d.tokenizer, args.save, spec,
                           {"seq_len": args.seq_len, "seed": args.seed})
        log(f"checkpoint: {args.save}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "metrics.json"), "w") as fh:
            json.dump(result, fh, indent=1, default=str)
        log(f"metrics: {os.path.join(args.out, 'metrics.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
