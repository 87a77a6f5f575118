"""The server's one error type, free of any HTTP framework so that request validation can raise it in plain code.

Every error the server answers carries a machine-readable ``code`` (issue 13: some used to answer ``"code": null``,
which left a client only the English message to tell, say, a missing residual norm from a bad layer). The codes
are listed in docs/serving.md; :func:`steerlab.serve.openai.error_body` gives the JSON shape.
"""

from __future__ import annotations

__all__ = ["ApiError"]

_KINDS = {401: "authentication_error", 404: "not_found_error"}


class ApiError(Exception):
    """An error answered in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status.

    Attributes:
        status: the HTTP status (4xx: the request's fault, 5xx: the server's).
        message: what was expected, what was found, and how to fix it.
        code: a stable, machine-readable name of the error (e.g. ``"alpha_out_of_range"``); never empty.
        param: the request field at fault, as a dotted path (``"steering[0].alpha"``), or ``None``.
        kind: OpenAI's ``type``; by default derived from the status (``invalid_request_error``,
            ``not_found_error``, ``server_error``...), which is what the openai client maps to its exceptions.

    Example:
        >>> error = ApiError(404, "no vector named 'happy'.", code="vector_not_found", param="steering[0].vector")
        >>> error.kind
        'not_found_error'
    """

    def __init__(
        self, status: int, message: str, *, code: str, param: str | None = None, kind: str | None = None
    ) -> None:
        if not code:
            # The point of issue 13: a client must always be able to branch on the code, never on the message.
            raise ValueError(f"ApiError({status}, {message!r}) needs a code, e.g. code='invalid_value'.")
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.kind = kind or _KINDS.get(status, "invalid_request_error" if status < 500 else "server_error")

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.message!r}, code={self.code!r}, param={self.param!r})"
