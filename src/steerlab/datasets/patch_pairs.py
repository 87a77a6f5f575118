"""Patching pairs: a clean prompt, a corrupted prompt of the same token length, and the two answer tokens the metric
compares; the file format ``steerlab patch`` reads.

A file is a JSON array of objects or JSON Lines (one object per line), each::

    {"clean": "When Mary and John went to the store, John gave a drink to",
     "corrupted": "When Mary and John went to the store, Anna gave a drink to",
     "correct": " Mary", "wrong": " John"}

``correct`` is the clean prompt's answer and ``wrong`` the one it is compared with (one token each, leading space
included where the tokenizer puts one); the metric is ``logit(correct) - logit(wrong)`` at the last position, on
both prompts. Other keys are kept out of the way (ignored).

Example:
    >>> pairs = load_patch_pairs("ioi.jsonl")
    >>> save_patch_pairs(ioi_pairs(32), "ioi.jsonl")
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from steerlab.errors import DataError

__all__ = ["PATCH_PAIR_KEYS", "PatchPair", "load_patch_pairs", "save_patch_pairs"]

PATCH_PAIR_KEYS = ("clean", "corrupted", "correct", "wrong")


@dataclass(frozen=True)
class PatchPair:
    """One clean/corrupted pair and the answers the metric compares (``logit(correct) - logit(wrong)``).

    Example:
        >>> PatchPair("When Mary and John left, John thanked", "When Mary and John left, Anna thanked",
        ...           " Mary", " John")
    """

    clean: str
    corrupted: str
    correct: str
    wrong: str


def load_patch_pairs(path: str | Path) -> list[PatchPair]:
    """Read patching pairs from a JSON array or JSON Lines file (see the module doc for the format).

    Example:
        >>> pairs = load_patch_pairs("ioi.jsonl")
        >>> clean, corrupted = [p.clean for p in pairs], [p.corrupted for p in pairs]
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"patching pair file '{path}' does not exist.")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DataError(f"patching pair file '{path}' is empty; expected objects with keys {list(PATCH_PAIR_KEYS)}.")
    try:
        data = json.loads(text)
        rows = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(
                    f"'{path}' line {number} is not JSON ({err.msg}); expected a JSON array or JSON Lines of objects "
                    f"with keys {list(PATCH_PAIR_KEYS)}."
                ) from None
    pairs = [_pair(row, f"'{path}' entry {i}") for i, row in enumerate(rows)]
    if not pairs:
        raise DataError(
            f"patching pair file '{path}' holds no pairs; expected objects with keys {list(PATCH_PAIR_KEYS)}."
        )
    return pairs


def save_patch_pairs(pairs: Sequence[PatchPair], path: str | Path) -> Path:
    """Write pairs as JSON Lines (what :func:`load_patch_pairs` reads).

    Example:
        >>> save_patch_pairs(ioi_pairs(16), "ioi.jsonl")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(asdict(p)) + "\n" for p in pairs), encoding="utf-8")
    return path


def _pair(row: object, where: str) -> PatchPair:
    if not isinstance(row, dict):
        raise DataError(f"{where} is {type(row).__name__}; expected an object with keys {list(PATCH_PAIR_KEYS)}.")
    missing = [k for k in PATCH_PAIR_KEYS if k not in row]
    if missing:
        raise DataError(
            f"{where} lacks {missing}; expected keys {list(PATCH_PAIR_KEYS)} (found {sorted(row)}). 'correct' is the "
            "clean prompt's answer token, 'wrong' the token it is compared with."
        )
    bad = [k for k in PATCH_PAIR_KEYS if not isinstance(row[k], str) or not row[k]]
    if bad:
        raise DataError(f"{where}: {bad} must be non-empty text.")
    return PatchPair(*(row[k] for k in PATCH_PAIR_KEYS))
