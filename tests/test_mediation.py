"""Component mediation of a steering effect (steerlab.evaluate.circuits): exact answers where the path is built by
hand (steering at one component's output; a head whose output projection is zeroed), patch_nodes equal to
one-cell activation patching, clear errors, no hook left."""

from __future__ import annotations

import pytest
import torch

from conftest import steerlab_hooks
from steerlab import Intervention
from steerlab._hooks import live_hooks
from steerlab.errors import DataError
from steerlab.evaluate import activation_patching, mediation, patch_nodes
from tiny import random_vector

PROMPTS = [[5, 17, 923, 44, 8, 11], [6, 18, 900, 45, 9]]


def metric(logits):
    """Logit of token 10 minus token 20 at the last position."""
    return logits[:, -1, 10] - logits[:, -1, 20]


def share(table, **where):
    return [r["recovery"] for r in table.where(**where)]


def test_steering_at_one_mlp_output_is_mediated_by_that_mlp_alone(tiny):
    """The vector is added to block 1's MLP output: patching that output carries the whole effect (1), everything
    upstream of it carries none (0), whatever the random weights; steering-only and ablating-only at that node are
    exact too, and a node upstream does nothing."""
    model = tiny("llama")
    steering = Intervention(random_vector(model, layers=(1,)), alpha=4.0, scale="absolute", site="mlp_out")
    table = mediation(model, None, PROMPTS, steering, metric, sites=("attn_out", "mlp_out", "head"))
    assert table.meta["method"] == "mediation" and table.meta["n_pairs"] == 2
    assert table.meta["clean_metric"] != pytest.approx(table.meta["corrupted_metric"])
    assert share(table, layer=1, site="mlp_out") == pytest.approx([1.0], abs=1e-4)
    upstream = share(table, layer=0) + share(table, layer=1, site="attn_out") + share(table, layer=1, site="head")
    assert len(upstream) == (2 + 4) + 1 + 4 and max(abs(v) for v in upstream) < 1e-5
    assert {r["position"] for r in table.records} == {"all"}
    downstream = share(table, layer=2) + share(table, layer=3)
    assert any(abs(v) > 1e-3 for v in downstream)  # the later blocks do read the change
    only = patch_nodes(model, None, PROMPTS, PROMPTS, metric, [(1, "mlp_out")], clean_steering=steering)
    assert only["recovery"] == pytest.approx(1.0, abs=1e-4) and only["n_pairs"] == 2
    removed = patch_nodes(model, None, PROMPTS, PROMPTS, metric, [(1, "mlp_out")], corrupted_steering=steering)
    assert removed["recovery"] == pytest.approx(1.0, abs=1e-4)
    assert removed["clean_metric"] == pytest.approx(only["corrupted_metric"])
    nothing = patch_nodes(model, None, PROMPTS, PROMPTS, metric, [(0, "mlp_out"), (1, "head", 2)],
                          clean_steering=steering)  # fmt: skip
    assert nothing["recovery"] == pytest.approx(0.0, abs=1e-5)


def test_a_head_with_a_zeroed_output_projection_mediates_nothing(tiny):
    """Head 1 of block 2 writes nothing (its slice of o_proj is zero): its mediated share is exactly 0, while the
    heads of that block together carry what the attention output carries."""
    model = tiny("llama")
    o_proj = model.model.layers[2].self_attn.o_proj
    size = o_proj.in_features // model.config.num_attention_heads
    with torch.no_grad():
        o_proj.weight[:, size : 2 * size] = 0
    steering = Intervention(random_vector(model, layers=(1,)), alpha=4.0, scale="absolute")
    table = mediation(model, None, PROMPTS, steering, metric, layers=[2], sites=("head", "attn_out"))
    assert share(table, head=1) == pytest.approx([0.0], abs=1e-5)
    assert max(abs(v) for v in share(table, site="head")) > 1e-3
    heads = mediation(model, None, PROMPTS, steering, metric, layers=[2], sites=("head",), heads=[0, 3])
    assert [r["head"] for r in heads.records] == [0, 3]
    assert share(heads) == pytest.approx(share(table, head=0) + share(table, head=3), abs=1e-6)
    together = patch_nodes(model, None, PROMPTS, PROMPTS, metric, [(2, "head", h) for h in range(4)],
                           clean_steering=steering)  # fmt: skip
    assert together["recovery"] == pytest.approx(share(table, site="attn_out")[0], abs=1e-4)


