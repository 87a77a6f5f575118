"""The OpenAI-compatible server, driven by the official openai client against a real server on loopback."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import httpx
import openai
import pytest
import torch
from typer.testing import CliRunner

from serving import make_library, running_server
from steerlab import Intervention, SteeringVector, steer
from steerlab.cli import app as cli_app
from steerlab.engines import apply_messages
from steerlab.engines.transformers import generate
from steerlab.serve import Job, ServeLimits
from tiny import random_vector

LIMITS = ServeLimits(max_body_bytes=64 * 1024, max_vector_bytes=256 * 1024, max_prompt_tokens=300, max_tokens=64)
PROMPT = "Tell me about your weekend."


@pytest.fixture(scope="module")
def server(smol, tmp_path_factory):
    model, tokenizer = smol
    library = make_library(model, tokenizer, tmp_path_factory.mktemp("vectors"))
    with running_server(model, tokenizer, library, LIMITS) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model_name(client):
    return client.models.list().data[0].id


def chat(client, model_name, prompt=PROMPT, steering=None, **kw):
    extra = {"steering": steering} if steering is not None else None
    kw.setdefault("max_tokens", 10)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": prompt}], extra_body=extra, **kw
    )


def test_models_health_and_metrics(server, client, model_name):
    assert model_name == "smollm2-135m"
    assert client.models.retrieve(model_name).id == model_name
    assert httpx.get(server[0] + "/health").json() == {"status": "ok", "model": "smollm2-135m", "vectors": 2}
    metrics = httpx.get(server[0] + "/metrics").json()
    assert {"requests_total", "tokens_per_second", "queue_length", "tokens_generated_total"} <= set(metrics)


def test_unsteered_is_bit_identical_to_plain_generation(smol, server, client, model_name):
    model, tokenizer = smol
    answer = chat(client, model_name, max_tokens=12)
    ((prompt, tokens),) = generate(model, tokenizer, [PROMPT], max_new_tokens=12)
    assert answer.choices[0].message.content == tokenizer.decode(tokens, skip_special_tokens=True)
    job = Job(prompt_ids=prompt, max_tokens=12)  # the same request at the engine, where token ids are visible
    assert list(server[1].state.engine.run(job))[-1].kind == "done" and job.tokens == tokens
    assert answer.usage.completion_tokens == 12 and answer.choices[0].finish_reason == "length"

    text = client.completions.create(model=model_name, prompt="The capital of France is", max_tokens=8, temperature=0)
    ((_, tokens),) = generate(model, tokenizer, ["The capital of France is"], max_new_tokens=8, chat=False)
    assert text.choices[0].text == tokenizer.decode(tokens, skip_special_tokens=True)


def test_steered_equals_steer_and_differs_from_unsteered(smol, server, client, model_name):
    model, tokenizer = smol
    library = server[1].state.library
    steering = [{"vector": "sentiment", "alpha": -0.25, "layers": [10]}]
    steered = chat(client, model_name, steering=steering, max_tokens=12).choices[0].message.content
    with steer(model, library.get("sentiment"), -0.25, layers=[10], scale="relative"):
        ((_, tokens),) = generate(model, tokenizer, [PROMPT], max_new_tokens=12)
    assert steered == tokenizer.decode(tokens, skip_special_tokens=True)
    assert steered != chat(client, model_name, max_tokens=12).choices[0].message.content
    # Two entries apply together (one per request, in order), as steer() does with a list.
    both = [
        {"vector": "sentiment", "alpha": 0.2, "layers": [8]},
        {"vector": "random", "alpha": 5.0, "scale": "absolute"},
    ]
    items = [
        Intervention(library.get("sentiment"), 0.2, layers=[8], scale="relative"),
        Intervention(library.get("random"), 5.0, scale="absolute"),
    ]
    with steer(model, items):
        ((_, tokens),) = generate(model, tokenizer, [PROMPT], max_new_tokens=8)
    combined = chat(client, model_name, steering=both, max_tokens=8).choices[0].message.content
    assert combined == tokenizer.decode(tokens, skip_special_tokens=True)


def test_streaming_matches_the_whole_answer(client, model_name):
    steering = [{"vector": "sentiment", "alpha": 0.2, "layers": [10], "positions": "generated"}]
    whole = chat(client, model_name, steering=steering).choices[0].message.content
    chunks = list(chat(client, model_name, steering=steering, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10 and not chunks[-1].choices
    pieces = client.completions.create(
        model=model_name, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True
    )
    streamed = "".join(c.choices[0].text for c in pieces)
    assert (
        streamed
        == client.completions.create(model=model_name, prompt="Once upon a time", max_tokens=6, temperature=0)
        .choices[0]
        .text
    )


def test_sampling_is_seeded_per_request(client, model_name):
    one = chat(client, model_name, temperature=0.9, seed=7).choices[0].message.content
    assert one == chat(client, model_name, temperature=0.9, seed=7).choices[0].message.content
    assert one != chat(client, model_name, temperature=0.9, seed=8).choices[0].message.content
    stop = chat(client, model_name, max_tokens=12, stop=["weekend"])
    assert "weekend" not in stop.choices[0].message.content


def test_vector_upload_list_use_delete(smol, server, client, model_name, tmp_path):
    url, app = server
    model, _ = smol
    happy = app.state.library.get("sentiment").random_like(seed=5)
    path = happy.save(tmp_path / "up.safetensors")
    created = httpx.post(url + "/v1/vectors", params={"name": "upload-1"}, content=path.read_bytes())
    assert created.status_code == 201, created.text
    assert created.json()["layers"] == [8, 10, 12] and created.json()["method"] == "random"
    listed = httpx.get(url + "/v1/vectors").json()["data"]
    assert {v["id"] for v in listed} == {"sentiment", "random", "upload-1"}
    assert SteeringVector.load(app.state.library.folder / "upload-1.safetensors").method == "random"
    steered = chat(client, model_name, steering=[{"vector": "upload-1", "alpha": 0.3}]).choices[0].message.content
    assert steered
    again = httpx.post(url + "/v1/vectors", params={"name": "upload-1"}, content=path.read_bytes())
    assert again.status_code == 409 and again.json()["error"]["code"] == "vector_exists"
    replaced = httpx.post(
        url + "/v1/vectors", params={"name": "upload-1", "overwrite": "true"}, content=path.read_bytes()
    )
    assert replaced.status_code == 201
    assert httpx.delete(url + "/v1/vectors/upload-1").json() == {
        "id": "upload-1",
        "object": "steering_vector",
        "deleted": True,
    }
    assert not (app.state.library.folder / "upload-1.safetensors").exists()
    with pytest.raises(openai.NotFoundError, match="no vector named 'upload-1'"):
        chat(client, model_name, steering=[{"vector": "upload-1", "alpha": 0.3}])
    assert httpx.delete(url + "/v1/vectors/upload-1").status_code == 404


def test_upload_errors(smol, server, tiny, tmp_path):
    url, app = server
    folder = app.state.library.folder
    before = sorted(p.name for p in folder.iterdir())

    def upload(name, data):
        response = httpx.post(url + "/v1/vectors", params={"name": name}, content=data)
        return response.status_code, response.json()["error"]

    other = random_vector(tiny("llama"), layers=(1,)).save(tmp_path / "tiny.safetensors")
    status, error = upload("tiny", other.read_bytes())
    assert (
        status == 400
        and error["code"] == "vector_model_mismatch"
        and "hidden size 32 (vector) vs 576" in error["message"]
    )
    status, error = upload("junk", b"not a safetensors file at all")
    assert status == 400 and error["code"] == "invalid_vector"
    pickled = tmp_path / "evil.pt"
    torch.save({"layer.10": torch.zeros(576)}, pickled)  # a pickle: must be refused, never unpickled
    status, error = upload("evil", pickled.read_bytes())
    assert status == 400 and "not a readable .safetensors" in error["message"]
    status, error = upload("../escape", other.read_bytes())
    assert status == 400 and "vector name '../escape' is not valid" in error["message"]
    status, error = upload("big", b"\0" * (LIMITS.max_vector_bytes + 1))
    assert status == 413 and error["code"] == "body_too_large"
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing half-written was left behind


def test_every_error_has_a_code_and_none_shows_the_servers_folder(server, model_name, tmp_path):
    """Issue 13: some errors answered ``"code": null`` (a relative strength on a vector without residual norms,
    the router's own 404 / 405...), and a refused upload named the server's temporary file."""
    url, app = server
    folder = str(app.state.library.folder)
    bare = dataclasses.replace(app.state.library.get("sentiment"), resid_norm={})  # no norms: no relative scale
    uploaded = httpx.post(
        url + "/v1/vectors", params={"name": "bare"}, content=bare.save(tmp_path / "bare.safetensors").read_bytes()
    )
    assert uploaded.status_code == 201, uploaded.text
    chat_body = {"model": model_name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    cases = [
        ("POST", "/v1/chat/completions", {"json": {**chat_body, "steering": [{"vector": "bare", "alpha": 0.1}]}},
         400, "invalid_steering"),
        ("GET", "/nowhere", {}, 404, "not_found"),
        ("DELETE", "/v1/models", {}, 405, "method_not_allowed"),
        ("GET", "/v1/models/gpt-4o", {}, 404, "model_not_found"),
        ("GET", "/v1/vectors/nope", {}, 404, "vector_not_found"),
        ("DELETE", "/v1/vectors/nope", {}, 404, "vector_not_found"),
        ("GET", "/playground/secrets.txt", {}, 404, "not_found"),
        ("POST", "/v1/chat/completions", {"json": {"model": model_name}}, 400, "invalid_value"),
        ("POST", "/v1/completions", {"json": {"model": model_name, "prompt": ["a", "b"]}}, 400,
         "one_prompt_per_request"),
        ("POST", "/v1/chat/completions", {"json": {**chat_body, "max_tokens": 0}}, 400, "max_tokens_out_of_range"),
        ("POST", "/v1/sweep", {"json": {"prompt": "Hi", "vector": "sentiment", "alphas": [0.1] * 10}}, 400,
         "too_many_alphas"),
        ("POST", "/v1/vectors", {"content": b"x"}, 400, "invalid_value"),  # no ?name=
        ("POST", "/v1/vectors?name=../up", {"content": b"x"}, 400, "invalid_vector_name"),
        ("POST", "/v1/vectors?name=junk", {"content": b"not safetensors"}, 400, "invalid_vector"),
        ("POST", "/v1/vectors?name=empty", {"content": b""}, 400, "invalid_vector"),
        ("POST", "/v1/vectors?name=big", {"content": b"\0" * (LIMITS.max_vector_bytes + 1)}, 413, "body_too_large"),
    ]  # fmt: skip
    try:
        for method, path, kw, status, code in cases:
            response = httpx.request(method, url + path, timeout=60, **kw)
            error = response.json()["error"]
            assert (response.status_code, error["code"]) == (status, code), (method, path, response.text)
            assert error["message"] and folder not in error["message"] and ".upload-" not in error["message"]
            assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
        refused = httpx.post(url + "/v1/vectors", params={"name": "junk"}, content=b"not safetensors").json()
        assert refused["error"]["message"].startswith("the upload was refused: the upload is not a readable")
    finally:
        httpx.delete(url + "/v1/vectors/bare")


@pytest.mark.parametrize(
    ("steering", "kw", "error", "match"),
    [
        ([{"vector": "nope", "alpha": 0.1}], {}, openai.NotFoundError, "no vector named 'nope'"),
        ([{"vector": "sentiment", "alpha": 5.0}], {}, openai.BadRequestError, r"alpha=5.0 is out of range"),
        ([{"vector": "random", "alpha": 500, "scale": "absolute"}], {}, openai.BadRequestError, "out of range"),
        (
            [{"vector": "sentiment", "alpha": 2.0, "mode": "ablate"}],
            {},
            openai.BadRequestError,
            r"allowed: \[0.0, 1.0\]",
        ),
        (
            [{"vector": "sentiment", "alpha": 0.1, "layers": [3]}],
            {},
            openai.BadRequestError,
            r"layers \[3\] are not in",
        ),
        (
            [{"vector": "sentiment", "alpha": 0.1, "mode": "clamp"}],
            {},
            openai.BadRequestError,
            r"takes alpha as \[lo, hi\]",
        ),
        ([{"vector": "sentiment", "alpha": 0.1, "colour": 1}], {}, openai.BadRequestError, "colour"),
        ([{"vector": "sentiment", "alpha": 0.1, "positions": "middle"}], {}, openai.BadRequestError, "positions"),
        ([{"vector": "sentiment", "alpha": 0.1}] * 9, {}, openai.BadRequestError, "at most 8"),
        (None, {"max_tokens": 65}, openai.BadRequestError, r"max_tokens=65 is out of range"),
        (None, {"prompt": "word " * 400}, openai.BadRequestError, "at most 300"),
        (None, {"model": "gpt-4o"}, openai.NotFoundError, "model 'gpt-4o' is not served here"),
        (None, {"n": 2}, openai.BadRequestError, "n"),
        (None, {"temperature": 3}, openai.BadRequestError, "temperature"),
    ],
)
def test_request_errors(client, model_name, steering, kw, error, match):
    kw = {"model": model_name, **kw}
    prompt = kw.pop("prompt", PROMPT)
    with pytest.raises(error, match=match) as caught:
        client.chat.completions.create(
            messages=[{"role": "user", "content": prompt}],
            extra_body={"steering": steering} if steering is not None else None,
            **{"max_tokens": 4, **kw},
        )
    assert caught.value.body["type"] in ("invalid_request_error", "not_found_error")


def test_malformed_and_oversized_bodies_and_the_server_survives(server, client, model_name):
    url = server[0]
    bad = httpx.post(
        url + "/v1/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={"Content-Type": "application/json"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    missing = httpx.post(url + "/v1/chat/completions", json={"model": model_name})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    huge = httpx.post(
        url + "/v1/chat/completions",
        json={"model": model_name, "messages": [{"role": "user", "content": "x" * 70_000}]},
    )
    assert huge.status_code == 413 and "at most 65536" in huge.json()["error"]["message"]

    def chunks():
        for _ in range(20):
            yield b" " * 8192  # no Content-Length: counted while reading

    chunked = httpx.post(url + "/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert chat(client, model_name, max_tokens=3).choices[0].message.content  # still serving


def test_concurrent_clients_get_their_own_steering(server, client, model_name):
    """Many clients at once, each with its own vector and strength (some none): every answer equals the same
    request run alone, and the requests really were batched together."""
    cases = [
        None,
        [{"vector": "sentiment", "alpha": 0.25}],
        [{"vector": "sentiment", "alpha": -0.25, "layers": [10]}],
        [{"vector": "random", "alpha": 0.3}],
        None,
        [{"vector": "sentiment", "alpha": 0.15, "positions": "generated"}],
        [{"vector": "sentiment", "alpha": 1.0, "mode": "ablate", "layers": [12]}],
        [{"vector": "random", "alpha": -0.3}],
    ]
    prompts = ["Tell me about your weekend.", "Describe a cat.", "What is your favourite food?", "Hi"]
    requests = [(prompts[i % len(prompts)], steering) for i, steering in enumerate(cases + cases[:4])]
    alone = [chat(client, model_name, p, s, max_tokens=8).choices[0].message.content for p, s in requests]
    before = httpx.get(server[0] + "/metrics").json()
    results: dict[int, object] = {}
    barrier = threading.Barrier(len(requests) + 1)

    def run(i, prompt, steering):
        barrier.wait()
        try:
            results[i] = chat(client, model_name, prompt, steering, max_tokens=8).choices[0].message.content
        except Exception as error:  # noqa: BLE001 - compared below
            results[i] = error

    def bad():  # a failing request in the same burst touches nobody else
        barrier.wait()
        try:
            chat(client, model_name, steering=[{"vector": "sentiment", "alpha": 9.0}])
        except openai.BadRequestError as error:
            results["bad"] = error

    threads = [threading.Thread(target=run, args=(i, p, s)) for i, (p, s) in enumerate(requests)]
    threads.append(threading.Thread(target=bad))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert isinstance(results.pop("bad"), openai.BadRequestError)
    assert [results[i] for i in range(len(requests))] == alone
    after = httpx.get(server[0] + "/metrics").json()
    assert after["largest_batch"] > 1 and after["batches_total"] - before["batches_total"] < len(requests)
    assert len(set(alone)) > len(prompts)  # steering changed answers, so a leak would have shown


def test_sweep_gives_texts_and_coherence(server, client, model_name):
    body = {"prompt": PROMPT, "vector": "sentiment", "alphas": [-0.3, 0, 0.3], "layers": [10], "max_tokens": 8}
    sweep = httpx.post(server[0] + "/v1/sweep", json=body, timeout=120).json()
    assert [r["alpha"] for r in sweep["results"]] == [-0.3, 0, 0.3]
    assert all(isinstance(r["nll"], float) and r["nll"] > 0 for r in sweep["results"])
    assert sweep["results"][1]["text"] == chat(client, model_name, max_tokens=8).choices[0].message.content
    too_many = httpx.post(server[0] + "/v1/sweep", json={**body, "alphas": [0.1] * 10})
    assert too_many.status_code == 400


def test_chat_command_against_the_server_and_locally(smol, server, client, model_name, tmp_path):
    runner = CliRunner()
    url, app = server
    steering = [{"vector": "sentiment", "alpha": 0.2, "layers": [10]}]
    first = chat(client, model_name, "Hello!", steering, max_tokens=8).choices[0].message.content
    args = ["chat", "--vector", "sentiment", "--alpha", "0.2", "--layers", "10", "--max-tokens", "8"]
    remote = runner.invoke(cli_app, [*args, "--url", url], input="Hello!\nHow are you?\n/quit\n")
    assert remote.exit_code == 0, remote.output
    assert f"model> {first}\n" in remote.stdout and remote.stdout.count("model> ") == 2
    # The second turn saw the first: same as sending the whole conversation.
    model, tokenizer = smol
    second = remote.stdout.split("model> ")[2].split("\n")[0]
    history = [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "How are you?"},
    ]
    answer = client.chat.completions.create(
        model=model_name, messages=history, max_tokens=8, temperature=0, extra_body={"steering": steering}
    )
    assert second == answer.choices[0].message.content
    assert apply_messages(tokenizer, history).count("<|im_start|>user") == 2

    path = app.state.library.get("sentiment").save(tmp_path / "s.safetensors")
    local = runner.invoke(
        cli_app, [*args[:1], *args[3:], "--vector", str(path), "--model", "smollm2-135m"], input="Hello!\n"
    )
    assert local.exit_code == 0, local.output
    assert f"model> {first}\n" in local.stdout
    refused = runner.invoke(cli_app, ["chat", "--url", url, "--model", "smollm2-135m"])
    assert refused.exit_code == 1 and "exactly one of --url" in refused.stderr
    unknown = runner.invoke(cli_app, ["chat", "--url", url, "--vector", "nope"], input="Hi\n")
    assert unknown.exit_code == 1 and "no vector named 'nope'" in unknown.stderr and "'sentiment'" in unknown.stderr
    too_long = runner.invoke(cli_app, ["chat", "--url", url, "--max-tokens", "100"], input="Hi\n")
    assert too_long.exit_code == 1 and "max_tokens=100 is out of range" in too_long.stderr


def test_steerlab_serve_command_starts_a_server(server, tmp_path):
    """The newcomer's path: `steerlab serve --vectors DIR` in its own process, then the page and the API answer."""
    import os
    import socket
    import subprocess
    import sys
    import time

    source = server[1].state.library.folder / "sentiment.safetensors"
    (tmp_path / "sentiment.safetensors").write_bytes(source.read_bytes())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    command = [sys.executable, "-m", "steerlab.cli", "serve", "--vectors", str(tmp_path), "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                health = httpx.get(url + "/health", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, "steerlab serve did not come up"
                time.sleep(0.2)
        assert health.json() == {"status": "ok", "model": "smollm2-135m", "vectors": 1}
        assert "steerlab playground" in httpx.get(url + "/").text
        body = {
            "model": "smollm2-135m",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
            "temperature": 0,
            "steering": [{"vector": "sentiment", "alpha": 0.1}],
        }
        assert httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()["usage"]["completion_tokens"] >= 1
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert f"serving smollm2-135m with 1 vector(s) from {tmp_path}" in output


def test_a_client_that_goes_away_frees_its_row(server, client, model_name):
    url = server[0]
    before = httpx.get(url + "/metrics").json()["tokens_generated_total"]
    body = {"model": model_name, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 60, "temperature": 0}
    with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data:")  # the role chunk
        assert next(lines) == "" and next(lines).startswith("data:")  # a first piece of text; then hang up
    chat(client, model_name, max_tokens=3)  # queued behind the cancelled batch, so it runs after it ended
    generated = httpx.get(url + "/metrics").json()["tokens_generated_total"] - before
    assert generated < 40, f"the abandoned request kept generating ({generated} tokens)"
