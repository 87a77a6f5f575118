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

:data:`OPERATORS` holds one :class:`Operator` record per mode: the function, what its alpha means, the alpha that
leaves ``h`` unchanged and the positions it steers when none are given. Everything that depends on the mode (alpha
checks, the identity, scaling alpha with a relative norm, the default positions) reads that record, so a new
operator is one function, one record here and one name in :data:`steerlab.types.Mode`. :func:`apply_operator`
adds the option, common to all, of giving each changed token back its original norm.

Attention sink: the first token of a sequence can carry a huge projection on a direction (SmolLM2, layer
12, the sentiment direction: ~300 against ~5 for the other tokens), which is the sink's, not the concept's. A
projection mode would edit it more than every other token together: on the shipped data it costs half to two
thirds of an ablation's KL and turns ``ablate_then_add``'s effect at +8 the wrong way (docs/attention-sink.md, from
scripts/attention_sink.py). So the projection modes steer from the second real token of each row on by default
(``positions=1``); ``positions="all"`` edits the first token too. ``add`` steers every token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from steerlab.errors import SteeringError
from steerlab.types import MODES, Alpha, Positions

__all__ = [
    "OPERATORS",
    "Alpha",
    "Operator",
    "ablate",
    "ablate_then_add",
    "add",
    "apply_operator",
    "check_alpha",
    "clamp",
    "default_alpha",
    "default_positions",
    "is_identity",
    "push_size",
]


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


@dataclass(frozen=True)
class Operator:
    """One intervention operator and what its alpha means.

    Attributes:
        fn: ``(h, v, alpha, mask) -> h'``.
        alpha: ``"strength"`` (multiplies the direction), ``"fraction"`` (of the projection removed),
            ``"projection"`` (a value of ``h·v̂`` to set) or ``"band"`` (a ``(lo, hi)`` range for ``h·v̂``). The
            last two are activation values, so with ``scale="relative"`` they are fractions of the layer's norm.
        identity: the alpha that leaves ``h`` unchanged (then nothing is hooked at all), or ``None``.
        default: the alpha used when none is given, or ``None`` when the mode needs one stated (a strength has no
            size that suits every vector and layer; a projection value or a band has no neutral choice).
        positions: the positions steered when none are given: ``"all"`` for ``add``; ``1`` (every real token but
            the first, the attention sink; see the module doc) for the modes that act on the projection.
    """

    fn: Callable[..., torch.Tensor]
    alpha: Literal["strength", "fraction", "projection", "band"]
    identity: float | None
    default: float | None
    positions: Positions

    @property
    def in_activation_units(self) -> bool:
        """Whether alpha is a value of the projection (scaled by a relative norm) rather than a factor."""
        return self.alpha in ("projection", "band")

    @property
    def uses_scale(self) -> bool:
        """Whether the scale changes anything: a fraction removed needs only the direction, so ``ablate`` works on
        a vector without recorded norms whatever the scale."""
        return self.alpha != "fraction"


OPERATORS: dict[str, Operator] = {
    "add": Operator(add, "strength", identity=0.0, default=None, positions="all"),
    "ablate": Operator(ablate, "fraction", identity=0.0, default=1.0, positions=1),
    "ablate_then_add": Operator(ablate_then_add, "projection", identity=None, default=None, positions=1),
    "clamp": Operator(clamp, "band", identity=None, default=None, positions=1),
}
assert tuple(OPERATORS) == MODES, "steerlab.types.Mode and OPERATORS must list the same modes"


def _operator(mode: str) -> Operator:
    if mode not in OPERATORS:
        raise SteeringError(f"unknown mode {mode!r}; choose one of {list(OPERATORS)}.")
    return OPERATORS[mode]


def default_alpha(mode: str) -> Alpha | None:
    """The alpha ``mode`` uses when none is given (``None``: the mode needs one stated)."""
    return _operator(mode).default


def default_positions(mode: str) -> Positions:
    """The positions ``mode`` steers when none are given: every token for ``add``, every token but the first (the
    attention sink) for the projection modes."""
    return _operator(mode).positions


def check_alpha(mode: str, alpha: object) -> Alpha:
    """Validate ``alpha`` for ``mode``; returns it normalised (floats, or a ``(lo, hi)`` band for clamp)."""
    if _operator(mode).alpha == "band":
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


def is_identity(mode: str, alpha: Alpha | None) -> bool:
    """True when ``alpha`` leaves the model unchanged (``None``, or the operator's identity, e.g. 0 for ``add`` and
    ``ablate``): such a strength runs with no hooks at all, the true unsteered baseline."""
    if alpha is None:
        return True
    identity = _operator(mode).identity
    return identity is not None and not isinstance(alpha, (tuple, list)) and float(alpha) == identity


def scaled_alpha(mode: str, alpha: Alpha, factor: float) -> Alpha:
    """``alpha`` in activation units when it is a projection value or band given relative to a norm ``factor``."""
    if not _operator(mode).in_activation_units:
        return alpha
    if isinstance(alpha, tuple):
        lo, hi = alpha
        return (None if lo is None else lo * factor, None if hi is None else hi * factor)
    return float(alpha) * factor


def push_size(mode: str, alpha: Alpha) -> float | None:
    """How far ``alpha`` pushes, in alpha's own units: ``|alpha|`` for a strength (times the direction's norm) or a
    projection value; for a band, its distance from zero (the least the projection is forced to); ``None`` for a
    fraction removed, whose push depends on the activation. :class:`~steerlab.Intervention` turns it into a
    fraction of the residual norm to warn about strengths past the breakdown point.

    Example:
        >>> push_size("clamp", (0.2, None)), push_size("clamp", (-2.0, 2.0)), push_size("ablate", 1.0)
        (0.2, 0.0, None)
    """
    kind = _operator(mode).alpha
    if kind == "fraction":
        return None
    if kind == "band":
        lo, hi = alpha  # type: ignore[misc]
        return max(0.0 if lo is None else lo, 0.0 if hi is None else -hi, 0.0)
    return abs(float(alpha))  # type: ignore[arg-type]


def apply_operator(
    mode: str,
    h: torch.Tensor,
    v: torch.Tensor,
    alpha: Alpha,
    mask: torch.Tensor | None,
    preserve_norm: bool = False,
) -> torch.Tensor:
    """Apply operator ``mode``; with ``preserve_norm`` every token keeps the L2 norm it had before."""
    new = _operator(mode).fn(h, v, alpha, mask)
    if not preserve_norm:
        return new
    before = h.float().norm(dim=-1, keepdim=True)
    after = new.float().norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return (new.float() * (before / after)).to(h.dtype)
