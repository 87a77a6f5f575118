"""Plain prompt lists (instructions, requests): the harmful / harmless sets of the refusal-direction recipe.

Formats, told apart by content: a JSON list of strings, or of objects with one of the keys ``instruction``
(Arditi et al.'s splits), ``prompt``, ``goal`` (AdvBench) or ``text``; JSON Lines of such objects; or plain text,
one prompt per line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steerlab.errors import DataError

__all__ = ["INSTRUCTION_KEYS", "load_instructions"]

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


def load_instructions(path: str | Path, *, limit: int | None = None) -> list[str]:
    """The prompts in ``path`` (see the module doc for the formats), the first ``limit`` of them if given.

    Example:
        >>> harmful = load_instructions("datasets/refusal-direction/splits/harmful_val.json")
        >>> harmful[0][:40]
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"instruction file '{path}' does not exist; give a JSON, JSON Lines or text file of prompts.")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"'{path}' starts like a JSON list but is not valid JSON ({err.msg}).") from err
    elif stripped.startswith("{"):
        try:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise DataError(f"'{path}' starts like JSON Lines but line {err.lineno} is not valid JSON.") from err
    else:
        items = [line.strip() for line in text.splitlines() if line.strip()]
    prompts = [_prompt(item, path, i) for i, item in enumerate(items)]
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise DataError(f"instruction file '{path}' holds no prompts.")
    return prompts[:limit]
