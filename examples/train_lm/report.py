"""results.md: the study's tables and its bars, from the results dictionary of run_study.py."""

from __future__ import annotations

import math
from typing import List, Optional

import numpy as np

# The bars (docs/training.md explains them).
BAR_MOBA_LOSS = 0.02      # MoBA final validation loss at most 2% above full attention
BAR_HYBRID_LOSS = 0.01    # MoBA-hybrid at most 1% above
BAR_HYBRID_NEEDLE = 0.90  # hybrid retrieval at the trained length, at every depth
BAR_SPEEDUP_32K = 2.0     # MoBA model training throughput over full attention at 32K
BAR_SPEEDUP_LENGTH = 32768


def fmt_len(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10}K"
    return str(n)


def _pct(x: Optional[float]) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:+.2f}%"


def throughput_line(row: dict) -> str:
    if row.get("status") != "ok":
        return str(row.get("status"))
    return (f"{row['tokens_per_s'] / 1e3:.1f}K tok/s, {row['step_ms']:.1f} ms/step, attention "
            f"{row['attn_fwd_ms']:.1f} + {row['attn_bwd_ms']:.1f} ms "
            f"({100 * row['attn_share']:.0f}%)")


def _val_loss(results: dict, kind: str) -> Optional[float]:
    run = results.get("runs", {}).get(kind, {})
    return run.get("eval", {}).get("val", {}).get("loss")


def _throughput(results: dict, kind: str, length: int) -> Optional[dict]:
    for row in results.get("throughput", []):
        if row.get("attention") == kind and row.get("seq_len") == length \
                and row.get("status") == "ok":
            return row
    return None


def bars(results: dict) -> List[List[str]]:
    """[bar, measured, target, verdict] rows; verdicts are PASS, MISS or 'not measured'."""
    rows = []
    full = _val_loss(results, "sdpa")
    for kind, bar in (("moba", BAR_MOBA_LOSS), ("moba-hybrid", BAR_HYBRID_LOSS)):
        loss = _val_loss(results, kind)
        if full is None or loss is None:
            rows.append([f"{kind} final validation loss vs full", "-", f"<= +{100 * bar:.0f}%",
                         "not measured"])
            continue
        rel = loss / full - 1
        rows.append([f"{kind} final validation loss vs full",
                     f"{loss:.4f} vs {full:.4f} ({_pct(rel)})", f"<= +{100 * bar:.0f}%",
                     "PASS" if rel <= bar else "MISS"])
    needle = results.get("runs", {}).get("moba-hybrid", {}).get("eval", {}).get("needle")
    trained = results.get("meta", {}).get("args", {}).get("seq_len")
    if needle and trained in needle["lengths"]:
        acc = np.asarray(needle["accuracy"], dtype=float)[:, needle["lengths"].index(trained)]
        worst = float(np.nanmin(acc))
        rows.append([f"moba-hybrid needle accuracy at {fmt_len(trained)}, worst depth",
                     f"{100 * worst:.0f}% (mean {100 * float(np.nanmean(acc)):.0f}%, "
                     f"{needle['samples']} samples per depth)",
                     f">= {100 * BAR_HYBRID_NEEDLE:.0f}% at every depth",
                     "PASS" if worst >= BAR_HYBRID_NEEDLE else "MISS"])
    else:
        rows.append(["moba-hybrid needle accuracy at the trained length", "-",
                     f">= {100 * BAR_HYBRID_NEEDLE:.0f}% at every depth", "not measured"])
    f, m = (_throughput(results, k, BAR_SPEEDUP_LENGTH) for k in ("sdpa", "moba"))
    if f and m:
        speedup = m["tokens_per_s"] / f["tokens_per_s"]
        rows.append([f"moba training throughput vs full at {fmt_len(BAR_SPEEDUP_LENGTH)}",
                     f"{speedup:.2f}x ({m['tokens_per_s'] / 1e3:.1f}K vs "
                     f"{f['tokens_per_s'] / 1e3:.1f}K tok/s)", f">= {BAR_SPEEDUP_32K:.0f}x",
                     "PASS" if speedup >= BAR_SPEEDUP_32K else "MISS"])
    else:
        rows.append([f"moba training throughput vs full at {fmt_len(BAR_SPEEDUP_LENGTH)}", "-",
                     f">= {BAR_SPEEDUP_32K:.0f}x", "not measured"])
    return rows


