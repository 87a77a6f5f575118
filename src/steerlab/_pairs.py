"""Contrast pairs, the unit of extraction: two texts that differ in one concept, and the texts recorded for them.

Reading pairs from files, and every rule of the formats they come in, lives in :mod:`steerlab.datasets`; this
module holds only what extraction itself needs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from steerlab._text import apply_chat

__all__ = ["ContrastPair", "dataset_hash", "pair_texts"]


@dataclass(frozen=True)
class ContrastPair:
    """Two texts that differ in the concept to extract; ``prompt`` (optional) is shared by both."""

    positive: str
    negative: str
    prompt: str | None = None


def pair_texts(
    pairs: Sequence[ContrastPair], tokenizer: Any = None, *, chat: bool | None = None
) -> tuple[list[str], list[str]]:
    """The positive and negative texts to record.

    A pair's ``prompt`` goes into the chat template's user turn when the tokenizer has one (``chat=None``) and
    the completions follow the assistant header. Pairs without a prompt are used as free texts, unless
    ``chat=True``: then each text is itself the user turn.
    """
    pos, neg = [], []
    for pair in pairs:
        if pair.prompt is None:
            # Free texts stay as they are unless the chat template is asked for explicitly: then each text is a
            # user turn, read at the end of the assistant header (e.g. harmful vs harmless instructions).
            wrap = (lambda t: apply_chat(tokenizer, t, chat=True)) if chat and tokenizer is not None else str
            pos.append(wrap(pair.positive))
            neg.append(wrap(pair.negative))
            continue
        head = apply_chat(tokenizer, pair.prompt, chat=chat) if tokenizer is not None else pair.prompt + "\n"
        sep = "" if head.endswith(("\n", " ")) else " "
        pos.append(head + sep + pair.positive)
        neg.append(head + sep + pair.negative)
    return pos, neg


def dataset_hash(pairs: Sequence[ContrastPair]) -> str:
    """A stable sha256 of the pairs (order matters), recorded in a vector's metadata."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps([pair.prompt, pair.positive, pair.negative]).encode())
    return digest.hexdigest()
