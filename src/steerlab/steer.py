"""Steer a model at run time: ``with steer(model, vector, alpha=...)`` adds ``alpha * v`` to the residual
stream after the chosen blocks, for as long as the ``with`` block lasts.

Only forward hooks are used (no module is replaced, attribute access and ``generate`` keep working), they are
registered through :class:`~steerlab.hooks.HookSet` and removed on exit, also when the body raises.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from steerlab.arch.registry import get_layout
from steerlab.errors import ArchitectureError, SteeringError
from steerlab.hooks import HookSet, block_hidden, with_block_hidden
from steerlab.interventions import add
from steerlab.positions import PositionSpec, PositionTracker, parse_positions
from steerlab.vector import SteeringVector

__all__ = ["Scale", "resolve_deltas", "steer"]

Scale = Literal["absolute", "relative"]


def resolve_deltas(
    vector: SteeringVector, layers: Sequence[int] | None, scale: Scale
) -> dict[int, torch.Tensor]:
    """The per-layer vector to add for ``alpha = 1``.

    ``scale="absolute"`` uses the stored directions as they are; ``scale="relative"`` rescales each to the
    mean residual-stream norm recorded at extraction, so ``alpha = 0.5`` adds half a typical residual norm.
    """
    chosen = vector.layers if layers is None else sorted({int(x) for x in layers})
    missing = [layer for layer in chosen if layer not in vector.directions]
    if missing or not chosen:
        raise SteeringError(
            f"layers {missing or chosen} are not in the vector, which has layers {vector.layers}; "
            "steer at layers the vector was extracted for."
        )
    if scale == "absolute":
        return {layer: vector.directions[layer] for layer in chosen}
    if scale != "relative":
        raise SteeringError(f"scale={scale!r} is not valid; expected 'absolute' or 'relative'.")
    absent = [layer for layer in chosen if layer not in vector.resid_norm]
    if absent:
        raise SteeringError(
            f"scale='relative' needs the residual norm at layers {absent}, which the vector's "
            "metadata lacks (it was not extracted by steerlab); use scale='absolute'."
        )
    return {
        layer: vector.directions[layer]
        / vector.directions[layer].norm().clamp_min(1e-12)
        * vector.resid_norm[layer]
        for layer in chosen
    }


@contextmanager
def steer(
    model: nn.Module,
    vector: SteeringVector,
    alpha: float = 1.0,
    *,
    layers: Sequence[int] | None = None,
    positions: PositionSpec = "all",
    scale: Scale = "absolute",
) -> Iterator[None]:
    """Add ``alpha * vector`` to the output of the chosen blocks while the block runs.

    Args:
        vector: a :class:`SteeringVector` that fits ``model`` (checked; a mismatch raises).
        alpha: the strength; negative values steer the other way.
        layers: which of the vector's layers to use (default: all of them).
        positions: ``"all"`` tokens, the ``"prompt"`` only, ``"generated"`` tokens only, or an int ``k``:
            every real token from position ``k`` on. Positions count real tokens of each row, so they stay
            right with left padding and with a KV cache.
        scale: ``"absolute"`` or ``"relative"`` (alpha in units of the layer's mean residual norm).

    Example:
        >>> with steer(model, vec, alpha=8.0, positions="generated"):
        ...     out = model.generate(**inputs, max_new_tokens=30)
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise SteeringError(f"alpha must be a finite number, got {alpha!r}.")
    vector.check_fits(model)
    spec = parse_positions(positions)
    deltas = resolve_deltas(vector, layers, scale)
    layout = get_layout(model)
    tracker = PositionTracker() if spec != "all" else None

    def make_hook(direction: torch.Tensor):
        cast: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            hidden = block_hidden(output)
            key = (hidden.device, hidden.dtype)
            if key not in cast:
                if hidden.shape[-1] != direction.shape[0]:
                    raise ArchitectureError(
                        f"the hooked block outputs width {hidden.shape[-1]} but the vector has width "
                        f"{direction.shape[0]}; the layer layout found for this model is wrong. Override it "
                        "with steerlab.arch.set_architecture."
                    )
                cast[key] = direction.to(device=hidden.device, dtype=hidden.dtype)
            mask = tracker.select(spec, hidden.shape[0], hidden.shape[1]) if tracker is not None else None
            return with_block_hidden(output, add(hidden, cast[key], float(alpha), mask))

        return hook

    with HookSet() as hooks:
        if tracker is not None:
            tracker.attach(hooks, model)
        for layer, direction in deltas.items():
            hooks.forward(layout.block(layer), make_hook(direction), prepend=True)
        yield
