"""The server's request validation without HTTP: request bodies become engine jobs, or errors with a status, a
field and a code. A tiny model with SmolLM2's tokenizer; no server, no client."""

from __future__ import annotations

import ast
import copy
import dataclasses
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from steerlab import Intervention, steer_rows
from steerlab.engines import apply_messages, encode, generate_batch, pad_batch
from steerlab.errors import FormatError, StrengthWarning
from steerlab.serve import ApiError, ServeLimits, VectorLibrary
from steerlab.serve.schemas import ChatRequest, CompletionRequest, SweepRequest
from steerlab.serve.validate import Validator, request_error
from tiny import SMOL_VOCAB, make_tiny, random_vector

LIMITS = ServeLimits(max_prompt_tokens=200, max_tokens=64, max_interventions=3, max_sweep=4)
SERVED = "tiny-llama"
HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny Llama with a library of two vectors: one with residual norms (relative scale works), one without."""
    model = make_tiny("llama", vocab=SMOL_VOCAB)  # the real tokenizer feeds it
    folder = tmp_path_factory.mktemp("vectors")
    raw = random_vector(model, layers=(1, 2), scale=4.0)
    dataclasses.replace(raw, resid_norm={1: 6.0, 2: 7.0}).save(folder / "normed.safetensors")
    raw.save(folder / "raw.safetensors")
    return model, VectorLibrary(folder, model)


@pytest.fixture
def validator(served, tokenizer):
    model, library = served
    return Validator(model, tokenizer, library, LIMITS, served=SERVED)


def chat(**fields):
    return ChatRequest(**{"model": SERVED, "messages": HELLO, **fields})


def test_a_chat_request_becomes_the_job_the_engine_runs(validator, tokenizer):
    steering = [
        {"vector": "normed", "alpha": 0.3, "layers": [2], "positions": "generated"},
        {"vector": "raw", "alpha": 1.0, "mode": "ablate", "scale": "absolute"},
    ]
    messages = [{"role": "developer", "content": "Be brief."}, *HELLO]
    job = validator.chat(chat(messages=messages, steering=steering, temperature=0.5, seed=3, stop="\n", top_p=0.9))
    expected = [{"role": "system", "content": "Be brief."}, *HELLO]  # OpenAI's "developer" is the template's system
    assert job.prompt_ids == encode(tokenizer, [apply_messages(tokenizer, expected)])[0]
    assert (job.max_tokens, job.temperature, job.top_p, job.seed, job.stop) == (64, 0.5, 0.9, 3, ["\n"])
    first, second = job.interventions
    assert first.vector is validator.library.get("normed") and first.alpha == 0.3 and first.layers == (2,)
    assert (first.positions, first.scale, first.mode) == ("generated", "relative", "add")
    assert (second.mode, second.alpha, second.scale, second.layers) == ("ablate", 1.0, "absolute", None)
    # OpenAI's defaults: sampling at temperature 1; max_tokens 256, capped by the server's limit.
    plain = validator.chat(chat())
    assert (plain.temperature, plain.top_p, plain.max_tokens, plain.interventions, plain.stop) == (1.0, 1.0, 64, [], [])


def test_the_interventions_steer_as_the_library_does(validator, served):
    """What validation builds is a plain Intervention: run through steer_rows, it moves the tiny model's answer."""
    model, library = served
    job = validator.completion(
        CompletionRequest(model=SERVED, prompt="Once upon", max_tokens=4, steering=[{"vector": "normed", "alpha": 1.0}])
    )
    ids, mask = pad_batch([job.prompt_ids], 2, side="left")
    with steer_rows(model, [job.interventions]):
        steered = generate_batch(model, ids, mask, max_new_tokens=4, pad_token_id=2)
    with steer_rows(model, [[Intervention(library.get("normed"), 1.0, scale="relative")]]):
        by_hand = generate_batch(model, ids, mask, max_new_tokens=4, pad_token_id=2)
    assert steered.tolist() == by_hand.tolist()
    assert steered.tolist() != generate_batch(model, ids, mask, max_new_tokens=4, pad_token_id=2).tolist()


def entry(**fields):
    return [{"vector": "normed", "alpha": 0.1, **fields}]


