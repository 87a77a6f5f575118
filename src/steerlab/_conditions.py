"""Conditions: whether a prompt has a property, read from its activations, to switch steering on per row (CAST).

A :class:`Condition` is a direction (a :class:`~steerlab.SteeringVector` extracted like any other, from prompts that
have and lack the property) plus a comparison of the prompt's activation at the vector's layers against a
threshold. The activation is aggregated over the prompt exactly as :func:`steerlab.record` aggregates it
(``"mean"`` over the real tokens, the attention sink left out; or the ``"last"`` real token), so a threshold chosen
on recorded activations (:func:`steerlab.evaluate.find_condition_point`) means the same at generation time. The
score is the cosine with the direction, or the projection on its unit vector, averaged over the condition's layers;
the condition holds where the score is greater (or smaller) than the threshold.

Conditions combine into rules with ``&``, ``|`` and ``~`` (or :meth:`Rule.parse` of a JSON-friendly form naming
conditions), and a rule or a condition gates an :class:`~steerlab.Intervention` (its ``condition``): the gate is
decided per row on the prompt and holds for the row's whole generation (see :mod:`steerlab._steer`).

This module is pure (tensors in, tensors out); the hooks live in :mod:`steerlab._steer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch

from steerlab._vector import SteeringVector
from steerlab.arch.registry import check_site
from steerlab.errors import ArchitectureError, SteeringError
from steerlab.types import (
    CONDITION_COMPARISONS,
    CONDITION_REDUCES,
    CONDITION_SIDES,
    ConditionComparison,
    ConditionReduce,
    ConditionSide,
)

__all__ = [
    "Condition",
    "Gate",
    "Rule",
    "aggregate",
    "condition_scores",
]


def aggregate(hidden: torch.Tensor, index: torch.Tensor, reduce: str) -> torch.Tensor:
    """One ``(hidden,)`` float32 row per prompt, as :func:`steerlab.record` reduces: ``"mean"`` over the real tokens
    but the first (the attention sink; a one-token prompt keeps it), or the ``"last"`` real token.

    ``hidden`` is ``(batch, tokens, hidden)``; ``index`` the ``(batch, tokens)`` index of each token among its row's
    real tokens (-1 for padding), as :class:`~steerlab._positions.PositionTracker` gives it.
    """
    hidden = hidden.float()
    index = index.to(hidden.device)  # under a device_map the block may sit on another device than the input ids
    real = index >= 0
    if reduce == "last":
        last = index.argmax(-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    keep = real & (index >= 1)
    keep = keep | (real & ~keep.any(-1, keepdim=True))
    weights = keep.to(hidden.dtype)[..., None]
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def condition_scores(rows: torch.Tensor, directions: torch.Tensor, comparison: str) -> torch.Tensor:
    """Scores of aggregated activations ``rows`` (``(..., n, hidden)``) against ``directions`` (``(..., hidden)``,
    one per leading index): ``(..., n)`` cosines or projections on the unit direction. Shared by the gate and the
    condition-point search, so both compute the same number."""
    rows = rows.float()
    unit = directions.float() / directions.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    projection = (rows * unit[..., None, :]).sum(-1)
    if comparison == "projection":
        return projection
    return projection / rows.norm(dim=-1).clamp_min(1e-12)


class _Combinable:
    """``&``, ``|`` and ``~`` build rules from conditions and rules."""

    def __and__(self, other: Gate) -> Rule:
        return Rule("all", (self, _gate(other)))  # type: ignore[arg-type]

    def __or__(self, other: Gate) -> Rule:
        return Rule("any", (self, _gate(other)))  # type: ignore[arg-type]

    def __invert__(self) -> Rule:
        return Rule("not", (self,))  # type: ignore[arg-type]

    def conditions(self) -> list[Condition]:  # pragma: no cover - overridden
        raise NotImplementedError

    def fires(self, score_of: Callable[[Condition], torch.Tensor | None]) -> torch.Tensor | None:
        """Per row, whether the gate is open, given each condition's score (``None`` while one is unknown)."""
        raise NotImplementedError  # pragma: no cover - overridden


