"""The guards in front of every route: the API key (a request without it is refused before anything else) and the
body-size limit (bodies over it are refused before anything parses them)."""

from __future__ import annotations

import hmac
import ipaddress

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from steerlab.serve.errors import ApiError
from steerlab.serve.openai import error_body
from steerlab.serve.schemas import ServeLimits

__all__ = ["API_KEY_ENV", "ApiKey", "BodyLimit", "is_loopback"]

API_KEY_ENV = "STEERLAB_API_KEY"
"""The environment variable ``steerlab serve`` reads its API key from when ``--api-key`` is not given."""
# Open without a key: the liveness probe, and the playground's page and files (its API calls carry the key).
_OPEN = ("/health", "/", "/playground/")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` reaches only this machine (``localhost``, 127.0.0.0/8, ``::1``).

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
        (True, True, False)
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


class ApiKey:
    """ASGI middleware requiring ``Authorization: Bearer <key>`` (what the OpenAI client sends for ``api_key``) on
    every route but ``/health`` and the playground's own page and files; a request without the key, or with another,
    gets a 401 in OpenAI's error shape (``invalid_api_key``). Keys are compared in constant time.

    Example:
        >>> app.add_middleware(ApiKey, key="s3cret")
    """

    def __init__(self, app: ASGIApp, key: str) -> None:
        if not key:
            raise ValueError("ApiKey needs a non-empty key; leave the middleware out to serve without one.")
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in _OPEN[:2] or path.startswith(_OPEN[2]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"")
        token = given[7:].strip() if given[:7].lower() == b"bearer " else b""
        if token and hmac.compare_digest(token, self.key):
            await self.app(scope, receive, send)
            return
        found = "no Authorization header" if not given else "a key that does not match"
        error = ApiError(
            401,
            f"this server needs an API key: expected the header 'Authorization: Bearer <key>' (the OpenAI client's "
            f"api_key), found {found}. Ask the server's operator for the key (steerlab serve --api-key or "
            f"${API_KEY_ENV}).",
            code="invalid_api_key",
        )
        response = JSONResponse(error_body(error), status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


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
