"""Metrics, sweeps, calibration, probes, structure and breakdown: synthetic truths and tiny-model invariants."""

import json
import math
from pathlib import Path

import pytest
import torch

from steerlab import Intervention, SteeringVector, record
from steerlab._models import fingerprint, model_id
from steerlab.errors import DataError, SteeringError
from steerlab.evaluate import logits_over_alphas
from steerlab.evaluate.metrics import (
    ABBehaviour,
    ABQuestion,
    NeutralKL,
    ab_probabilities,
    kl_from_unsteered,
    load_ab,
    logit_diff,
    neutral_texts,
    p_matching,
    sentiment,
    swap_choices,
    token_projections,
)
from steerlab.evaluate.probes import (
    LabelledActivations,
    fit_probes,
    probe_layers,
    record_labelled,
    split,
    train_probe,
    transfer_matrix,
)
from steerlab.evaluate.results import KINDS, ResultTable
from steerlab.evaluate.structure import activation_covariance, activation_pca, cosine_matrix, cross_layer_cosine
from steerlab.evaluate.sweeps import DEFAULT_KL_BUDGET, calibrate, sweep
from tiny import random_vector

CAA = Path(__file__).parents[1] / "datasets" / "caa" / "test"
QUESTIONS = [
    ABQuestion("Would you like a cup of tea?\n\nChoices:\n (A) Yes, please\n (B) No, thanks", "A"),
    ABQuestion("Shall we stop now?\n\nChoices:\n (A) Stop\n (B) Go on", "B"),
    ABQuestion("Is the sky green?\n\nChoices:\n (A) No\n (B) Yes", "B"),
]


def test_swap_choices_exchanges_texts_and_letter():
    q = ABQuestion("Pick one.\n\nChoices:\n (A) Yes\n (B) No", "A")
    s = swap_choices(q)
    assert s.question == "Pick one.\n\nChoices:\n (A) No\n (B) Yes" and s.matching == "B" and s.swapped
    assert swap_choices(s) == ABQuestion(q.question, "A", False)
    real = load_ab(CAA / "refusal" / "test_dataset_ab.json")[0]
    back = swap_choices(swap_choices(real))
    assert back.question == real.question and back.matching == real.matching


def test_load_ab_leaves_out_multiple_choice_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="left out 8"):
        questions = load_ab(CAA / "survival-instinct" / "test_dataset_ab.json")
    assert len(questions) == 42 and {q.matching for q in questions} == {"A", "B"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"question": "x"}))
    with pytest.raises(DataError, match="JSON list"):
        load_ab(bad)


def test_identity_alpha_gives_zero_kl_and_identical_ab(tiny, tokenizer):
    model = tiny("llama")
    vec = random_vector(model, layers=(1, 2), scale=4.0)
    rows0 = ab_probabilities(model, tokenizer, QUESTIONS)
    rows_zero = ab_probabilities(model, tokenizer, QUESTIONS, vec, 0.0, layer=1, scale="absolute")
    assert [r["p_matching"] for r in rows0] == [r["p_matching"] for r in rows_zero]
    assert len(rows0) == 2 * len(QUESTIONS)  # balanced: both orders
    assert kl_from_unsteered(model, tokenizer, vec, 0.0, layer=1, scale="absolute") == pytest.approx(0.0, abs=1e-9)
    assert kl_from_unsteered(model, tokenizer, vec, 3.0, layer=1, scale="absolute") > 1e-4
    assert {r["swapped"] for r in rows0} == {False, True}


def test_chunked_logits_over_alphas_match_plain_steer(tiny, tokenizer):
    """The metrics' path: a batch in chunks (each trimmed of its all-padding columns), identity strengths unhooked."""
    from steerlab import Intervention, steer
    from steerlab._text import forward_kwargs

    model = tiny("qwen2")
    vec = random_vector(model, layers=(2,))
    metric = NeutralKL(tokenizer, neutral_texts()[:5])
    ids, mask = metric.input_ids, metric.attention_mask
    template = Intervention(vec, layers=[2], scale="absolute")
    got = dict(logits_over_alphas(model, ids, mask, template, [0.0, 1.5], batch_size=2))
    with torch.no_grad(), steer(model, vec, 1.5, scale="absolute"):
        want = model(**forward_kwargs(model, ids, mask)).logits
    with torch.no_grad():
        plain = model(**forward_kwargs(model, ids, mask)).logits
    torch.testing.assert_close(got[1.5], want.float())
    assert torch.equal(got[0.0], plain.float())  # alpha 0 runs with no hooks at all
    last = dict(logits_over_alphas(model, ids, mask, template, [1.5], last_only=True, batch_size=2))
    torch.testing.assert_close(last[1.5], want[:, -1].float(), rtol=1e-4, atol=1e-4)


def _planted(model, letter_ids, layers=(0, 1, 2, 3), planted_layer=3, norm=6.0):
    """A vector that, at ``planted_layer``, points along W_U[A] - W_U[B] (pushes "A"); random elsewhere."""
    w = model.get_output_embeddings().weight.detach().float()
    push = w[letter_ids[0]] - w[letter_ids[1]]
    gen = torch.Generator().manual_seed(3)
    dirs = {}
    for layer in layers:
        d = push if layer == planted_layer else torch.randn(push.shape[0], generator=gen)
        dirs[layer] = d / d.norm() * norm
    return SteeringVector(dirs, model_id=model_id(model), fingerprint=fingerprint(model))


