#!/usr/bin/env python3
"""The GPU study in one bounded process: full attention (sdpa), MoBA and MoBA-hybrid trained
with the same seed, data and token budget; loss by position, needle heatmap, throughput.

    python examples/train_lm/run_study.py --out OUT --time-budget 450

Phases (each bounded by the deadline; results are rewritten after every phase, so a run that is
stopped still leaves what it finished):
  1. data: corpus, BPE tokenizer, token streams
  2. throughput at --throughput-lengths (default 8K, 32K) for each attention: tokens/s of a
     whole training step and the share of it spent in attention; the step time at the
     training length also sizes the training runs
  3. training: every variant for the same number of steps, the number that lets the slowest
     variant finish in its share of the budget; each run is evaluated (validation loss by
     position, needle accuracy) and the full-attention model is saved
  4. the longest length that fits, doubling from the last throughput length
  5. results.md (tables, bars), results.json, loss_curves.png, needle_heatmap.png

`--preset cpu-smoke` shrinks everything for a CPU run of a few seconds (CI).
"""

from __future__ import annotations

import time

_T_START = time.time()  # the budget counts from the start of the process (imports take ~10 s)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import traceback  # noqa: E402
from typing import Dict, List  # noqa: E402


# On the CPU, torch's and moba's OpenMP threads share the cores; waiting passively keeps idle
# threads of one pool from spinning against the other (set before OpenMP starts).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import data  # noqa: E402
import lm  # noqa: E402
import plots  # noqa: E402
import report  # noqa: E402
import throughput  # noqa: E402
import train_lm  # noqa: E402
from train_lm import log  # noqa: E402

VARIANTS = ("sdpa", "moba", "moba-hybrid")

CPU_SMOKE = dict(device="cpu", model="tiny", seq_len=256, batch_tokens=512, corpus_mb=1,
                 vocab=512, tokenizer_mb=0.5, val_windows=4, eval_windows=2, needle_samples=1,
                 needle_depths=[0.0, 0.5, 1.0], throughput_lengths=[256, 512], longest_max=1024,
                 moba_chunk=64, moba_topk=2, full_layers=1, log_every=2, eval_every=2,
                 throughput_steps=1, eval_tokens=2048)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--time-budget", type=float, default=450,
                   help="seconds for the whole study (default 450)")
    p.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS),
                   help="attentions to train (default sdpa,moba,moba-hybrid)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per variant (default: sized from the time budget)")
    p.add_argument("--ckpt-dir", default=None,
                   help="where the full-attention checkpoint goes (default OUT/ckpt-full)")
    p.add_argument("--pack-ckpt-mb", type=float, default=0,
                   help="also pack the checkpoint as OUT/ckpt-full.tar.partNN of at most this "
                        "many MiB each (0: no)")
    p.add_argument("--moa-plan", default=None,
                   help="also evaluate the trained full-attention model with MoA and this plan")
    p.add_argument("--throughput-lengths", type=train_lm.int_list, default=[8192, 32768])
    p.add_argument("--throughput-attentions", type=lambda s: s.split(","), default=None,
                   help="default: the trained variants")
    p.add_argument("--throughput-steps", type=int, default=3, help="timed steps per row")
    p.add_argument("--batch-tokens-throughput", type=int, default=None,
                   help="tokens per throughput step (batch = this / length, at least 1; "
                        "default --batch-tokens, so the training length's row sizes the runs)")
    p.add_argument("--longest-max", type=int, default=1 << 20,
                   help="longest length tried for 'longest that fits' (default 1M; 0: skip)")
    p.add_argument("--max-step-s", type=float, default=4.0,
                   help="longest step the length search may take (default 4 s)")
    p.add_argument("--preset", choices=["gpu", "cpu-smoke"], default="gpu")
    p.add_argument("--commit", default=None,
                   help="commit to report (default: git rev-parse in the checkout, if any)")
    train_lm.add_model_args(p)
    train_lm.add_train_args(p)
    train_lm.add_data_args(p)
    train_lm.add_eval_args(p)
    known, _ = p.parse_known_args(argv)
    if known.preset == "cpu-smoke":
        p.set_defaults(**CPU_SMOKE)
    args = p.parse_args(argv)
    args.throughput_attentions = args.throughput_attentions or list(args.variants)
    args.batch_tokens_throughput = args.batch_tokens_throughput or args.batch_tokens
    for kind in list(args.variants) + list(args.throughput_attentions):
        if kind not in lm.ATTENTIONS or kind == "moa":
            raise SystemExit(f"run_study: attention {kind!r}: expected one of sdpa, moba, "
                             f"moba-hybrid, moba-full (MoA: --moa-plan, evaluation only)")
    args.attention = None
    return args


