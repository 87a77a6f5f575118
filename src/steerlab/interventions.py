"""Intervention operators: pure functions ``(h, v, alpha, mask) -> h'`` on a block's hidden states.

``h`` is ``(batch, tokens, hidden)``, ``v`` a ``(hidden,)`` direction already on ``h``'s device and dtype,
``mask`` a ``(batch, tokens)`` boolean selection of the tokens to change (``None``: all of them). Every
operator returns a new tensor and leaves unselected tokens bit-identical.
"""

from __future__ import annotations

import torch

__all__ = ["OPERATORS", "add"]


def add(h: torch.Tensor, v: torch.Tensor, alpha: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``h + alpha * v`` on the selected tokens (activation addition)."""
    delta = alpha * v
    if mask is None:
        return h + delta
    return torch.where(mask[..., None], h + delta, h)


OPERATORS = {"add": add}
