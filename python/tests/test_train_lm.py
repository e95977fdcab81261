"""examples/train_lm: the pieces (corpus split, needles, attention timing, autocast) and the
whole study driver for a few steps of a tiny model on the CPU, so the GPU study cannot rot."""

import argparse
import importlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from moba import hf  # noqa: E402

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "train_lm")
sys.path.insert(0, os.path.abspath(EXAMPLE))

data = importlib.import_module("data")
lm = importlib.import_module("lm")
evaluate = importlib.import_module("evaluate")
throughput = importlib.import_module("throughput")


def _fake_sources(root, n=40):
    """Python files with distinct contents, plus one duplicate of the first."""
    os.makedirs(root / "pkg", exist_ok=True)
    for i in range(n):
        body = "".join(f"def f{i}_{j}(x):\n    return x * {i} + {j}  # value {i * j}\n"
                       for j in range(12))
        (root / "pkg" / f"mod{i}.py").write_text(body)
    (root / "pkg" / "copy_of_mod0.py").write_text((root / "pkg" / "mod0.py").read_text())
    (root / "pkg" / "tiny.py").write_text("x = 1\n")  # below the size floor
    return [("test", str(root))]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    roots = _fake_sources(tmp_path_factory.mktemp("src"))
    corpus = data.collect_corpus(1, val_permille=200, roots=roots)
    return data.train_tokenizer([t for _, t in corpus.train] * 4, 300)


def test_corpus_split_is_deterministic_disjoint_and_deduplicated(tmp_path):
    roots = _fake_sources(tmp_path)
    a = data.collect_corpus(1, val_permille=200, roots=roots)
    b = data.collect_corpus(1, val_permille=200, roots=roots)
    assert a.train == b.train and a.val == b.val
    texts = [t for _, t in a.train + a.val]
    assert len(texts) == len(set(texts)) == 40  # the copy is read once, tiny.py not at all
    assert a.val and a.train
    assert not {n for n, _ in a.train} & {n for n, _ in a.val}
    assert [n for n, _ in a.train] == sorted(n for n, _ in a.train)  # path order


def test_corpus_errors_name_the_fix(tmp_path):
    roots = _fake_sources(tmp_path, n=2)
    with pytest.raises(RuntimeError, match="val-permille"):
        data.collect_corpus(1, val_permille=0, roots=roots)


def test_needle_sample_puts_the_key_at_its_depth_and_asks_for_it(tokenizer):
    maker = data.NeedleMaker(tokenizer)
    code = np.arange(1000) % 200 + 1
    rng = np.random.default_rng(3)
    for depth in (0.0, 0.5, 1.0):
        s = maker.sample(code, 300, [depth], rng)
        assert s.tokens.shape == (300,) and s.answer.sum() == data.KEY_DIGITS
        text = tokenizer.decode(s.tokens)
        answer = tokenizer.decode(s.tokens[s.answer])
        needle = f"the secret key of"
        first = text.index(needle)
        assert text.count(f"is {answer}.") == 2  # the needle and the answer
        tail = text[text.index("# question:"):]
        assert tail.endswith(f"is {answer}.\n")
        # Depth: where the needle starts, as a share of the code before the question.
        share = first / text.index("# question:")
        assert abs(share - depth) < 0.2, (depth, share)


def test_questions_follow_their_needles_and_ask_for_their_keys(tokenizer):
    maker = data.NeedleMaker(tokenizer)
    code = np.arange(4000) % 200 + 1
    s = maker.sample(code, 1500, [0.1, 0.6, 0.3], np.random.default_rng(5),
                     ask_depths=[0.5, 0.0, 1.0])  # 0.0 < its needle's depth: asked right after
    text = tokenizer.decode(s.tokens)
    needles = {m.group(1): (m.start(), m.group(2)) for m in
               re.finditer(r"\n# the secret key of (\w+) is (\d+)\.", text)}
    asked = [(m.group(1), m.start(), m.group(2)) for m in re.finditer(
        r"# question: what is the secret key of (\w+)\?\n# answer: the secret key of \1 is (\d+)",
        text)]
    assert len(needles) == 3 and len(asked) == 3
    for name, where, key in asked:
        assert needles[name][1] == key and needles[name][0] < where
    answers = tokenizer.decode(s.tokens[s.answer])
    assert answers == "".join(key for _, _, key in sorted(asked, key=lambda a: a[1]))
    # Text order: needle 0.1, needle 0.3, question of 0.1 (asked at 0.5), needle 0.6, question
    # of 0.6 (asked at 0.0, so right after its needle), question of 0.3 (at the end).
    n01, n03, n06 = sorted(needles, key=lambda n: needles[n][0])
    events = sorted([(needles[n][0], "needle", n) for n in needles]
                    + [(where, "question", n) for n, where, _ in asked])
    assert [(kind, n) for _, kind, n in events] == [
        ("needle", n01), ("needle", n03), ("question", n01), ("needle", n06), ("question", n06),
        ("question", n03)]
    assert text.endswith(f"the secret key of {n03} is {needles[n03][1]}.\n")