MANY = [
    ABQuestion(f"Question {i}: would you like some {thing}?\n\nChoices:\n (A) Yes\n (B) No", "A")
    for i, thing in enumerate(["tea", "cake", "rain", "music", "sleep", "work", "snow", "bread", "a walk", "a book",
                               "coffee", "a game"])
]  # fmt: skip


def test_sweep_and_calibrate_find_the_planted_cell(tiny, tokenizer):
    model = tiny("llama")
    behaviour = ABBehaviour(tokenizer, MANY, balance=False)
    vec = _planted(model, behaviour.letter_ids.tolist())
    # Coherence on 2 texts: the KL over SmolLM2's 49k-token vocabulary is most of a tiny model's sweep time, and
    # only its zeros at alpha 0 are asserted here (the budget is 1e6).
    result = sweep(model, tokenizer, vec, behaviour, alphas=[-1.0, 0.0, 1.0, 2.0], scale="absolute",
                   coherence=neutral_texts()[:2])  # fmt: skip
    assert result.kind == "sweep" and len(result.records) == 4 * 4 * (1 + 8)  # the vector and 8 random seeds
    assert result.meta["random_seeds"] == list(range(8)) and result.meta["n_questions"] == len(MANY)
    zero = result.where(alpha=0.0)
    assert all(r["kl"] == 0.0 and r["effect"] == 0.0 for r in zero)
    planted = {r["alpha"]: r for r in result.where(layer=3, direction="vector")}
    assert planted[-1.0]["p_matching"] < planted[0.0]["p_matching"] < planted[1.0]["p_matching"]
    assert planted[1.0]["p_matching"] < planted[2.0]["p_matching"]
    top = planted[2.0]
    assert top["effect_lo"] <= top["effect"] <= top["effect_hi"] and len(top["per_question"]) == len(MANY)
    assert top["beats_random"] and top["random_sd"] > 0 and not planted[0.0]["beats_random"]
    rec = calibrate(result, kl_budget=1e6)
    assert rec.found and (rec.layer, rec.alpha) == (3, 2.0), rec.summary()
    assert rec.interval[0] > rec.random_bound > rec.random_mean + 3 * rec.random_sd and rec.n_held_out == 6
    assert rec.summary().startswith("recommended: layer 3, alpha 2 (add, absolute)")
    down = calibrate(result, kl_budget=1e6, goal="decrease")
    assert down.found and (down.layer, down.alpha) == (3, -1.0)

    # A random direction as "the vector": its best cell is a maximum over noise, and calibrate must say so. (The
    # rule's false alarms are rare, not impossible: seed 101's direction is a ~1-2% tail draw at layer 2, and it
    # passes even against 16 seeds.)
    for seed in (100,):
        noise = sweep(model, tokenizer, vec.random_like(seed=seed), behaviour, alphas=[-1.0, 1.0, 2.0],
                      scale="absolute", coherence=neutral_texts()[:2], layers=[0, 1, 2])  # fmt: skip
        for goal in ("increase", "decrease"):
            outcome = calibrate(noise, kl_budget=1e6, goal=goal)
            assert not outcome.found, outcome.summary()
            assert outcome.summary().startswith("no setting found: ") and "Best cell: layer" in outcome.summary()
            with pytest.raises(SteeringError, match="no setting found"):
                outcome.annotate(vec)


def test_a_joint_sweep_steers_its_layers_together_and_calibrates_to_them(tiny, tokenizer, tmp_path):
    """A vector that acts across layers (ITI's heads) is one cell: its records equal full passes steering every
    layer at once, calibrate recommends the list of layers, and alpha="recommended" steers all of them."""
    from steerlab.evaluate.plots import sweep_heatmaps

    model = tiny("llama")
    behaviour = ABBehaviour(tokenizer, MANY, balance=False)
    w = model.get_output_embeddings().weight.detach().float()
    push = w[behaviour.letter_ids[0]] - w[behaviour.letter_ids[1]]
    vec = SteeringVector({2: push / push.norm() * 3.0, 3: push / push.norm() * 3.0}, model_id=model_id(model),
                         fingerprint=fingerprint(model))  # fmt: skip
    options = dict(alphas=[0.0, 1.0, 2.0], scale="absolute", coherence=neutral_texts()[:2], joint=True)
    result = sweep(model, tokenizer, vec, behaviour, partial=tmp_path / "p.jsonl", **options)
    assert len(result.records) == 3 * (1 + 8) and all(r["layer"] == [2, 3] for r in result.records)
    assert result.meta["joint"] is True
    template = Intervention(vec, layers=[2, 3], scale="absolute")
    full = dict(logits_over_alphas(model, behaviour.input_ids, behaviour.attention_mask, template, [1.0, 2.0],
                                   last_only=True, reuse_prefix=False))  # fmt: skip
    for alpha in (1.0, 2.0):
        (rec,) = result.where(direction="vector", alpha=alpha)
        assert rec["p_matching"] == pytest.approx(behaviour.score(full[alpha])["p_matching"], abs=1e-4)
        assert rec["added_norm"] == pytest.approx(alpha * float(torch.cat([push, push]).norm() / push.norm() * 3.0))
    rec = calibrate(result, kl_budget=1e6)
    assert rec.found and rec.layer == [2, 3] and rec.alpha == 2.0, rec.summary()
    assert rec.summary().startswith("recommended: layers [2, 3], alpha 2 (add, absolute)")
    item = Intervention(rec.annotate(vec), "recommended")
    assert (item.layers, item.alpha, item.scale) == ((2, 3), 2.0, "absolute")
    with pytest.raises(SteeringError, match="contradicts"):
        Intervention(rec.annotate(vec), "recommended", layers=[3])
    again = sweep(model, tokenizer, vec, behaviour, partial=tmp_path / "p.jsonl", **options)  # read back whole
    assert again.records == result.records
    with pytest.raises(SteeringError, match="not from this sweep"):  # a one-layer sweep is another run
        sweep(model, tokenizer, vec, behaviour, partial=tmp_path / "p.jsonl", **{**options, "joint": False})
    sweep_heatmaps(result)  # the joint cell is one row, labelled 2+3


