"""``steerlab chat``: a steered conversation in the terminal, against a running server or a local model.

Both back ends stream the answer of each turn and keep the conversation; a local model is served by the same
:class:`~steerlab.serve.engine.Engine` as the server, so answers are the ones the server would give.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from steerlab.errors import SteerlabError
from steerlab.types import DEFAULT_SCALE, Recommended, Scale

__all__ = ["Conversation", "local_backend", "remote_backend"]

Backend = Callable[[list[dict[str, str]]], Iterator[str]]

_PLAIN_ALPHA = 0.15  # the strength of a chat with a vector that carries no calibrated setting


def _chosen_alpha(alpha: float | Recommended | None, extra: dict[str, Any]) -> float | Recommended:
    """``None``: the vector's calibrated setting when it carries one (``steerlab calibrate``), else 0.15."""
    if alpha is not None:
        return alpha
    found = isinstance(extra.get("recommended"), dict) and extra["recommended"].get("found") is True
    return "recommended" if found else _PLAIN_ALPHA


class Conversation:
    """The turns so far and the back end that answers them.

    Example:
        >>> talk = Conversation(remote_backend("http://127.0.0.1:8000", vector="happy", alpha=0.2))
        >>> print("".join(talk.say("Hello!")))
    """

    def __init__(self, backend: Backend, system: str | None = None) -> None:
        self.backend = backend
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []

    def say(self, text: str) -> Iterator[str]:
        """Send a user turn; yields the answer's pieces as they arrive, then keeps the answer in the history."""
        self.messages.append({"role": "user", "content": text})
        parts = []
        try:
            for piece in self.backend(self.messages):
                parts.append(piece)
                yield piece
        except BaseException:
            self.messages.pop()  # a failed turn is not part of the conversation
            raise
        self.messages.append({"role": "assistant", "content": "".join(parts)})


def _steering(
    vector: str | None, alpha: float | str, layers: Sequence[int] | None, mode: str, scale: str
) -> list[dict]:
    if vector is None:
        return []
    entry: dict[str, Any] = {"vector": vector, "alpha": alpha, "mode": mode, "scale": scale}
    if layers:
        entry["layers"] = list(layers)
    return [entry]


def remote_backend(
    url: str,
    *,
    vector: str | None = None,
    alpha: float | Recommended | None = None,
    layers: Sequence[int] | None = None,
    mode: str = "add",
    scale: Scale = DEFAULT_SCALE,
    max_tokens: int = 128,
    temperature: float = 0.0,
    timeout: float = 300.0,
) -> Backend:
    """Answer through a running ``steerlab serve`` at ``url``; ``vector`` names a vector in its library.
    ``alpha=None``: the vector's calibrated setting when it carries one, else 0.15."""
    import httpx

    base = url.rstrip("/")
    try:
        listing = httpx.get(f"{base}/v1/models", timeout=10).json()
        model = listing["data"][0]["id"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as error:
        raise SteerlabError(
            f"no steerlab server answered at {base} ({error}); start one with `steerlab serve`."
        ) from None
    if vector is not None:
        found = httpx.get(f"{base}/v1/vectors/{vector}", timeout=10)
        if found.status_code != 200:
            raise SteerlabError(f"{found.json()['error']['message']} Available: {_names(base)}.")
        alpha = _chosen_alpha(alpha, found.json().get("extra") or {})
    steering = _steering(vector, alpha if alpha is not None else _PLAIN_ALPHA, layers, mode, scale)

    def answer(messages: list[dict[str, str]]) -> Iterator[str]:
        body = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
        }
        if steering:
            body["steering"] = steering
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=timeout) as response:
            if response.status_code != 200:
                response.read()
                try:
                    message = response.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = response.text
                raise SteerlabError(f"the server refused the request ({response.status_code}): {message}")
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise SteerlabError(f"the server failed: {chunk['error']['message']}")
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    yield chunk["choices"][0]["delta"]["content"]

    return answer


def _names(base: str) -> list[str]:
    import httpx

    return [v["id"] for v in httpx.get(f"{base}/v1/vectors", timeout=10).json()["data"]]


def local_backend(
    model: Any,
    tokenizer: Any,
    *,
    vector: Any = None,
    alpha: float | Recommended | None = None,
    layers: Sequence[int] | None = None,
    mode: str = "add",
    scale: Scale = DEFAULT_SCALE,
    max_tokens: int = 128,
    temperature: float = 0.0,
) -> tuple[Backend, Callable[[], None]]:
    """Answer with ``model`` in this process, steered by ``vector`` (a :class:`SteeringVector` or ``None``);
    returns the back end and a function that stops its engine. ``alpha=None``: the vector's calibrated setting
    when it carries one, else 0.15."""
    from steerlab._steer import Intervention
    from steerlab._text import apply_messages, encode
    from steerlab.serve.engine import Engine, Job

    items = (
        [] if vector is None else [Intervention(vector, _chosen_alpha(alpha, vector.extra), mode, layers, scale=scale)]  # type: ignore[arg-type]
    )
    engine = Engine(model, tokenizer, batch_window=0.0).start()

    def answer(messages: list[dict[str, str]]) -> Iterator[str]:
        ids = encode(tokenizer, [apply_messages(tokenizer, messages)])[0]
        job = Job(prompt_ids=ids, interventions=items, max_tokens=max_tokens, temperature=temperature, seed=0)
        for event in engine.run(job):
            if event.kind == "text":
                yield event.text

    return answer, engine.stop