def test_needle_sample_too_short_is_an_error(tokenizer):
    maker = data.NeedleMaker(tokenizer)
    with pytest.raises(ValueError, match="cannot hold"):
        maker.sample(np.ones(50, dtype=np.int64), 20, [0.5], np.random.default_rng(0))


def test_train_batches_are_reproducible_and_fall_back_to_fewer_needles(tokenizer):
    stream = (np.arange(5000) % 250 + 1).astype(np.uint16)
    maker = data.NeedleMaker(tokenizer)
    a = data.TrainBatches(stream, maker, 400, 6, needle_frac=1.0, max_needles=8, seed=1)
    b = data.TrainBatches(stream, maker, 400, 6, needle_frac=1.0, max_needles=8, seed=1)
    ta, aa = a.next()
    tb, ab = b.next()
    assert np.array_equal(ta, tb) and np.array_equal(aa, ab)
    assert ta.shape == (6, 401)
    counts = aa.sum(1)
    assert np.all(counts % data.KEY_DIGITS == 0) and np.all(counts >= data.KEY_DIGITS)


def test_position_edges():
    assert evaluate.position_edges(8192) == [0, 256, 512, 1024, 2048, 4096, 8192]
    assert evaluate.position_edges(16) == [0, 1, 2, 4, 8, 16]


def _tiny_model(attn_name):
    cfg = lm.model_config(128, "tiny", 256, layers=2)
    return lm.build_model(cfg, attn_name, seed=0)


@pytest.mark.parametrize("kind", ["sdpa", "moba-hybrid"])
def test_attention_timer_changes_nothing_and_times_forward_and_backward(kind):
    spec = lm.AttentionSpec(kind=kind, moba_chunk=32, moba_topk=2, full_layers=1)
    name = lm.register(spec, 2)
    timer = throughput.AttentionTimer()
    timed = timer.wrap(name)
    model = _tiny_model(name)
    tokens = torch.randint(0, 128, (2, 97))
    plain = lm.token_losses(model, tokens, name)
    model.set_attn_implementation(timed)
    timer.active = True
    losses = lm.token_losses(model, tokens, timed)
    torch.testing.assert_close(losses, plain)
    losses.mean().backward()
    assert len(timer.calls) == 2  # one per layer
    ms = timer.take_ms()
    assert ms["fwd"] > 0 and ms["bwd"] > 0 and timer.calls == []


