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
