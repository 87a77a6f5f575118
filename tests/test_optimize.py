"""Optimised steering vectors on tiny models: the objective moves as asked, the vector alone learns (the model's
parameters and hooks are untouched, also when a step raises), the coherence term holds KL down, bad input fails."""

import pytest
import torch

from steerlab import ContrastPair, generate, steer
from steerlab._text import ScoredIds, completion_ids
from steerlab.errors import DataError, SteeringError
from steerlab.optimize import _sequence_logp, optimize_vector
from tiny import random_vector

# The tiny random models need pushes past the breakdown point to move at all.
pytestmark = pytest.mark.filterwarnings("ignore::steerlab.errors.StrengthWarning")

PROMPTS = ["The weather today", "My favourite food", "In the morning I", "The old house"]


def loss_per_token(model, tokenizer, examples, vec=None):
    scored = completion_ids(tokenizer, examples, False, what="promote")
    with torch.no_grad():
        if vec is None:
            logp = _sequence_logp(model, scored, range(len(examples)))
        else:
            with steer(model, vec, 1.0, scale="absolute"):
                logp = _sequence_logp(model, scored, range(len(examples)))
    lengths = torch.tensor([len(i) - s for i, s in zip(scored.ids, scored.starts, strict=True)])
    return float(-(logp / lengths).mean())


@pytest.fixture
def planted(tiny, tokenizer):
    """Completions the model writes with a planted direction added at layer 1: targets a vector can reach."""
    model = tiny("llama")
    vec = random_vector(model, layers=(1,), scale=8.0)
    with steer(model, vec, 1.0, scale="absolute"):
        outs = generate(model, tokenizer, PROMPTS, max_new_tokens=4, chat=False)
    return model, vec, [(p, tokenizer.decode(g)) for p, (_, g) in zip(PROMPTS, outs, strict=True)]


def test_promote_learns_a_vector_that_makes_the_targets_likelier(planted, tokenizer):
    model, vec, examples = planted
    before = [p.detach().clone() for p in model.parameters()]
    model.get_input_embeddings().weight.requires_grad_(False)  # a flag of the user's own, given back exactly
    flags = [p.requires_grad for p in model.parameters()]
    assert any(flags) and not all(flags)
    learned = optimize_vector(model, tokenizer, examples, layer=1, objective="promote", steps=60, lr=0.2,
                              max_relative=2.5, chat=False, progress=False)  # fmt: skip
    unsteered = loss_per_token(model, tokenizer, examples)
    assert loss_per_token(model, tokenizer, examples, learned) < unsteered - 0.5
    assert loss_per_token(model, tokenizer, examples, learned) <= loss_per_token(model, tokenizer, examples, vec)
    cosine = torch.nn.functional.cosine_similarity(learned.directions[1], vec.directions[1], dim=0)
    assert cosine > 0.4  # the planted direction, partly recovered (the random model cannot tell all of it)
    assert learned.directions[1].norm() <= 2.5 * learned.resid_norm[1] + 1e-4
    assert not learned.directions[1].requires_grad
    extra = learned.extra
    assert extra["objective"] == "promote" and extra["strength"] == 1.0 and extra["scale"] == "absolute"
    assert extra["best_loss"] == min(extra["losses"]) and 1 <= extra["steps"] <= 60 and learned.dataset_hash
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # frozen
    assert all(p.grad is None for p in model.parameters())  # gradients reached the vector only
    assert [p.requires_grad for p in model.parameters()] == flags
    model.get_input_embeddings().weight.requires_grad_(True)  # the tiny models are shared between tests
    suppressed = optimize_vector(model, tokenizer, examples, layer=1, objective="suppress", steps=30, lr=0.2,
                                 max_relative=2.5, chat=False, progress=False)  # fmt: skip
    assert loss_per_token(model, tokenizer, examples, suppressed) > unsteered + 0.2


def test_bipo_moves_the_preference_both_ways(planted, tokenizer):
    model, vec, examples = planted
    with steer(model, vec, -1.0, scale="absolute"):
        opposite = generate(model, tokenizer, PROMPTS, max_new_tokens=4, chat=False)
    pairs = [ContrastPair(p + c, p + tokenizer.decode(g)) for (p, c), (_, g) in zip(examples, opposite, strict=True)]
    learned = optimize_vector(model, tokenizer, pairs, layer=1, objective="bipo", steps=40, lr=0.2, beta=1.0,
                              max_relative=2.5, chat=False, progress=False)  # fmt: skip

    def margin(sign):
        scores = []
        for texts in ([p.positive for p in pairs], [p.negative for p in pairs]):
            ids = [tokenizer(t)["input_ids"] for t in texts]
            scored = ScoredIds(ids, [1] * len(ids))
            with torch.no_grad():
                if sign == 0:
                    scores.append(_sequence_logp(model, scored, range(len(ids))))
                else:
                    with steer(model, learned, sign, scale="absolute"):
                        scores.append(_sequence_logp(model, scored, range(len(ids))))
        return float((scores[0] - scores[1]).mean())

    assert margin(1.0) > margin(0) + 0.5 and margin(-1.0) < margin(0) - 0.5
    assert learned.extra["beta"] == 1.0 and learned.method == "optimized_bipo"


