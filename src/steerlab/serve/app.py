"""The HTTP layer: an OpenAI-compatible API with per-request steering, the vector library and the playground.

Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` so the official client raises its
usual exceptions (``BadRequestError``, ``NotFoundError``...). Streaming uses server-sent events in OpenAI's
chunk format, ending with ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from steerlab._models import model_id
from steerlab._steer import Intervention, check_interventions
from steerlab._text import apply_messages, encode, has_chat_template
from steerlab.engines.transformers import generated_nll
from steerlab.errors import SteerlabError, VectorMismatchError
from steerlab.serve.engine import Engine, EngineBusy, Event, Job
from steerlab.serve.library import VectorLibrary
from steerlab.serve.schemas import ChatRequest, CompletionRequest, ServeLimits, SteeringSpec, SweepRequest

__all__ = ["ApiError", "create_app"]

_PLAYGROUND = resources.files("steerlab.serve") / "playground"


class ApiError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None, kind: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error"}.get(
            status, "invalid_request_error" if status < 500 else "server_error"
        )

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


class _BodyLimit:
    """Refuses bodies over the limit before they are parsed: by Content-Length, and while reading (chunked).

    Bodies are small (JSON, or a vector up to ``max_vector_bytes``), so reading them whole here is cheap.
    """

    def __init__(self, app: ASGIApp, limits: ServeLimits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"].rstrip("/") == "/v1/vectors" and scope["method"] == "POST"
        limit = self.limits.max_vector_bytes if upload else self.limits.max_body_bytes
        what = "vector upload" if upload else "request body"
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(what, int(declared), limit).response()(scope, receive, send)
            return
        # Without a (trusted) Content-Length, read the body here, at most limit + 1 bytes, then replay it.
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await _too_large(what, len(body), limit).response()(scope, receive, send)
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _too_large(what: str, size: int, limit: int) -> ApiError:
    return ApiError(
        413, f"the {what} has {size} bytes or more; this server accepts at most {limit}.", code="body_too_large"
    )


def _sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode()


def create_app(
    model: Any,
    tokenizer: Any,
    library: VectorLibrary,
    *,
    limits: ServeLimits | None = None,
    engine: Engine | None = None,
    name: str | None = None,
) -> FastAPI:
    """The FastAPI app serving ``model`` with the vectors of ``library``. The engine's worker starts and stops
    with the app (its lifespan).

    Example:
        >>> app = create_app(model, tokenizer, VectorLibrary("vectors/", model))
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    limits = limits or ServeLimits()
    engine = engine or Engine(model, tokenizer)
    served = name or model_id(model)
    created = int(time.time())
    max_positions = getattr(model.config, "max_position_embeddings", None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    app = FastAPI(title="steerlab", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.engine, app.state.library, app.state.limits = engine, library, limits
    app.add_middleware(_BodyLimit, limits=limits)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        if first.get("type") == "json_invalid":
            return ApiError(400, f"the body is not valid JSON: {first.get('msg')}", code="invalid_json").response()
        loc = [str(x) for x in first.get("loc", []) if x != "body"]
        param = ".".join(loc) or None
        message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        if first.get("type") == "missing":
            message = f"{param}: this field is required"
        return ApiError(400, message, param=param, code="invalid_value").response()

    # ----- helpers --------------------------------------------------------------------------------------
    def check_model(requested: str) -> None:
        if requested != served:
            raise ApiError(
                404,
                f"model '{requested}' is not served here; this server serves '{served}' (GET /v1/models).",
                param="model",
                code="model_not_found",
            )

    def interventions(specs: list[SteeringSpec] | None) -> list[Intervention]:
        specs = specs or []
        if len(specs) > limits.max_interventions:
            raise ApiError(
                400,
                f"steering has {len(specs)} entries; at most {limits.max_interventions} are allowed.",
                param="steering",
            )
        items = []
        for i, spec in enumerate(specs):
            where = f"steering[{i}]"
            try:
                vector = library.get(spec.vector)  # one lookup: a concurrent DELETE cannot slip in between
            except KeyError:
                raise ApiError(
                    404,
                    f"{where}: no vector named '{spec.vector}' in this server's library; "
                    f"available: {library.names() or 'none'} (GET /v1/vectors, upload with POST /v1/vectors).",
                    param=f"{where}.vector",
                    code="vector_not_found",
                ) from None
            alpha = check_alpha(spec, where)
            if spec.scale == "relative" and not all(layer in vector.resid_norm for layer in vector.layers):
                raise ApiError(
                    400,
                    f"{where}: vector '{spec.vector}' has no recorded residual norm, so scale='relative' cannot be "
                    "used; send scale='absolute'.",
                    param=f"{where}.scale",
                )
            try:  # the library checks the intervention itself (mode, alpha, layers, positions) ...
                items.append(Intervention(vector, alpha, spec.mode, spec.layers, spec.positions, scale=spec.scale))
            except SteerlabError as error:
                raise ApiError(400, f"{where}: {error}", param=where, code="invalid_steering") from None
        try:  # ... and against the served model
            check_interventions(model, items)
        except SteerlabError as error:
            raise ApiError(400, f"steering: {error}", param="steering", code="invalid_steering") from None
        return items

    def check_alpha(spec: SteeringSpec, where: str) -> Any:
        alpha = spec.alpha
        if spec.mode == "clamp":
            if not isinstance(alpha, tuple):
                raise ApiError(400, f"{where}: mode 'clamp' takes alpha as [lo, hi].", param=f"{where}.alpha")
            ends = [x for x in alpha if x is not None]
            bound = limits.max_relative_alpha if spec.scale == "relative" else limits.max_absolute_alpha
            if any(not math.isfinite(x) or abs(x) > bound for x in ends):
                raise ApiError(
                    400, f"{where}: clamp band ends must lie in [-{bound}, {bound}].", param=f"{where}.alpha"
                )
            return alpha
        if isinstance(alpha, tuple):
            raise ApiError(400, f"{where}: alpha is a number for mode '{spec.mode}'.", param=f"{where}.alpha")
        if spec.mode == "ablate":
            lo, hi, what = 0.0, 1.0, "the fraction removed"
        elif spec.scale == "relative":
            lo, hi, what = -limits.max_relative_alpha, limits.max_relative_alpha, "a fraction of the residual norm"
        else:
            lo, hi, what = -limits.max_absolute_alpha, limits.max_absolute_alpha, "an absolute strength"
        if not math.isfinite(alpha) or not lo <= alpha <= hi:
            raise ApiError(
                400,
                f"{where}: alpha={alpha} is out of range for mode '{spec.mode}' with scale '{spec.scale}' "
                f"({what}); allowed: [{lo}, {hi}].",
                param=f"{where}.alpha",
                code="alpha_out_of_range",
            )
        return float(alpha)

    def prompt_ids(text: str) -> list[int]:
        ids = encode(tokenizer, [text])[0]
        if not ids:
            raise ApiError(400, "the prompt is empty.", param="prompt")
        if len(ids) > limits.max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt has {len(ids)} tokens; this server accepts at most {limits.max_prompt_tokens}.",
                param="messages",
                code="context_length_exceeded",
            )
        return ids

    def max_tokens(value: int | None, prompt_len: int, default: int) -> int:
        value = default if value is None else value
        if value < 1 or value > limits.max_tokens:
            raise ApiError(
                400, f"max_tokens={value} is out of range; allowed: 1..{limits.max_tokens}.", param="max_tokens"
            )
        if max_positions and prompt_len + value > max_positions:
            raise ApiError(
                400,
                f"prompt ({prompt_len} tokens) + max_tokens ({value}) exceeds the model's context of {max_positions}.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return value

    def make_job(body: ChatRequest | CompletionRequest, ids: list[int], limit: int) -> Job:
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise ApiError(400, "stop takes at most 4 non-empty strings.", param="stop")
        temperature = 1.0 if body.temperature is None else body.temperature  # OpenAI's default
        return Job(
            prompt_ids=ids,
            interventions=interventions(body.steering),
            max_tokens=limit,
            temperature=temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            stop=stop,
        )

    def submit(job: Job) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def sink(event: Event) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is gone (shutdown); nobody is listening
                job.cancel()

        job.sink = sink
        try:
            engine.submit(job)
        except EngineBusy as error:
            raise ApiError(503, str(error), code="server_busy", kind="server_error") from None
        except SteerlabError as error:
            raise ApiError(400, f"steering: {error}", param="steering", code="invalid_steering") from None
        return events

    async def collect(job: Job, events: asyncio.Queue) -> tuple[str, Event]:
        parts = []
        try:
            while True:
                event = await events.get()
                if event.kind == "error":
                    raise ApiError(500, f"generation failed: {event.error}", kind="server_error")
                if event.kind == "done":
                    return "".join(parts), event
                parts.append(event.text)
        finally:
            job.cancel()  # no-op when finished; stops the row when the client went away

    def usage(event: Event) -> dict:
        return {
            "prompt_tokens": event.prompt_tokens,
            "completion_tokens": event.completion_tokens,
            "total_tokens": event.prompt_tokens + event.completion_tokens,
        }

    def stream(job: Job, events: asyncio.Queue, chunk: Any, include_usage: bool) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            try:
                first = chunk(None, None, first=True)
                if first is not None:
                    yield _sse(first)
                while True:
                    event = await events.get()
                    if event.kind == "error":
                        yield _sse({"error": {"message": f"generation failed: {event.error}", "type": "server_error"}})
                        break
                    if event.kind == "text":
                        yield _sse(chunk(event.text, None))
                        continue
                    yield _sse(chunk(None, event.finish_reason))
                    if include_usage:
                        final = chunk(None, None)
                        final["choices"] = []
                        final["usage"] = usage(event)
                        yield _sse(final)
                    break
                yield _sse("[DONE]")
            finally:
                job.cancel()

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # ----- OpenAI endpoints ----------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest) -> Any:
        check_model(body.model)
        if not has_chat_template(tokenizer):
            raise ApiError(400, f"'{served}' has no chat template; use /v1/completions with a plain prompt.")
        try:
            messages = [
                {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
            ]
        except ValueError as error:
            raise ApiError(400, f"messages: {error}", param="messages") from None
        ids = prompt_ids(apply_messages(tokenizer, messages))
        limit = max_tokens(body.max_completion_tokens or body.max_tokens, len(ids), min(256, limits.max_tokens))
        job = make_job(body, ids, limit)
        events = submit(job)
        ident, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:

            def chunk(text: str | None, finish: str | None, first: bool = False) -> dict:
                delta = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
                return {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": now,
                    "model": served,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                }

            include = bool((body.stream_options or {}).get("include_usage"))
            return stream(job, events, chunk, include)
        text, done = await collect(job, events)
        return {
            "id": ident,
            "object": "chat.completion",
            "created": now,
            "model": served,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": done.finish_reason,
                }
            ],
            "usage": usage(done),
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        check_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, "send exactly one prompt per request (batching happens on the server).", param="prompt")
        ids = prompt_ids(prompts[0])
        limit = max_tokens(body.max_tokens, len(ids), min(16, limits.max_tokens))
        job = make_job(body, ids, limit)
        events = submit(job)
        ident, now = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:

            def chunk(text: str | None, finish: str | None, first: bool = False) -> dict | None:
                if first:
                    return None
                return {
                    "id": ident,
                    "object": "text_completion",
                    "created": now,
                    "model": served,
                    "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}],
                }

            include = bool((body.stream_options or {}).get("include_usage"))
            return stream(job, events, chunk, include)
        text, done = await collect(job, events)
        return {
            "id": ident,
            "object": "text_completion",
            "created": now,
            "model": served,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": done.finish_reason}],
            "usage": usage(done),
        }

    def model_card() -> dict:
        return {"id": served, "object": "model", "created": created, "owned_by": "steerlab"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str) -> dict:
        check_model(name)
        return model_card()

    # ----- the vector library ---------------------------------------------------------------------------
    def known(name: str) -> None:
        if name not in library:
            raise ApiError(404, f"no vector named '{name}' in this server's library.", code="vector_not_found")

    @app.get("/v1/vectors")
    async def list_vectors() -> dict:
        data = [library.describe(n) for n in library.names()]
        return {"object": "list", "data": data, "skipped": library.skipped}

    @app.get("/v1/vectors/{name}")
    async def get_vector(name: str) -> dict:
        known(name)
        return library.describe(name)

    @app.post("/v1/vectors", status_code=201)
    async def upload_vector(request: Request, name: str, overwrite: bool = False) -> dict:
        data = await request.body()
        try:
            await asyncio.get_running_loop().run_in_executor(None, lambda: library.add(name, data, overwrite=overwrite))
        except FileExistsError:
            raise ApiError(
                409, f"a vector named '{name}' exists; DELETE it first or send ?overwrite=true.", code="vector_exists"
            ) from None
        except SteerlabError as error:
            code = "vector_model_mismatch" if isinstance(error, VectorMismatchError) else "invalid_vector"
            raise ApiError(400, f"the upload was refused: {error}", param="body", code=code) from None
        return library.describe(name)

    @app.delete("/v1/vectors/{name}")
    async def delete_vector(name: str) -> dict:
        known(name)
        library.remove(name)
        return {"id": name, "object": "steering_vector", "deleted": True}

    # ----- the sweep behind the playground's plot -------------------------------------------------------
    @app.post("/v1/sweep")
    async def sweep(body: SweepRequest) -> dict:
        if len(body.alphas) > limits.max_sweep:
            raise ApiError(400, f"at most {limits.max_sweep} strengths per sweep.", param="alphas")
        text = (
            apply_messages(tokenizer, [{"role": "user", "content": body.prompt}])
            if has_chat_template(tokenizer)
            else body.prompt
        )
        ids = prompt_ids(text)
        limit = max_tokens(body.max_tokens, len(ids), 24)
        jobs = []
        for alpha in body.alphas:
            spec = SteeringSpec(
                vector=body.vector,
                alpha=alpha,
                layers=body.layers,
                mode=body.mode,
                positions=body.positions,
                scale=body.scale,
            )
            unsteered = alpha == 0 and body.mode in ("add", "ablate")
            jobs.append(Job(prompt_ids=ids, interventions=[] if unsteered else interventions([spec]), max_tokens=limit))
        queues = [submit(job) for job in jobs]
        answers = [await collect(job, q) for job, q in zip(jobs, queues, strict=True)]
        pairs = [(ids, job.tokens) for job in jobs]
        nlls = await asyncio.wrap_future(engine.call(lambda: generated_nll(model, pairs)))
        results = []
        for alpha, (answer, done), nll in zip(body.alphas, answers, nlls, strict=True):
            results.append(
                {
                    "alpha": alpha,
                    "text": answer,
                    "nll": None if math.isnan(nll) else nll,
                    "tokens": done.completion_tokens,
                }
            )
        return {"prompt": body.prompt, "vector": body.vector, "results": results}

    # ----- health, metrics, playground ------------------------------------------------------------------
    @app.get("/health")
    async def health() -> Any:
        if not engine.alive():
            return JSONResponse({"status": "down", "model": served, "reason": "the engine is not running"}, 503)
        return {"status": "ok", "model": served, "vectors": len(library.names())}

    @app.get("/metrics")
    async def metrics() -> dict:
        return engine.metrics()

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(str(_PLAYGROUND / "index.html"))

    @app.get("/playground/{asset}", include_in_schema=False)
    async def playground_asset(asset: str) -> FileResponse:
        if asset not in ("app.js", "style.css"):
            raise ApiError(404, f"no playground file '{asset}'.")
        media = "text/javascript" if asset.endswith(".js") else "text/css"
        return FileResponse(str(_PLAYGROUND / asset), media_type=media)

    @app.get("/v1/playground/config", include_in_schema=False)
    async def playground_config() -> dict:
        return {
            "model": served,
            "max_tokens": limits.max_tokens,
            "max_relative_alpha": limits.max_relative_alpha,
            "num_layers": getattr(model.config, "num_hidden_layers", None),
        }

    return app
