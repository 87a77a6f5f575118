"""Start a steerlab server on loopback in a background thread, for the API, concurrency and browser tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from steerlab import extract_vector, sentiment_pairs
from steerlab.serve import Engine, ServeLimits, VectorLibrary, background_server, create_app


def make_library(model, tokenizer, folder) -> VectorLibrary:
    """A library of real vectors: sentiment at layers 8, 10, 12 and its same-norm random control."""
    vec = extract_vector(model, tokenizer, sentiment_pairs(), layers=[8, 10, 12])
    vec.save(folder / "sentiment.safetensors")
    vec.random_like(seed=0).save(folder / "random.safetensors")
    return VectorLibrary(folder, model)


@contextmanager
def running_server(model, tokenizer, library, limits: ServeLimits | None = None) -> Iterator[tuple[str, object]]:
    """Yields ``(base_url, app)`` for a server on 127.0.0.1 at a free port; stops it (and its engine) after."""
    app = create_app(model, tokenizer, library, limits=limits, engine=Engine(model, tokenizer, batch_window=0.02))
    with background_server(app) as url:
        yield url, app