@dataclass(frozen=True, eq=False)
class Condition(_Combinable):
    """Whether a prompt has a property: its activation compared with a direction.

    Attributes:
        vector: the direction, extracted from prompts with and without the property (``extract_vector``); its
            site is where the prompt is read.
        threshold: the score at which the condition switches (a cosine in [-1, 1], or a projection in activation
            units); a finite number.
        layers: which of the vector's layers to read (default: all of them); the score is averaged over them.
        comparison: ``"cosine"`` (default) or ``"projection"`` on the unit direction.
        side: ``"greater"`` (default: holds where the score is above the threshold) or ``"smaller"``.
        reduce: ``"mean"`` over the prompt's real tokens (default; the attention sink left out, as ``record``
            does) or the ``"last"`` prompt token.

    Example:
        >>> harmful = Condition(harm_vec, threshold=0.12, layers=[5])
        >>> with steer(model, Intervention(refusal, alpha=0.1, condition=harmful)):
        ...     out = model.generate(**batch)         # only rows whose prompt reads as harmful are steered
        >>> harmful & ~Condition(legal_vec, threshold=0.3)
        Rule(all: [Condition(...), Rule(not: [Condition(...)])])
    """

    vector: SteeringVector
    threshold: float
    layers: Sequence[int] | None = None
    comparison: ConditionComparison = "cosine"
    side: ConditionSide = "greater"
    reduce: ConditionReduce = "mean"

    def __post_init__(self) -> None:
        if not isinstance(self.vector, SteeringVector):
            raise SteeringError(
                f"a Condition needs a SteeringVector (the direction of the property), got "
                f"{type(self.vector).__name__}; extract one with extract_vector(model, tokenizer, pairs) from "
                "prompts with and without the property."
            )
        threshold = self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise SteeringError(
                f"a condition's threshold must be a finite number, got {threshold!r}; choose one with "
                "steerlab.evaluate.find_condition_point, or give e.g. threshold=0.1 for a cosine."
            )
        for name, value, choices in (
            ("comparison", self.comparison, CONDITION_COMPARISONS),
            ("side", self.side, CONDITION_SIDES),
            ("reduce", self.reduce, CONDITION_REDUCES),
        ):
            if value not in choices:
                raise SteeringError(f"a condition's {name}={value!r} is not valid; expected one of {list(choices)}.")
        try:
            check_site(self.vector.site)
        except ArchitectureError as err:
            raise SteeringError(str(err)) from None
        object.__setattr__(self, "threshold", float(threshold))
        object.__setattr__(self, "layers", tuple(_layers_in(self.vector, self.layers)))

    def __repr__(self) -> str:
        return (
            f"Condition({self.comparison} {'>' if self.side == 'greater' else '<'} {self.threshold:g} at layers "
            f"{list(self.layers or ())}, {'mean over the prompt' if self.reduce == 'mean' else 'last prompt token'})"
        )

    @classmethod
    def recorded(cls, vector: SteeringVector, **overrides: Any) -> Condition:
        """The condition point recorded in ``vector.extra["condition"]`` by
        :func:`steerlab.evaluate.find_condition_point` (layer, threshold, comparison, side, reduce); keyword
        ``overrides`` replace single choices (e.g. a stricter ``threshold``). A vector that records no point takes
        the options given, and then needs a ``threshold``: the one rule the CLI's condition files and the server's
        ``conditions`` share.

        Example:
            >>> harmful = Condition.recorded(SteeringVector.load("harmful.safetensors"))
        """
        point = vector.extra.get("condition") if isinstance(vector, SteeringVector) else None
        if not isinstance(point, dict):
            if overrides.get("threshold") is None:
                raise SteeringError(
                    "this vector records no condition point, so give a threshold (e.g. 0.1 for a cosine); or find "
                    "one with steerlab.evaluate.find_condition_point(...), which records it in extra['condition']."
                )
            return cls(vector, **overrides)
        options = {
            "threshold": point.get("threshold"),
            "layers": [point["layer"]] if "layer" in point else None,
            "comparison": point.get("comparison", "cosine"),
            "side": point.get("side", "greater"),
            "reduce": point.get("reduce", "mean"),
        }
        return cls(vector, **{**options, **overrides})

    @property
    def site(self) -> str:
        """Where the prompt is read: the vector's site."""
        return self.vector.site

    def conditions(self) -> list[Condition]:
        return [self]

    def score(self, per_layer: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """The score of aggregated activations (``layer -> (n, hidden)``), averaged over this condition's layers.

        Example:
            >>> acts = record(model, tokenizer, prompts, layers=[5], reduce="mean")
            >>> harmful.holds(harmful.score(acts.values))   # what the gate decides for each prompt
        """
        scores = [
            condition_scores(
                per_layer[layer], self.vector.directions[layer].to(per_layer[layer].device), self.comparison
            )
            for layer in self.layers  # type: ignore[union-attr]
        ]
        return torch.stack(scores).mean(0)

    def holds(self, score: torch.Tensor) -> torch.Tensor:
        """Where a score passes the threshold on this condition's side (a boolean tensor)."""
        return score > self.threshold if self.side == "greater" else score < self.threshold

    def fires(self, score_of: Callable[[Condition], torch.Tensor | None]) -> torch.Tensor | None:
        score = score_of(self)
        return None if score is None else self.holds(score)


@dataclass(frozen=True, eq=False)
class Rule(_Combinable):
    """Conditions combined: ``"any"`` / ``"all"`` of several, or ``"not"`` one. Made with ``&``, ``|``, ``~`` on
    conditions, or by :meth:`parse` from a JSON-friendly form (what the server takes).

    Example:
        >>> rule = Rule.parse({"all": ["harmful", {"not": "legal"}]}, {"harmful": harmful, "legal": legal})
    """

    op: Literal["any", "all", "not"]
    children: tuple[Gate, ...]

    def __post_init__(self) -> None:
        if self.op not in ("any", "all", "not"):
            raise SteeringError(f"a rule's op={self.op!r} is not valid; expected 'any', 'all' or 'not'.")
        children = tuple(_gate(child) for child in self.children)
        if not children or (self.op == "not" and len(children) != 1):
            raise SteeringError(
                f"a '{self.op}' rule takes {'exactly one' if self.op == 'not' else 'at least one'} condition, "
                f"got {len(children)}."
            )
        object.__setattr__(self, "children", children)

    def __repr__(self) -> str:
        return f"Rule({self.op}: [{', '.join(map(repr, self.children))}])"

    def conditions(self) -> list[Condition]:
        seen: dict[int, Condition] = {}
        for child in self.children:
            for condition in child.conditions():
                seen.setdefault(id(condition), condition)
        return list(seen.values())

    def fires(self, score_of: Callable[[Condition], torch.Tensor | None]) -> torch.Tensor | None:
        parts = [child.fires(score_of) for child in self.children]
        if any(part is None for part in parts):
            return None
        if self.op == "not":
            return ~parts[0]  # type: ignore[operator]
        stacked = torch.stack(parts)  # type: ignore[arg-type]
        return stacked.any(0) if self.op == "any" else stacked.all(0)

    @classmethod
    def parse(cls, spec: Any, named: Mapping[str, Condition]) -> Gate:
        """A gate from its JSON-friendly form: a condition's name, ``{"any": [...]}``, ``{"all": [...]}`` or
        ``{"not": ...}``, nested freely. Unknown names and malformed parts raise :class:`SteeringError`.

        Example:
            >>> Rule.parse({"any": ["a", {"not": "b"}]}, {"a": cond_a, "b": cond_b})
        """
        if isinstance(spec, str):
            if spec not in named:
                raise SteeringError(
                    f"the rule names the condition '{spec}', but the conditions given are {sorted(named) or 'none'}; "
                    "name one of those, or define it."
                )
            return named[spec]
        if isinstance(spec, Mapping) and len(spec) == 1:
            ((op, value),) = spec.items()
            if op == "not":
                return cls("not", (cls.parse(value, named),))
            if op in ("any", "all") and isinstance(value, Sequence) and not isinstance(value, str):
                return cls(op, tuple(cls.parse(part, named) for part in value))
        raise SteeringError(
            f"a rule is a condition's name, {{'any': [...]}}, {{'all': [...]}} or {{'not': ...}}; got {spec!r}."
        )


Gate = Union[Condition, Rule]  # noqa: UP007 - a runtime alias
"""What gates an intervention: one condition or a rule of several."""


def _gate(value: Any) -> Gate:
    if not isinstance(value, (Condition, Rule)):
        raise SteeringError(
            f"a rule combines Conditions and Rules, got {type(value).__name__}; make one with "
            "Condition(vector, threshold=...)."
        )
    return value


def _layers_in(vector: SteeringVector, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(vector.layers)
    try:
        chosen = sorted({int(x) for x in layers})
    except (TypeError, ValueError):
        raise SteeringError(f"a condition's layers must be a list of layer indices, got {layers!r}.") from None
    missing = [layer for layer in chosen if layer not in vector.directions]
    if missing or not chosen:
        raise SteeringError(
            f"a condition reads layers {missing or chosen}, which its vector lacks (it has layers {vector.layers}); "
            "read layers the condition vector was extracted for."
        )
    return chosen


def read_points(gate: Gate) -> Iterator[tuple[int, str]]:
    """Every (layer, site) a gate reads."""
    for condition in gate.conditions():
        for layer in condition.layers:  # type: ignore[union-attr]
            yield layer, condition.site
