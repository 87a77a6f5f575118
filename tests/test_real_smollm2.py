"""Behaviour on the real SmolLM2-135M-Instruct (installed by `make test`; these tests never skip)."""

import inspect
import json
import re
import statistics
from pathlib import Path

import pytest
import torch
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from steerlab import (
    ContrastPair,
    Intervention,
    compare,
    directional_ablation,
    extract_vector,
    record,
    sentiment_pairs,
)
from steerlab.cli.serving import chat as chat_command
from steerlab.cli.vectors import demo as demo_command
from steerlab.datasets import pair_texts
from steerlab.datasets.pairs import NEUTRAL_PROMPTS
from steerlab.engines import apply_chat
from steerlab.errors import SteeringError, StrengthWarning
from steerlab.evaluate.comparison import DEFAULT_COMPARE_ALPHAS, generate_rows
from steerlab.serve.chat import _PLAIN_ALPHA

LAYER = 10
ALPHAS = [-0.3, -0.15, 0.0, 0.15, 0.3]  # fractions of the mean residual norm at LAYER (~140)
RANDOM_ALPHAS = [-0.3, 0.3]  # where a same-norm random direction is the baseline
PROMPTS = list(NEUTRAL_PROMPTS)


def cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def mean_sentiment(rows):
    analyzer = SentimentIntensityAnalyzer()
    scores: dict[float, list[float]] = {}
    for row in rows:
        for g in row.generations:
            scores.setdefault(g.alpha, []).append(analyzer.polarity_scores(g.text)["compound"])
    return {alpha: sum(v) / len(v) for alpha, v in scores.items()}


def test_model_shape(smol):
    model, tokenizer = smol
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert model.config.hidden_size == 576 and tokenizer.chat_template


def test_attention_sink_is_excluded_from_means(smol):
    model, tokenizer = smol
    acts = record(
        model,
        tokenizer,
        ["The weather today is grey and cold, and the streets are wet."],
        layers=[15],
        reduce="all",
        exclude_first_token=False,
    )
    norms = acts.values[15].norm(dim=-1)
    assert norms[0] > 50 * norms[1:].median()  # ~22,000 against ~160

    pairs = sentiment_pairs()
    last = extract_vector(model, tokenizer, pairs, layers=[15]).directions[15]
    pos, neg = pair_texts(pairs)
    with_sink = record(model, tokenizer, pos + neg, layers=[15], reduce="mean", exclude_first_token=False)
    without = record(model, tokenizer, pos + neg, layers=[15], reduce="mean")
    diff = lambda acts: acts.values[15][:32].mean(0) - acts.values[15][32:].mean(0)  # noqa: E731
    assert cosine(diff(without), last) > cosine(diff(with_sink), last) + 0.2


def test_methods_agree_on_sentiment(smol):
    model, tokenizer = smol
    pairs = sentiment_pairs()
    vecs = {
        m: extract_vector(model, tokenizer, pairs, layers=[LAYER], method=m).directions[LAYER]
        for m in ("mean_diff", "pca_diff", "pca_center")
    }
    assert cosine(vecs["pca_center"], vecs["mean_diff"]) > 0.9
    assert cosine(vecs["pca_diff"], vecs["mean_diff"]) > 0.3  # same sign; pca_diff is the axis of variation


ROOT = Path(__file__).parents[1]
DOCUMENTED = [ROOT / "README.md", ROOT / "docs/guide.md"]
NUMBER = r"-?\d+(?:\.\d+)?"