def test_patch_nodes_of_one_cell_is_activation_patching_of_that_cell(tiny):
    model = tiny("gpt2")
    clean, corrupted = [[5, 17, 923, 44, 8, 11]], [[5, 17, 924, 44, 8, 11]]
    table = activation_patching(model, None, clean, corrupted, metric, sites=("mlp_out", "head"), positions="all")
    for node in [(1, "mlp_out"), (2, "head", 3), (-1, "mlp_out")]:
        found = patch_nodes(model, None, clean, corrupted, metric, [node])
        layer = node[0] % model.config.num_hidden_layers
        where = {"layer": layer, "site": node[1]} | ({"head": node[2]} if len(node) == 3 else {})
        assert found["recovery"] == pytest.approx(share(table, **where)[0], abs=1e-5)
        assert found["nodes"] == [[layer, node[1], node[2] if len(node) == 3 else None]]


def test_bad_input_and_no_hook_left(tiny):
    model = tiny("llama")
    hooks = live_hooks()
    steering = Intervention(random_vector(model, layers=(1,)), alpha=4.0, scale="absolute")
    with pytest.raises(DataError, match="same mean with and without the steering.*no effect to mediate"):
        mediation(model, None, PROMPTS, steering, lambda logits: 0 * logits[:, -1, 10])
    with pytest.raises(DataError, match="give an Intervention"):
        mediation(model, None, PROMPTS, None, metric)
    with pytest.raises(DataError, match=r"node \(1, 'resid'\): expected \(layer, site\)"):
        patch_nodes(model, None, PROMPTS, PROMPTS, metric, [(1, "resid")], clean_steering=steering)
    with pytest.raises(DataError, match=r"node \(1, 'head'\)"):
        patch_nodes(model, None, PROMPTS, PROMPTS, metric, [(1, "head")], clean_steering=steering)
    with pytest.raises(DataError, match="nodes is empty"):
        patch_nodes(model, None, PROMPTS, PROMPTS, metric, [], clean_steering=steering)
    with pytest.raises(DataError, match=r"heads \[4\]: expected a non-empty list of head indices 0-3"):
        mediation(model, None, PROMPTS, steering, metric, sites=("head",), heads=[4])
    assert live_hooks() == hooks and steerlab_hooks(model) == 0


def test_smollm2_sentiment_steering_is_carried_downstream(smol):
    """On the real model: the sentiment vector at layer 10 raises logit(" great") - logit(" terrible"); components
    at or before layer 10 carry none of it (exactly), later ones some, and the steered input of block 11 all of it."""
    from steerlab import extract_vector, sentiment_pairs
    from steerlab.evaluate import logit_diff_metric

    model, tokenizer = smol
    vec = extract_vector(model, tokenizer, sentiment_pairs(), layers=[10])
    steering = Intervention(vec, alpha=0.15, layers=[10])
    prompts = ["The food at the new restaurant was", "To be honest, the movie was", "My new phone is"]
    metric = logit_diff_metric(tokenizer, " great", " terrible")
    table = mediation(model, tokenizer, prompts, steering, metric, layers=[9, 10, 20, 29], batch_size=8)
    assert table.meta["clean_metric"] > table.meta["corrupted_metric"]
    assert max(abs(v) for v in share(table, layer=9) + share(table, layer=10)) < 1e-6
    assert max(abs(v) for v in share(table, layer=20) + share(table, layer=29)) > 0.01
    whole = patch_nodes(model, tokenizer, prompts, prompts, metric, [(11, "resid_pre")], clean_steering=steering)
    assert whole["recovery"] == pytest.approx(1.0, abs=1e-4)