@pytest.mark.parametrize(
    ("fields", "status", "code", "param", "match"),
    [
        ({"model": "gpt-4o"}, 404, "model_not_found", "model", "serves 'tiny-llama'"),
        ({"steering": entry(vector="nope")}, 404, "vector_not_found", "steering[0].vector", r"\['normed', 'raw'\]"),
        ({"steering": entry(alpha=1.5)}, 400, "alpha_out_of_range", "steering[0].alpha", r"allowed: \[-1.0, 1.0\]"),
        (
            {"steering": entry(alpha=150, scale="absolute")},
            400,
            "alpha_out_of_range",
            "steering[0].alpha",
            r"allowed: \[-100.0, 100.0\]",
        ),
        ({"steering": entry(alpha=-0.5, mode="ablate")}, 400, "alpha_out_of_range", "steering[0].alpha", "fraction"),
        ({"steering": entry(alpha=[-2, None], mode="clamp")}, 400, "alpha_out_of_range", "steering[0].alpha", "-2"),
        # What the library checks is reported as the library says it, with the entry it came from.
        ({"steering": entry(alpha=[0.5, -0.5], mode="clamp")}, 400, "invalid_steering", "steering[0]", "is empty"),
        ({"steering": entry(layers=[3])}, 400, "invalid_steering", "steering[0]", r"layers \[3\] are not in"),
        ({"steering": entry(positions=-1)}, 400, "invalid_steering", "steering[0]", "positions=-1 is not valid"),
        (
            {"steering": entry(mode="ablate_then_add", alpha=float("nan"))},
            400,
            "invalid_steering",
            "steering[0]",
            "nan",
        ),
        # Issue 13: a relative strength on a vector without residual norms had no code.
        (
            {"steering": [*entry(), {"vector": "raw", "alpha": 0.2}]},
            400,
            "invalid_steering",
            "steering[1]",
            "needs the residual norm at layers",
        ),
        ({"steering": entry() * 4}, 400, "too_many_interventions", "steering", "at most 3"),
        ({"max_tokens": 65}, 400, "max_tokens_out_of_range", "max_tokens", r"max_tokens=65 is out of range"),
        ({"max_completion_tokens": 0}, 400, "max_tokens_out_of_range", "max_tokens", "allowed: 1..64"),
        ({"messages": [{"role": "user", "content": "word " * 250}]}, 400, "context_length_exceeded", "messages", "200"),
        (
            {"messages": [{"role": "user", "content": "word " * 165}], "max_tokens": 64},
            400,
            "context_length_exceeded",
            "max_tokens",
            "model's context of 256",
        ),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_stop", "stop", "at most 4"),
        ({"stop": [""]}, 400, "invalid_stop", "stop", "non-empty"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            400,
            "unsupported_content",
            "messages",
            "only text",
        ),
    ],
)
def test_chat_errors_name_the_field_and_carry_a_code(validator, fields, status, code, param, match):
    with pytest.raises(ApiError, match=match) as caught:
        validator.chat(chat(**fields))
    error = caught.value
    assert (error.status, error.code, error.param) == (status, code, param)
    assert error.kind == ("not_found_error" if status == 404 else "invalid_request_error")


def test_a_model_without_chat_template_takes_completions_only(served, tokenizer):
    model, library = served
    plain = copy.copy(tokenizer)
    plain.chat_template = None
    validator = Validator(model, plain, library, LIMITS, served=SERVED)
    with pytest.raises(ApiError, match="no chat template; use /v1/completions") as caught:
        validator.chat(chat())
    assert caught.value.code == "no_chat_template"
    job = validator.completion(CompletionRequest(model=SERVED, prompt="Hello"))
    assert job.prompt_ids == encode(plain, ["Hello"])[0] and job.max_tokens == 16  # OpenAI's default
    sweep = validator.sweep(SweepRequest(prompt="Hello", vector="normed", alphas=[0.1]))
    assert sweep[0].prompt_ids == job.prompt_ids  # no template: the prompt as it is


@pytest.mark.parametrize(
    ("prompt", "code", "match"),
    [(["a", "b"], "one_prompt_per_request", "got 2 prompts"), ("", "empty_prompt", "the prompt is empty")],
)
def test_completion_errors(validator, prompt, code, match):
    with pytest.raises(ApiError, match=match) as caught:
        validator.completion(CompletionRequest(model=SERVED, prompt=prompt))
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, code, "prompt")


def test_a_sweep_is_one_job_per_strength_and_zero_runs_unsteered(validator, tokenizer):
    body = SweepRequest(prompt="Hi", vector="normed", alphas=[-0.2, 0.0, 0.2], layers=[1], max_tokens=5)
    jobs = validator.sweep(body)
    assert [job.interventions[0].alpha if job.interventions else None for job in jobs] == [-0.2, None, 0.2]
    assert all(job.interventions[0].layers == (1,) for job in jobs if job.interventions)
    prompt = encode(tokenizer, [apply_messages(tokenizer, [{"role": "user", "content": "Hi"}])])[0]
    assert all(job.prompt_ids == prompt for job in jobs)
    assert {job.max_tokens for job in jobs} == {5} and all(job.temperature == 0 for job in jobs)
    with pytest.raises(ApiError) as caught:
        validator.sweep(body.model_copy(update={"alphas": [0.1, 0.5, 2.0]}))
    assert (caught.value.code, caught.value.param) == ("alpha_out_of_range", "alphas[2].alpha")
    with pytest.raises(ApiError, match="at most 4") as caught:
        validator.sweep(body.model_copy(update={"alphas": [0.1] * 5}))
    assert (caught.value.code, caught.value.param) == ("too_many_alphas", "alphas")


