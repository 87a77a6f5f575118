"""The body-size guard: bodies over the limit are refused before anything parses them."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from steerlab.serve.errors import ApiError
from steerlab.serve.openai import error_body
from steerlab.serve.schemas import ServeLimits

__all__ = ["BodyLimit"]


class BodyLimit:
    """ASGI middleware refusing bodies over the limit (413 ``body_too_large``) by Content-Length, and while
    reading when there is none (chunked); a vector upload has its own, larger limit.

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
            await _too_large(what, int(declared), limit)(scope, receive, send)
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
                await _too_large(what, len(body), limit)(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _too_large(what: str, size: int, limit: int) -> JSONResponse:
    error = ApiError(
        413,
        f"the {what} has {size} bytes or more; this server accepts at most {limit}. Send a smaller one.",
        code="body_too_large",
    )
    return JSONResponse(error_body(error), status_code=error.status)