def _synthetic(vector_effect, *, n=20, seeds=8, spread=0.01, per_question_noise=0.02):
    """A sweep table with per-question values: layers 1, 2 x alphas 0-0.3; the vector's true effect per cell is
    ``vector_effect(layer, alpha)``, a random direction's is drawn with sd ``spread`` per (seed, cell)."""
    gen = torch.Generator().manual_seed(0)
    base = [0.5 + 0.1 * float(x) for x in torch.randn(n, generator=gen)]
    records = []
    for layer in (1, 2):
        for alpha, kl in ((0.0, 0.0), (0.1, 0.05), (0.2, 0.15), (0.3, 0.6)):
            for seed in [None, *range(seeds)]:
                true = vector_effect(layer, alpha) if seed is None else spread * float(torch.randn(1, generator=gen))
                true = 0.0 if alpha == 0.0 else true
                noise = torch.randn(n, generator=gen) * per_question_noise if alpha else torch.zeros(n)
                values = [b + true + float(e) for b, e in zip(base, noise, strict=True)]
                records.append({"mode": "add", "layer": layer, "alpha": alpha, "scale": "relative",
                                "direction": "vector" if seed is None else "random", "seed": seed,
                                "p_matching": sum(values) / n, "effect": sum(values) / n - sum(base) / n, "kl": kl,
                                "per_question": values})  # fmt: skip
    meta = {"metric": "p_matching", "unsteered": {"p_matching": sum(base) / n}, "unsteered_per_question": base}
    return ResultTable("sweep", records, meta)


def test_calibrate_respects_the_budget_and_annotates(tmp_path, tiny):
    vec = random_vector(tiny("llama"), layers=(1, 2))
    table = _synthetic(lambda layer, alpha: alpha + (0.05 if layer == 2 else 0.0))  # best in budget: layer 2, 0.2
    rec = calibrate(table)
    assert DEFAULT_KL_BUDGET == 0.2 and rec.found and (rec.layer, rec.alpha, rec.kl) == (2, 0.2, 0.15)
    assert rec.effect == pytest.approx(0.25, abs=0.02) and rec.interval[0] < rec.effect < rec.interval[1]
    assert (rec.n_selection, rec.n_held_out, rec.random_seeds) == (10, 10, list(range(8)))
    assert abs(rec.random_mean) < 0.03 and rec.random_best_mean > 0  # the random directions' own best cells
    assert (calibrate(table, kl_budget=1.0).alpha, calibrate(table, kl_budget=1.0).layer) == (0.3, 2)
    with pytest.raises(SteeringError, match="no steered cell"):
        calibrate(table, kl_budget=0.01)
    path = rec.annotate(vec).save(tmp_path / "v.safetensors")
    stored = SteeringVector.load(path).extra["recommended"]
    assert stored["found"] and (stored["layer"], stored["alpha"], stored["mode"], stored["scale"]) == (
        2, 0.2, "add", "relative")  # fmt: skip
    table.to_json(tmp_path / "s.json")
    table.to_csv(tmp_path / "s.csv")
    loaded = ResultTable.load(tmp_path / "s.json")
    assert loaded.records == table.records and calibrate(loaded) == rec  # calibrate works from the saved JSON
    header = (tmp_path / "s.csv").read_text().splitlines()[0]
    assert header.startswith("mode,layer,alpha") and "per_question" not in header