def test_the_coherence_term_holds_kl_down(planted, tokenizer):
    model, _, examples = planted
    texts = ["A quiet street in the evening.", "She reads the paper."]
    options = dict(layer=1, objective="promote", steps=25, lr=0.2, max_relative=2.5, chat=False, progress=False)
    free = optimize_vector(model, tokenizer, examples, coherence=texts, coherence_weight=1e-9, **options)
    held = optimize_vector(model, tokenizer, examples, coherence=texts, coherence_weight=50.0, **options)
    assert held.extra["kl"] < free.extra["kl"] and held.extra["coherence_weight"] == 50.0


def test_a_step_that_raises_leaves_no_hooks_and_the_weights_as_they_were(planted, tokenizer, monkeypatch):
    from steerlab import optimize

    model, _, examples = planted
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        assert not any(p.requires_grad for p in model.parameters())  # no graph kept for weight gradients
        if len(calls) == 3:
            raise RuntimeError("out of memory, say")
        return real(*args, **kwargs)

    real = optimize._sequence_logp
    monkeypatch.setattr(optimize, "_sequence_logp", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        optimize_vector(model, tokenizer, examples, layer=1, objective="promote", steps=5, chat=False)
    assert all(p.requires_grad for p in model.parameters())  # given back also when a step raises
    # conftest's autouse guard checks that no steerlab hook is left on any model


def test_bad_input_fails_before_training(tiny, tokenizer):
    model = tiny("llama")
    with pytest.raises(DataError, match="unknown objective"):
        optimize_vector(model, tokenizer, [("a", "b")], layer=1, objective="dpo")
    with pytest.raises(DataError, match="at least one example"):
        optimize_vector(model, tokenizer, [], layer=1, objective="promote")
    with pytest.raises(SteeringError, match="layer 9 does not exist"):
        optimize_vector(model, tokenizer, [("a", "b")], layer=9, objective="promote")
    with pytest.raises(DataError, match="tokenises to nothing"):
        optimize_vector(model, tokenizer, [("Hello there", "")], layer=1, objective="promote", chat=False)
    with pytest.raises(DataError, match="max_relative must be between"):
        optimize_vector(model, tokenizer, [("a", "b")], layer=1, objective="promote", max_relative=5.0)
    with pytest.raises(DataError, match=r"promote / suppress needs \(prompt, completion\)"):
        optimize_vector(model, tokenizer, ["just a string"], layer=1, objective="promote", chat=False)


def test_scored_log_probabilities_equal_each_text_run_alone(tiny):
    """The left-padded batch that runs the output head on the last positions only gives each row's sum over its
    scored tokens, as the row run alone with every position's logits."""
    model = tiny("qwen2")
    ids = [[5, 9, 14, 3, 8], [7, 2], [4, 4, 6, 1, 9, 12, 30]]
    scored = ScoredIds(ids, [2, 1, 5])
    got = _sequence_logp(model, scored, [0, 1, 2])
    for row, (text, start) in enumerate(zip(ids, scored.starts, strict=True)):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([text])).logits[0, :-1].float(), -1)
        expected = sum(float(logp[t - 1, text[t]]) for t in range(start, len(text)))
        assert float(got[row]) == pytest.approx(expected, abs=1e-4)


def test_a_margin_of_last_tokens_is_read_from_one_pass_of_the_prefix(tiny):
    """A/B pairs differ only in their answer letter: the margin from one pass of the shared prefix equals the
    difference of the two texts scored separately; pairs that part earlier are scored text by text."""
    from steerlab.optimize import _margin

    model = tiny("llama")
    chosen = ScoredIds([[5, 9, 14, 3, 8], [7, 2, 40], [4, 6, 1, 9]], [4, 2, 2])
    rejected = ScoredIds([[5, 9, 14, 3, 11], [7, 2, 41], [4, 6, 2, 10]], [4, 2, 2])
    with torch.no_grad():
        one_pass = _margin(model, chosen, rejected, [0, 1])
        two_pass = _sequence_logp(model, chosen, [0, 1]) - _sequence_logp(model, rejected, [0, 1])
        mixed = _margin(model, chosen, rejected, [0, 2])  # row 2 parts two tokens before its end
        separate = _sequence_logp(model, chosen, [0, 2]) - _sequence_logp(model, rejected, [0, 2])
    torch.testing.assert_close(one_pass, two_pass, atol=1e-4, rtol=0)
    torch.testing.assert_close(mixed, separate, atol=1e-4, rtol=0)
    assert float(one_pass.abs().min()) > 0