def schema_error(model, body) -> ApiError:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    # FastAPI reports body fields under a leading "body"; request_error drops it as it would here.
    return request_error([{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()])


@pytest.mark.parametrize(
    ("body", "param", "match"),
    [
        ({"model": SERVED}, "messages", "messages: this field is required"),
        ({"model": SERVED, "messages": HELLO, "temperature": 3}, "temperature", "less than or equal to 2"),
        ({"model": SERVED, "messages": HELLO, "steering": entry(colour=1)}, "steering[0].colour", "Extra inputs"),
        ({"model": SERVED, "messages": HELLO, "steering": entry(mode="twist")}, "steering[0].mode", "'add'"),
        (
            {"model": SERVED, "messages": HELLO, "steering": entry(mode="clamp")},
            "steering[0].alpha",
            r"^steering\[0\].alpha: mode 'clamp' takes alpha as \[lo, hi\]",
        ),
        (
            {"model": SERVED, "messages": HELLO, "steering": entry(alpha=[0, 1])},
            "steering[0].alpha",
            r"mode 'add' takes alpha as a number, got \[0.0, 1.0\]",
        ),
    ],
)
def test_schema_errors_become_api_errors_with_a_code(body, param, match):
    error = schema_error(ChatRequest, body)
    assert (error.status, error.code, error.param) == (400, "invalid_value", param)
    assert re.search(match, error.message), error.message


def test_the_mode_choices_are_the_librarys():
    """The schemas take their choices from steerlab.types: every mode the library has is accepted."""
    from typing import get_args

    from steerlab.types import Mode

    for mode in get_args(Mode):
        alpha = [None, 1.0] if mode == "clamp" else 0.5
        assert ChatRequest.model_validate({**chat().model_dump(), "steering": entry(mode=mode, alpha=alpha)})


def test_invalid_json_and_an_error_without_code():
    error = request_error([{"type": "json_invalid", "loc": ("body", 12), "msg": "JSON decode error"}])
    assert (error.status, error.code, error.param) == (400, "invalid_json", None)
    with pytest.raises(ValueError, match="needs a code"):
        ApiError(400, "something went wrong", code="")


def test_an_upload_error_does_not_show_the_servers_folder(served):
    library = served[1]
    with pytest.raises(FormatError, match="^the upload is not a readable .safetensors file") as caught:
        library.add("junk", b"not a safetensors file")
    assert str(library.folder) not in str(caught.value) and ".upload-" not in str(caught.value)


def test_validation_is_pure():
    """validate, openai and errors import no HTTP framework: they can be tested (and reused) without one."""
    folder = Path(__file__).parents[1] / "src" / "steerlab" / "serve"
    for name in ("validate.py", "openai.py", "errors.py", "schemas.py", "library.py", "engine.py"):
        tree = ast.parse((folder / name).read_text(encoding="utf-8"))
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        web = sorted(m for m in imported if m.split(".")[0] in ("fastapi", "starlette", "uvicorn", "httpx"))
        assert not web, f"serve/{name} imports {web}"


def test_alpha_recommended_takes_the_calibrated_setting(tokenizer, tmp_path):
    """``"alpha": "recommended"`` steers with what steerlab calibrate recorded, within the server's limits."""
    model = make_tiny("llama", vocab=SMOL_VOCAB)
    raw = dataclasses.replace(random_vector(model, layers=(1, 2), scale=4.0), resid_norm={1: 6.0, 2: 7.0})
    rec = {"found": True, "layer": 2, "alpha": 0.2, "mode": "add", "scale": "relative"}
    dataclasses.replace(raw, extra={"recommended": rec}).save(tmp_path / "cal.safetensors")
    dataclasses.replace(raw, extra={"recommended": {**rec, "alpha": 1.5}}).save(tmp_path / "strong.safetensors")
    raw.save(tmp_path / "plain.safetensors")
    validator = Validator(model, tokenizer, VectorLibrary(tmp_path, model), LIMITS, served=SERVED)
    (item,) = validator.chat(chat(steering=[{"vector": "cal", "alpha": "recommended"}])).interventions
    assert (item.alpha, item.layers, item.mode, item.scale) == (0.2, (2,), "add", "relative")
    with pytest.raises(ApiError, match="steerlab calibrate") as refused:
        validator.chat(chat(steering=[{"vector": "plain", "alpha": "recommended"}]))
    assert refused.value.code == "invalid_steering"
    with pytest.raises(ApiError, match="contradicts"):
        validator.chat(chat(steering=[{"vector": "cal", "alpha": "recommended", "layers": [1]}]))
    with pytest.raises(ApiError, match="out of range") as strong, pytest.warns(StrengthWarning):
        validator.chat(chat(steering=[{"vector": "strong", "alpha": "recommended"}]))
    assert strong.value.code == "alpha_out_of_range"


def test_a_skipped_file_is_listed_by_name_without_the_servers_folder(tmp_path):
    model = make_tiny("llama", vocab=SMOL_VOCAB)
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    random_vector(model).save(tmp_path / "fine.safetensors")
    library = VectorLibrary(tmp_path, model)
    assert library.names() == ["fine"] and list(library.skipped) == ["broken.safetensors"]
    assert "broken.safetensors" in library.skipped["broken.safetensors"]
    assert str(tmp_path) not in library.skipped["broken.safetensors"]
