"""Conditions in the server's requests: a steering entry's ``condition`` (inline, named in the request's
``conditions``, or a rule of those) becomes a gated Intervention; bad conditions are 4xx with a field and a code;
conditional and plain requests batched together each equal their row alone."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from steerlab import Condition, Intervention, Rule, steer_rows
from steerlab.engines import encode, generate_batch, pad_batch
from steerlab.serve import ApiError, Engine, ServeLimits, VectorLibrary
from steerlab.serve.schemas import ChatRequest, CompletionRequest
from steerlab.serve.validate import Validator
from test_conditions import recorded
from tiny import SMOL_VOCAB, make_tiny, random_vector

SERVED = "tiny-llama"
HELLO = [{"role": "user", "content": "Hello there"}]
LIMITS = ServeLimits(max_prompt_tokens=200, max_tokens=64, max_interventions=3)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny Llama; its library: a behaviour at layers 2-3, a condition at layer 1 without a recorded point, and
    the same condition with one (as find_condition_point records it)."""
    model = make_tiny("llama", vocab=SMOL_VOCAB)
    folder = tmp_path_factory.mktemp("vectors")
    behaviour = dataclasses.replace(random_vector(model, layers=(2, 3), scale=4.0), resid_norm={2: 6.0, 3: 7.0})
    behaviour.save(folder / "happy.safetensors")
    topic = random_vector(model, layers=(1,), seed=7)
    topic.save(folder / "topic.safetensors")
    point = {"layer": 1, "threshold": 0.05, "comparison": "cosine", "side": "greater", "reduce": "last"}
    dataclasses.replace(topic, extra={"condition": point}).save(folder / "found.safetensors")
    dataclasses.replace(topic, site="heads").save(folder / "heads.safetensors")
    return model, VectorLibrary(folder, model)


@pytest.fixture
def validator(served, tokenizer):
    model, library = served
    return Validator(model, tokenizer, library, LIMITS, served=SERVED)


def chat(**fields):
    return ChatRequest(**{"model": SERVED, "messages": HELLO, **fields})


def steering(condition, **fields):
    return [{"vector": "happy", "alpha": 0.2, "layers": [2], "condition": condition, **fields}]


def test_a_condition_inline_named_or_in_a_rule_gates_the_intervention(validator):
    inline = validator.chat(chat(steering=steering({"vector": "topic", "threshold": 0.1, "comparison": "projection"})))
    (item,) = inline.interventions
    assert isinstance(item.condition, Condition)
    assert (item.condition.threshold, item.condition.comparison, item.condition.layers) == (0.1, "projection", (1,))
    assert item.condition.vector is validator.library.get("topic")
    recorded = validator.chat(chat(steering=steering({"vector": "found", "side": "smaller"})))
    cond = recorded.interventions[0].condition
    assert (cond.threshold, cond.reduce, cond.side) == (0.05, "last", "smaller")  # recorded, one option overridden
    named = {"t": {"vector": "topic", "threshold": 0.1}, "f": {"vector": "found"}}
    rule = {"all": ["t", {"not": "f"}, {"vector": "topic", "threshold": -0.5}]}
    ruled = validator.chat(chat(conditions=named, steering=steering(rule)))
    gate = ruled.interventions[0].condition
    assert isinstance(gate, Rule) and gate.op == "all" and len(gate.conditions()) == 3
    assert gate.children[1].op == "not"
    plain = validator.chat(chat(steering=[{"vector": "happy", "alpha": 0.2}]))
    assert plain.interventions[0].condition is None


def test_a_heads_entry_steers_chosen_heads_and_a_head_out_of_range_is_400(validator):
    job = validator.chat(chat(steering=[{"vector": "heads", "alpha": 1.0, "scale": "absolute", "heads": [1, 3]}]))
    assert job.interventions[0].heads == (1, 3) and job.interventions[0].resolved_site == "heads"
    with pytest.raises(ApiError, match=r"heads \[4\] do not exist.*4 attention heads") as caught:
        validator.chat(chat(steering=[{"vector": "heads", "alpha": 1.0, "scale": "absolute", "heads": [4]}]))
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, "invalid_steering", "steering[0]")
    with pytest.raises(ApiError, match="which exist at the 'heads' site") as caught:
        validator.chat(chat(steering=[{"vector": "topic", "alpha": 1.0, "scale": "absolute", "heads": [0]}]))
    assert caught.value.code == "invalid_steering"


