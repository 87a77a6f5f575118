"""Plain prompt lists (instructions, requests): the harmful / harmless sets of the refusal-direction recipe; and
(prompt, completion) lists, the targets an optimised vector promotes or suppresses.

Formats, told apart by content: a JSON list of strings, or of objects with one of the keys ``instruction``
(Arditi et al.'s splits), ``prompt``, ``goal`` (AdvBench) or ``text``; JSON Lines of such objects; or plain text,
one prompt per line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steerlab.errors import DataError

__all__ = ["INSTRUCTION_KEYS", "load_completions", "load_instructions"]

INSTRUCTION_KEYS = ("instruction", "prompt", "goal", "text")
"""The keys a JSON object may hold its prompt under, tried in this order."""


def _prompt(item: Any, path: Path, index: int) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        for key in INSTRUCTION_KEYS:
            if isinstance(item.get(key), str):
                return item[key]
    raise DataError(
        f"item {index} of '{path}' is {type(item).__name__} {str(item)[:80]!r}; expected a string or an object "
        f"with one of the keys {list(INSTRUCTION_KEYS)}."
    )


def _items(path: Path, what: str) -> list[Any]:
    """The items of a JSON list, of JSON Lines, or the lines of a text file."""
    if not path.is_file():
        raise DataError(f"{what} file '{path}' does not exist; give a JSON, JSON Lines or text file.")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            return list(json.loads(text))
        except json.JSONDecodeError as err:
            raise DataError(f"'{path}' starts like a JSON list but is not valid JSON ({err.msg}).") from err
    if stripped.startswith("{"):
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise DataError(f"'{path}' starts like JSON Lines but line {err.lineno} is not valid JSON.") from err
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_completions(path: str | Path, *, limit: int | None = None) -> list[tuple[str, str]]:
    """(prompt, completion) pairs from a JSON list or JSON Lines of ``{"prompt": ..., "completion": ...}``
    objects (the completion follows the prompt, or the assistant header when the model has a chat template).

    Example:
        >>> load_completions("targets.jsonl")[:1]
        [('Tell me a story.', ' Once upon a time')]
    """
    path = Path(path)
    out = []
    for i, item in enumerate(_items(path, "completion")):
        if not (isinstance(item, dict) and all(isinstance(item.get(key), str) for key in ("prompt", "completion"))):
            raise DataError(f"item {i} of '{path}' is {str(item)[:80]!r}; expected an object with string keys "
                            "'prompt' and 'completion'.")  # fmt: skip
        out.append((item["prompt"], item["completion"]))
    if not out:
        raise DataError(f"completion file '{path}' holds no (prompt, completion) pairs.")
    return out[:limit]


def load_instructions(path: str | Path, *, limit: int | None = None) -> list[str]:
    """The prompts in ``path`` (see the module doc for the formats), the first ``limit`` of them if given.

    Example:
        >>> harmful = load_instructions("datasets/refusal-direction/splits/harmful_val.json")
        >>> harmful[0][:40]
    """
    path = Path(path)
    items = _items(path, "instruction")
    prompts = [_prompt(item, path, i) for i, item in enumerate(items)]
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise DataError(f"instruction file '{path}' holds no prompts.")
    return prompts[:limit]
