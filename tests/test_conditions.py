"""Condition gates (CAST) per row: a planted feature opens the gate exactly where it is, rows gate independently
under padding and the KV cache, the gate reads what record() reads, and bad conditions fail loudly."""

from __future__ import annotations

import math

import pytest
import torch

from steerlab import Intervention, SteeringVector, steer, steer_rows
from steerlab._conditions import Condition, Rule, aggregate, condition_scores
from steerlab._models import ModelFingerprint, fingerprint, model_id
from steerlab._record import ActivationReader
from steerlab.bake import bake_addition
from steerlab.engines import encode, pad_batch
from steerlab.errors import DataError, SteeringError, VectorMismatchError
from steerlab.evaluate.conditions import find_condition_point, gate_f1, gate_opens, threshold_f1
from tiny import greedy, random_vector

PLANT, OTHER = 777, 1500  # planted token ids
WITH = [[5, 17, PLANT, 44, 8], [9, PLANT, 33], [40, PLANT, 42, PLANT, 43, 44, 45]]
WITHOUT = [[301, 7], [12, 99, 4000, 18, 2711, 36, 70], [6, 66, 666]]
PROMPTS = [WITH[0], WITHOUT[0], WITHOUT[1], WITH[1], WITHOUT[2], WITH[2]]  # mixed, different lengths
HAS = [True, False, False, True, False, True]


def recorded(model, prompts, layer, site, reduce):
    """What record() reads: the (n, hidden) aggregate of each prompt, each prompt run alone."""
    reader = ActivationReader(model, layers=[layer], reduce=reduce, site=site, pad_id=2)
    out = [reader.run(prompts, [[i]]).__next__()[1][layer][0] for i in range(len(prompts))]
    return torch.stack(out)


def planted(model, token=PLANT, reduce="mean", comparison="cosine"):
    """A condition on the embedding of ``token`` at the input of block 0, with its threshold halfway between the
    prompts that hold the token and those that do not (the margin is checked, so the test can fail)."""
    direction = model.get_input_embeddings().weight[token].detach().clone()
    vec = SteeringVector({0: direction}, model_id=model_id(model), fingerprint=fingerprint(model), site="resid_pre")
    probe = Condition(vec, threshold=0.0, layers=[0], comparison=comparison, reduce=reduce)
    scores = probe.score({0: recorded(model, PROMPTS, 0, "resid_pre", reduce)})
    has = torch.tensor([token in p for p in PROMPTS])
    low, high = float(scores[~has].max()), float(scores[has].min())
    assert high - low > 0.05, f"no margin between planted and plain prompts: {scores}"
    return Condition(vec, threshold=(low + high) / 2, layers=[0], comparison=comparison, reduce=reduce)


def logits(model, prompts, context):
    ids, mask = pad_batch(prompts, 2, side="left")
    with torch.no_grad(), context:
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "falcon"])
def test_a_planted_condition_steers_exactly_its_rows_and_leaves_the_rest_bit_identical(tiny, arch):
    model = tiny(arch)
    gate = planted(model)
    behaviour = random_vector(model, layers=(2,), scale=8.0)
    item = Intervention(behaviour, alpha=1.0, scale="absolute", condition=gate)
    base = logits(model, PROMPTS, steer(model, []))
    everywhere = logits(model, PROMPTS, steer(model, behaviour, alpha=1.0, scale="absolute"))
    gated = logits(model, PROMPTS, steer(model, item))
    for row, has in enumerate(HAS):
        if has:
            torch.testing.assert_close(gated[row], everywhere[row], rtol=0, atol=1e-5)
            assert not torch.allclose(gated[row], base[row])
        else:
            assert torch.equal(gated[row], base[row])


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen3"])
@pytest.mark.parametrize("positions", ["all", "generated", 2])
def test_gating_under_padding_and_kv_cache_equals_each_row_alone(tiny, arch, positions):
    model = tiny(arch)
    item = Intervention(
        random_vector(model, layers=(1, 3), scale=8.0), alpha=1.0, scale="absolute", positions=positions,
        condition=planted(model),
    )  # fmt: skip
    with steer(model, item):
        cached = greedy(model, PROMPTS)
        uncached = greedy(model, PROMPTS, use_cache=False)
        alone = [greedy(model, [row])[0] for row in PROMPTS]
    plain = [greedy(model, [row])[0] for row in PROMPTS]
    assert torch.equal(cached, uncached)
    for row, has in enumerate(HAS):
        assert torch.equal(cached[row], alone[row])
        assert torch.equal(alone[row], plain[row]) != has  # steered exactly where the feature is


