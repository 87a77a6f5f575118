"""The HTTP app: wiring only. Validation lives in :mod:`~steerlab.serve.validate`, response shapes in
:mod:`~steerlab.serve.openai`, the routes in :mod:`~steerlab.serve.routes`, the body-size guard in
:mod:`~steerlab.serve.middleware`.

Every error, whatever raised it (a route, the schemas, the router's own 404 / 405, an unexpected failure), is
answered in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` with a non-null ``code``, so the
official client raises its usual exceptions (``BadRequestError``, ``NotFoundError``...).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from steerlab._models import model_id
from steerlab.serve.engine import Engine
from steerlab.serve.errors import ApiError
from steerlab.serve.library import VectorLibrary
from steerlab.serve.middleware import ApiKey, BodyLimit
from steerlab.serve.openai import error_body
from steerlab.serve.routes import Server, api, playground
from steerlab.serve.schemas import ServeLimits
from steerlab.serve.validate import Validator, request_error

__all__ = ["create_app"]

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def create_app(
    model: Any,
    tokenizer: Any,
    library: VectorLibrary,
    *,
    limits: ServeLimits | None = None,
    engine: Engine | None = None,
    name: str | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """The FastAPI app serving ``model`` with the vectors of ``library``, under ``name`` (default: the model's id).
    The engine's worker starts and stops with the app (its lifespan). With ``api_key`` every route but ``/health``
    and the playground's files needs ``Authorization: Bearer <api_key>`` (401 otherwise).

    Example:
        >>> app = create_app(model, tokenizer, VectorLibrary("vectors/", model))
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    limits = limits or ServeLimits()
    engine = engine or Engine(model, tokenizer)
    served = name or model_id(model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    app = FastAPI(title="steerlab", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    validator = Validator(model, tokenizer, library, limits, served=served)
    app.state.server = Server(model, library, engine, limits, validator, served, int(time.time()))
    app.state.engine, app.state.library, app.state.limits = engine, library, limits
    app.add_middleware(BodyLimit, limits=limits)
    if api_key:  # added last, so it runs first: an unauthenticated body is not even read
        app.add_middleware(ApiKey, key=api_key)
    app.include_router(api)
    app.include_router(playground)

    def answer(error: ApiError) -> JSONResponse:
        return JSONResponse(error_body(error), status_code=error.status)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return answer(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return answer(request_error(error.errors()))

    @app.exception_handler(HTTPException)  # the router's own: no such route, or not with this method
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        message = f"{where}: {error.detail}; the endpoints are listed at GET /openapi.json and in docs/serving.md."
        return answer(ApiError(error.status_code, message, code=_HTTP_CODES.get(error.status_code, "http_error")))

    # A bug: answered in the same shape; Starlette then re-raises it, so uvicorn logs the traceback.
    @app.exception_handler(Exception)
    async def failure(request: Request, error: Exception) -> JSONResponse:
        message = f"the server failed ({type(error).__name__}); the details are in the server's log."
        return answer(ApiError(500, message, code="internal_error"))

    return app