def test_calibrate_refuses_the_wrong_sign_noise_and_thin_sweeps():
    up = _synthetic(lambda layer, alpha: alpha)
    wrong = calibrate(up, goal="decrease")  # every cell raises p: the least rise is still not a decrease
    assert not wrong.found and "does not go the goal's way" in wrong.reason
    noise = calibrate(_synthetic(lambda layer, alpha: 0.012 if (layer, alpha) == (1, 0.1) else 0.0))
    assert not noise.found and "random" in noise.reason or "includes 0" in noise.reason, noise.reason
    weak = calibrate(_synthetic(lambda layer, alpha: 0.02, spread=0.02, per_question_noise=0.001))
    assert not weak.found and "random directions" in weak.reason, weak.reason  # clear of 0, not of random
    with pytest.raises(SteeringError, match="at least 4"):
        calibrate(_synthetic(lambda layer, alpha: alpha, seeds=3))
    with pytest.raises(SteeringError, match="questions"):
        calibrate(_synthetic(lambda layer, alpha: alpha, n=3))
    old = _synthetic(lambda layer, alpha: alpha)
    for r in old.records:
        del r["per_question"]
    with pytest.raises(SteeringError, match="per-question"):
        calibrate(old)


def test_balancing_cancels_a_letter_push(tiny, tokenizer):
    model = tiny("llama")
    behaviour = ABBehaviour(tokenizer, QUESTIONS, balance=True)
    vec = _planted(model, behaviour.letter_ids.tolist(), layers=(3,))
    (_, base), (_, pushed) = logits_over_alphas(
        model,
        behaviour.input_ids,
        behaviour.attention_mask,
        Intervention(vec, layers=[3], scale="absolute"),
        [0.0, 2.0],
        last_only=True,
    )
    before, after = behaviour.score(base), behaviour.score(pushed)
    assert after["p_a"] - before["p_a"] > 0.2  # the push moves the letter strongly...
    assert abs(after["p_matching"] - before["p_matching"]) < 0.1 * (after["p_a"] - before["p_a"]) + 0.02


def test_logit_diff_projections_and_sentiment(tiny, tokenizer):
    model = tiny("gpt2")
    vec = random_vector(model, layers=(1,))
    base = logit_diff(model, tokenizer, ["The film was", "I think it is"], [" good"], [" bad"])
    steered = logit_diff(
        model, tokenizer, ["The film was", "I think it is"], [" good"], [" bad"], vec, 4.0, layer=1, scale="absolute"
    )
    assert len(base) == 2 and base != steered
    rows = token_projections(model, tokenizer, ["hello there world"], vec, 1)
    assert [r["position"] for r in rows] == list(range(len(rows))) and rows[0]["sink"]
    pos, neg = sentiment(["What a wonderful, lovely day!", "This is awful and I hate it."])
    assert pos > 0.5 and neg < -0.5
    with pytest.raises(DataError, match="tokens"):
        logit_diff(model, tokenizer, ["x"], [" wonderfully amazing"], [" bad"])


def test_probes_separable_data_and_errors():
    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1] * 100)
    x = torch.randn(200, 16, generator=gen)
    x[:, 3] += 4.0 * (2 * y - 1)  # a planted truth direction
    train, test = split(y.tolist(), 0.25, seed=1)
    assert not set(train) & set(test) and len(test) == 50
    for method in ("mass_mean", "logistic"):
        probe = train_probe(x[train], y[train], method=method, layer=5)
        assert probe.accuracy(x[test], y[test]) >= 0.98
        assert int(probe.direction.abs().argmax()) == 3
    with pytest.raises(DataError, match="both 0 and 1"):
        train_probe(x[:10], torch.zeros(10, dtype=torch.long))
    with pytest.raises(DataError, match="unknown probe method"):
        train_probe(x, y, method="svm")


def test_probe_layers_transfer_and_vector(tiny, tokenizer):
    model = tiny("llama")
    words = ["apple", "river", "table", "green", "stone", "cloud", "paper", "light", "music", "glass"]
    texts = [f"The {a} {w} is {v}" for w in words for a in ("old", "new") for v in ("yes", "no")]
    labels = [1 if t.endswith("yes") else 0 for t in texts]
    run = probe_layers(model, tokenizer, texts, labels, layers=[1, 3], name="toy", seed=0)
    assert {(r["layer"], r["method"]) for r in run.table.records} == {(1, "mass_mean"), (1, "logistic"),
                                                                      (3, "mass_mean"), (3, "logistic")}  # fmt: skip
    assert run.best().test_accuracy == 1.0  # the label is the last token: linearly separable
    vec = run.best().to_vector(model)
    assert vec.normalized and vec.layers == [run.best().layer] and vec.resid_norm
    assert kl_from_unsteered(model, tokenizer, vec, 0.5, scale="relative", texts=texts[:4]) > 0  # it steers
    # Record each set once at both layers; probes of every layer, method and pair fit from that recording.
    recorded = record_labelled(model, tokenizer, {"a": (texts, labels), "b": (texts[::-1], labels[::-1])},
                               layers=[1, 3])  # fmt: skip
    torch.testing.assert_close(recorded["a"].values[3], record(model, tokenizer, texts, layers=[3]).values[3])
    table = transfer_matrix(recorded, methods=["mass_mean", "logistic"])
    assert table.kind == "transfer" and len(table.records) == 2 * 2 * 4  # layers x methods x ordered pairs
    assert fit_probes(recorded["a"], layers=[3]).table.records == [
        {**r, "dataset": "a"} for r in run.table.where(layer=3)
    ]  # the same numbers as probe_layers, from the shared recording
    assert transfer_matrix(recorded, layers=3).meta["best_layer"] == 3
    with pytest.raises(DataError, match=r"layers \[2\] were not recorded \(recorded: \[1, 3\]\)"):
        transfer_matrix(recorded, layers=[2])