def test_rows_gate_independently_in_steer_rows(tiny):
    """Each row its own gated intervention (or none, or an ungated one) in one batch: each equals the row alone."""
    model = tiny("llama")
    gate = planted(model)
    vec = random_vector(model, layers=(2,), scale=8.0)
    gated = Intervention(vec, alpha=1.0, scale="absolute", condition=gate)
    negated = Intervention(vec, alpha=-1.0, scale="absolute", condition=~gate)
    plain = Intervention(vec, alpha=0.5, scale="absolute")
    rows = [gated, gated, negated, None, plain, negated]
    with steer_rows(model, rows):
        batched = greedy(model, PROMPTS)
    for row, (prompt, item) in enumerate(zip(PROMPTS, rows, strict=True)):
        with steer(model, [] if item is None else [item]):
            assert torch.equal(batched[row], greedy(model, [prompt])[0])


@pytest.mark.parametrize("reduce", ["mean", "last"])
@pytest.mark.parametrize("comparison", ["cosine", "projection"])
def test_the_gate_decides_on_what_record_reads(tiny, reduce, comparison):
    """A threshold between two recorded scores opens the gate exactly for the prompts above it: the gate's
    aggregate (under left padding, in one batch) is record()'s, so a threshold chosen on recorded data holds."""
    model = tiny("qwen2")
    cond_vec = random_vector(model, layers=(1,), seed=5)
    scores = Condition(cond_vec, 0.0, comparison=comparison, reduce=reduce).score(
        {1: recorded(model, PROMPTS, 1, "resid_post", reduce)}
    )
    ordered = scores.sort().values
    threshold = float(ordered[2] + ordered[3]) / 2  # three prompts above, three below
    cond = Condition(cond_vec, threshold, comparison=comparison, reduce=reduce)
    behaviour = random_vector(model, layers=(2,), scale=8.0)
    base = logits(model, PROMPTS, steer(model, []))
    gated = logits(model, PROMPTS, steer(model, Intervention(behaviour, 1.0, scale="absolute", condition=cond)))
    changed = [not torch.equal(gated[row], base[row]) for row in range(len(PROMPTS))]
    assert changed == (scores > threshold).tolist()
    assert sum(changed) == 3


def test_rules_combine_conditions(tiny):
    model = tiny("llama")
    plant = planted(model, PLANT)
    prompts = [[5, PLANT, 8, 9], [5, OTHER, 8, 9], [5, PLANT, OTHER, 9], [5, 6, 8, 9]]
    direction = model.get_input_embeddings().weight[OTHER].detach().clone()
    other_vec = SteeringVector(
        {0: direction}, model_id=model_id(model), fingerprint=fingerprint(model), site="resid_pre"
    )
    reads = Condition(other_vec, 0.0, reduce="mean").score({0: recorded(model, prompts, 0, "resid_pre", "mean")})
    other = Condition(other_vec, float(reads[[1, 2]].min() + reads[[0, 3]].max()) / 2)
    behaviour = random_vector(model, layers=(2,), scale=8.0)
    base = logits(model, prompts, steer(model, []))
    named = {"plant": plant, "other": other}
    for rule, expected in [
        (plant & other, [False, False, True, False]),
        (plant | other, [True, True, True, False]),
        (~plant, [False, True, False, True]),
        (Rule.parse({"all": ["other", {"not": "plant"}]}, named), [False, True, False, False]),
        (Rule.parse({"any": ["plant"]}, named), [True, False, True, False]),
    ]:
        gated = logits(model, prompts, steer(model, behaviour, 1.0, scale="absolute", condition=rule))
        assert [not torch.equal(gated[i], base[i]) for i in range(len(prompts))] == expected, rule


def test_unit_rule_logic_and_scores():
    vec = SteeringVector({0: torch.tensor([1.0, 0.0])}, "m", ModelFingerprint("llama", 2, 1))
    a, b = Condition(vec, 0.5), Condition(vec, 0.5, side="smaller", comparison="projection")
    scores = {id(a): torch.tensor([0.9, 0.1, 0.6]), id(b): torch.tensor([0.9, 0.1, 0.2])}
    fired = (a & ~b).fires(lambda c: scores[id(c)])
    assert fired.tolist() == [True, False, False]
    assert (a | b).fires(lambda c: None) is None
    rows = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    assert condition_scores(rows, torch.tensor([2.0, 0.0]), "projection").tolist() == [3.0, 0.0]
    assert condition_scores(rows, torch.tensor([2.0, 0.0]), "cosine").tolist() == pytest.approx([0.6, 0.0])
    hidden = torch.arange(12.0).reshape(1, 6, 2).expand(2, 6, 2)
    index = torch.tensor([[-1, -1, 0, 1, 2, 3], [-1, -1, -1, -1, -1, 0]])
    assert aggregate(hidden, index, "mean").tolist() == [[8.0, 9.0], [10.0, 11.0]]  # sink out; alone, kept
    assert aggregate(hidden, index, "last").tolist() == [[10.0, 11.0], [10.0, 11.0]]


