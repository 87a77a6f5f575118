"""The HTTP routes, thin: each one validates with :class:`~steerlab.serve.validate.Validator`, hands jobs to the
engine, and shapes the answer with :mod:`steerlab.serve.openai`. What they share is a :class:`Server`, stored on
the app by :func:`~steerlab.serve.app.create_app` and given to each route as a FastAPI dependency.

Routes: OpenAI's ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``; the vector library under
``/v1/vectors``; ``/v1/sweep`` (the playground's plot); ``/health`` and ``/metrics``; the playground's files.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from torch import nn

from steerlab.errors import SteerlabError, VectorMismatchError
from steerlab.serve import openai
from steerlab.serve.engine import Engine, EngineBusy, Event, Job
from steerlab.serve.errors import ApiError
from steerlab.serve.library import VectorLibrary
from steerlab.serve.schemas import ChatRequest, CompletionRequest, ServeLimits, SweepRequest
from steerlab.serve.validate import Validator

__all__ = ["Server", "api", "playground"]

_PLAYGROUND = resources.files("steerlab.serve") / "playground"
_ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}


@dataclass(frozen=True)
class Server:
    """Everything the routes share: the served model, its vectors, the engine, the limits and the validator."""

    model: nn.Module
    library: VectorLibrary
    engine: Engine
    limits: ServeLimits
    validator: Validator
    name: str
    created: int


def _server(request: Request) -> Server:
    return request.app.state.server


Served = Annotated[Server, Depends(_server)]

api = APIRouter()
playground = APIRouter(include_in_schema=False)


# ----- the engine, from async code --------------------------------------------------------------------------
def _submit(engine: Engine, job: Job) -> asyncio.Queue[Event]:
    """Queue ``job``; its events arrive (from the worker thread) on the returned queue."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()

    def sink(event: Event) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop is gone (shutdown); nobody is listening
            job.cancel()

    job.sink = sink
    try:
        engine.submit(job)
    except EngineBusy as error:
        raise ApiError(503, str(error), code="server_busy") from None
    except SteerlabError as error:  # the engine's own check, behind the validator's
        raise ApiError(400, f"steering: {error}", param="steering", code="invalid_steering") from None
    return events


async def _events(events: asyncio.Queue[Event]) -> AsyncIterator[Event]:
    while True:
        yield await events.get()


async def _collect(job: Job, events: asyncio.Queue[Event]) -> tuple[str, Event]:
    """The whole answer and its ``done`` event."""
    parts = []
    try:
        while True:
            event = await events.get()
            if event.kind == "error":
                raise openai.generation_failed(event.error)
            if event.kind == "done":
                return "".join(parts), event
            parts.append(event.text)
    finally:
        job.cancel()  # no-op when finished; stops the row when the client went away


