"""Activation and attribution patching (steerlab.evaluate.patching): exact answers where the dependency is built by
hand, agreement of the two methods in the linear regime, clear errors on bad input, no hook or gradient left."""

from __future__ import annotations

import pytest
import torch

from conftest import steerlab_hooks
from steerlab._hooks import live_hooks
from steerlab.errors import ArchitectureError, DataError
from steerlab.evaluate import activation_patching, attribution_patching, logit_diff_metric, patching_error
from tiny import make_tiny

# Two pairs of one length; clean and corrupted differ only at position CHANGED.
CHANGED = 2
CLEAN = [[5, 17, 923, 44, 8, 11], [6, 18, 900, 45, 9, 12]]
CORRUPTED = [[5, 17, 924, 44, 8, 11], [6, 18, 901, 45, 9, 12]]
LAST = len(CLEAN[0]) - 1


def metric(logits):
    """Logit of token 10 minus token 20 at the last position."""
    return logits[:, -1, 10] - logits[:, -1, 20]


def recoveries(table, **where):
    return [r["recovery"] for r in table.where(**where)]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "falcon"])
def test_a_single_changed_token_is_found_where_it_must_be(tiny, arch):
    """The only difference is one token: before it nothing differs (recovery 0), the block input at that token in
    layer 0 is the whole difference (1), and at the last block only the last position reaches the logits (1 there,
    0 elsewhere). Exact facts of any causal model, whatever its random weights."""
    model = tiny(arch)
    sites = ("resid_pre", "attn_out", "mlp_out", "resid_post", "head")
    table = activation_patching(model, None, CLEAN, CORRUPTED, metric, sites=sites, batch_size=64)
    last = model.config.num_hidden_layers - 1
    assert len(table.records) == 4 * 4 * len(CLEAN[0]) + 4 * len(CLEAN[0]) * 4  # 4 sites + "head" with 4 heads
    assert table.meta["n_pairs"] == 2 and table.meta["method"] == "activation"
    before = [r["recovery"] for r in table.records if r["position"] < CHANGED]
    assert before and max(abs(v) for v in before) < 1e-4
    assert recoveries(table, layer=0, site="resid_pre", position=CHANGED) == pytest.approx([1.0], abs=1e-4)
    assert recoveries(table, layer=0, site="resid_pre", position=CHANGED + 1) == pytest.approx([0.0], abs=1e-4)
    final = recoveries(table, layer=last, site="resid_post")
    assert final == pytest.approx([0.0] * LAST + [1.0], abs=1e-4)
    everywhere = activation_patching(model, None, CLEAN, CORRUPTED, metric, sites=("resid_pre", "resid_post"),
                                     positions="all")  # fmt: skip
    assert [r["position"] for r in everywhere.records] == ["all"] * len(everywhere.records)
    assert recoveries(everywhere) == pytest.approx([1.0] * len(everywhere.records), abs=1e-4)
    # Attribution is exact on the same facts where they hold by construction (nothing differs before the token).
    estimate = attribution_patching(model, None, CLEAN, CORRUPTED, metric, sites=sites)
    assert max(abs(r["recovery"]) for r in estimate.records if r["position"] < CHANGED) < 1e-4
    assert estimate.meta["method"] == "attribution"
    assert estimate.meta["corrupted_metric"] == pytest.approx(table.meta["corrupted_metric"], rel=1e-4)


def test_attribution_matches_activation_patching_in_the_linear_regime():
    """Corrupted = clean plus a tiny change of one token's embedding (float64): every activation moves little, the
    metric is linear in it to first order, and the gradient estimate must equal the real patching of every cell."""
    model = make_tiny("llama").double()
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        gen = torch.Generator().manual_seed(3)
        for a, b in ((923, 924), (900, 901)):
            emb[b] = emb[a] + 1e-3 * emb[a].norm() * torch.randn(emb.shape[1], generator=gen, dtype=emb.dtype)
    sites = ("resid_pre", "attn_out", "mlp_out", "resid_post", "head")
    exact = activation_patching(model, None, CLEAN, CORRUPTED, metric, sites=sites)
    estimate = attribution_patching(model, None, CLEAN, CORRUPTED, metric, sites=sites)
    error = patching_error(exact, estimate)
    assert error["cells"] == len(exact.records)
    assert error["max_abs"] < 0.02 and error["correlation"] > 0.999, error