def test_a_behaviour_layer_before_the_condition_fails_loudly_unless_generated_only(tiny):
    model = tiny("llama")
    cond = Condition(random_vector(model, layers=(2,), seed=4), threshold=0.0)
    early = random_vector(model, layers=(1, 2, 3), scale=8.0)
    for layers in ([1], [2], [1, 3]):
        with (
            pytest.raises(SteeringError, match=r"before its gate is decided.*positions='generated'"),
            steer(model, early, 1.0, layers=layers, scale="absolute", condition=cond),
        ):
            pass
    item = Intervention(early, 1.0, layers=[1, 3], scale="absolute", positions="generated", condition=cond)
    with steer(model, item):  # decided on the prompt, applied from the first generated token on: allowed
        batched = greedy(model, PROMPTS)
        alone = [greedy(model, [row])[0] for row in PROMPTS]
    assert all(torch.equal(b, a) for b, a in zip(batched, alone, strict=True))


def test_a_gate_whose_prompt_pass_was_not_seen_fails_loudly(tiny):
    """Calling the model with a cache filled outside the steer() block: the gate cannot be known."""
    from transformers import DynamicCache

    from steerlab._calling import cache_argument

    model = tiny("llama")
    item = Intervention(random_vector(model, layers=(2,)), 1.0, scale="absolute", condition=planted(model))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=torch.tensor([WITH[0]]), **{cache_argument(model): cache}, use_cache=True)
        with pytest.raises(SteeringError, match="before its condition was read"), steer(model, item):
            model(input_ids=torch.tensor([[11]]), **{cache_argument(model): cache}, use_cache=True)


def test_bad_conditions_are_refused_with_clear_errors(tiny):
    model = tiny("llama")
    vec = random_vector(model, layers=(1,))
    with pytest.raises(SteeringError, match="finite number"):
        Condition(vec, threshold=math.nan)
    with pytest.raises(SteeringError, match="finite number"):
        Condition(vec, threshold="0.1")
    with pytest.raises(SteeringError, match=r"lacks \(it has layers \[1\]\)"):
        Condition(vec, 0.1, layers=[3])
    with pytest.raises(SteeringError, match="comparison='dot' is not valid"):
        Condition(vec, 0.1, comparison="dot")
    with pytest.raises(SteeringError, match="needs a SteeringVector"):
        Condition(torch.ones(32), 0.1)
    cond = Condition(vec, 0.1)
    with pytest.raises(SteeringError, match=r"names the condition 'harmfull'.*\['harmful'\]"):
        Rule.parse({"any": ["harmfull"]}, {"harmful": cond})
    with pytest.raises(SteeringError, match="a rule is a condition's name"):
        Rule.parse({"xor": ["harmful"]}, {"harmful": cond})
    with pytest.raises(SteeringError, match="a rule combines Conditions"):
        cond & "harmful"
    with pytest.raises(SteeringError, match="must be a Condition or a Rule"):
        Intervention(vec, 1.0, scale="absolute", condition="harmful")
    other = tiny("gpt2")
    foreign = Condition(random_vector(other, layers=(1,)), 0.1)
    behaviour = Intervention(random_vector(model, layers=(3,)), 1.0, scale="absolute", condition=foreign)
    with pytest.raises(VectorMismatchError, match="does not fit the model"), steer(model, behaviour):
        pass
    with pytest.raises(SteeringError, match="cannot be baked"):
        bake_addition(model, Intervention(random_vector(model, layers=(3,)), 1.0, scale="absolute", condition=cond))


# -- choosing the condition point ---------------------------------------------------------------------------------

TOPIC = [
    "Tell me about cats.",
    "My cat sleeps all day.",
    "Why do cats purr?",
    "Cats and their kittens.",
    "A cat on the mat.",
    "How old do cats get?",
    "The cat chased a mouse.",
    "Do cats like milk?",
]
OTHER_TOPIC = [
    "Tell me about trains.", "The weather is cold.", "How do I bake bread?", "Stocks fell today.",
    "A song about the sea.", "What is a prime number?", "The bus was late.", "Paint the fence blue.",
]  # fmt: skip


def test_threshold_search_finds_the_best_f1_of_every_threshold():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 5, 20, generator=gen).round(decimals=1)  # ties included
    labels = torch.rand(20, generator=gen) > 0.5
    thresholds, f1s = threshold_f1(scores, labels)
    for index in range(15):
        row = scores.reshape(15, 20)[index]
        cands = torch.cat([row, torch.tensor([row.min() - 1, row.max() + 1])]).unique()
        cuts = (cands[1:] + cands[:-1]) / 2
        for side in range(2):
            fire = (lambda t, row=row: row > t) if side == 0 else (lambda t, row=row: row < t)
            best = max(gate_f1(fire(t), labels)["f1"] for t in cuts)
            found_t, found = float(thresholds.reshape(15, 2)[index, side]), float(f1s.reshape(15, 2)[index, side])
            assert found == pytest.approx(best)
            assert gate_f1(fire(found_t), labels)["f1"] == pytest.approx(best)  # the threshold gives that F1


