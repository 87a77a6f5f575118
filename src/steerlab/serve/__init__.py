"""Serve steered models: an OpenAI-compatible HTTP API with per-request steering and a web playground.

``steerlab serve`` runs :func:`serve`; :func:`~steerlab.serve.app.create_app` builds the app for embedding or
tests. Needs the ``serve`` extra (FastAPI, uvicorn). See docs/serving.md.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from steerlab.errors import SteerlabError
from steerlab.serve.app import create_app
from steerlab.serve.engine import Engine, EngineBusy, Event, Job
from steerlab.serve.errors import ApiError
from steerlab.serve.library import VectorLibrary
from steerlab.serve.middleware import API_KEY_ENV, is_loopback
from steerlab.serve.schemas import ServeLimits
from steerlab.serve.vllm_engine import VLLMEngine, open_llm

__all__ = [
    "ApiError",
    "Engine",
    "EngineBusy",
    "Event",
    "Job",
    "ServeLimits",
    "VLLMEngine",
    "VectorLibrary",
    "background_server",
    "create_app",
    "open_llm",
    "serve",
]

log = logging.getLogger("steerlab.serve")


def serve(
    model: str = "smollm2-135m",
    *,
    vectors: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str | None = None,
    dtype: str | None = None,
    batch_window: float = 0.015,
    max_batch: int = 16,
    limits: ServeLimits | None = None,
    api_key: str | None = None,
    engine: str = "transformers",
) -> None:
    """Load ``model`` and serve it with the vectors in the folder ``vectors`` until interrupted.

    ``engine="vllm"`` generates in vLLM (:class:`~steerlab.serve.vllm_engine.VLLMEngine`, steered by steerlab's
    vLLM plugin; needs vLLM installed, docs/vllm.md): the same routes, checks and playground, with vLLM's
    continuous batching. The transformers model is loaded too (request checks, the sweep's coherence score).

    Without ``vectors`` the library is a fresh temporary folder (uploads last as long as the server).
    ``api_key`` (default: ``$STEERLAB_API_KEY``) is then required as ``Authorization: Bearer <key>`` on every route
    but ``/health`` and the playground's files. Binds to loopback by default; binding another address without a
    key warns, since anyone who reaches it may generate and upload vectors.

    Example:
        >>> serve("smollm2-135m", vectors="vectors/", port=8000)   # then open http://127.0.0.1:8000/
    """
    import uvicorn

    from steerlab._models import load_model

    api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    if not api_key and not is_loopback(host):
        warnings.warn(
            f"steerlab serve binds {host} without an API key: anyone who reaches it can generate and upload vectors. "
            f"Give one with --api-key or ${API_KEY_ENV}, or bind 127.0.0.1.",
            stacklevel=2,
        )
    if engine not in ("transformers", "vllm"):
        raise SteerlabError(f"engine={engine!r} is not known; expected 'transformers' or 'vllm'.")
    # On vLLM the weights live in vLLM alone: requests are checked against the model's structure (device "meta").
    lm, tokenizer = load_model(model, device="meta" if engine == "vllm" else device, dtype=dtype)
    folder = Path(vectors) if vectors is not None else Path(tempfile.mkdtemp(prefix="steerlab-vectors-"))
    library = VectorLibrary(folder, lm, max_bytes=(limits or ServeLimits()).max_vector_bytes)
    if engine == "vllm":
        worker: Any = VLLMEngine(open_llm(lm, max_batch=max_batch), lm, tokenizer)
    else:
        worker = Engine(lm, tokenizer, batch_window=batch_window, max_batch=max_batch)
    app = create_app(lm, tokenizer, library, limits=limits, engine=worker, api_key=api_key)
    print(  # noqa: T201 - the one line a user needs
        f"steerlab serving {model}{' on vLLM' if engine == 'vllm' else ''} with {len(library.names())} vector(s) "
        f"from {folder} at http://{host}:{port}/ (playground at /, OpenAI API at /v1)",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


@contextmanager
def background_server(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread (port 0: a free one) and yield its base URL; the server
    and its engine stop when the block ends. For notebooks, benchmarks and tests.

    Example:
        >>> with background_server(create_app(model, tokenizer, library)) as url:
        ...     openai.OpenAI(base_url=url + "/v1", api_key="-").models.list()
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="steerlab-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start (is the port free?)")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(60)