def test_bad_input_is_refused_with_what_was_expected(tiny, tokenizer):
    model = tiny("llama")
    with pytest.raises(DataError, match=r"pair 1: .* is 6 tokens but the corrupted .* is 5.*same token length"):
        activation_patching(model, None, CLEAN, [CORRUPTED[0], CORRUPTED[1][:5]], metric)
    with pytest.raises(DataError, match="same mean on the clean and the corrupted prompts.*no difference to patch"):
        attribution_patching(model, None, CLEAN, CORRUPTED, lambda logits: logits[:, 0, 10])
    with pytest.raises(DataError, match="same mean"):
        activation_patching(model, None, CLEAN, CLEAN, metric)
    with pytest.raises(ArchitectureError, match=r"unknown patching site\(s\) \['resid'\]; expected some of"):
        activation_patching(model, None, CLEAN, CORRUPTED, metric, sites=("resid",))
    with pytest.raises(DataError, match=r"one value per row, a tensor of shape \(2,\); it returned \(2, \d+\)"):
        activation_patching(model, None, CLEAN, CORRUPTED, lambda logits: logits[:, -1])
    with pytest.raises(DataError, match="every prompt must have the same token length.*positions='all'"):
        activation_patching(model, None, [[1, 2, 3], [1, 2]], [[1, 2, 4], [1, 3]], metric)
    with pytest.raises(DataError, match="as many corrupted prompts as clean ones"):
        activation_patching(model, None, CLEAN, CORRUPTED[:1], metric)
    with pytest.raises(DataError, match="positions must be 'each', 'all' or a list of indices"):
        activation_patching(model, None, CLEAN, CORRUPTED, metric, positions="last")
    with pytest.raises(DataError, match=r"positions \[6\]: expected a non-empty list of indices into the 6-token"):
        activation_patching(model, None, CLEAN, CORRUPTED, metric, positions=[6])
    with pytest.raises(DataError, match=r"heads=\[1\] selects attention heads, which needs the 'head' site"):
        attribution_patching(model, None, CLEAN, CORRUPTED, metric, heads=[1])
    with pytest.raises(ArchitectureError, match="out of range"):
        activation_patching(model, None, CLEAN, CORRUPTED, metric, layers=[7])
    with pytest.raises(ArchitectureError, match="site 'attn_out' is not available"):
        activation_patching(tiny("bloom"), None, CLEAN, CORRUPTED, metric, sites=("attn_out",))
    with pytest.raises(DataError, match="' Mary and' is 2 tokens"):
        logit_diff_metric(tokenizer, " Mary and", " John")
    # Pairs of different lengths from one another are fine with positions="all" (left padded, position ids kept).
    text = activation_patching(model, tokenizer, ["The cat sat on", "A dog ran"], ["The dog sat on", "A cat ran"],
                               logit_diff_metric(tokenizer, " the", " a"), positions="all", layers=[0, -1])  # fmt: skip
    assert recoveries(text, layer=3) == pytest.approx([1.0], abs=1e-4)


@pytest.mark.parametrize("method", [activation_patching, attribution_patching])
def test_chosen_positions_and_heads_are_those_cells_of_the_full_table(tiny, method):
    """positions=[...] (negative from the end) and heads=[...] give exactly those cells of the whole table."""
    model = tiny("llama")
    full = method(model, None, CLEAN, CORRUPTED, metric, sites=("resid_post", "head"), layers=[1, 2])
    some = method(model, None, CLEAN, CORRUPTED, metric, sites=("resid_post", "head"), layers=[1, 2],
                  positions=[CHANGED, -1], heads=[3, 0])  # fmt: skip
    assert {r["position"] for r in some.records} == {CHANGED, LAST}
    assert [r["head"] for r in some.where(site="head", layer=1, position=LAST)] == [3, 0]
    assert some.meta["positions"] == [CHANGED, LAST] and some.meta["heads"] == [3, 0]
    for r in some.records:
        twin = full.where(layer=r["layer"], site=r["site"], position=r["position"], head=r["head"])
        assert r["recovery"] == pytest.approx(twin[0]["recovery"], abs=1e-6)


@pytest.mark.parametrize("method", [activation_patching, attribution_patching])
def test_no_hook_or_gradient_is_left_also_when_the_metric_raises(tiny, method):
    model = tiny("gpt2")
    calls = []

    def failing(logits):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("metric failed")
        return metric(logits)

    hooks, grad_mode = live_hooks(), torch.is_grad_enabled()
    with pytest.raises(RuntimeError, match="metric failed"):
        method(model, None, CLEAN, CORRUPTED, failing, sites=("resid_post", "head"), batch_size=1)
    assert live_hooks() == hooks and steerlab_hooks(model) == 0
    method(model, None, CLEAN, CORRUPTED, metric, sites=("resid_post", "head"))
    assert live_hooks() == hooks and steerlab_hooks(model) == 0
    assert all(p.grad is None for p in model.parameters()) and torch.is_grad_enabled() == grad_mode
    assert not model.training


