"""OpenAI's response shapes and SSE framing as plain functions, checked against the official client's own types."""

from __future__ import annotations

import asyncio
import json

import pytest
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from steerlab.serve import ApiError, Event
from steerlab.serve import openai as shapes

DONE = Event("done", finish_reason="length", prompt_tokens=7, completion_tokens=2)


def frames(reply, events, include_usage=False) -> list[bytes]:
    async def source():
        for event in events:
            yield event

    async def run():
        return [frame async for frame in shapes.sse_stream(reply, source(), include_usage=include_usage)]

    return asyncio.run(run())


def payloads(raw: list[bytes]) -> list[dict | str]:
    out = []
    for frame in raw:
        text = frame.decode()
        assert text.startswith("data: ") and text.endswith("\n\n"), text
        body = text[len("data: ") : -2]
        out.append(body if body == "[DONE]" else json.loads(body))
    return out


def test_whole_answers_parse_as_the_clients_types():
    chat = ChatCompletion.model_validate(shapes.answer(shapes.new_reply("m", chat=True), "Hello", DONE))
    assert chat.id.startswith("chatcmpl-") and chat.object == "chat.completion" and chat.model == "m"
    assert chat.choices[0].message.content == "Hello" and chat.choices[0].finish_reason == "length"
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens, chat.usage.total_tokens) == (7, 2, 9)
    text = Completion.model_validate(shapes.answer(shapes.new_reply("m", chat=False), "Hello", DONE))
    assert text.id.startswith("cmpl-") and text.object == "text_completion" and text.choices[0].text == "Hello"
    card = Model.model_validate(shapes.model_card("m", 17))
    assert (card.id, card.created, card.owned_by) == ("m", 17, "steerlab")
    assert shapes.model_list("m", 17)["data"] == [shapes.model_card("m", 17)]


def test_a_chat_stream_opens_with_the_role_and_ends_with_usage_then_done():
    reply = shapes.new_reply("m", chat=True, created=5)
    got = payloads(frames(reply, [Event("text", text="Hel"), Event("text", text="lo"), DONE], include_usage=True))
    assert got[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(p) for p in got[:-1]]
    assert all(c.id == reply.id and c.created == 5 and c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, None, None, "length"]
    assert not chunks[-1].choices and chunks[-1].usage.total_tokens == 9
    without = payloads(frames(reply, [Event("text", text="Hi"), DONE]))
    assert len(without) == 4 and "usage" not in without[-2]  # role, text, finish, [DONE]


def test_a_completion_stream_has_no_role_chunk():
    got = payloads(frames(shapes.new_reply("m", chat=False), [Event("text", text="Once"), DONE]))
    # (The client's Completion type requires a finish reason, which streamed pieces do not have yet: plain dicts.)
    assert all(p["object"] == "text_completion" and p["model"] == "m" for p in got[:-1])
    assert [(p["choices"][0]["text"], p["choices"][0]["finish_reason"]) for p in got[:-1]] == [
        ("Once", None),
        ("", "length"),
    ]
    assert got[-1] == "[DONE]"


def test_a_failure_ends_the_stream_with_an_error_that_has_a_code():
    got = payloads(
        frames(shapes.new_reply("m", chat=True), [Event("text", text="a"), Event("error", error=OSError("disk"))])
    )
    assert got[-1] == "[DONE]"
    assert got[-2] == {
        "error": {
            "message": "generation failed: disk",
            "type": "server_error",
            "param": None,
            "code": "generation_failed",
        }
    }


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "invalid_request_error"), (404, "not_found_error"), (413, "invalid_request_error"), (503, "server_error")],
)
def test_error_body(status, kind):
    body = shapes.error_body(ApiError(status, "why", code="some_code", param="steering[0]"))
    assert body == {"error": {"message": "why", "type": kind, "param": "steering[0]", "code": "some_code"}}


def test_sse_framing():
    assert shapes.sse("[DONE]") == b"data: [DONE]\n\n"
    assert shapes.sse({"text": "é"}) == 'data: {"text": "é"}\n\n'.encode()  # UTF-8, not \\u escapes
