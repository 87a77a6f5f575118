"""Contrast pairs, the unit of extraction: two texts that differ in one concept, and the texts recorded for them.

Reading pairs from files, and every rule of the formats they come in, lives in :mod:`steerlab.datasets`; this
module holds only what extraction itself needs, including :func:`as_pairs`, the one place where pairs given in
memory in the shapes of other libraries (steering-vectors' tuples, repeng's dicts and ``DatasetEntry``) become
:class:`ContrastPair`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, Union

from steerlab._text import apply_chat
from steerlab.errors import DataError

__all__ = ["PAIR_SHAPES", "ContrastPair", "PairLike", "as_pair", "as_pairs", "dataset_hash", "pair_texts"]


@dataclass(frozen=True)
class ContrastPair:
    """Two texts that differ in the concept to extract; ``prompt`` (optional) is shared by both."""

    positive: str
    negative: str
    prompt: str | None = None


class DatasetEntryLike(Protocol):
    """What repeng's ``DatasetEntry`` (and :class:`ContrastPair`) look like: read-only text attributes."""

    @property
    def positive(self) -> str: ...

    @property
    def negative(self) -> str: ...


PairLike = Union[ContrastPair, DatasetEntryLike, tuple[str, str], list[str], Mapping[str, str]]  # noqa: UP007
"""A contrast pair in any shape :func:`steerlab.extract_vector` takes: a :class:`ContrastPair`, a
``(positive, negative)`` tuple or list of two strings (steering-vectors), a dict with keys ``"positive"`` and
``"negative"`` and optionally ``"prompt"`` (repeng's JSON), or an object with ``.positive`` and ``.negative``
attributes (repeng's ``DatasetEntry``)."""

PAIR_SHAPES = (
    "a ContrastPair(positive, negative, prompt=None), a (positive, negative) tuple or list of two strings, "
    "a dict with keys 'positive' and 'negative' (and optionally 'prompt'), or an object with .positive and "
    ".negative attributes such as repeng's DatasetEntry"
)
"""The accepted shapes in words, for error messages."""


def _text(value: Any, field: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        found = f"{type(value).__name__} {value!r}" if isinstance(value, str) else type(value).__name__
        raise DataError(
            f"{where}: '{field}' must be a non-empty string, found {found}; a pair holds the two texts to contrast."
        )
    return value


def as_pair(item: Any, where: str = "pair") -> ContrastPair:
    """One contrast pair from any :data:`PairLike` shape, or a :class:`~steerlab.errors.DataError` that says where
    (``where``), what was found and which shapes are accepted.

    Example:
        >>> as_pair(("I love it", "I hate it"))
        ContrastPair(positive='I love it', negative='I hate it', prompt=None)
        >>> as_pair({"positive": "(A", "negative": "(B", "prompt": "Pick one."})
        ContrastPair(positive='(A', negative='(B', prompt='Pick one.')
    """
    if isinstance(item, Mapping):
        missing = [key for key in ("positive", "negative") if key not in item]
        if missing:
            raise DataError(
                f"{where}: expected keys 'positive' and 'negative' with non-empty strings; found keys "
                f"{sorted(map(str, item))} with {missing} missing. (CAA A/B records, with 'question' and "
                "'answer_matching_behavior', are read by steerlab.datasets.load_pairs and pairs_from_records.)"
            )
        positive, negative, prompt = item["positive"], item["negative"], item.get("prompt")
    elif isinstance(item, (tuple, list)) and len(item) == 2:  # steering-vectors: (positive, negative)
        (positive, negative), prompt = item, None
    elif not isinstance(item, (str, bytes)) and hasattr(item, "positive") and hasattr(item, "negative"):
        positive, negative, prompt = item.positive, item.negative, getattr(item, "prompt", None)
    else:
        found = f"a {type(item).__name__} of length {len(item)}" if isinstance(item, (tuple, list)) else None
        raise DataError(
            f"{where}: expected a contrast pair: {PAIR_SHAPES}; found {found or type(item).__name__} "
            f"{_preview(item)}. Give each pair in one of these shapes, e.g. ContrastPair(positive, negative)."
        )
    if prompt is not None and not isinstance(prompt, str):
        raise DataError(f"{where}: 'prompt' must be a string or None, found {type(prompt).__name__}.")
    return ContrastPair(_text(positive, "positive", where), _text(negative, "negative", where), prompt)


def _preview(item: Any) -> str:
    text = repr(item)
    return text if len(text) <= 60 else text[:57] + "..."


def as_pairs(items: Iterable[PairLike], what: str = "pairs") -> list[ContrastPair]:
    """Every item as a :class:`ContrastPair` (:func:`as_pair`), naming a bad one by its index in ``what``.

    The one conversion behind every function that takes pairs, so each accepts the same shapes.

    Example:
        >>> as_pairs([("I love it", "I hate it"), {"positive": "So happy", "negative": "So sad"}])[1]
        ContrastPair(positive='So happy', negative='So sad', prompt=None)
    """
    lone_tuple = isinstance(items, tuple) and len(items) == 2 and all(isinstance(x, str) for x in items)
    if lone_tuple or isinstance(items, (str, bytes, Mapping, ContrastPair)) or hasattr(items, "positive"):
        raise DataError(
            f"{what}: expected a list of contrast pairs, found a single {type(items).__name__}; "
            f"wrap it in a list ([pair]). Each pair may be {PAIR_SHAPES}."
        )
    try:
        listed = list(items)
    except TypeError:
        raise DataError(
            f"{what}: expected a list of contrast pairs, found {type(items).__name__}. Each pair may be {PAIR_SHAPES}."
        ) from None
    return [as_pair(item, f"{what}[{i}]") for i, item in enumerate(listed)]


def pair_texts(
    pairs: Iterable[PairLike], tokenizer: Any = None, *, chat: bool | None = None
) -> tuple[list[str], list[str]]:
    """The positive and negative texts to record.

    A pair's ``prompt`` goes into the chat template's user turn when the tokenizer has one (``chat=None``) and
    the completions follow the assistant header. Pairs without a prompt are used as free texts, unless
    ``chat=True``: then each text is itself the user turn.
    """
    pos, neg = [], []
    for pair in as_pairs(pairs):
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


def dataset_hash(pairs: Iterable[PairLike]) -> str:
    """A stable sha256 of the pairs (order matters; the same for any shape they are given in), recorded in a
    vector's metadata."""
    digest = hashlib.sha256()
    for pair in as_pairs(pairs):
        digest.update(json.dumps([pair.prompt, pair.positive, pair.negative]).encode())
    return digest.hexdigest()