def test_measure_reports_a_throughput_row():
    name = lm.register(lm.AttentionSpec(kind="moba", moba_chunk=32, moba_topk=2), 2)
    timer = throughput.AttentionTimer()
    timed = timer.wrap(name)
    model = _tiny_model(timed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    row = throughput.measure(model, opt, timed, timer, 128, 1, torch.device("cpu"), steps=1)
    assert row["status"] == "ok" and row["tokens_per_s"] > 0 and 0 < row["attn_share"] < 1


def test_moba_attention_runs_in_the_autocast_dtype(monkeypatch):
    """RoPE's f32 cos/sin promote q/k to f32 under autocast; the HF attention must hand the
    kernels the autocast dtype (the CUDA kernels take bf16/f16 only)."""
    seen = []
    run = hf._run_moba

    def spy(cfg, q, k, v, *args):
        seen.append((q.dtype, k.dtype, v.dtype))
        return run(cfg, q, k, v, *args)

    monkeypatch.setattr(hf, "_run_moba", spy)
    name = lm.register(lm.AttentionSpec(kind="moba", moba_chunk=32, moba_topk=2), 2)
    model = _tiny_model(name)
    tokens = torch.randint(0, 128, (1, 65))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = lm.token_losses(model, tokens, name)
    assert seen and all(d == (torch.bfloat16,) * 3 for d in seen)
    assert torch.isfinite(losses).all()


def test_study_and_moa_evaluation_end_to_end_on_cpu(tmp_path):
    """The GPU study's driver, shrunk: three variants trained for two steps, evaluated, the
    full-attention checkpoint saved, throughput and the length search; then train_lm.py
    evaluates that checkpoint with MoA and trains it one step."""
    train_lm = importlib.import_module("train_lm")
    out = tmp_path / "study"
    # A process of its own, as on the GPU machine (and OpenMP set up by the script).
    cmd = [sys.executable, os.path.join(EXAMPLE, "run_study.py"), "--preset", "cpu-smoke",
           "--out", str(out), "--steps", "2", "--time-budget", "600",
           "--throughput-lengths", "128,256", "--longest-max", "512", "--corpus-mb", "0.5",
           "--tokenizer-mb", "0.25", "--val-permille", "100", "--needle-depths", "0,1",
           "--needle-lengths", "128,256", "--pack-ckpt-mb", "0.5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert (out / "results.json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert proc.returncode == 0, (results["errors"], proc.stdout[-3000:])
    assert set(results["runs"]) == {"sdpa", "moba", "moba-hybrid"}
    for run in results["runs"].values():
        assert run["train"]["steps_done"] == 2
        assert np.isfinite(run["eval"]["val"]["loss"])
        assert np.asarray(run["eval"]["needle"]["accuracy"]).shape == (2, 2)
    kinds = {(r["attention"], r["seq_len"]) for r in results["throughput"] if r["status"] == "ok"}
    assert {("sdpa", 128), ("moba", 256), ("moba-hybrid", 256)} <= kinds
    assert set(results["longest"]) == {"sdpa", "moba", "moba-hybrid"}
    md = (out / "results.md").read_text()
    assert "## Bars" in md and "moba-hybrid final validation loss vs full" in md
    pytest.importorskip("matplotlib")
    assert (out / "loss_curves.png").stat().st_size > 0
    assert (out / "needle_heatmap.png").stat().st_size > 0
    assert results["checkpoint"]["parts"] and (out / "ckpt-full.tar.part00").exists()

    ckpt = out / "ckpt-full"
    cfg = json.loads((ckpt / "config.json").read_text())
    layers, heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"alphas": [[32.0] * heads] * layers,
                                "betas": [[0.25] * heads] * layers, "sink": 8}))
    rc = train_lm.main(["--init", str(ckpt), "--attention", "moa", "--plan", str(plan),
                        "--device", "cpu", "--seq-len", "128", "--batch-tokens", "256",
                        "--steps", "1", "--corpus-mb", "0.5", "--val-permille", "100",
                        "--val-windows", "2", "--needle-samples", "1", "--needle-depths", "0.5",
                        "--needle-lengths", "128", "--eval-every", "0",
                        "--out", str(tmp_path / "moa")])
    assert rc == 0
    metrics = json.loads((tmp_path / "moa" / "metrics.json").read_text())
    assert metrics["attention"]["kind"] == "moa" and metrics["train"]["steps_done"] == 1
    assert np.isfinite(metrics["eval"]["val"]["loss"])


def test_training_stops_at_the_deadline_and_says_so(tokenizer):
    train_lm = importlib.import_module("train_lm")
    args = argparse.Namespace(
        lr=1e-3, weight_decay=0.1, warmup=0.1, min_lr_frac=0.1, compile=False, answer_weight=4.0,
        log_every=1, eval_every=1)
    stream = (np.arange(5000) % 120 + 1).astype(np.uint16)  # the tiny model's vocabulary: 128
    batches = data.TrainBatches(stream, data.NeedleMaker(tokenizer), 64, 2, 0.0, 1, seed=0)
    model = _tiny_model("sdpa")
    calls = []
    hist = train_lm.train(model, "sdpa", batches, args, steps=50, device=torch.device("cpu"),
                          deadline=0.0, validate=lambda: calls.append(1) or 1.0)
    assert hist["truncated"] and hist["steps_done"] == 0 and hist["tokens_total"] == 0
    hist = train_lm.train(model, "sdpa", batches, args, steps=2, device=torch.device("cpu"),
                          deadline=float("inf"), validate=lambda: calls.append(1) or 1.0)
    assert not hist["truncated"] and hist["steps_done"] == 2 and len(hist["val"]) == 2
    assert hist["step"] == [1, 2] and all(np.isfinite(hist["loss"]))
