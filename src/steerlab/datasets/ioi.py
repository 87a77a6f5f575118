"""Indirect-object identification (IOI) prompts: "When Mary and John went to the store, John gave a drink to" ->
" Mary". Templates and names written for steerlab (not copied from a data set); the task is that of Wang et al.
2022 ("Interpretability in the wild").

Each clean prompt names two people (A, B) and then repeats one of them (the subject, S); the answer is the other
(the indirect object, IO). Both orders are drawn (ABB and BAB: the IO first or second). The corruption is

- ``"abc"`` (default): the repeated name replaced by a third name C, so the prompt no longer says who the subject is
  and ``logit(IO) - logit(S)`` falls to about 0; the pair differs in one token (the S2 position);
- ``"swap"``: IO and S exchanged everywhere (the answer flips, the metric changes sign).

Example:
    >>> pairs = ioi_pairs(32, tokenizer=tokenizer)        # checked: one-token names, equal lengths per pair
    >>> pairs[0].clean, pairs[0].correct, pairs[0].wrong
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal

from steerlab.datasets.patch_pairs import PatchPair
from steerlab.errors import DataError

__all__ = ["IOI_NAMES", "IOI_TEMPLATES", "ioi_pairs"]

# {A} and {B} are introduced, {S} is the repeated one; every template ends where the other name is the answer.
IOI_TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the store, {S} gave a drink to",
    "When {A} and {B} got home after work, {S} handed the keys to",
    "After {A} and {B} finished lunch, {S} passed the bill to",
    "While {A} and {B} were at the park, {S} threw the ball to",
    "Today {A} and {B} were working in the garden. {S} gave a shovel to",
    "At the party, {A} and {B} were dancing. {S} brought a cake to",
    "Yesterday {A} and {B} visited the museum, and {S} showed a painting to",
    "Then {A} and {B} had a long talk at the cafe. {S} sent a letter to",
)
# First names that are one token (with the leading space) for SmolLM2's tokenizer (tests/test_circuits_data.py).
IOI_NAMES: tuple[str, ...] = (
    "Mary", "John", "Alice", "Bob", "Sarah", "Tom", "James", "Anna", "David", "Emma", "Michael", "Laura", "Paul",
    "Kate", "Mark", "Lisa", "Peter", "Jane", "Daniel", "Rose", "Sam", "Max", "Ben", "Jack", "Lucy", "Amy", "Kevin",
    "Chris", "Ryan", "Adam", "Eric", "Alex", "Rachel", "Steve",
)  # fmt: skip


def ioi_pairs(
    n: int,
    *,
    corruption: Literal["abc", "swap"] = "abc",
    templates: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
    tokenizer: Any = None,
) -> list[PatchPair]:
    """``n`` IOI pairs (clean, corrupted, correct = the IO name, wrong = the S name), templates taken in turn.

    Args:
        corruption: ``"abc"`` (the repeated name replaced by a third) or ``"swap"`` (IO and S exchanged).
        templates: with ``{A}``, ``{B}`` (the two names introduced) and ``{S}`` (the repeat); default
            :data:`IOI_TEMPLATES`.
        names: first names without the leading space; default :data:`IOI_NAMES`.
        tokenizer: when given, each name must be one token (with its leading space) and each pair's prompts of one
            token length; a name that is not raises :class:`~steerlab.errors.DataError` naming it.

    Example:
        >>> [p.clean for p in ioi_pairs(2, templates=[IOI_TEMPLATES[0]])]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"n must be a positive number of pairs, not {n!r}.")
    if corruption not in ("abc", "swap"):
        raise DataError(f"corruption must be 'abc' or 'swap', not {corruption!r}.")
    templates = list(IOI_TEMPLATES if templates is None else templates)
    names = list(IOI_NAMES if names is None else names)
    for template in templates:
        if any(f"{{{k}}}" not in template for k in "ABS") or template.rstrip() != template:
            raise DataError(
                f"IOI template {template!r} needs {{A}}, {{B}} and {{S}} and must end on the word before the answer "
                "(no trailing space: the answer token carries its own)."
            )
    if len(set(names)) < 3:
        raise DataError(f"IOI needs at least 3 different names (A, B and C), got {names!r}.")
    if tokenizer is not None:
        long = [name for name in names if len(tokenizer(" " + name, add_special_tokens=False)["input_ids"]) != 1]
        if long:
            raise DataError(f"IOI names must be one token each (with a leading space); not so: {long}.")
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        template = templates[i % len(templates)]
        io, s, c = rng.sample(names, 3)
        a, b = (io, s) if rng.random() < 0.5 else (s, io)
        clean = template.format(A=a, B=b, S=s)
        # abc: only the repeat changes (one token); swap: the roles exchange, so the answer flips.
        corrupted = template.format(A=a, B=b, S=c) if corruption == "abc" else template.format(A=b, B=a, S=io)
        if tokenizer is not None and _length(tokenizer, clean) != _length(tokenizer, corrupted):
            raise DataError(
                f"IOI template {template!r} gives prompts of different token lengths for names {a}, {b}, {c} "
                f"({clean!r} vs {corrupted!r}); patching compares positions. Put each name after a space."
            )
        pairs.append(PatchPair(clean, corrupted, " " + io, " " + s))
    return pairs


def _length(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
