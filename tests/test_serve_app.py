"""The app's wiring on a tiny model, in process (no socket): whatever fails, the answer is OpenAI's error shape with
a code, including the router's own 404 / 405 and a bug inside a route."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from steerlab.serve import ServeLimits, VectorLibrary, create_app
from tiny import SMOL_VOCAB, make_tiny


@pytest.fixture(scope="module")
def app(tokenizer, tmp_path_factory):
    model = make_tiny("llama", vocab=SMOL_VOCAB)  # the real tokenizer feeds it
    library = VectorLibrary(tmp_path_factory.mktemp("vectors"), model)
    return create_app(model, tokenizer, library, limits=ServeLimits(max_body_bytes=1000), name="tiny")


def test_router_errors_and_bugs_have_a_code(app):
    async def broken() -> dict:
        raise RuntimeError("a bug at /tmp/secret/place")

    app.add_api_route("/broken", broken)
    client = TestClient(app, raise_server_exceptions=False)  # no lifespan: nothing here reaches the engine
    cases = [
        ("GET", "/nowhere", 404, "not_found", "GET /nowhere: Not Found"),
        ("PUT", "/v1/vectors", 405, "method_not_allowed", "PUT /v1/vectors: Method Not Allowed"),
        ("GET", "/broken", 500, "internal_error", "the server failed (RuntimeError)"),
        ("POST", "/v1/completions", 413, "body_too_large", "at most 1000"),
    ]
    for method, path, status, code, message in cases:
        response = client.request(method, path, content=b"x" * 2000 if status == 413 else None)
        error = response.json()["error"]
        assert (response.status_code, error["code"]) == (status, code), response.text
        assert message in error["message"], error["message"]
        assert "/tmp/secret" not in error["message"]  # a bug's details stay in the log
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"


def test_an_api_key_guards_every_route_but_health_and_the_playground(tokenizer, tmp_path):
    import openai

    from steerlab.serve import background_server
    from steerlab.serve.middleware import is_loopback

    model = make_tiny("llama", vocab=SMOL_VOCAB)
    app = create_app(model, tokenizer, VectorLibrary(tmp_path, model), name="tiny", api_key="s3cret")
    client = TestClient(app, raise_server_exceptions=False)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        response = client.get("/v1/models", headers=headers)
        error = response.json()["error"]
        assert (response.status_code, error["code"], error["type"]) == (401, "invalid_api_key", "authentication_error")
        assert "Authorization: Bearer <key>" in error["message"]
    # the key is checked before the body is read: a too-large unauthenticated body is a 401, not a 413
    assert client.post("/v1/completions", content=b"x" * 2_000_000).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/health").status_code == 503  # open without a key (503: no lifespan, the engine is not up)
    assert client.get("/").status_code == 200
    assert client.get("/playground/app.js").status_code == 200
    # the official client sends its api_key as the bearer token and raises its usual exception without it
    with background_server(app) as url:
        assert openai.OpenAI(base_url=url + "/v1", api_key="s3cret").models.list().data[0].id == "tiny"
        with pytest.raises(openai.AuthenticationError, match="needs an API key"):
            openai.OpenAI(base_url=url + "/v1", api_key="nope").models.list()
    assert [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "example.org")] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_binding_beyond_loopback_without_a_key_warns(monkeypatch):
    import steerlab._models
    from steerlab.serve import serve

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop  # the check comes before the model loads: nothing more is needed to see it

    monkeypatch.setattr(steerlab._models, "load_model", stop)
    monkeypatch.delenv("STEERLAB_API_KEY", raising=False)
    with pytest.warns(UserWarning, match="binds 0.0.0.0 without an API key"), pytest.raises(Stop):
        serve(host="0.0.0.0")
    monkeypatch.setenv("STEERLAB_API_KEY", "k")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(Stop):
            serve(host="0.0.0.0")
        with pytest.raises(Stop):
            serve(host="127.0.0.1", api_key="")