@pytest.mark.parametrize(
    ("fields", "status", "code", "param", "match"),
    [
        (
            {"steering": steering("harmfull"), "conditions": {"harmful": {"vector": "topic", "threshold": 0.1}}},
            400,
            "invalid_condition",
            "steering[0].condition",
            r"names the condition 'harmfull'.*\['harmful'\]",
        ),
        (
            {"steering": steering({"vector": "topic", "threshold": float("nan")})},
            400,
            "invalid_condition",
            "steering[0].condition",
            "finite number",
        ),
        (
            {"conditions": {"c": {"vector": "topic", "threshold": float("nan")}}, "steering": steering("c")},
            400,
            "invalid_condition",
            "conditions.c",
            "finite number",
        ),
        (
            {"steering": steering({"vector": "nope", "threshold": 0.1})},
            404,
            "vector_not_found",
            "steering[0].condition.vector",
            "no vector named 'nope'",
        ),
        (
            {"steering": steering({"vector": "topic"})},
            400,
            "invalid_condition",
            "steering[0].condition.threshold",
            "records no condition point",
        ),
        (
            {"steering": steering({"vector": "topic", "threshold": 0.1, "cmp": "dot"})},
            400,
            "invalid_condition",
            "steering[0].condition",
            "cmp",
        ),
        (
            {"steering": steering({"xor": [{"vector": "topic", "threshold": 0.1}]})},
            400,
            "invalid_condition",
            "steering[0].condition",
            "a rule is a condition's name",
        ),
        (
            {"steering": steering({"vector": "topic", "threshold": 0.1, "layers": [3]})},
            400,
            "invalid_condition",
            "steering[0].condition",
            r"layers \[3\]",
        ),
        (  # the behaviour at layer 2 would act on the prompt before a condition read at layer 2 is decided
            {"steering": steering({"vector": "happy", "threshold": 0.1, "layers": [2]})},
            400,
            "invalid_steering",
            "steering[0]",
            "before its gate is decided",
        ),
        (
            {"conditions": {str(i): {"vector": "topic", "threshold": 0.1} for i in range(4)}},
            400,
            "too_many_conditions",
            "conditions",
            "at most 3",
        ),
    ],
)
def test_bad_conditions_are_4xx_with_the_field_and_a_code(validator, fields, status, code, param, match):
    with pytest.raises(ApiError, match=match) as caught:
        validator.chat(chat(**fields))
    assert (caught.value.status, caught.value.code, caught.value.param) == (status, code, param)


class _Library:
    """A library holding a vector of another model (a real library refuses to load one)."""

    def __init__(self, vectors):
        self.vectors = vectors

    def get(self, name):
        return self.vectors[name]

    def names(self):
        return sorted(self.vectors)


def test_a_condition_vector_of_another_model_is_refused(served, tokenizer):
    model, library = served
    foreign = random_vector(make_tiny("gpt2", vocab=SMOL_VOCAB), layers=(1,))
    validator = Validator(
        model, tokenizer, _Library({"happy": library.get("happy"), "foreign": foreign}), LIMITS, served=SERVED
    )
    with pytest.raises(ApiError, match="does not fit the model") as caught:
        validator.chat(chat(steering=steering({"vector": "foreign", "threshold": 0.1})))
    assert (caught.value.status, caught.value.code, caught.value.param) == (
        400,
        "invalid_condition",
        "steering[0].condition",
    )


