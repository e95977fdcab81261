"""moba.MoaPlan: JSON through the C++ MoaPlan, per-layer access."""

import json

import moba


def test_roundtrip(tmp_path):
    plan = moba.MoaPlan([[1.0, 2.5], [3.0, 4.0]], [[0.5, 0.25], [0.0, 1.0]], sink=16)
    path = tmp_path / "plan.json"
    plan.save(path)
    loaded = moba.MoaPlan.load(path)
    assert loaded == plan and loaded.num_layers == 2
    assert moba.MoaPlan.from_json(plan.to_json()) == plan
    assert loaded.layer(1) == ([3.0, 4.0], [0.0, 1.0], 16)
    assert loaded.layer(-1) == loaded.layer(1)
    assert json.loads(plan.to_json())["sink"] == 16


def test_reads_nested_and_per_layer_formats():
    nested = json.dumps({"plan": {"alphas": [[1.0, 2.0]], "betas": [[0.1, 0.2]], "sink": 8}})
    p = moba.MoaPlan.from_json(nested)
    assert p.alphas == [[1.0, 2.0]] and p.sink == 8
    per_layer = moba.MoaPlan.from_json(plan_per_layer())
    assert per_layer.num_layers == 2


def plan_per_layer():
    return json.dumps([{"alphas": [1.0, 2.0], "betas": [0.0, 0.1]},
                       {"alphas": [3.0, 4.0], "betas": [0.2, 0.3]}])


def test_validate_and_layer_feed_the_op():
    plan = moba.MoaPlan([[2.0, 9.0]], [[0.1, 0.3]], sink=4).validate(num_layers=1, num_heads=2)
    import torch

    q = torch.randn(30, 2, 64)
    cu = torch.tensor([0, 30], dtype=torch.int32)
    alphas, betas, sink = plan.layer(0)
    out = moba.moa_attn(q, q, q, cu, 30, alphas, betas, sink=sink)
    assert out.shape == q.shape
