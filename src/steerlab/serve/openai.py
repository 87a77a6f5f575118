"""OpenAI's response shapes and server-sent-event framing, as plain functions (no HTTP framework).

The shapes are those the official ``openai`` client parses: ``chat.completion`` / ``text_completion`` bodies,
their streamed chunks (``chat.completion.chunk``; a completion streams ``text_completion`` objects), ``usage``,
model cards and the error body ``{"error": {"message", "type", "param", "code"}}``. A stream is a sequence of
``data: <json>\\n\\n`` frames ending with ``data: [DONE]``.

Example:
    >>> reply = new_reply("smollm2-135m", chat=True)
    >>> chunk(reply, "Hi")["choices"][0]["delta"]
    {'content': 'Hi'}
    >>> sse("[DONE]")
    b'data: [DONE]\\n\\n'
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from steerlab.serve.engine import Event
from steerlab.serve.errors import ApiError

__all__ = [
    "Reply",
    "answer",
    "chunk",
    "error_body",
    "generation_failed",
    "model_card",
    "model_list",
    "new_reply",
    "sse",
    "sse_stream",
    "usage",
]


@dataclass(frozen=True)
class Reply:
    """What every part of one answer repeats: its id, creation time, the served model, and whether it is a chat
    completion (``chat.completion``) or a plain one (``text_completion``)."""

    id: str
    created: int
    model: str
    chat: bool


def new_reply(model: str, *, chat: bool, created: int | None = None) -> Reply:
    """A fresh answer identity (``chatcmpl-...`` or ``cmpl-...``, as OpenAI's ids look)."""
    prefix = "chatcmpl" if chat else "cmpl"
    return Reply(f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time()) if created is None else created, model, chat)


def usage(done: Event) -> dict[str, int]:
    """The ``usage`` object of a finished answer."""
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def _head(reply: Reply, streamed: bool) -> dict[str, Any]:
    kind = ("chat.completion.chunk" if streamed else "chat.completion") if reply.chat else "text_completion"
    return {"id": reply.id, "object": kind, "created": reply.created, "model": reply.model}


def answer(reply: Reply, text: str, done: Event) -> dict[str, Any]:
    """The whole (non-streamed) answer: ``text`` and the ``done`` event's finish reason and token counts."""
    if reply.chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    else:
        choice = {"index": 0, "text": text}
    choice |= {"logprobs": None, "finish_reason": done.finish_reason}
    return {**_head(reply, streamed=False), "choices": [choice], "usage": usage(done)}


def chunk(reply: Reply, text: str | None, finish: str | None = None, *, role: bool = False) -> dict[str, Any]:
    """One streamed piece: new ``text`` (``None``: none), or the ``finish`` reason that ends the answer. A chat
    stream opens with ``role=True`` (the assistant's role and empty content), as OpenAI's does."""
    if reply.chat:
        delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
        choice = {"index": 0, "delta": delta}
    else:
        choice = {"index": 0, "text": text or ""}
    choice |= {"logprobs": None, "finish_reason": finish}
    return {**_head(reply, streamed=True), "choices": [choice]}


def error_body(error: ApiError) -> dict[str, Any]:
    """The JSON body of an error response (also sent as a stream's last frame when generation fails)."""
    return {"error": {"message": error.message, "type": error.kind, "param": error.param, "code": error.code}}


def generation_failed(error: BaseException | None) -> ApiError:
    """The error answered when the engine reports a failure inside a batch (the worker itself goes on)."""
    return ApiError(500, f"generation failed: {error}", code="generation_failed")


def model_card(model: str, created: int) -> dict[str, Any]:
    """``GET /v1/models/{id}``."""
    return {"id": model, "object": "model", "created": created, "owned_by": "steerlab"}


def model_list(model: str, created: int) -> dict[str, Any]:
    """``GET /v1/models``: the one served model."""
    return {"object": "list", "data": [model_card(model, created)]}


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent-event frame: ``data: <json or text>`` and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def sse_stream(reply: Reply, events: AsyncIterator[Event], *, include_usage: bool) -> AsyncIterator[bytes]:
    """The frames of a streamed answer from the engine's events: an opening role chunk (chat only), one chunk per
    piece of text, a chunk with the finish reason, the usage chunk when asked (``stream_options.include_usage``:
    no choices, only ``usage``), then ``[DONE]``. A failure ends the stream with an error frame, then ``[DONE]``.

    Example:
        >>> [frame async for frame in sse_stream(reply, events, include_usage=False)]
        [b'data: {"id": ...', ..., b'data: [DONE]\\n\\n']
    """
    if reply.chat:
        yield sse(chunk(reply, None, role=True))
    async for event in events:
        if event.kind == "error":
            yield sse(error_body(generation_failed(event.error)))
            break
        if event.kind == "text":
            yield sse(chunk(reply, event.text))
            continue
        yield sse(chunk(reply, None, event.finish_reason))
        if include_usage:
            yield sse({**_head(reply, streamed=True), "choices": [], "usage": usage(event)})
        break
    yield sse("[DONE]")