async def _cancel_when_done(job: Job, frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for frame in frames:
            yield frame
    finally:
        job.cancel()  # the client hung up (or the answer ended): free the row


async def _answer(server: Server, job: Job, body: ChatRequest | CompletionRequest, *, chat: bool) -> Any:
    events = _submit(server.engine, job)
    reply = openai.new_reply(server.name, chat=chat)
    if body.stream:
        include = bool((body.stream_options or {}).get("include_usage"))
        frames = openai.sse_stream(reply, _events(events), include_usage=include)
        return StreamingResponse(
            _cancel_when_done(job, frames), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    text, done = await _collect(job, events)
    return openai.answer(reply, text, done)


# ----- OpenAI endpoints -------------------------------------------------------------------------------------
@api.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, server: Served) -> Any:
    return await _answer(server, server.validator.chat(body), body, chat=True)


@api.post("/v1/completions")
async def completions(body: CompletionRequest, server: Served) -> Any:
    return await _answer(server, server.validator.completion(body), body, chat=False)


@api.get("/v1/models")
async def models(server: Served) -> dict:
    return openai.model_list(server.name, server.created)


@api.get("/v1/models/{name:path}")
async def one_model(name: str, server: Served) -> dict:
    server.validator.check_model(name)
    return openai.model_card(server.name, server.created)


# ----- the vector library -----------------------------------------------------------------------------------
def _not_found(name: str) -> ApiError:
    return ApiError(
        404, f"no vector named '{name}' in this server's library (GET /v1/vectors).", code="vector_not_found"
    )


@api.get("/v1/vectors")
async def list_vectors(server: Served) -> dict:
    data = [server.library.describe(n) for n in server.library.names()]
    return {"object": "list", "data": data, "skipped": server.library.skipped}


@api.get("/v1/vectors/{name}")
async def get_vector(name: str, server: Served) -> dict:
    try:
        return server.library.describe(name)
    except KeyError:
        raise _not_found(name) from None


@api.post("/v1/vectors", status_code=201)
async def upload_vector(request: Request, name: str, server: Served, overwrite: bool = False) -> dict:
    try:
        server.library.check_name(name)
    except SteerlabError as error:
        raise ApiError(400, str(error), param="name", code="invalid_vector_name") from None
    data = await request.body()
    add = functools.partial(server.library.add, name, data, overwrite=overwrite)
    try:  # parsing and the fingerprint check read the file: off the event loop
        await asyncio.get_running_loop().run_in_executor(None, add)
    except FileExistsError:
        raise ApiError(
            409, f"a vector named '{name}' exists; DELETE it first or send ?overwrite=true.", code="vector_exists"
        ) from None
    except SteerlabError as error:
        code = "vector_model_mismatch" if isinstance(error, VectorMismatchError) else "invalid_vector"
        raise ApiError(400, f"the upload was refused: {error}", param="body", code=code) from None
    return server.library.describe(name)


@api.delete("/v1/vectors/{name}")
async def delete_vector(name: str, server: Served) -> dict:
    try:
        server.library.remove(name)
    except KeyError:
        raise _not_found(name) from None
    return {"id": name, "object": "steering_vector", "deleted": True}


# ----- the sweep behind the playground's plot ---------------------------------------------------------------
@api.post("/v1/sweep")
async def sweep(body: SweepRequest, server: Served) -> dict:
    jobs = server.validator.sweep(body)
    queues = [_submit(server.engine, job) for job in jobs]
    answers = [await _collect(job, q) for job, q in zip(jobs, queues, strict=True)]
    pairs = [(job.prompt_ids, job.tokens) for job in jobs]
    # Coherence under the unsteered model, scored by the engine (which owns the model's weights).
    nlls = await asyncio.wrap_future(server.engine.nll(pairs))
    results = [
        {"alpha": alpha, "text": text, "nll": None if math.isnan(nll) else nll, "tokens": done.completion_tokens}
        for alpha, (text, done), nll in zip(body.alphas, answers, nlls, strict=True)
    ]
    return {"prompt": body.prompt, "vector": body.vector, "results": results}


# ----- health and metrics -----------------------------------------------------------------------------------
@api.get("/health")
async def health(server: Served) -> Any:
    if not server.engine.alive():
        return JSONResponse({"status": "down", "model": server.name, "reason": "the engine is not running"}, 503)
    return {"status": "ok", "model": server.name, "vectors": len(server.library.names())}


@api.get("/metrics")
async def metrics(server: Served) -> dict:
    return server.engine.metrics()


# ----- the playground ---------------------------------------------------------------------------------------
@playground.get("/")
async def page() -> FileResponse:
    return FileResponse(str(_PLAYGROUND / "index.html"))


@playground.get("/playground/{asset}")
async def asset(asset: str) -> FileResponse:
    if asset not in _ASSETS:
        raise ApiError(404, f"no playground file '{asset}'; there are {sorted(_ASSETS)}.", code="not_found")
    return FileResponse(str(_PLAYGROUND / asset), media_type=_ASSETS[asset])


@playground.get("/v1/playground/config")
async def playground_config(server: Served) -> dict:
    return {
        "model": server.name,
        "max_tokens": server.limits.max_tokens,
        "max_relative_alpha": server.limits.max_relative_alpha,
        "num_layers": getattr(server.model.config, "num_hidden_layers", None),
    }