class Study:
    def __init__(self, args):
        self.args = args
        self.t0 = _T_START
        self.deadline = self.t0 + args.time_budget
        self.device = train_lm.pick_device(args.device)
        os.makedirs(args.out, exist_ok=True)
        self.results: Dict = {"meta": self.meta(), "errors": [], "throughput": [],
                              "longest": {}, "runs": {}}

    # -- bookkeeping --------------------------------------------------------------------------
    def left(self) -> float:
        return self.deadline - time.time()

    def meta(self) -> dict:
        def version(mod):
            try:
                return __import__(mod).__version__
            except Exception:  # noqa: BLE001 - informational only
                return "-"
        commit = self.args.commit
        if not commit:
            try:
                commit = subprocess.run(
                    ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                    cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip()
            except Exception:  # noqa: BLE001 - informational only
                commit = ""
        commit = commit or "unknown"
        device = (torch.cuda.get_device_name() if torch.cuda.is_available()
                  and (self.args.device or "cuda").startswith("cuda") else platform.processor()
                  or platform.machine())
        return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "commit": commit, "device": device, "python": platform.python_version(),
                "torch": torch.__version__, "transformers": version("transformers"),
                "tokenizers": version("tokenizers"), "moba": version("moba"),
                "args": {k: v for k, v in vars(self.args).items()}}

    def error(self, phase: str, exc: BaseException) -> None:
        tb = traceback.format_exc()
        log(f"{phase} failed: {exc!r}\n{tb}")
        self.results["errors"].append({"phase": phase, "error": repr(exc),
                                       "traceback": tb[-2000:]})

    def write(self) -> None:
        out = self.args.out
        self.results["meta"]["seconds"] = round(time.time() - self.t0, 1)
        with open(os.path.join(out, "results.json"), "w") as fh:
            json.dump(self.results, fh, indent=1, default=str)
        with open(os.path.join(out, "results.md"), "w") as fh:
            fh.write(report.markdown(self.results))

    def config(self):
        a = self.args
        return lm.model_config(len(self.data.tokenizer), a.model,
                               max(a.seq_len, *a.throughput_lengths, a.longest_max or 0),
                               hidden=a.hidden, layers=a.layers, heads=a.heads,
                               kv_heads=a.kv_heads, intermediate=a.intermediate)

    def spec(self, kind: str) -> lm.AttentionSpec:
        return train_lm.attention_spec(self.args, kind)

    # -- phases -------------------------------------------------------------------------------
    def prepare(self) -> None:
        self.data = train_lm.Data(self.args)
        self.results["data"] = self.data.stats
        cfg = self.config()
        self.results["model"] = {
            "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers,
            "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
            "intermediate": cfg.intermediate_size, "vocab": cfg.vocab_size}

    def measure_rows(self, model, optimizer, timer, kind: str, lengths: List[int],
                     phase_deadline: float) -> None:
        spec = self.spec(kind)
        name = timer.wrap(lm.register(spec, model.config.num_hidden_layers))
        model.set_attn_implementation(name)
        for length in lengths:
            if time.time() > phase_deadline:
                self.results["throughput"].append({"attention": kind, "seq_len": length,
                                                   "status": "skipped: time budget"})
                continue
            batch = max(1, self.args.batch_tokens_throughput // length)
            row = throughput.measure(model, optimizer, name, timer, length, batch, self.device,
                                     self.args.throughput_steps)
            row["attention"] = kind
            self.results["throughput"].append(row)
            log(f"throughput {kind} @ {length}: " + report.throughput_line(row))

    def throughput_phase(self, lengths: List[int], share: float) -> None:
        """Throughput at fixed lengths for every attention, one model, the same random tokens."""
        phase_deadline = time.time() + max(10.0, self.left() * share)
        model = lm.build_model(self.config(), "sdpa", self.args.seed).to(self.device)
        optimizer = train_lm.make_optimizer(model, 1e-5, 0.0, self.device)
        timer = throughput.AttentionTimer()
        try:
            for kind in self.args.throughput_attentions:
                self.measure_rows(model, optimizer, timer, kind, lengths, phase_deadline)
        finally:
            del model, optimizer
            throughput._free(self.device)

    def longest_phase(self) -> None:
        a = self.args
        if not a.longest_max:
            return
        start = max(a.throughput_lengths) * 2
        model = lm.build_model(self.config(), "sdpa", a.seed).to(self.device)
        optimizer = train_lm.make_optimizer(model, 1e-5, 0.0, self.device)
        timer = throughput.AttentionTimer()
        kinds = a.throughput_attentions
        try:
            for i, kind in enumerate(kinds):
                name = timer.wrap(lm.register(self.spec(kind), model.config.num_hidden_layers))
                model.set_attn_implementation(name)
                # An even share of what is left, for each attention still to go.
                share_deadline = time.time() + (self.left() - 10) / (len(kinds) - i)
                growth = 4.0 if kind in ("sdpa", "moba-full") else 2.2

                def measure_at(length, name=name, kind=kind):
                    row = throughput.measure(model, optimizer, name, timer, length, 1,
                                             self.device, max(1, a.throughput_steps - 1))
                    row["attention"] = kind
                    log(f"longest {kind} @ {length}: " + report.throughput_line(row))
                    return row

                rows = throughput.longest_that_fits(measure_at, start, a.longest_max,
                                                    a.max_step_s, share_deadline, growth)
                self.results["longest"][kind] = rows
                self.write()
        finally:
            del model, optimizer
            throughput._free(self.device)

    def plan_steps(self) -> int:
        """Steps per variant: the slowest variant's measured step time at the training length
        decides, so every variant trains on the same tokens and fits its share of the budget."""
        a = self.args
        if a.steps:
            return a.steps
        batch = train_lm.batch_size(a, a.seq_len)
        step_s = [r["step_ms"] / 1e3 * batch * a.seq_len / (r["batch"] * r["seq_len"])
                  for r in self.results["throughput"]
                  if r.get("status") == "ok" and r["seq_len"] == a.seq_len
                  and r["attention"] in a.variants]
        if not step_s:
            raise RuntimeError(f"run_study: no throughput measured at the training length "
                               f"{a.seq_len} to size the runs; pass --steps")
        slowest = max(step_s)
        # Evaluation after training: the validation windows and the needle grid, forward only
        # (about a third of a training step per token).
        tokens_eval = a.val_windows * a.seq_len + len(a.needle_depths) * a.needle_samples * sum(
            a.needle_lengths or train_lm.default_needle_lengths(a.seq_len))
        eval_s = tokens_eval / (batch * a.seq_len) * slowest / 3 + 3
        reserve_longest = 0.12 * a.time_budget if a.longest_max else 0
        per_variant = (self.left() - reserve_longest - 10) / len(a.variants) - eval_s
        # Periodic validation: eval_windows windows every eval_every steps, and logging syncs.
        periodic = (a.eval_windows / batch / 3) / max(1, a.eval_every or 10**9)
        steps = int(0.9 * per_variant / (slowest * (1 + periodic)))
        self.results["plan"] = {"slowest_step_s": slowest, "eval_s_estimate": eval_s,
                                "seconds_per_variant": per_variant, "steps": steps}
        log(f"plan: {steps} steps per variant ({per_variant:.0f} s each, slowest step "
            f"{slowest * 1e3:.0f} ms, evaluation ~{eval_s:.0f} s)")
        if steps < 1:
            raise RuntimeError(f"run_study: no time left to train ({per_variant:.0f} s per "
                               f"variant, {slowest:.2f} s per step)")
        return steps

    def train_variant(self, kind: str, steps: int, time_cap: float) -> None:
        a = self.args
        spec = self.spec(kind)
        cfg = self.config()
        name = lm.register(spec, cfg.num_hidden_layers)
        model = lm.build_model(cfg, name, a.seed).to(self.device)
        log(f"== training {spec.describe()}: {steps} steps, "
            f"{lm.count_parameters(model) / 1e6:.1f}M parameters, cap {time_cap:.0f} s")
        batches = self.data.batches(a, a.seq_len, train_lm.batch_size(a, a.seq_len))
        windows = data.val_windows(self.data.val, a.seq_len, a.eval_windows)

        def validate():
            import evaluate
            return evaluate.validation_loss(model, name, windows, self.device,
                                            a.eval_tokens)["loss"]

        run = {"attention": spec.to_json(), "describe": spec.describe(),
               "parameters": lm.count_parameters(model)}
        self.results["runs"][kind] = run
        try:
            run["train"] = train_lm.train(model, name, batches, a, steps, self.device,
                                          time.time() + time_cap, validate)
            run["eval"] = train_lm.evaluate_model(model, name, self.data, a, a.seq_len,
                                                  self.device)
            if kind == "sdpa":
                self.save_full(model, spec)
                if a.moa_plan:
                    self.evaluate_moa(model)
        finally:
            del model
            throughput._free(self.device)

    def save_full(self, model, spec) -> None:
        a = self.args
        path = a.ckpt_dir or os.path.join(a.out, "ckpt-full")
        lm.save_checkpoint(model, self.data.tokenizer, path, spec,
                           {"seq_len": a.seq_len, "seed": a.seed, "study": "run_study.py"})
        size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
        self.results["checkpoint"] = {"path": path, "mib": round(size / 2**20, 1)}
        log(f"checkpoint: {path} ({size / 2**20:.1f} MiB)")
        if a.pack_ckpt_mb:
            self.results["checkpoint"]["parts"] = pack(path, os.path.join(a.out, "ckpt-full.tar"),
                                                       a.pack_ckpt_mb)

    def evaluate_moa(self, model) -> None:
        a = self.args
        spec = lm.AttentionSpec(kind="moa", plan=a.moa_plan)
        name = lm.register(spec, model.config.num_hidden_layers)
        model.set_attn_implementation(name)
        run = {"attention": spec.to_json(), "describe": spec.describe() + ", no training",
               "parameters": lm.count_parameters(model)}
        self.results["runs"]["moa"] = run
        run["eval"] = train_lm.evaluate_model(model, name, self.data, a, a.seq_len, self.device)

    # -- the whole study ----------------------------------------------------------------------
    def run(self) -> int:
        a = self.args
        log(f"study: {', '.join(a.variants)} on {self.device}, budget {a.time_budget:.0f} s, "
            f"results in {a.out}")
        try:
            self.prepare()
        except Exception as exc:  # noqa: BLE001 - nothing can run without data
            self.error("data", exc)
            self.write()
            return 1
        self.write()
        try:
            self.throughput_phase(a.throughput_lengths, share=0.15)
        except Exception as exc:  # noqa: BLE001
            self.error("throughput", exc)
        self.write()
        try:
            steps = self.plan_steps()
        except Exception as exc:  # noqa: BLE001
            self.error("plan", exc)
            steps = 0
        if steps:
            reserve = 0.12 * a.time_budget if a.longest_max else 0
            for i, kind in enumerate(a.variants):
                # The cap is a safety net: the planned steps should end well before it.
                time_cap = max(5.0, (self.left() - reserve - 10) / (len(a.variants) - i))
                try:
                    self.train_variant(kind, steps, time_cap)
                except Exception as exc:  # noqa: BLE001 - the other variants still run
                    self.error(f"train {kind}", exc)
                self.write()
        try:
            if self.left() > 20:
                self.longest_phase()
        except Exception as exc:  # noqa: BLE001
            self.error("longest", exc)
        self.write()
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            log("matplotlib is not installed: no PNGs (the tables are in results.md)")
        else:
            try:
                plots.loss_curves(self.results, os.path.join(a.out, "loss_curves.png"))
                plots.needle_heatmaps(self.results, os.path.join(a.out, "needle_heatmap.png"))
            except Exception as exc:  # noqa: BLE001
                self.error("plots", exc)
        self.write()
        print("\n" + report.summary(self.results), flush=True)
        log(f"done in {time.time() - self.t0:.0f} s: {os.path.join(a.out, 'results.md')}")
        return 1 if self.results["errors"] else 0


def pack(path: str, tar_path: str, part_mib: float) -> List[str]:
    """The folder as one tar split into parts of at most `part_mib` MiB (cat them to untar)."""
    with tarfile.open(tar_path, "w") as tar:
        tar.add(path, arcname=os.path.basename(path.rstrip("/")))
    part = int(part_mib * 2**20)
    names = []
    with open(tar_path, "rb") as fh:
        i = 0
        while True:
            chunk = fh.read(part)
            if not chunk:
                break
            name = f"{tar_path}.part{i:02d}"
            with open(name, "wb") as out:
                out.write(chunk)
            names.append(os.path.basename(name))
            i += 1
    os.remove(tar_path)
    return names


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    return Study(args).run()


if __name__ == "__main__":
    sys.exit(main())
