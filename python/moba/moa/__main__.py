"""``python -m moba.moa``: MoA's plan search from the command line.

    python -m moba.moa search   --model DIR --density 0.5 --lengths 2048 4096 --out plan.json
    python -m moba.moa profile  --model DIR --lengths 2048 4096 --out profiles.json
    python -m moba.moa optimise --profiles profiles.json --density 0.5 --out candidates.json
    python -m moba.moa validate --model DIR --candidates candidates.json --lengths 4096 \\
                                --out plan.json
    python -m moba.moa convert  --plan plan.json --to-reference ref.json [--length N]
    python -m moba.moa convert  --reference ref.json --out plan.json [--length N]

--model is a transformers causal LM directory (from_pretrained). Calibration / validation data:
--data (token ids: .npy, .pt, uint16 .bin, or text with --tokenizer) cut into --sequences
windows per length, plus --synthetic K synthetic long-dependency sequences per length (the
default when no --data is given). Targets are the dense model's own predictions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ..plan import MoaPlan


def _model(args):
    from transformers import AutoModelForCausalLM

    dtype = {"auto": "auto", "f32": torch.float32, "bf16": torch.bfloat16,
             "f16": torch.float16}[args.dtype]
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=dtype)
    return model.to(args.device)


def _samples(args, model, lengths, validation: bool):
    from .data import Samples, load_tokens, synthetic_retrieval, token_windows

    vocab = int(model.get_input_embeddings().num_embeddings)
    tokens = load_tokens(args.data, args.tokenizer) if args.data else None
    out = {}
    for n in lengths:
        parts = []
        if tokens is not None:
            # Calibration from the start of the corpus, validation from its second half.
            start = len(tokens) // 2 if validation else 0
            parts.append(token_windows(tokens, n, args.sequences, start=start))
        synth = args.synthetic if args.synthetic is not None else (0 if tokens is not None
                                                                    else args.sequences)
        if synth:
            parts.append(synthetic_retrieval(vocab, n, synth, seed=n + (10_000 if validation else 0)))
        out[n] = Samples.concat(*parts)
    return out


def _data_args(p):
    p.add_argument("--data", help="token ids (.npy/.pt/.bin) or text (needs --tokenizer)")
    p.add_argument("--tokenizer", help="tokenizer directory for a text --data")
    p.add_argument("--sequences", type=int, default=8, help="sequences per length (default 8)")
    p.add_argument("--synthetic", type=int, default=None,
                   help="synthetic long-dependency sequences per length (default: --sequences "
                        "without --data, 0 with it)")


def _model_args(p):
    p.add_argument("--model", required=True, help="transformers causal LM directory")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "f32", "bf16", "f16"])
    p.add_argument("--batch-size", type=int, default=1)


def _write_plan(plan: MoaPlan, args):
    from .formats import save_reference

    plan.save(args.out)
    print(f"wrote {args.out}")
    if getattr(args, "reference_out", None):
        save_reference(plan, args.reference_out, args.reference_length)
        print(f"wrote {args.reference_out} (reference format)")


def cmd_profile(args):
    from .data import dense_targets
    from .profile import profile_model, save_profiles
    from .rules import bin_edges, default_rules
    from .search import rules_for

    model = _model(args)
    rules = (rules_for(args.lengths, args.density, args.sink) if args.density
             else default_rules(args.lengths))
    cal = _samples(args, model, args.lengths, validation=False)
    profiles = []
    for n in args.lengths:
        t0 = time.perf_counter()
        ref = dense_targets(model, cal[n], args.batch_size, args.device)
        profiles.append(profile_model(model, cal[n].batches(args.batch_size, ref, args.device), n,
                                      bin_edges(rules, n), sink=args.sink))
        print(f"profiled length {n}: {len(cal[n])} sequences in {time.perf_counter() - t0:.1f} s")
    save_profiles(profiles, args.out, rules)
    print(f"wrote {args.out}")


def cmd_optimise(args):
    from .optimise import pareto_set
    from .profile import load_profiles
    from .rules import default_rules, rule_table
    from .search import plan_from_choice

    profiles, rules = load_profiles(args.profiles, with_rules=True)
    rules = rules or default_rules([p.length for p in profiles])
    table = rule_table(rules, profiles, profiles[0].sink, args.measure)
    choices = pareto_set(table, args.density, time_limit=args.time_limit)
    out = {}
    for i, c in enumerate(choices):
        plan = plan_from_choice(table, c.rules, profiles[0].num_layers, profiles[0].num_heads)
        out[f"moa{i}"] = {"plan": json.loads(plan.to_json()), "weights": c.weights.tolist(),
                          "expected_loss": c.loss.tolist(), "density": c.density.tolist(),
                          "lengths": table.lengths}
        print(f"moa{i}: trade-off {c.weights.round(3).tolist()} expected loss "
              f"{c.loss.round(5).tolist()} density {c.density.round(4).tolist()}")
    with open(args.out, "w") as f:
        json.dump({"moba_moa_candidates": out}, f, indent=1)
    print(f"wrote {args.out}")


def cmd_validate(args):
    from .data import dense_targets
    from .search import uniform_plan
    from .validate import evaluate, pick_best
    from .profile import model_shape

    with open(args.candidates) as f:
        d = json.load(f)
    if "moba_moa_candidates" not in d:
        raise ValueError(f"moba: {args.candidates}: expected a file written by `optimise`")
    plans = {k: MoaPlan.from_json(json.dumps(v["plan"])) for k, v in d["moba_moa_candidates"].items()}
    model = _model(args)
    val = _samples(args, model, args.lengths, validation=True)
    layers, heads = model_shape(model)[:2]
    sink = next(iter(plans.values())).sink
    every = dict(plans)
    for n in args.lengths:
        every[f"uniform@{n}"] = uniform_plan(layers, heads, args.density, n, sink) \
            if args.density else None
    every = {k: v for k, v in every.items() if v is not None}
    results = {k: [] for k in every}
    for n in args.lengths:
        ref = dense_targets(model, val[n], args.batch_size, args.device)
        for k, plan in every.items():
            results[k].append(evaluate(model, plan, val[n], ref, args.batch_size, args.device))
    for k, ms in results.items():
        print(f"{k:<14} " + "  ".join(f"@{n}: ref_loss {m.ref_loss:.4f} data_loss "
                                      f"{m.data_loss:.4f} acc {m.accuracy:.3f}"
                                      for n, m in zip(args.lengths, ms)))
    best = pick_best({k: v for k, v in results.items() if k in plans})
    print(f"best: {best}")
    _write_plan(plans[best], args)


def cmd_search(args):
    from .search import search

    model = _model(args)
    cal = _samples(args, model, args.lengths, validation=False)
    val_lengths = args.validation_lengths or [max(args.lengths)]
    val = _samples(args, model, val_lengths, validation=True)
    res = search(model, args.density, args.lengths, calibration=cal, validation=val,
                 sink=args.sink, measure=args.measure, batch_size=args.batch_size,
                 device=args.device, time_limit=args.time_limit)
    print(res.report())
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in res.seconds.items()))
    _write_plan(res.plan, args)


def cmd_convert(args):
    from .formats import from_reference, save_reference

    if args.plan and args.to_reference:
        save_reference(MoaPlan.load(args.plan), args.to_reference, args.length)
        print(f"wrote {args.to_reference}")
    elif args.reference and args.out:
        from_reference(args.reference, args.length).save(args.out)
        print(f"wrote {args.out}")
    else:
        raise ValueError("moba: convert: expected --plan with --to-reference, or --reference "
                         "with --out")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moba.moa", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    def common_out(p):
        p.add_argument("--out", required=True, help="where to write the plan (MoaPlan JSON)")
        p.add_argument("--reference-out", help="also write the plan in the MoA reference format")
        p.add_argument("--reference-length", type=int, default=None,
                       help="N for an exact reference conversion (default: elastic mapping)")

    p = sub.add_parser("search", help="profile, optimise and validate in one run")
    _model_args(p)
    _data_args(p)
    p.add_argument("--density", type=float, required=True, help="budget in (0, 1]")
    p.add_argument("--lengths", type=int, nargs="+", required=True, help="profiling lengths")
    p.add_argument("--validation-lengths", type=int, nargs="+")
    p.add_argument("--sink", type=int, default=64)
    p.add_argument("--measure", default="magnitude", choices=["magnitude", "signed"])
    p.add_argument("--time-limit", type=float, default=30.0, help="seconds per MILP")
    common_out(p)
    p.set_defaults(fn=cmd_search)

    p = sub.add_parser("profile", help="influence sums per head at each length")
    _model_args(p)
    _data_args(p)
    p.add_argument("--lengths", type=int, nargs="+", required=True)
    p.add_argument("--sink", type=int, default=64)
    p.add_argument("--density", type=float, default=None,
                   help="add the uniform windows of this density to the candidate rules")
    p.add_argument("--out", required=True, help="profiles JSON")
    p.set_defaults(fn=cmd_profile)

    p = sub.add_parser("optimise", aliases=["optimize"], help="the Pareto set of plans (HiGHS)")
    p.add_argument("--profiles", required=True)
    p.add_argument("--density", type=float, required=True)
    p.add_argument("--measure", default="magnitude", choices=["magnitude", "signed"])
    p.add_argument("--time-limit", type=float, default=30.0)
    p.add_argument("--out", required=True, help="candidates JSON")
    p.set_defaults(fn=cmd_optimise)

    p = sub.add_parser("validate", help="pick the best candidate on held-out data")
    _model_args(p)
    _data_args(p)
    p.add_argument("--candidates", required=True)
    p.add_argument("--lengths", type=int, nargs="+", required=True)
    p.add_argument("--density", type=float, default=None,
                   help="also report the uniform window baseline at this density")
    common_out(p)
    p.set_defaults(fn=cmd_validate)

    p = sub.add_parser("convert", help="between moba's and the MoA reference's plan files")
    p.add_argument("--plan")
    p.add_argument("--to-reference")
    p.add_argument("--reference")
    p.add_argument("--out")
    p.add_argument("--length", type=int, default=None, help="exact mapping at N tokens")
    p.set_defaults(fn=cmd_convert)

    args = ap.parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
