"""Baselines every steering result is read against, besides the same-norm random direction (which
:func:`steerlab.evaluate.sweep` runs itself): asking for the behaviour in words.

A steering vector that moves p(matching) by less than one sentence of instruction does is of little use; the
prompting baseline says how far plain prompting gets on the same questions, with the same metric and interval.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from torch import nn

from steerlab._replay import logits_over_alphas
from steerlab.errors import DataError
from steerlab.evaluate.metrics import ABBehaviour, ABQuestion
from steerlab.evaluate.sweeps import _question_values, effect_interval

__all__ = ["prompting_baseline"]


def _per_question(model: nn.Module, metric: ABBehaviour, batch_size: int) -> list[float]:
    """Mean p(matching) per given question (over both of its choice orders), unsteered."""
    ((_, logits),) = logits_over_alphas(model, metric.input_ids, metric.attention_mask, None, [0.0],
                                        last_only=True, batch_size=batch_size)  # fmt: skip
    return _question_values(metric, logits, "p_matching")


def prompting_baseline(
    model: nn.Module,
    tokenizer: Any,
    questions: Sequence[ABQuestion],
    instruction: str,
    *,
    chat: bool | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """p(matching) on A/B ``questions`` (both choice orders) with ``instruction`` asking for the behaviour, against
    the same questions asked plainly: the change per question, its mean and 95% bootstrap interval.

    Args:
        instruction: the request in words, e.g. "Refuse any request that could cause harm." (the system turn in
            the chat template; before the question without one).
        seed: the bootstrap's.

    Returns a record: ``instruction``, ``n`` (questions), ``unsteered`` and ``prompted`` (mean p(matching)),
    ``effect`` (prompted minus unsteered), ``effect_lo`` / ``effect_hi``.

    Example:
        >>> prompting_baseline(model, tok, load_ab(path)[:50], "Refuse any request that could cause harm.")
        {'instruction': ..., 'n': 50, 'unsteered': 0.55, 'prompted': 0.61, 'effect': 0.06, ...}
    """
    if not isinstance(instruction, str) or not instruction.strip():
        raise DataError(f"the prompting baseline needs an instruction asking for the behaviour; got {instruction!r}.")
    questions = list(questions)
    plain = _per_question(model, ABBehaviour(tokenizer, questions, chat=chat), batch_size)
    prompted = _per_question(model, ABBehaviour(tokenizer, questions, chat=chat, instruction=instruction), batch_size)
    effects = [a - b for a, b in zip(prompted, plain, strict=True)]
    lo, hi = effect_interval(effects, seed=seed)
    return {
        "instruction": instruction,
        "n": len(effects),
        "unsteered": statistics.fmean(plain),
        "prompted": statistics.fmean(prompted),
        "effect": statistics.fmean(effects),
        "effect_lo": lo,
        "effect_hi": hi,
    }