def test_the_search_finds_a_topic_and_its_f1_is_the_gates(tiny, tokenizer):
    model = tiny("llama")
    search = find_condition_point(model, tokenizer, TOPIC, OTHER_TOPIC, held_out=0.25, seed=1)
    assert search.n_train == 12 and search.n_held_out == 4
    assert len(search.rows) == 4 * 2 * 2 * 2  # layers x reduces x comparisons x sides
    assert search.train_f1 == max(row["train_f1"] for row in search.rows) == 1.0
    assert search.held_out_f1 is not None
    # The gate, applied under left padding in one batch, fires exactly where the search says.
    cond = search.condition
    assert cond.vector.extra["condition"]["threshold"] == cond.threshold
    texts = TOPIC + OTHER_TOPIC
    ids = encode(tokenizer, texts)
    behaviour = random_vector(model, layers=(cond.layers[0] + 1,) if cond.layers[0] < 3 else (3,), scale=8.0)
    item = Intervention(behaviour, 1.0, scale="absolute", positions="generated", condition=cond)
    with steer(model, item):
        gated = greedy(model, ids, new=2)
    plain = greedy(model, ids, new=2)
    scores = cond.score({cond.layers[0]: recorded(model, ids, cond.layers[0], cond.site, cond.reduce)})
    expected = cond.holds(scores)
    changed = torch.tensor([not torch.equal(g, p) for g, p in zip(gated, plain, strict=True)])
    assert not (changed & ~expected).any()  # a row the gate leaves shut is never steered
    assert changed.sum() >= expected.sum() // 2  # and the open ones mostly change their answer
    again = Condition.recorded(cond.vector)
    assert (again.threshold, again.layers, again.reduce) == (cond.threshold, cond.layers, cond.reduce)


def test_the_search_refuses_bad_choices(tiny, tokenizer):
    model = tiny("llama")
    with pytest.raises(DataError, match="reduces="):
        find_condition_point(model, tokenizer, TOPIC, OTHER_TOPIC, reduces=["max"])
    with pytest.raises(DataError, match="held_out"):
        find_condition_point(model, tokenizer, TOPIC, OTHER_TOPIC, held_out=1.0)
    with pytest.raises(SteeringError, match="records no condition point"):
        Condition.recorded(random_vector(model))


def test_a_new_prompt_after_a_cached_step_starts_a_new_sequence():
    """The gate is decided once per sequence: a prompt that happens to begin with the last cached step's token is
    still a new prompt (only a call that ran its whole sequence can be re-fed longer, without a cache)."""
    from steerlab._positions import PositionTracker

    tracker = PositionTracker()

    def call(ids, mask):
        tracker._before_forward(None, (), {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)})
        return tracker.sequence, tracker.new_sequence

    assert call([[5, 6, 7]], [[1, 1, 1]]) == (1, True)  # a prompt pass
    assert call([[9]], [[1, 1, 1, 1]]) == (1, False)  # a cached step
    assert call([[9, 4]], [[1, 1]]) == (2, True)  # a new prompt beginning with that token
    assert call([[9, 4, 8]], [[1, 1, 1]]) == (2, False)  # re-fed longer without a cache: the same sequence


def test_gate_opens_says_where_a_gate_steers(tiny, tokenizer):
    """gate_opens (what the CLI and scripts report) equals what the gate decides inside steer, rules included."""
    model = tiny("llama")
    texts = TOPIC + OTHER_TOPIC
    ids = encode(tokenizer, texts)
    topic = find_condition_point(model, tokenizer, TOPIC, OTHER_TOPIC, layers=[0, 1], held_out=0).condition
    arbitrary = Condition(random_vector(model, layers=(1,), seed=3), 0.0)
    scores = arbitrary.score({1: recorded(model, ids, 1, "resid_post", "mean")})
    arbitrary = Condition(arbitrary.vector, float(scores.median()))  # splits the prompts about in half
    behaviour = random_vector(model, layers=(3,), scale=8.0)
    base = logits(model, ids, steer(model, []))
    for gate in (topic, arbitrary, topic & ~arbitrary, topic | arbitrary):
        opened = gate_opens(model, tokenizer, texts, gate)
        assert 0 < int(opened.sum()) < len(texts), gate  # some open, some shut: the comparison below can fail
        gated = logits(model, ids, steer(model, behaviour, 1.0, scale="absolute", condition=gate))
        assert [not torch.equal(gated[i], base[i]) for i in range(len(texts))] == opened.tolist(), gate