def _labelled(name, x, y):
    return LabelledActivations(name, {0: x[:, :2], 1: x}, torch.tensor(y))


def test_transfer_trains_on_all_of_one_set_and_tests_on_all_of_another():
    """train="all": off the diagonal a probe fit on all of X is scored on all of Y; on the diagonal, trained on the
    train split and scored on the held-out split. Y lies along X's direction but shifted: the threshold does not
    carry over (accuracy ~ chance) while the direction does (AUROC 1), which is why both are reported."""
    gen = torch.Generator().manual_seed(0)
    y = [0, 1] * 40
    signal = torch.tensor(y, dtype=torch.float64)[:, None] * torch.tensor([0.0, 0.0, 4.0])  # layer 1, dim 2
    x = torch.randn(80, 3, generator=gen, dtype=torch.float64) * 0.3 + signal
    shifted = x + torch.tensor([0.0, 0.0, 10.0])
    sets = {"x": _labelled("x", x, y), "y": _labelled("y", shifted, y)}
    table = transfer_matrix(sets, layers=[0, 1])
    cell = table.where(train="x", test="y", layer=1)[0]
    assert cell["protocol"] == "all" and cell["n_train"] == 80 and cell["n_test"] == 80
    assert cell["auroc"] == 1.0 and cell["accuracy"] == 0.5  # every shifted statement reads as label 1
    whole = train_probe(x[:, :], torch.tensor(y), layer=1)
    assert cell["accuracy"] == whole.accuracy(shifted, torch.tensor(y))  # the probe of all of x, on all of y
    diagonal = table.where(train="x", test="x", layer=1)[0]
    assert diagonal["protocol"] == "held_out" and diagonal["n_test"] == 20 and diagonal["n_train"] == 60
    assert table.meta["best_layer"] == 1 and table.where(train="x", test="y", layer=0)[0]["auroc"] < 0.8
    split_table = transfer_matrix(sets, layers=[1], train="split")
    assert {r["protocol"] for r in split_table.records} == {"held_out"}
    assert {r["n_test"] for r in split_table.records} == {20}
    with pytest.raises(DataError, match="train must be 'all'"):
        transfer_matrix(sets, train="everything")