def documented_strengths() -> set[tuple[float, str]]:
    """Every ``add`` strength the README and the guide show in code, as (alpha, scale): ``alpha=``, ``alphas=[..]``,
    ``--alpha``, ``--alphas``, ``"alpha":`` and positional ``Intervention(vec, 0.15)``; lines of other modes are left
    out (their alpha is a fraction or a projection). The CLI's and chat's defaults count as documented too."""
    found = {(float(a), "relative") for a in DEFAULT_COMPARE_ALPHAS}
    for command, name in ((chat_command, "alpha"), (demo_command, "strength")):
        option = inspect.signature(command).parameters[name].default  # a typer OptionInfo
        strength = _PLAIN_ALPHA if option.default is None else option.default  # chat: calibrated, else this
        found |= {(strength, "relative"), (-strength, "relative")}  # chat/demo steer both ways
    for path in DOCUMENTED:
        blocks = re.findall(r"```[a-z]*\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)
        for line in "\n".join(blocks).replace("\\\n", " ").splitlines():  # shell lines continued with a backslash
            code = line.split("#")[0]
            if re.search(r"mode=\"(?!add)|--mode|--ablate|directional_ablation", code):
                continue
            scale = "absolute" if "absolute" in code else "relative"
            values = re.findall(rf"(?:alpha=|--alpha |\"alpha\": |Intervention\(\w+, )({NUMBER})", code)
            for group in re.findall(r"(?:alphas=\[|--alphas )([-\d., ]+)", code):
                values += re.findall(NUMBER, group)
            found |= {(float(v), scale) for v in values}
    return found


@pytest.fixture(scope="module")
def sentiment_runs(smol):
    """The README's vector (mean_diff of the shipped pairs at LAYER) and a same-norm random one, generated at the
    sentiment test's strengths and at every documented one."""
    model, tokenizer = smol
    vec = extract_vector(model, tokenizer, sentiment_pairs(), layers=[LAYER])
    documented = documented_strengths()
    relative = sorted({*ALPHAS, *(a for a, scale in documented if scale == "relative")})
    absolute = sorted(a for a, scale in documented if scale == "absolute")
    return {
        "vec": vec,
        "documented": documented,
        "steered": compare(model, tokenizer, PROMPTS, vec, alphas=relative, max_new_tokens=32),
        "absolute": compare(model, tokenizer, PROMPTS, vec, alphas=absolute, scale="absolute", max_new_tokens=32),
        # Only the strongest pushes, the ones the sentiment test compares with (each row is generated as if alone).
        "random": compare(model, tokenizer, PROMPTS, vec.random_like(seed=0), alphas=RANDOM_ALPHAS, max_new_tokens=32),
    }


def mean_nll(rows) -> dict:
    nlls: dict = {}
    for row in rows:
        for g in row.generations:
            nlls.setdefault(g.alpha, []).append(g.nll)
    return {alpha: statistics.mean(v) for alpha, v in nlls.items()}


GUIDE_NLL_RISE = 0.5  # docs/guide.md: every documented strength keeps the NLL rise under 0.5 nats/token


def test_every_documented_strength_keeps_text_coherent(smol, sentiment_runs):
    """Each strength the README and guide show (and the CLI's defaults) raises the NLL of the generated text
    under the unsteered model by less than the guide says; the strength the README once showed (alpha=20
    absolute, 1.06x the residual norm) does not, warns, and 1e4 is refused."""
    documented = sentiment_runs["documented"]
    assert {0.15, -0.15, 0.2} <= {a for a, _ in documented}, documented  # the parser reads the docs
    relative, absolute = mean_nll(sentiment_runs["steered"]), mean_nll(sentiment_runs["absolute"])
    base = relative[0.0]
    for alpha, scale in sorted(documented):
        rise = (relative if scale == "relative" else absolute)[alpha] - base
        assert rise < GUIDE_NLL_RISE, (alpha, scale, rise, relative, absolute)
    model, tokenizer = smol
    vec = sentiment_runs["vec"]
    with pytest.warns(StrengthWarning, match="1.0[0-9]x the residual norm"):
        (row,) = compare(model, tokenizer, PROMPTS[:1], vec, alphas=[0.0, 20.0], scale="absolute", max_new_tokens=32)
    assert row.generations[1].nll - row.generations[0].nll > GUIDE_NLL_RISE, row
    assert row.generations[1].size == pytest.approx(20.0 * float(vec.directions[LAYER].norm()) / vec.resid_norm[LAYER])
    with pytest.raises(SteeringError, match="past the limit"):
        Intervention(vec, 1e4)


def test_sentiment_vector_steers_both_ways_beyond_random(sentiment_runs):
    steered = mean_sentiment(sentiment_runs["steered"])
    baseline = mean_sentiment(sentiment_runs["random"])
    means = [steered[a] for a in ALPHAS]
    assert means == sorted(means) and means[0] < means[-1] - 0.5, steered  # monotone, and a real swing
    base = steered[0.0]
    for alpha in RANDOM_ALPHAS:
        effect = steered[alpha] - base
        assert effect * alpha > 0, steered  # the right way for both signs
        # Beyond a random direction, in the direction asked for: a random push of 0.3 degrades the text, which
        # moves VADER's score too, but not the way the vector is meant to (the unsteered texts already score ~0.7).
        assert effect * alpha > (baseline[alpha] - base) * alpha, (steered, baseline)


SPLITS = Path(__file__).parents[1] / "datasets/refusal-direction/splits"


def instructions(name):
    return [r["instruction"] for r in json.loads((SPLITS / f"{name}.json").read_text())]


@pytest.fixture(scope="module")
def refusal_vectors(smol):
    """The refusal-direction recipe at layer 20 (the layer scripts/refusal_direction.py selects on validation),
    and a random direction of the same norm as the control."""
    model, tokenizer = smol
    # All 260 harmful training prompts, as the script: with 128 of each (Arditi et al.'s count) ablation lowered
    # p(refusal) by only 0.007 on the 20 harmful prompts below (random: -0.090): the removal needs all 260.
    pairs = [
        ContrastPair(a, b)
        for a, b in zip(instructions("harmful_train"), instructions("harmless_train")[:260], strict=True)
    ]
    vec = extract_vector(model, tokenizer, pairs, layers=[14, 20], chat=True, batch_size=32)
    return vec, vec.at_layers([20], source=20).random_like(seed=0)


def test_harmful_direction_separates_held_out_prompts(smol, refusal_vectors):
    model, tokenizer = smol
    vec, _ = refusal_vectors
    val_harmful, val_harmless = instructions("harmful_val"), instructions("harmless_val")[:39]
    acts = record(
        model, tokenizer, [apply_chat(tokenizer, t) for t in val_harmful + val_harmless], layers=[14], batch_size=32
    )
    proj = acts.values[14] @ vec.directions[14]
    threshold = proj.median()
    correct = (proj[: len(val_harmful)] > threshold).sum() + (proj[len(val_harmful) :] <= threshold).sum()
    assert int(correct) / len(proj) > 0.85


def test_refusal_direction_moves_refusal_both_ways_beyond_random(smol, refusal_vectors, refusal_judge):
    """Adding the direction makes refusal-like answers to harmless prompts likelier; ablating it everywhere makes
    them rarer on harmful prompts; a random direction of the same norm does neither as much. (SmolLM2-135M refuses
    little to begin with, so the effects are small: see docs/refusal-direction.md.)"""
    model, tokenizer = smol
    vec, control = refusal_vectors
    vec = vec.at_layers([20], source=20)

    def p_refusal(prompts, *settings):
        """Mean p(refusal) of the answers to ``prompts`` under each setting (None: unsteered), all settings in one
        batch: each row steered by its own (steer_rows: a row equals itself generated alone)."""
        rows = [setting for setting in settings for _ in prompts]
        outs = generate_rows(model, tokenizer, list(prompts) * len(settings), rows, max_new_tokens=32,
                             batch_size=len(rows))  # fmt: skip
        p = refusal_judge.probabilities([tokenizer.decode(g, skip_special_tokens=True) for _, g in outs])
        return [statistics.mean(p[i * len(prompts) : (i + 1) * len(prompts)]) for i in range(len(settings))]

    # 20 prompts of each kind (of the 39 harmful ones), 32 tokens each. Measured on all 39 the margins over the
    # bounds below were +0.021 (added) and +0.072 (removed); on these 20, +0.084 and +0.061. Fewer tokens do not
    # keep them: at 16, adding the direction rose p(refusal) by 0.050 against a bound of 0.063.
    harmless, harmful = instructions("harmless_val")[:20], instructions("harmful_val")[:20]
    base, steered, steered_random = p_refusal(
        harmless, None, Intervention(vec, 1.0, scale="absolute"), Intervention(control, 1.0, scale="absolute")
    )  # the mean difference itself, and a random direction of its norm
    added, added_random = steered - base, steered_random - base
    assert added > 0.04 and added > added_random + 0.04, (added, added_random)
    base, ablated, ablated_random = p_refusal(
        harmful, None, directional_ablation(model, vec), directional_ablation(model, control)
    )
    removed, removed_random = base - ablated, base - ablated_random
    assert removed > 0.04 and removed > removed_random + 0.04, (removed, removed_random)