def _table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _setup(results: dict) -> str:
    meta, a = results.get("meta", {}), results.get("meta", {}).get("args", {})
    d, m = results.get("data", {}), results.get("model", {})
    params = next((r.get("parameters") for r in results.get("runs", {}).values()
                   if r.get("parameters")), None)
    batch = max(1, a.get("batch_tokens", 0) // max(1, a.get("seq_len", 1)))
    plan = results.get("plan", {})
    lines = [
        f"- Date: {meta.get('date')}; device: {meta.get('device')}; commit: {meta.get('commit')}",
        f"- Software: Python {meta.get('python')}, torch {meta.get('torch')}, transformers "
        f"{meta.get('transformers')}, tokenizers {meta.get('tokenizers')}",
        f"- Model: Llama-style decoder, hidden {m.get('hidden')}, {m.get('layers')} layers, "
        f"{m.get('heads')} heads ({m.get('kv_heads')} KV), MLP {m.get('intermediate')}, vocab "
        f"{m.get('vocab')}, tied embeddings"
        + (f"; {params / 1e6:.1f}M parameters" if params else ""),
        f"- Data: Python sources installed on the machine: {d.get('train_files')} training / "
        f"{d.get('val_files')} validation files (split by content hash), "
        f"{d.get('train_tokens', 0):,} / {d.get('val_tokens', 0):,} tokens; BPE tokenizer "
        f"trained on them. {100 * a.get('needle_frac', 0):.0f}% of training sequences carry "
        f"1-{a.get('max_needles')} passkey needles asked at the end (answer-digit loss weight "
        f"{a.get('answer_weight')}).",
        f"- Training: length {a.get('seq_len')}, batch {batch} ({a.get('batch_tokens')} tokens "
        f"per step), {plan.get('steps', a.get('steps'))} steps per variant, AdamW (0.9, 0.95), "
        f"weight decay {a.get('weight_decay')}, peak lr {a.get('lr')} with warm-up "
        f"{a.get('warmup')} and cosine decay to {a.get('min_lr_frac')} of the peak, bf16 "
        f"autocast on the GPU, seed {a.get('seed')} (same initial weights and batches for "
        f"every variant).",
        f"- MoBA: block {a.get('moba_chunk')}, top-{a.get('moba_topk')} (own block included); "
        f"moba-hybrid: the last {a.get('full_layers')} layers full.",
        f"- Study: {meta.get('seconds')} s of a {a.get('time_budget')} s budget.",
    ]
    return "\n".join(lines) + "\n"


def _loss_table(results: dict) -> str:
    full = _val_loss(results, "sdpa")
    rows = []
    for kind, run in results.get("runs", {}).items():
        t, ev = run.get("train", {}), run.get("eval", {})
        val = ev.get("val", {}).get("loss")
        rows.append([
            run.get("describe", kind), t.get("steps_done", "-"),
            f"{t['tokens_total'] / 1e6:.1f}M" if t.get("tokens_total") else "-",
            f"{t['seconds_total']:.0f}" if t.get("seconds_total") else "-",
            f"{t['tokens_per_s'] / 1e3:.1f}K" if t.get("tokens_per_s") else "-",
            f"{t['loss'][-1]:.3f}" if t.get("loss") else "-",
            f"{t['answer_loss'][-1]:.3f}" if t.get("answer_loss") else "-",
            f"{val:.4f}" if val is not None else "-",
            _pct(val / full - 1) if val is not None and full else "-",
            "yes" if t.get("truncated") else "no" if t else "-"])
    return _table(["variant", "steps", "tokens", "train s", "train tok/s", "last train loss",
                   "last passkey-digit loss", "validation loss", "vs full", "stopped by time"],
                  rows)


def _position_table(results: dict) -> str:
    runs = results.get("runs", {})
    evals = {k: r["eval"]["val"] for k, r in runs.items() if r.get("eval", {}).get("val")}
    if not evals:
        return "no validation results\n"
    first = next(iter(evals.values()))
    header = ["variant"] + [f"[{fmt_len(lo)}, {fmt_len(hi)})" for lo, hi, _ in first["buckets"]]
    full = evals.get("sdpa")
    rows = []
    for kind, val in evals.items():
        rows.append([kind] + [f"{v:.4f}" for _, _, v in val["buckets"]])
        if full is not None and kind != "sdpa":
            rows.append([f"{kind} vs full"] + [_pct(v / f - 1) for (_, _, v), (_, _, f)
                                               in zip(val["buckets"], full["buckets"])])
    return _table(header, rows)


def _needle_tables(results: dict) -> str:
    out = []
    for kind, run in results.get("runs", {}).items():
        needle = run.get("eval", {}).get("needle")
        if not needle:
            continue
        acc = np.asarray(needle["accuracy"], dtype=float)
        header = ["depth \\ length"] + [fmt_len(n) for n in needle["lengths"]]
        rows = [[f"{d:.1f}"] + ["-" if not math.isfinite(x) else f"{100 * x:.0f}" for x in row]
                for d, row in zip(needle["depths"], acc)]
        rows.append(["mean"] + ["-" if np.all(np.isnan(acc[:, j])) else
                                f"{100 * np.nanmean(acc[:, j]):.0f}" for j in range(acc.shape[1])])
        out.append(f"**{run.get('describe', kind)}** ({needle['samples']} samples per cell, %)\n\n"
                   + _table(header, rows))
    return "\n".join(out) if out else "no needle results\n"


def _throughput_table(rows_in: List[dict], with_speedup: bool = True) -> str:
    rows = []
    for r in rows_in:
        if r.get("status") != "ok":
            rows.append([r.get("attention", "-"), fmt_len(r["seq_len"]), r.get("batch", "-"),
                         r.get("status")] + ["-"] * 6)
            continue
        speedup = "-"
        if with_speedup:
            ref = next((x for x in rows_in if x.get("attention") == "sdpa"
                        and x.get("seq_len") == r["seq_len"] and x.get("status") == "ok"), None)
            if ref:
                speedup = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x"
        rows.append([r["attention"], fmt_len(r["seq_len"]), r["batch"],
                     f"{r['tokens_per_s'] / 1e3:.1f}K", f"{r['step_ms']:.1f}",
                     f"{r['attn_fwd_ms']:.1f}", f"{r['attn_bwd_ms']:.1f}",
                     f"{100 * r['attn_share']:.0f}%",
                     f"{r['peak_gib']:.1f}" if "peak_gib" in r else "-", speedup])
    return _table(["attention", "length", "batch", "tokens/s", "step ms", "attention fwd ms",
                   "attention bwd ms", "attention share", "peak GiB", "vs sdpa"], rows)


def _longest_table(results: dict) -> str:
    rows = []
    for kind, measured in results.get("longest", {}).items():
        ok = [r for r in measured if r.get("status") == "ok"]
        fixed = [r for r in results.get("throughput", []) if r.get("attention") == kind
                 and r.get("status") == "ok"]
        best = (ok or fixed or [None])[-1]
        stop = next((r for r in measured if r.get("status") != "ok"), None)
        rows.append([kind, fmt_len(best["seq_len"]) if best else "-",
                     f"{best['tokens_per_s'] / 1e3:.1f}K" if best else "-",
                     f"{100 * best['attn_share']:.0f}%" if best else "-",
                     f"{best['peak_gib']:.1f}" if best and "peak_gib" in best else "-",
                     f"{fmt_len(stop['seq_len'])}: {stop['status']}" if stop else
                     "reached --longest-max"])
    return _table(["attention", "longest measured", "tokens/s", "attention share", "peak GiB",
                   "next length"], rows)


def markdown(results: dict) -> str:
    parts = ["# Training study: full attention vs MoBA vs MoBA-hybrid\n\n",
             "Written by `examples/train_lm/run_study.py`; what the columns mean: "
             "docs/training.md.\n\n", _setup(results),
             "\n## Bars\n\n", _table(["bar", "measured", "target", "verdict"], bars(results)),
             "\n## Training and final validation loss\n\n", _loss_table(results),
             "\n## Validation loss by token position\n\n",
             "Mean next-token loss of held-out code, per position bucket of the context.\n\n",
             _position_table(results),
             "\n## Needle retrieval (accuracy, %)\n\n",
             "One needle per sample at the given depth (0 = start of the context) in held-out "
             "code; correct when all five key digits are the argmax predictions.\n\n",
             _needle_tables(results),
             "\n## Training throughput (whole model: forward, backward, AdamW step)\n\n",
             "Random tokens; median of timed steps after a warm-up step. Attention ms: CUDA "
             "events around every attention call's forward and backward.\n\n",
             _throughput_table(results.get("throughput", []))]
    if results.get("longest"):
        parts += ["\n## Longest length that fits (batch 1)\n\n", _longest_table(results),
                  "\n", _throughput_table([r for rows in results["longest"].values()
                                           for r in rows if "attention" in r])]
    if results.get("checkpoint"):
        parts += [f"\nFull-attention checkpoint: `{results['checkpoint']['path']}` "
                  f"({results['checkpoint']['mib']} MiB)\n"]
    if results.get("errors"):
        parts += ["\n## Errors\n\n"] + [f"- {e['phase']}: `{e['error']}`\n"
                                         for e in results["errors"]]
    return "".join(parts)


def summary(results: dict) -> str:
    """The bars, the loss table and the fixed-length throughput table (for the console)."""
    return "".join([_table(["bar", "measured", "target", "verdict"], bars(results)), "\n",
                    _loss_table(results), "\n",
                    _throughput_table(results.get("throughput", []))])
