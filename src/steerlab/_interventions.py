"""Intervention operators: pure functions ``(h, v, alpha, mask) -> h'`` on hidden states.

``h`` is ``(batch, tokens, hidden)``; ``v`` a ``(hidden,)`` direction on ``h``'s device and dtype; ``mask`` a
``(batch, tokens)`` boolean selection of the tokens to change (``None``: all). Every operator returns a new
tensor and leaves unselected tokens bit-identical. ``v̂`` below is ``v / |v|``.

=================  ==========================================  ====================================
operator           effect on a selected token                  alpha
=================  ==========================================  ====================================
``add``            ``h + alpha v``                             strength (0: identity)
``ablate``         ``h - alpha (h·v̂) v̂``                       fraction removed (1: full ablation)
``ablate_then_add`` ``h - (h·v̂) v̂ + alpha v̂``                 the projection to set
``clamp``          projection ``h·v̂`` clipped into ``[lo, hi]``  ``(lo, hi)``, ``None`` = unbounded
=================  ==========================================  ====================================

:func:`apply_operator` adds the option, common to all, of giving each changed token back its original norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Union

import torch

from steerlab.errors import SteeringError

__all__ = ["OPERATORS", "Alpha", "ablate", "ablate_then_add", "add", "apply_operator", "check_alpha", "clamp"]

Alpha = Union[float, tuple[float | None, float | None]]  # noqa: UP007 - a runtime alias


def _select(h: torch.Tensor, new: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return new if mask is None else torch.where(mask[..., None], new, h)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm().clamp_min(torch.finfo(v.dtype).tiny)


def _projection(h: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    # float32 accumulation: in bf16 the dot product over thousands of dims loses the small components.
    return (h.float() @ unit.float())[..., None]


def add(h: torch.Tensor, v: torch.Tensor, alpha: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``h + alpha * v`` (activation addition)."""
    return _select(h, h + alpha * v, mask)


def ablate(h: torch.Tensor, v: torch.Tensor, alpha: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Remove (``alpha = 1``) the component of ``h`` along ``v``: ``h - alpha (h·v̂) v̂``."""
    unit = _unit(v)
    new = h - (alpha * _projection(h, unit) * unit.float()).to(h.dtype)
    return _select(h, new, mask)


def ablate_then_add(h: torch.Tensor, v: torch.Tensor, alpha: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Set the projection of ``h`` on ``v̂`` to ``alpha``: ``h - (h·v̂) v̂ + alpha v̂``."""
    unit = _unit(v)
    new = h + ((alpha - _projection(h, unit)) * unit.float()).to(h.dtype)
    return _select(h, new, mask)


def clamp(
    h: torch.Tensor,
    v: torch.Tensor,
    alpha: tuple[float | None, float | None],
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Clip the projection ``h·v̂`` into the band ``alpha = (lo, hi)`` (either end may be ``None``)."""
    lo, hi = alpha
    unit = _unit(v)
    proj = _projection(h, unit)
    new = h + ((proj.clamp(min=lo, max=hi) - proj) * unit.float()).to(h.dtype)
    return _select(h, new, mask)


OPERATORS: dict[str, Callable[..., torch.Tensor]] = {
    "add": add,
    "ablate": ablate,
    "ablate_then_add": ablate_then_add,
    "clamp": clamp,
}


def check_alpha(mode: str, alpha: object) -> Alpha:
    """Validate ``alpha`` for ``mode``; returns it normalised (floats, or a ``(lo, hi)`` band for clamp)."""
    if mode not in OPERATORS:
        raise SteeringError(f"unknown mode {mode!r}; choose one of {sorted(OPERATORS)}.")
    if mode == "clamp":
        if not isinstance(alpha, (tuple, list)) or len(alpha) != 2:
            raise SteeringError(
                f"mode 'clamp' takes alpha=(lo, hi), a band for the projection (either end may be None), got {alpha!r}."
            )
        lo, hi = (None if x is None else float(x) for x in alpha)
        if (lo is not None and not math.isfinite(lo)) or (hi is not None and not math.isfinite(hi)):
            raise SteeringError(f"clamp band {alpha!r} must hold finite numbers or None.")
        if lo is not None and hi is not None and lo > hi:
            raise SteeringError(f"clamp band ({lo}, {hi}) is empty: lo must be <= hi.")
        return (lo, hi)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise SteeringError(f"alpha must be a finite number for mode {mode!r}, got {alpha!r}.")
    return float(alpha)


def apply_operator(
    mode: str,
    h: torch.Tensor,
    v: torch.Tensor,
    alpha: Alpha,
    mask: torch.Tensor | None,
    preserve_norm: bool = False,
) -> torch.Tensor:
    """Apply operator ``mode``; with ``preserve_norm`` every token keeps the L2 norm it had before."""
    new = OPERATORS[mode](h, v, alpha, mask)
    if not preserve_norm:
        return new
    before = h.float().norm(dim=-1, keepdim=True)
    after = new.float().norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return (new.float() * (before / after)).to(h.dtype)
