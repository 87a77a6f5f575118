"""SAEs through sae-lens, bound to a model's site: trained on recorded activations, saved and loaded in sae-lens's
format, read as features, turned into steering vectors, and used to decompose a vector."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from steerlab import steer
from steerlab._record import record
from steerlab.errors import ArchitectureError, DataError
from steerlab.evaluate import neutral_texts
from steerlab.evaluate.sae import SparseAutoencoder, hook_name, parse_hook_name, train_sae
from tiny import random_vector

TEXTS = neutral_texts() * 2


_TRAINED: dict[str, SparseAutoencoder] = {}


@pytest.fixture
def trained(tiny, tokenizer):
    """A tiny llama and an SAE trained on its block-2 outputs (trained once per session)."""
    model = tiny("llama")
    if "sae" not in _TRAINED:
        _TRAINED["sae"] = train_sae(model, tokenizer, TEXTS, layer=2, width=64, k=4, epochs=20, batch_size=64)
    return model, tokenizer, _TRAINED["sae"]


def test_training_reports_what_it_learned(trained):
    model, tokenizer, sae = trained
    stats = sae.stats
    assert sae.layer == 2 and sae.site == "resid_post" and sae.width == 64
    assert stats["width"] == 64 and stats["k"] == 4 and stats["l0"] <= 4 and stats["tokens"] > 300
    assert 0.3 < stats["explained_variance"] <= 1.0 and 0 <= stats["dead_features"] < 64
    assert sae.resid_norm == pytest.approx(float(record(model, tokenizer, TEXTS, layers=[2], reduce="all")
                                                 .values[2].norm(dim=-1).mean()), rel=1e-4)  # fmt: skip


def test_a_saved_sae_loads_in_sae_lens_format_and_encodes_the_same(trained, tmp_path):
    from sae_lens import SAE

    model, tokenizer, sae = trained
    folder = sae.save(tmp_path / "sae")
    assert SAE.load_from_disk(folder).cfg.metadata.hook_name == "blocks.2.hook_resid_post"  # plain sae-lens reads it
    loaded = SparseAutoencoder.load(folder, model)
    assert (loaded.layer, loaded.site, loaded.resid_norm) == (2, "resid_post", sae.resid_norm)
    assert loaded.stats == sae.stats  # the training statistics travel in its metadata
    acts = record(model, tokenizer, TEXTS[:4], layers=[2], reduce="all").values[2]
    torch.testing.assert_close(loaded.encode(acts), sae.encode(acts), atol=1e-5, rtol=1e-5)


def test_a_feature_steers_along_its_decoder_row(trained):
    model, tokenizer, sae = trained
    vec = sae.feature_vector(5)
    assert vec.layers == [2] and vec.method == "sae_feature" and vec.extra["sae_feature"] == 5
    torch.testing.assert_close(vec.directions[2], sae.directions()[5])
    ids = torch.tensor([tokenizer("The weather was mild")["input_ids"]])
    with torch.no_grad():
        plain = model(input_ids=ids, output_hidden_states=True).hidden_states[3]
        with steer(model, vec, alpha=0.5, scale="absolute"):
            steered = model(input_ids=ids, output_hidden_states=True).hidden_states[3]
    torch.testing.assert_close(steered - plain, (0.5 * vec.directions[2]).expand_as(plain), atol=1e-5, rtol=0)
    with pytest.raises(DataError, match="features 0-63"):
        sae.feature_vector(64)


def test_a_vector_made_of_one_feature_decomposes_into_it(trained):
    _, _, sae = trained
    vec = sae.feature_vector(7)
    rows = sae.decompose(3.0 * vec, top=3)
    assert rows[0]["feature"] == 7 and rows[0]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert [r["sign"] for r in rows] == ["+"] * 3 + ["-"] * 3
    assert rows[3]["cosine"] <= rows[4]["cosine"] <= rows[5]["cosine"] < rows[2]["cosine"]
    table = sae.decomposition({"seven": 3.0 * vec, "five": sae.feature_vector(5)}, top=3)
    assert table.kind == "sae_features" and table.meta["sae_layer"] == 2 and len(table.records) == 12
    assert table.where(vector="seven") == [{"vector": "seven", **row} for row in rows]
    assert table.where(vector="five", rank=0, sign="+")[0]["feature"] == 5


def test_top_activating_tokens_are_the_largest_activations(trained):
    model, tokenizer, sae = trained
    per_text = sae.activations(model, tokenizer, TEXTS[:6])
    feature = int(torch.cat([a[1:] for a in per_text]).sum(0).argmax())
    top = sae.top_activating(model, tokenizer, TEXTS[:6], feature, k=3)
    values = sorted((float(v) for a in per_text for v in a[1:, feature] if v > 0), reverse=True)[:3]
    assert [r["activation"] for r in top] == pytest.approx(values)
    assert all(r["position"] >= 1 and r["token"] in r["context"] for r in top)
    assert sae.top_activating(model, tokenizer, TEXTS[:6], feature, k=3, activations=per_text) == top  # reused
    with pytest.raises(DataError, match="6 activations for 5 texts"):
        sae.top_activating(model, tokenizer, TEXTS[:5], feature, activations=per_text)


def test_an_sae_that_does_not_fit_the_model_is_refused(trained):
    from sae_lens import TopKSAE, TopKSAEConfig

    model, _, _ = trained
    wide = TopKSAE(TopKSAEConfig(d_in=48, d_sae=96, k=4))
    wide.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    with pytest.raises(ArchitectureError, match="width 48"):
        SparseAutoencoder.bind(wide, model)
    deep = TopKSAE(TopKSAEConfig(d_in=32, d_sae=96, k=4))
    deep.cfg.metadata.hook_name = "blocks.9.hook_resid_post"
    with pytest.raises(ArchitectureError, match="block 9"):
        SparseAutoencoder.bind(deep, model)
    deep.cfg.metadata.hook_name = "blocks.1.attn.hook_z"
    with pytest.raises(ArchitectureError, match="hook_z"):
        SparseAutoencoder.bind(deep, model)
    with pytest.raises(DataError, match="sae_id"):
        SparseAutoencoder.load("no-such-folder-or-release", model)


def test_hook_names_follow_transformer_lens():
    assert hook_name(12, "resid_post") == "blocks.12.hook_resid_post"
    assert parse_hook_name("blocks.3.hook_mlp_out") == (3, "mlp_out")
    assert all(parse_hook_name(hook_name(4, site)) == (4, site) for site in ("resid_pre", "attn_out"))


def test_cli_trains_decomposes_and_writes_a_feature(tmp_path, tokenizer):
    from typer.testing import CliRunner

    from steerlab import SteeringVector
    from steerlab.cli import app
    from steerlab.evaluate import ResultTable
    from tiny import SMOL_VOCAB, make_tiny

    folder = tmp_path / "tiny"
    make_tiny("llama", vocab=SMOL_VOCAB).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    runner = CliRunner()
    common = ["--model", str(folder)]
    sae_dir, feature_file = str(tmp_path / "sae"), str(tmp_path / "f3.safetensors")
    sizes = ["--width", "64", "--k", "4", "--batch-size", "64", "--epochs", "4"]
    trained = runner.invoke(app, ["sae", "train", "--texts", str(texts), "--layer", "1", "--out", sae_dir, *sizes,
                                  *common])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert "explained variance" in trained.stdout and (tmp_path / "sae" / "cfg.json").exists()
    wrote = runner.invoke(app, ["sae", "feature", "--sae", sae_dir, "--feature", "3", "--out", feature_file,
                                *common])  # fmt: skip
    assert wrote.exit_code == 0, wrote.output
    vec = SteeringVector.load(tmp_path / "f3.safetensors")
    assert vec.layers == [1] and vec.resid_norm and vec.extra["sae_feature"] == 3
    read = runner.invoke(app, ["sae", "decompose", "--sae", sae_dir, "--vector", feature_file, "--top", "2",
                               "--texts", str(texts), *common])  # fmt: skip
    assert read.exit_code == 0, read.output
    assert read.stdout.splitlines()[0].split()[:5] == ["+1", "feature", "3", "cosine", "+1.000"]
    as_json = runner.invoke(app, ["sae", "decompose", "--sae", sae_dir, "--vector", feature_file, "--top", "2",
                                  "--json", str(tmp_path / "features.json"), *common])  # fmt: skip
    assert as_json.exit_code == 0, as_json.output
    assert ResultTable.load(tmp_path / "features.json").where(rank=0, sign="+")[0]["feature"] == 3
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("A quiet road ran past the old mill.\nNobody knew the answer.\n", encoding="utf-8")
    target = runner.invoke(app, ["sae", "target", "--sae", sae_dir, "--feature", "3", "--texts", str(texts),
                                 "--samples", "40", "--out", str(tmp_path / "ts.safetensors"),
                                 "--compare-texts", str(held_out), "--json", str(tmp_path / "ts.json"),
                                 *common])  # fmt: skip
    assert target.exit_code == 0, target.output
    assert "held-out R^2" in target.stdout and "sae_ts, layer 1" in target.stdout
    targeted = SteeringVector.load(tmp_path / "ts.safetensors")
    assert targeted.method == "sae_targeted" and targeted.extra["sae_targets"] == [3]
    assert len(ResultTable.load(tmp_path / "ts.json").records) == 4
    above = runner.invoke(app, ["sae", "target", "--sae", sae_dir, "--feature", "3", "--texts", str(texts),
                                "--layer", "2", "--out", str(tmp_path / "no.safetensors"), *common])  # fmt: skip
    assert above.exit_code == 1 and "above the SAE's layer" in above.output
    bad = runner.invoke(app, ["sae", "feature", "--sae", str(tmp_path / "sae"), "--feature", "64",
                              "--out", str(tmp_path / "x.safetensors"), *common])  # fmt: skip
    assert bad.exit_code == 1 and "features 0-63" in bad.output


def test_attribution_splits_the_first_order_effect_over_features(trained):
    from steerlab import Intervention
    from steerlab.evaluate import logit_diff_metric

    model, tokenizer, sae = trained
    metric = logit_diff_metric(tokenizer, " the", " a")
    prompts = ["The weather was", "She walked to the", "A report lists the"]
    vec = random_vector(model, layers=(2,), scale=1.0)
    flags = [p.requires_grad for p in model.parameters()]
    small = sae.attribute(model, tokenizer, prompts, Intervention(vec, alpha=0.02, scale="absolute"), metric,
                          top=64, batch_size=2)  # fmt: skip
    assert small["n"] == 3 and len(small["features"]) == 64
    assert [p.requires_grad for p in model.parameters()] == flags  # frozen for the gradient only, then given back
    assert all(p.grad is None for p in model.parameters())
    assert sum(f["attribution"] for f in small["features"]) == pytest.approx(small["through_features"], abs=1e-6)
    assert small["through_features"] + small["error"] == pytest.approx(small["first_order"], abs=1e-9)
    # A small push: the first-order estimate is the measured change of the metric.
    assert small["first_order"] == pytest.approx(small["effect"], rel=0.05, abs=1e-4) and small["effect"] != 0
    sizes = [abs(f["attribution"]) for f in small["features"]]
    assert sizes == sorted(sizes, reverse=True)
    with pytest.raises(DataError, match="layer 2"):
        sae.attribute(model, tokenizer, prompts, Intervention(random_vector(model, layers=(1,)), alpha=0.1,
                                                              scale="absolute"), metric)  # fmt: skip


def test_quality_on_the_training_texts_is_what_training_reported(trained):
    model, tokenizer, sae = trained
    found = sae.quality(model, tokenizer, TEXTS)
    for key in ("tokens", "dead_features"):
        assert found[key] == sae.stats[key]
    for key in ("l0", "explained_variance"):
        assert found[key] == pytest.approx(sae.stats[key], abs=1e-5)
    acts = record(model, tokenizer, TEXTS[:3], layers=[2], reduce="all").values[2]
    pre, fired = sae.pre_activations(acts), sae.encode(acts)
    assert pre.shape == fired.shape and bool((pre[fired > 0] > 0).all())  # what fires was positive before TopK
    assert int((pre != 0).sum(-1).min()) > sae.stats["k"]  # dense where the activations keep k per token
    held_out = sae.quality(model, tokenizer, ["A quiet road ran past the old mill.", "Nobody knew the answer."])
    assert held_out["tokens"] < 30 and held_out["explained_variance"] < 1.0


def _mean_features_alone(model, tokenizer, sae, texts, steering):
    """Each text run alone, steered or not; every token but the first encoded; the mean over all."""
    from steerlab import steer

    rows = []
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad(), steer(model, steering) if steering is not None else torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[sae.layer + 1][0, 1:]
        rows.append(sae.encode(hidden))
    return torch.cat(rows).mean(0)


def test_a_feature_effect_is_the_change_of_mean_feature_activations(trained):
    from steerlab import Intervention
    from steerlab.evaluate import feature_effect

    model, tokenizer, sae = trained
    texts = TEXTS[:5]
    push = Intervention(random_vector(model, layers=(1,), scale=1.0), alpha=0.5, scale="absolute")
    measured = feature_effect(model, tokenizer, sae, texts, push)  # all texts padded into one batch
    expected = _mean_features_alone(model, tokenizer, sae, texts, push) - _mean_features_alone(
        model, tokenizer, sae, texts, None
    )
    torch.testing.assert_close(measured, expected, atol=1e-4, rtol=1e-4)
    assert float(measured.abs().max()) > 1e-3  # the push reached the SAE's layer


def test_targeted_steering_fits_the_effects_and_hits_its_feature_more_cleanly_than_the_decoder_row(trained):
    from steerlab import Intervention, steer
    from steerlab.evaluate import compare_targeting, feature_effect, feature_effects

    model, tokenizer, sae = trained
    texts = TEXTS[:8]
    effects = feature_effects(model, tokenizer, sae, texts, layer=1, alpha=0.3, samples=160, directions_per_batch=16)
    assert effects.matrix.shape == (64, 32) and effects.layer == 1 and effects.samples == 160
    assert effects.measure == "pre" and effects.r2 > 0.8  # a linear map predicts held-out directions' effects
    # The feature that moves most under the pushes measured: one the fit can target.
    feature = int(effects.matrix.norm(dim=1).argmax())
    targeted = effects.targeted_vector([feature])
    assert targeted.layers == [1] and targeted.method == "sae_targeted"
    assert targeted.extra["sae_targets"] == [feature] and targeted.extra["predicted_target_effect"] > 0

    def clean(vec, measure):
        """Target effect over the size of the effect on every other feature, measured at the same strength."""
        steering = Intervention(vec, alpha=0.3, layers=[1])
        effect = feature_effect(model, tokenizer, sae, texts, steering, measure=measure)
        others = torch.cat([effect[:feature], effect[feature + 1 :]])
        return float(effect[feature]), float(effect[feature]) / float(others.norm())

    row = sae.directions()[feature]
    decoder_row = dataclasses.replace(targeted, directions={1: row / row.norm()}, method="sae_feature")
    (target_ts, ratio_ts), (_, ratio_row) = clean(targeted, "pre"), clean(decoder_row, "pre")
    assert target_ts > 0 and ratio_ts > ratio_row  # cleaner where it was fitted...
    (fired_ts, fired_ratio_ts), (_, fired_ratio_row) = clean(targeted, "post"), clean(decoder_row, "post")
    assert fired_ts > 0 and fired_ratio_ts > fired_ratio_row  # ...and in what fires
    # The prediction is of the size steering along the targeted vector measures.
    predicted = float(effects.predict(targeted.directions[1])[feature])
    assert target_ts / 2 < predicted < target_ts * 2
    on_activations = feature_effects(model, tokenizer, sae, texts, layer=1, alpha=0.3, samples=40, measure="post")
    assert on_activations.measure == "post" and on_activations.matrix.shape == (64, 32)
    with pytest.raises(DataError, match="expected 'pre'"):
        feature_effect(model, tokenizer, sae, texts, Intervention(targeted, alpha=0.3), measure="both")
    table = compare_targeting(model, tokenizer, effects, [feature], TEXTS[8:14], alpha=0.3, kl_texts=texts[:2])
    assert table.kind == "sae_targeting" and table.meta["n_texts"] == 6 and table.meta["effects"]["r2"] == effects.r2
    assert [r["arm"] for r in table.records] == ["sae_ts, layer 1", "decoder_row, layer 1", "decoder_row, layer 2",
                                                 "random, layer 1"]  # fmt: skip
    assert all(r["kl"] > 0 and r["others"] > 0 for r in table.records)
    assert table.records[0]["target_pre"] == pytest.approx(
        float(feature_effect(model, tokenizer, sae, TEXTS[8:14], Intervention(targeted, alpha=0.3), measure="pre")[
            feature]), abs=1e-5)  # fmt: skip
    with steer(model, Intervention(targeted, alpha=0.3)):
        pass  # a targeted vector steers like any other
    with pytest.raises(DataError, match="above the SAE's layer"):
        feature_effects(model, tokenizer, sae, texts, layer=3, samples=10)
    with pytest.raises(DataError, match="distinct feature indices"):
        effects.targeted_vector([64])