def test_smollm2_ioi_attribution_error_is_reported(smol):
    """Indirect-object prompts with the names swapped: SmolLM2 prefers the indirect object on the clean prompts,
    the last block's last position carries it all, and the gradient estimate's error is reported."""
    model, tokenizer = smol
    names = [(" Mary", " John"), (" Alice", " Bob"), (" Sarah", " Tom")]
    template = "When{a} and{b} went to the store,{b} gave a drink to"
    clean = [template.format(a=a, b=b) for a, b in names]
    corrupted = [template.format(a=b, b=a) for a, b in names]
    metric = logit_diff_metric(tokenizer, [a for a, _ in names], [b for _, b in names])
    layers = [0, 10, 20, 29]
    exact = activation_patching(model, tokenizer, clean, corrupted, metric, layers=layers, batch_size=32)
    estimate = attribution_patching(model, tokenizer, clean, corrupted, metric, layers=layers)
    error = patching_error(exact, estimate)
    print(f"SmolLM2 IOI, resid_post at layers {layers}: attribution vs activation patching {error}")
    print("clean", exact.meta["clean_metric"], "corrupted", exact.meta["corrupted_metric"])
    assert exact.meta["clean_metric"] > 0 > exact.meta["corrupted_metric"]
    final = recoveries(exact, layer=29)
    assert final[-1] == pytest.approx(1.0, abs=1e-3) and max(abs(v) for v in final[:-1]) < 1e-3
    assert exact.where(layer=0, position=1)[0]["token"] in (" Mary", " Alice", " Sarah")
    assert error["cells"] == len(exact.records) and error["correlation"] > 0.4


def test_cli_patch_writes_tables_and_a_report_and_refuses_bad_pairs(tmp_path, tokenizer):
    """`steerlab patch` on a tiny model with SmolLM2's vocabulary and our IOI pairs (ABC corruption: only the
    repeated name differs): before that token nothing can be recovered, the last block's last position recovers all;
    bad pair files and a metric that cannot separate the prompts end with one error line and exit code 1."""
    import json

    from typer.testing import CliRunner

    from steerlab.cli import app
    from steerlab.datasets import IOI_TEMPLATES, ioi_pairs, save_patch_pairs
    from steerlab.evaluate import ResultTable
    from tiny import SMOL_VOCAB

    folder = tmp_path / "tiny"
    make_tiny("llama", vocab=SMOL_VOCAB).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    pairs = ioi_pairs(4, templates=IOI_TEMPLATES[:1], tokenizer=tokenizer)
    path = save_patch_pairs(pairs, tmp_path / "ioi.jsonl")
    runner = CliRunner()
    common = ["--model", str(folder)]
    prefix, report = tmp_path / "runs" / "ioi", tmp_path / "ioi.html"
    done = runner.invoke(app, ["patch", "--pairs", str(path), "--out", str(prefix), "--method", "both", "--sites",
                               "resid_post,head", "--layers", "0,3", "--heads", "0,2", "--report", str(report),
                               *common])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "4 pairs: logit_diff" in done.stdout and "attribution vs activation over" in done.stdout
    exact = ResultTable.load(prefix.with_name("ioi-activation.json"))
    assert prefix.with_name("ioi-attribution.csv").exists() and report.read_text().count("<img") >= 2
    s2 = 9  # "When A and B went to the store, S": the repeated name's position (no BOS for SmolLM2)
    assert exact.where(layer=0, site="resid_post", position=s2)[0]["token"] == pairs[0].wrong
    assert max(abs(r["recovery"]) for r in exact.records if r["position"] < s2) < 1e-4
    final = [r["recovery"] for r in exact.where(layer=3, site="resid_post")]
    assert final[-1] == pytest.approx(1.0, abs=1e-4) and {r["head"] for r in exact.where(site="head")} == {0, 2}
    last = runner.invoke(app, ["patch", "--pairs", str(path), "--out", str(prefix), "--positions", "-1", *common])
    assert last.exit_code == 0, last.output
    assert {r["position"] for r in ResultTable.load(prefix.with_suffix(".json")).records} == {13}

    def fails(rows, *extra):
        bad = tmp_path / "bad.jsonl"
        bad.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        result = runner.invoke(app, ["patch", "--pairs", str(bad), "--out", str(tmp_path / "x"), *extra, *common])
        assert result.exit_code == 1 and "Traceback" not in result.output
        return " ".join(result.output.split())

    row = {"clean": pairs[0].clean, "corrupted": pairs[0].corrupted, "correct": " Mary", "wrong": " John"}
    longer = dict(row, corrupted=pairs[0].corrupted.replace(" gave", " then gave"))
    assert "is 14 tokens but the corrupted" in fails([row, longer]) and "same token length" in fails([row, longer])
    assert "lacks ['wrong']" in fails([{k: v for k, v in row.items() if k != "wrong"}])
    assert "no difference to patch" in fails([dict(row, wrong=" Mary")])
    assert "' Mary and' is 2 tokens" in fails([dict(row, correct=" Mary and")])
    assert "--positions 'last' is not each, all or a list" in fails([row], "--positions", "last")
    assert "unknown patching site(s) ['resid']" in fails([row], "--sites", "resid")
