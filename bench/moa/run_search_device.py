"""MoA plan search on the GPU: profiling cost at 8K and searched plan vs uniform windows.

Part 1 (always): profiling a ~100M-parameter Llama (random weights; the cost does not depend
on them) at --profile-length tokens: seconds per sequence and peak GPU memory, next to the
size one N x N fp32 score matrix per head would take.

Part 2 (with --checkpoint): the plan search on a trained transformers causal LM at --density:
profile at --lengths, optimise (HiGHS), validate, then compare the chosen plan with the uniform
sliding window + sink at the same density on held-out LM data (loss against the data's next
tokens and against the dense model) and on synthetic long-range retrieval (accuracy of the
recalled values). Writes a markdown table and JSON to --out.

    python bench/moa/run_search_device.py --checkpoint DIR --data CORPUS \\
        [--tokenizer DIR] [--density 0.5] [--out bench/results/moa-search]

CORPUS: token ids (.npy/.pt/uint16 .bin) or text: a file or a directory of text files (e.g.
the Python sources the model was trained on), tokenised with --tokenizer (default: the
checkpoint's own tokenizer). Held-out sets come from the second half of the corpus:
`heldout` (LM loss), `copy` (a span from the window's first quarter repeated at its end: the
recalled continuation is scored), and `kv-retrieval` (synthetic key-value recall).
    python bench/moa/run_search_device.py --tiny     # CPU smoke run of both parts (a minute)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
try:  # the installed package (pip install .), else this checkout's python/ with a built _C
    import moba
except ImportError:
    sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))
    import moba
from moba import moa  # noqa: E402


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                       text=True).strip()
    except Exception:  # noqa: BLE001 - not a git checkout
        return "unknown"


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def profile_cost(args, device, dtype, log):
    """Part 1: time and peak memory of profiling a ~100M Llama at one length."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.tiny:
        cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256,
                          num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                          max_position_embeddings=args.profile_length)
    else:  # ~110M parameters: 12 layers, 12 heads of 64, vocab 32000
        cfg = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                          num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                          max_position_embeddings=args.profile_length)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    n = args.profile_length
    rules = moa.default_rules([n // 2, n])
    cal = moa.synthetic_retrieval(cfg.vocab_size, n, args.profile_sequences, seed=1)
    # Supervise every position with the model's own predictions (the heaviest case).
    ref = moa.dense_targets(model, moa.Samples(cal.ids, torch.zeros_like(cal.ids)), 1, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    sync(device)
    t0 = time.perf_counter()
    prof = moa.profile_model(model, cal.batches(1, ref, device), n, moa.bin_edges(rules, n))
    sync(device)
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.startswith("cuda") else None
    nxn = cfg.num_attention_heads * n * n * 4 / 2**30
    row = {"params_M": params / 1e6, "layers": cfg.num_hidden_layers,
           "heads": cfg.num_attention_heads, "length": n, "sequences": len(cal),
           "bins": len(prof.edges), "seconds": seconds, "seconds_per_sequence": seconds / len(cal),
           "peak_GiB_above_weights": peak, "one_layer_NxN_fp32_GiB": nxn}
    log(f"profile: {params / 1e6:.0f}M params, {len(cal)} x {n} tokens, {len(prof.edges)} bins: "
        f"{seconds:.1f} s ({seconds / len(cal):.2f} s/sequence), peak "
        f"{'n/a' if peak is None else f'{peak:.2f} GiB'} above the weights (one layer's N x N "
        f"fp32 scores would be {nxn:.1f} GiB)")
    del model
    return row


def tiny_checkpoint(path):
    """A small trained-on-nothing Llama for the CPU smoke run of part 2."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def search_vs_uniform(args, device, dtype, log):
    """Part 2: the searched plan against uniform windows on a trained model."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, torch_dtype=dtype).to(device)
    layers, heads, kv, head_dim, longest = moa.profile.model_shape(model)
    top = min(longest or args.max_length, args.max_length)
    lengths = sorted({min(n, longest or n) for n in (args.lengths or [top // 2, top])})
    top = lengths[-1]
    vocab = model.get_input_embeddings().num_embeddings
    cal, val = {}, {}
    tokens = None
    if args.data:
        tokens = moa.load_tokens(args.data, args.tokenizer or args.checkpoint)
        log(f"data: {len(tokens):,} tokens from {args.data}")
    quarter = len(tokens) // 4 if tokens is not None else 0
    for n in lengths:
        parts = [moa.synthetic_retrieval(vocab, n, args.sequences, seed=n)]
        if tokens is not None:  # corpus windows and copy recall from the first half
            parts += [moa.token_windows(tokens, n, args.sequences, start=0),
                      moa.copy_retrieval(tokens, n, args.sequences, start=quarter, seed=n)]
        cal[n] = moa.Samples.concat(*parts)
    if tokens is not None:  # held out: the second half of the corpus
        val["heldout"] = moa.token_windows(tokens, top, args.sequences, start=2 * quarter)
        val["copy"] = moa.copy_retrieval(tokens, top, args.sequences, start=3 * quarter,
                                         seed=10_000 + top)
    val["kv-retrieval"] = moa.synthetic_retrieval(vocab, top, args.sequences, seed=10_000 + top)
    t0 = time.perf_counter()
    budget = None if args.budget_at == "all" else [top]
    res = moa.search(model, args.density, lengths, calibration=cal, validation=val,
                     sink=args.sink, device=device, budget_lengths=budget, log=log)
    seconds = time.perf_counter() - t0
    log(res.report())
    names = list(val)
    dense = {}
    for name in names:
        ref = moa.dense_targets(model, val[name], 1, device)
        dense[name] = moa.evaluate(model, None, val[name], ref, 1, device)
    best = next(k for k, p in res.candidates.items() if p is res.plan)
    uniform = f"uniform@{top}"
    rows = {"dense": dense, best: dict(zip(names, res.metrics[best])),
            uniform: dict(zip(names, res.metrics[uniform]))}
    for k, ms in res.metrics.items():
        if k not in rows:
            rows[k] = dict(zip(names, ms))
    dens = {k: [float(sum(moa.density((a, b), args.sink, n) for la, lb in zip(p.alphas, p.betas)
                          for a, b in zip(la, lb)) / (layers * len(p.alphas[0])))
                for n in lengths] for k, p in res.candidates.items()}
    res.plan.save(os.path.join(args.out, "plan.json"))
    return {"checkpoint": args.checkpoint, "lengths": lengths, "density": args.density,
            "sink": args.sink, "budget_at": args.budget_at, "best": best, "uniform": uniform, "seconds": res.seconds,
            "total_seconds": seconds, "density_at_lengths": dens,
            "metrics": {k: {n: m.as_dict() for n, m in v.items()} for k, v in rows.items()}}


def markdown(info, cost, search) -> str:
    out = [f"# MoA plan search — {info['device']}, {info['date']}, commit {info['commit']}", ""]
    out += ["## Profiling cost (influence sums, never an N x N matrix)", "",
            "| params | layers x heads | length | sequences | bins | seconds | s / sequence | "
            "peak GiB above weights | one layer's N x N fp32 GiB |",
            "|---|---|---|---|---|---|---|---|---|"]
    c = cost
    peak = "n/a" if c["peak_GiB_above_weights"] is None else f"{c['peak_GiB_above_weights']:.2f}"
    out.append(f"| {c['params_M']:.0f}M | {c['layers']} x {c['heads']} | {c['length']} | "
               f"{c['sequences']} | {c['bins']} | {c['seconds']:.1f} | "
               f"{c['seconds_per_sequence']:.2f} | {peak} | {c['one_layer_NxN_fp32_GiB']:.1f} |")
    if search:
        s = search
        out += ["", f"## Searched plan vs uniform window + sink at density {s['density']}", "",
                f"Checkpoint `{s['checkpoint']}`; profiled at {s['lengths']}, sink {s['sink']}, "
                f"density budget at {'every profiled length' if s['budget_at'] == 'all' else 'the validated length'}; "
                f"search {s['total_seconds']:.0f} s ("
                + ", ".join(f"{k} {v:.0f} s" for k, v in s["seconds"].items()) + "). "
                "`data_loss`: cross-entropy against the data's next tokens (held-out LM "
                "loss); `ref_loss`: against the dense model's predictions; `acc`: greedy "
                "predictions equal to the data's (retrieval: the recalled values).", ""]
        sets = list(next(iter(s["metrics"].values())))
        head = "| plan | density at " + ", ".join(map(str, s["lengths"])) + " | " + " | ".join(
            f"{n} data_loss | {n} ref_loss | {n} acc" for n in sets) + " |"
        out += [head, "|" + "---|" * (2 + 3 * len(sets))]
        for name, per in s["metrics"].items():
            d = s["density_at_lengths"].get(name)
            dtxt = "1.0" if d is None else ", ".join(f"{x:.3f}" for x in d)
            label = f"**{name}** (chosen)" if name == s["best"] else name
            out.append(f"| {label} | {dtxt} | " + " | ".join(
                f"{per[n]['data_loss']:.4f} | {per[n]['ref_loss']:.4f} | {per[n]['accuracy']:.3f}"
                for n in sets) + " |")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="trained transformers causal LM directory")
    ap.add_argument("--data", help="token ids (.npy/.pt/uint16 .bin), or a text file or a "
                    "directory of text files (tokenised with --tokenizer or the checkpoint's)")
    ap.add_argument("--tokenizer")
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--lengths", type=int, nargs="+",
                    help="profiling lengths (default: see --max-length)")
    ap.add_argument("--max-length", type=int, default=4096,
                    help="default lengths: half and all of min(max_position_embeddings, this)")
    ap.add_argument("--sequences", type=int, default=8, help="per length and data source")
    ap.add_argument("--sink", type=int, default=64)
    ap.add_argument("--budget-at", choices=["top", "all"], default="top",
                    help="the density budget holds at the validated (longest) length (default; "
                         "the comparison with the uniform window there is like for like) or at "
                         "every profiled length")
    ap.add_argument("--profile-length", type=int, default=8192)
    ap.add_argument("--profile-sequences", type=int, default=4)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run on tiny models")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "results", "moa-search"))
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.tiny:
        args.profile_length, args.profile_sequences = min(args.profile_length, 256), 1
        args.sequences, args.sink = min(args.sequences, 2), 8
        args.lengths = args.lengths or [128, 256]
        if not args.checkpoint:
            args.checkpoint = tiny_checkpoint(os.path.join(args.out, "tiny-checkpoint"))
    os.makedirs(args.out, exist_ok=True)
    lines = []

    def log(msg):
        print(msg, flush=True)
        lines.append(msg)

    info = {"device": device_name(device), "date": datetime.date.today().isoformat(),
            "commit": commit(), "torch": torch.__version__, "moba": moba.__version__}
    log(f"{info}")
    cost = profile_cost(args, device, dtype, log)
    search = search_vs_uniform(args, device, dtype, log) if args.checkpoint else None
    with open(os.path.join(args.out, "moa-search.json"), "w") as f:
        json.dump({"info": info, "profile_cost": cost, "search": search}, f, indent=1)
    md = markdown(info, cost, search)
    with open(os.path.join(args.out, "moa-search.md"), "w") as f:
        f.write(md)
    print(md)
    if search:
        best, uni = search["metrics"][search["best"]], search["metrics"][search["uniform"]]
        for name in best:
            verdict = "beats" if best[name]["data_loss"] < uni[name]["data_loss"] else "LOSES TO"
            print(f"{name}: searched plan {verdict} uniform on data_loss "
                  f"({best[name]['data_loss']:.4f} vs {uni[name]['data_loss']:.4f}; acc "
                  f"{best[name]['accuracy']:.3f} vs {uni[name]['accuracy']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