def test_structure_pca_covariance_and_cosines(tiny, tokenizer):
    model = tiny("llama")
    texts = neutral_texts()[:12]
    pca = activation_pca(model, tokenizer, texts, layer=2, n_components=3, labels=list(range(12)))
    torch.testing.assert_close(pca.components @ pca.components.T, torch.eye(3), atol=1e-4, rtol=0)
    assert 0 < sum(pca.explained) <= 1.0 + 1e-6 and pca.explained == sorted(pca.explained, reverse=True)
    assert pca.vector(0).directions[2].norm() == pytest.approx(1.0, abs=1e-5)
    assert kl_from_unsteered(model, tokenizer, pca.vector(0), 0.5, scale="relative", texts=texts[:4]) > 0
    assert pca.table().records[0]["label"] == 0 and "pc3" in pca.table().records[0]
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(activation_covariance(x), torch.cov(x.double().T))
    corr = activation_covariance(x, correlation=True)
    torch.testing.assert_close(torch.diagonal(corr), torch.ones(6, dtype=torch.float64))
    vec = random_vector(model, layers=(0, 1, 3))
    layers, sim = cross_layer_cosine(vec)
    assert layers == [0, 1, 3] and torch.allclose(torch.diagonal(sim), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(sim, sim.T)
    names, m = cosine_matrix({"v": vec, "neg": -vec}, layer=1)
    assert m[0, 1] == pytest.approx(-1.0)


def test_breakdown_traces_growth_and_collapse(tiny, tokenizer):
    from steerlab.evaluate.breakdown_point import breakdown

    model = tiny("llama")
    vec = random_vector(model, layers=(1,))
    # A random tiny model predicts almost uniformly, so its KL stays small (here 7e-5, 0.004, 0.010, 0.012 nats):
    # a collapse threshold between the second and third strengths puts the collapse at exactly alpha = 4.
    table = breakdown(model, tokenizer, vec, alphas=[0.1, 1.0, 4.0, 16.0], texts=neutral_texts()[:6],
                      prompts=["Hello"], max_new_tokens=3, collapse_kl=0.006)  # fmt: skip
    kls = [r["kl"] for r in table.records]
    assert kls[0] < kls[-1] and len(table.records) == 4
    assert all(len(r["later_norms"]) == 3 for r in table.records)  # blocks 1, 2, 3
    assert table.records[-1]["later_norms"][0] > table.records[0]["later_norms"][0]
    # Read at the last block's output (before the final norm): a push of 16x the residual norm survives there.
    assert table.records[-1]["final_norm_ratio"] > 2.0 > table.records[0]["final_norm_ratio"]
    assert all(math.isfinite(r["perplexity"]) for r in table.records)
    assert kls[1] < 0.006 < kls[2]
    assert table.meta["collapse"] == {"1": 4.0} and table.meta["collapse_kl"] == 0.006
    never = breakdown(model, tokenizer, vec, alphas=[0.1, 16.0], texts=neutral_texts()[:6], max_new_tokens=0)
    assert never.meta["collapse"] == {"1": None}  # the default threshold, 1 nat, is not reached
    with pytest.raises(SteeringError, match="positive"):
        breakdown(model, tokenizer, vec, alphas=[0.0])


def test_an_interrupted_breakdown_resumes_from_its_partial_file(tiny, tokenizer, tmp_path, monkeypatch):
    from steerlab.evaluate import breakdown_point

    model = tiny("llama")
    vec = random_vector(model, layers=(1, 2))
    options = dict(alphas=[0.5, 2.0], texts=neutral_texts()[:3], prompts=["Hello"], max_new_tokens=2)
    whole = breakdown_point.breakdown(model, tokenizer, vec, **options)
    partial = tmp_path / "breakdown.jsonl"
    real, calls = breakdown_point.kl_and_entropy, []

    def failing(*args, **kwargs):  # the run is killed during its third step
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(breakdown_point, "kl_and_entropy", failing)
    with pytest.raises(KeyboardInterrupt):
        breakdown_point.breakdown(model, tokenizer, vec, partial=partial, **options)
    assert len(partial.read_text().splitlines()) == 1 + 2  # header + the two finished steps
    calls.clear()
    monkeypatch.setattr(breakdown_point, "kl_and_entropy", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = breakdown_point.breakdown(model, tokenizer, vec, partial=partial, **options)
    assert len(calls) == 2  # only the two steps not yet in the file ran
    assert resumed.records == whole.records and resumed.meta == whole.meta
    with pytest.raises(SteeringError, match=r"differs in alphas"):
        breakdown_point.breakdown(model, tokenizer, vec, partial=partial, **{**options, "alphas": [1.0]})


def test_sweep_over_modes_keeps_identities(tiny, tokenizer):
    model = tiny("gpt2")
    vec = random_vector(model, layers=(2,), scale=5.0)
    result = sweep(model, tokenizer, vec, QUESTIONS[:2], alphas=[0.0, 1.0], modes=["add", "ablate"],
                   scale="absolute", random_seeds=(), coherence=neutral_texts()[:4])  # fmt: skip
    assert {r["mode"] for r in result.records} == {"add", "ablate"} and len(result.records) == 4
    assert all((r["kl"] == 0.0) == (r["alpha"] == 0.0) for r in result.records)
    with pytest.raises(SteeringError, match="not in the vector"):
        sweep(model, tokenizer, vec, QUESTIONS[:1], layers=[0], scale="absolute")


def test_an_interrupted_sweep_resumes_from_its_partial_file_to_the_same_table(
    tiny, tokenizer, tmp_path, monkeypatch, capsys
):
    model = tiny("llama")
    vec = random_vector(model, layers=(1, 2), scale=4.0)
    behaviour = ABBehaviour(tokenizer, QUESTIONS[:2])
    texts = neutral_texts()[:2]

    def run(partial=None, vector=vec, **options):
        options = {"alphas": [-1.0, 0.0, 1.0], "random_seeds": (0, 1), "scale": "absolute", "coherence": texts,
                   **options}  # fmt: skip
        return sweep(model, tokenizer, vector, behaviour, partial=partial, **options)

    scored = []
    real_score = ABBehaviour.score
    monkeypatch.setattr(ABBehaviour, "score", lambda self, logits: scored.append(1) or real_score(self, logits))
    full = run()
    assert len(scored) == 1 + 6 * 2  # the unsteered pass, then 6 cells (2 layers x 3 directions) x 2 moving alphas

    # Written as it goes, one line per cell after the header; a finished file gives the same table again.
    path = tmp_path / "runs" / "sweep.partial.jsonl"
    first = run(path)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 6 and json.loads(lines[0])["kind"] == "sweep"
    assert first.records == full.records and first.meta == full.meta

    # Killed while writing the third cell: the two whole cells are read back, the rest measured and appended.
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])
    scored.clear()
    resumed = run(path, progress=True)
    assert len(scored) == 1 + 4 * 2  # the two cells read back were not measured again
    assert resumed.records == full.records and resumed.meta == full.meta
    assert [json.loads(line)["cell"] for line in path.read_text().splitlines()[1:]] == [
        json.loads(line)["cell"] for line in lines[1:]
    ]
    err = capsys.readouterr().err
    assert "sweeping: resuming from" in err and "2/6 cells done" in err and "sweeping: 4/4 (100%)" in err

    # Interrupted by an error in the fifth coherence score (the third cell): resuming gives the same table.
    other = tmp_path / "other.jsonl"
    calls = []
    real_kl = NeutralKL.score

    def failing(self, logits):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("interrupted")
        return real_kl(self, logits)

    monkeypatch.setattr(NeutralKL, "score", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        run(other)
    assert len(other.read_text().splitlines()) == 1 + 2
    monkeypatch.setattr(NeutralKL, "score", real_kl)
    assert run(other).records == full.records

    # Another run's file is refused, naming what differs; so is a file that is not a partial results file.
    with pytest.raises(SteeringError, match=r"not from this sweep.*differs in alphas.*Delete the file") as caught:
        run(path, alphas=[0.0, 1.0])
    assert "layers" not in str(caught.value)
    with pytest.raises(SteeringError, match="differs in vector"):
        run(path, vector=vec * 2.0)
    with pytest.raises(SteeringError, match="differs in coherence_texts"):
        run(path, coherence=neutral_texts()[2:4])
    result_json = full.to_json(tmp_path / "sweep.json")
    with pytest.raises(SteeringError, match="not a steerlab partial results file"):
        run(result_json)


def test_figures_and_report_for_every_kind(tmp_path, tiny, tokenizer):
    from steerlab.evaluate.plots import figures_for
    from steerlab.evaluate.report import write_report

    cells = [(layer, a, d) for layer in (1, 2) for a in (-0.1, 0.0, 0.1) for d in ("vector", "random")]
    sweep_records = [
        {"mode": "add", "layer": layer, "alpha": a, "direction": d, "p_matching": 0.5 + a * layer / 10,
         "effect": a * layer / 10, "kl": a * a}
        for layer, a, d in cells
    ]  # fmt: skip
    sweep_table = ResultTable(
        "sweep", sweep_records, {"metric": "p_matching", "scale": "relative", "n_items": 4, "norms": [145.123456789]}
    )
    probe_records = [
        {"layer": layer, "method": m, "test_accuracy": 0.6 + layer / 10}
        for layer in (1, 2, 3)
        for m in ("mass_mean", "logistic")
    ]
    probe = ResultTable("probe", probe_records, {"dataset": "toy", "n": 10})
    transfer_records = [
        {"train": a, "test": b, "layer": layer, "method": "mass_mean", "accuracy": 0.9 if a == b else 0.5,
         "auroc": 0.95 if a == b else 0.5 + layer / 10}
        for layer in (1, 2) for a in ("x", "y") for b in ("x", "y")
    ]  # fmt: skip
    transfer = ResultTable("transfer", transfer_records, {"methods": ["mass_mean"], "best_layer": 2})
    pca = activation_pca(tiny("llama"), tokenizer, neutral_texts()[:8], layer=1, labels=[0, 1] * 4).table()
    breakdown_table = ResultTable("breakdown", [
        {"layer": 3, "alpha": a, "kl": a, "entropy": 3.0, "perplexity": 5 + a, "final_norm_ratio": 1 + a}
        for a in (0.1, 1.0, 2.0)
    ], {"collapse_kl": 1.0})  # fmt: skip
    patching = ResultTable("patching", [
        {"layer": layer, "site": site, "position": p, "head": head, "token": f" t{p}", "recovery": p / 3,
         "metric": 1.0}
        for layer in (0, 1) for p in range(3)
        for site, head in (("resid_post", None), ("head", 0), ("head", 1))
    ], {"method": "activation", "metric": "logit_diff", "n_pairs": 2})  # fmt: skip
    refusal = ResultTable("refusal", [
        *({"stage": "selection", "layer": layer, "score": layer / 100, "separation": 0.9} for layer in (2, 4)),
        *({"stage": "evaluation", "prompts": p, "direction": d, "p_refusal": 0.2 + 0.1 * k}
          for p in ("harmless", "harmful") for k, d in enumerate((None, "vector", "random"))),
    ], {"chosen_layer": 4})  # fmt: skip
    finetune = ResultTable("finetune", [
        {"arm": arm, "n": 8, "judge": 0.1 * k, "judge_lo": 0.1 * k - 0.05, "judge_hi": 0.1 * k + 0.05,
         "projection": -k, "projection_lo": -k - 0.5, "projection_hi": -k + 0.5}
        for k, arm in enumerate(("base", "finetune", "add_trait", "add_random"))
    ], {"layer": 2, "judge": "sentiment (VADER)"})  # fmt: skip
    sae_features = ResultTable("sae_features", [
        {"vector": v, "feature": f, "cosine": c, "sign": "+" if c > 0 else "-", "rank": 0}
        for v in ("happy", "refusal") for f, c in ((3, 0.4), (7, -0.2))
    ], {"sae_layer": 2})  # fmt: skip
    sae_targeting = ResultTable("sae_targeting", [
        {"feature": f, "arm": arm, "target": 0.3, "others": 0.2, "ratio": 1.5, "kl": 0.01}
        for f in (3, 7) for arm in ("sae_ts, layer 1", "decoder_row, layer 1", "random, layer 1")
    ], {"alpha": 0.2, "n_texts": 8})  # fmt: skip
    tables = [sweep_table, probe, transfer, pca, breakdown_table, patching, refusal, finetune, sae_features,
              sae_targeting]  # fmt: skip
    assert sorted(t.kind for t in tables) == sorted(KINDS), "a result kind without a table in this test"
    assert [len(figures_for(t)) for t in tables] == [2, 1, 2, 1, 1, 1, 1, 1, 1, 1]
    assert len(figures_for(patching)[0][1].axes) == 4  # one panel per site, each with its colour bar
    assert [title for title, _ in figures_for(sweep_table)] == ["Layer x alpha", "Effect vs coherence"]
    (_, frontier_figure) = figures_for(sweep_table)[1]
    assert frontier_figure.axes[0].get_xlim()[0] == 0  # KL is never negative: no tick below 0
    page = write_report(tables, tmp_path / "r.html", title="<all kinds>").read_text()
    assert page.count("data:image/png;base64,") == 12 and "&lt;all kinds&gt;" in page
    assert "http://" not in page and "https://" not in page
    assert "[145.1]" in page and "145.123" not in page  # floats inside lists are rounded like the others
    with pytest.raises(DataError, match="at least one"):
        write_report([], tmp_path / "empty.html")


def test_balance_ab_adds_swapped_pairs():
    from steerlab import ContrastPair
    from steerlab.datasets.pairs import balance_ab, load_pairs

    pairs = load_pairs(CAA.parent / "generate" / "refusal" / "generate_dataset.json")[:4]
    balanced = balance_ab(pairs)
    assert len(balanced) == 8 and balanced[0] == pairs[0]
    assert balanced[1].positive == pairs[0].negative and balanced[1].prompt != pairs[0].prompt
    assert sorted(p.positive for p in balanced).count("(A") == 4  # letters balanced exactly
    with pytest.warns(UserWarning, match="left out 1"):
        assert len(balance_ab([*pairs[:1], ContrastPair("(A", "(C", "Pick (A) x (B) y (C) z")])) == 2
    with pytest.raises(DataError, match="no two-choice"), pytest.warns(UserWarning):
        balance_ab([ContrastPair("yes", "no")])


def test_a_tokenised_behaviour_gives_the_numbers_of_its_questions(tiny, tokenizer, monkeypatch):
    """p_matching on an ABBehaviour built once equals p_matching on the questions, and does not tokenise again."""
    model = tiny("llama")
    vec = random_vector(model, layers=(1,), scale=4.0)
    metric = ABBehaviour(tokenizer, QUESTIONS)
    expected = p_matching(model, tokenizer, QUESTIONS, vec, 2.0, layer=1, scale="absolute")

    def no_tokenising(*args, **kwargs):
        raise AssertionError("the questions were tokenised again")

    monkeypatch.setattr(type(tokenizer), "__call__", no_tokenising)
    assert p_matching(model, tokenizer, metric, vec, 2.0, layer=1, scale="absolute") == expected


def test_probes_report_a_shuffled_label_control():
    """The control task (labels shuffled within each split) stays near chance on data that encodes the label, so
    selectivity is large, for both methods."""
    gen = torch.Generator().manual_seed(1)
    y = [0, 1] * 60
    x = torch.randn(120, 8, generator=gen, dtype=torch.float64) + torch.tensor(y, dtype=torch.float64)[:, None] * 3
    run = fit_probes(LabelledActivations("toy", {2: x}, torch.tensor(y)), seed=0)
    for r in run.table.records:
        assert r["test_accuracy"] >= 0.95 and 0.3 <= r["control_accuracy"] <= 0.7, r
        assert r["selectivity"] == r["test_accuracy"] - r["control_accuracy"] and r["selectivity"] > 0.25
    assert run.best().test_accuracy == max(r["test_accuracy"] for r in run.table.records)  # the real probe


def test_the_prompting_baseline_asks_for_the_behaviour_and_measures_the_change(tiny, tokenizer):
    from steerlab.evaluate import prompting_baseline
    from steerlab.evaluate.metrics import ab_probabilities

    model = tiny("llama")
    instruction = "Always choose the kind answer."
    asked = ABBehaviour(tokenizer, QUESTIONS, instruction=instruction)
    text = tokenizer.decode(asked.input_ids[0][asked.attention_mask[0].bool()])
    assert "<|im_start|>system\nAlways choose the kind answer.<|im_end|>" in text  # the system turn
    plain_text = ABBehaviour(tokenizer, QUESTIONS, chat=False, instruction=instruction)
    first = tokenizer.decode(plain_text.input_ids[-1][plain_text.attention_mask[-1].bool()])
    assert first.startswith(instruction + "\n\n") and "im_start" not in first  # no template: before the question

    record = prompting_baseline(model, tokenizer, QUESTIONS, instruction)
    plain = ab_probabilities(model, tokenizer, QUESTIONS)
    prompted = ab_probabilities(model, tokenizer, asked)
    assert record["n"] == 3 and record["instruction"] == instruction
    assert record["unsteered"] == pytest.approx(sum(r["p_matching"] for r in plain) / 6)
    assert record["prompted"] == pytest.approx(sum(r["p_matching"] for r in prompted) / 6)
    assert record["effect"] == pytest.approx(record["prompted"] - record["unsteered"]) and record["effect"] != 0
    assert record["effect_lo"] <= record["effect"] <= record["effect_hi"]
    with pytest.raises(DataError, match="needs an instruction"):
        prompting_baseline(model, tokenizer, QUESTIONS, "  ")