@pytest.mark.filterwarnings("ignore::steerlab.errors.StrengthWarning")  # strong pushes: the tiny model's answers move
def test_conditional_and_plain_requests_batched_together_each_equal_their_row_alone(served, validator, tokenizer):
    model, _ = served
    prompts = ["Tell me about cats.", "Once upon a time", "The weather today is", "Cats purr when happy."]
    ids = encode(tokenizer, prompts)
    scores = Condition(validator.library.get("topic"), 0.0, reduce="last").score
    values = scores({1: recorded(model, ids, 1, "resid_post", "last")})
    middle = float(values.sort().values[1:3].mean())  # two prompts above, two below
    gate = {"vector": "topic", "threshold": middle, "reduce": "last"}
    bodies = [
        {"steering": steering(gate, alpha=1.0)},
        {"steering": [{"vector": "happy", "alpha": 0.5}]},
        {},
        {"steering": steering({"not": gate}, alpha=-1.0)},
    ]
    jobs = []
    for prompt, body in zip(prompts, bodies, strict=True):
        job = validator.completion(CompletionRequest(model=SERVED, prompt=prompt, max_tokens=5, **body))
        job.temperature = 0.0
        jobs.append(job)
    engine = Engine(model, tokenizer, batch_window=0.3).start()
    try:
        threads = [threading.Thread(target=lambda j=job: list(engine.run(j))) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert engine.metrics()["largest_batch"] == 4
    finally:
        engine.stop()
    changed = []
    for job in jobs:
        row, mask = pad_batch([job.prompt_ids], 2, side="left")
        with steer_rows(model, [job.interventions or None]):
            alone = generate_batch(model, row, mask, max_new_tokens=5, pad_token_id=2)[0].tolist()
        assert job.tokens == (alone[: alone.index(2)] if 2 in alone else alone)
        plain = generate_batch(model, row, mask, max_new_tokens=5, pad_token_id=2)[0].tolist()
        changed.append(alone != plain)
    fired = (values > middle).tolist()
    assert changed[0] == fired[0] and changed[3] == (not fired[3])
    assert any(fired) and not all(fired)
    assert isinstance(jobs[0].interventions[0], Intervention)


def test_a_malformed_named_condition_is_a_schema_error_naming_its_field():
    from pydantic import ValidationError

    from steerlab.serve.validate import request_error

    with pytest.raises(ValidationError) as caught:
        chat(conditions={"c": {"vector": "topic", "threshold": 0.1, "comparison": "dot"}})
    error = request_error(caught.value.errors())
    assert (error.status, error.code, error.param) == (400, "invalid_value", "conditions.c.comparison")


@pytest.mark.filterwarnings("ignore::steerlab.errors.StrengthWarning")  # strong pushes: the tiny model's answers move
def test_conditional_and_plain_requests_over_http(served, tokenizer):
    """Through uvicorn and the official client, sent together: a gated request's answer equals the plain request's
    where its gate is shut and the always-steered request's where it opens; bad conditions come back as 4xx."""
    import openai

    from steerlab.serve import background_server, create_app

    model, library = served
    prompts = ["Tell me about cats.", "Once upon a time", "The weather today is", "Cats purr when happy."]
    scores = Condition(library.get("topic"), 0.0, reduce="last").score(
        {1: recorded(model, encode(tokenizer, prompts), 1, "resid_post", "last")}
    )
    middle = float(scores.sort().values[1:3].mean())  # two prompts open, two stay shut
    fired = (scores > middle).tolist()
    gate = {"vector": "topic", "threshold": middle, "reduce": "last"}
    behaviour = {"vector": "happy", "alpha": 1.0, "layers": [2]}
    arms = {"gated": [{**behaviour, "condition": gate}], "always": [behaviour], "plain": None}
    app = create_app(model, tokenizer, library, limits=LIMITS, name=SERVED)
    answers: dict[tuple[str, int], str] = {}
    with background_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="-")

        def ask(arm: str, i: int) -> None:
            extra = {} if arms[arm] is None else {"steering": arms[arm]}
            reply = client.completions.create(
                model=SERVED, prompt=prompts[i], max_tokens=6, temperature=0.0, extra_body=extra
            )
            answers[arm, i] = reply.choices[0].text

        threads = [threading.Thread(target=ask, args=(arm, i)) for arm in arms for i in range(len(prompts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(answers) == len(threads)
        for i, open_ in enumerate(fired):
            assert answers["gated", i] == answers["always" if open_ else "plain", i], (i, open_)
            assert answers["always", i] != answers["plain", i]  # the push shows, so the equalities above say something
        for body, code, param, match in (
            ({"steering": [{**behaviour, "condition": "harmfull"}], "conditions": {"harmful": gate}},
             "invalid_condition", "steering[0].condition", "names the condition 'harmfull'"),
            ({"steering": [{**behaviour, "condition": {"vector": "topic"}}]}, "invalid_condition",
             "steering[0].condition.threshold", "records no condition point"),
            ({"steering": [{**behaviour, "condition": {"vector": "nope", "threshold": 0.1}}]}, "vector_not_found",
             "steering[0].condition.vector", "no vector named 'nope'"),
        ):  # fmt: skip
            with pytest.raises(openai.APIStatusError, match=match) as caught:
                client.completions.create(model=SERVED, prompt=prompts[0], max_tokens=2, extra_body=body)
            error = caught.value.body
            assert caught.value.status_code in (400, 404) and (error["code"], error["param"]) == (code, param)
