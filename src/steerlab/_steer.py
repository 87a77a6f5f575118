"""Steer a model at run time with one mechanism for every kind of intervention.

``with steer(model, vector, alpha=...)`` adds ``alpha * v`` to the residual stream after the vector's
layers for as long as the ``with`` block lasts. The same call takes an operator (``mode``: add, ablate,
ablate_then_add, clamp), a site, positions, and a list of :class:`Intervention` applied together;
:func:`steer_rows` gives every row of a batch its own interventions (what a server needs).

Order: at each hook point (a layer and site), the interventions of a row apply in the order they were given;
hook points apply in forward order (layer by layer; within a layer resid_pre, attn_out, mlp_out,
resid_post). Vector arithmetic (``a + 0.5 * b``) is composed before anything is applied.

Only forward hooks are used (no module is replaced), registered through
:class:`~steerlab._hooks.HookSet` and removed on exit, also when the body raises. Steering hooks are
prepended, so any other observer of a block (recording, ``output_hidden_states``) sees the steered value.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from steerlab._conditions import Condition, Gate, Rule, aggregate, condition_scores, read_points
from steerlab._hooks import HookSet
from steerlab._interventions import (
    OPERATORS,
    Alpha,
    apply_operator,
    check_alpha,
    default_alpha,
    default_positions,
    is_identity,
    push_size,
    scaled_alpha,
)
from steerlab._positions import PositionSpec, PositionTracker, parse_positions
from steerlab._vector import SteeringVector
from steerlab.arch.registry import SITES, check_site, get_layout
from steerlab.errors import ArchitectureError, SteeringError, StrengthWarning
from steerlab.types import (
    BREAKDOWN_STRENGTH,
    DEFAULT_SCALE,
    MAX_STRENGTH,
    SCALES,
    Mode,
    Positions,
    Recommended,
    Scale,
    Site,
)

__all__ = [
    "Intervention",
    "Scale",
    "as_interventions",
    "check_interventions",
    "checked_layers",
    "directional_ablation",
    "resolve_deltas",
    "resolve_entries",
    "steer",
    "steer_rows",
]


@dataclass(frozen=True, eq=False)
class Intervention:
    """One intervention: a vector, an operator and where to apply it. The one way, below :func:`steer`, to say how
    to steer: :func:`compare`, baking, the replay, the metrics, sweeps and the server all take one.

    Every field is checked when the intervention is made (an unknown mode, a bad alpha, a layer the vector lacks,
    an unknown site or positions, a relative scale without recorded norms raise :class:`~steerlab.SteeringError`
    here, not later inside a forward pass); what depends on the model (the vector fitting it) is checked when it
    is applied.

    Strength: with the default ``scale="relative"`` a strength is a fraction of the layer's mean residual norm, so
    it means the same on every model, layer and vector (0.05-0.2 steers SmolLM2 visibly with coherent text).
    :attr:`relative_size` gives that fraction for any scale; past
    :data:`~steerlab.types.BREAKDOWN_STRENGTH` (0.3) an intervention warns with
    :class:`~steerlab.errors.StrengthWarning`, past :data:`~steerlab.types.MAX_STRENGTH` (3.0) it is refused.

    Attributes:
        vector: the :class:`SteeringVector` (its directions give the layers and ``v``).
        alpha: strength for ``add``; fraction removed for ``ablate`` (default 1: all of it); the projection to set
            for ``ablate_then_add``; a ``(lo, hi)`` band for ``clamp``. Only ``ablate`` has a default: an
            Intervention without a strength is a template, to be given one with :meth:`at` before it is applied.
            ``"recommended"`` takes the layer, strength, mode and scale from the vector's ``extra["recommended"]``
            (written by ``steerlab calibrate``); options left at their defaults follow it, and one given otherwise
            (``layers``, ``mode``, ``scale``) must agree with it.
        mode: ``add``, ``ablate``, ``ablate_then_add`` or ``clamp`` (:data:`steerlab.types.Mode`).
        layers: which of the vector's layers to use (default: all of them); kept as a sorted tuple.
        positions: ``"all"``, ``"prompt"``, ``"generated"``, or an int ``k`` (real tokens from ``k`` on). Default:
            ``"all"`` for ``add``, ``1`` for the projection modes, which leave the attention sink (each row's first
            real token) alone unless given ``"all"``.
        site: where in the block (default: the vector's own site); see :data:`steerlab.types.Site`.
        scale: ``"relative"`` (default) to the mean activation norm recorded at extraction: alpha, the projection
            target and the clamp band are fractions of that norm, and ``add`` uses the direction rescaled to that
            norm; or ``"absolute"``: alpha multiplies the stored direction as it is (a vector made outside
            steerlab's extraction, without recorded norms, needs it).
        preserve_norm: give every changed token back the L2 norm it had before.
        condition: a :class:`~steerlab._conditions.Condition` or a rule of several (``&``, ``|``, ``~``): the
            intervention applies only to rows whose prompt meets it. The gate is decided per row on the prompt pass
            and holds for the row's whole generation (KV cache or not); other rows are left bit-identical. The
            condition must be read before the intervention acts on the prompt: an intervention at or before the
            condition's layer is refused unless it steers ``positions="generated"`` only.
        heads: at the ``heads`` site, the attention heads to act on (default: the whole projection input). Each head
            is changed by the operator with its own slice of the direction (``ablate`` removes each head's own
            component), and the other heads are left bit-identical.

    Example:
        >>> refuse_less = Intervention(refusal, mode="ablate", alpha=1.0)
        >>> happier = Intervention(sentiment, alpha=0.15, positions="generated")  # 15% of the residual norm
        >>> with steer(model, [refuse_less, happier]):
        ...     model.generate(**inputs)
        >>> [happier.at(a).is_identity for a in (0.0, 0.1)]
        [True, False]
    """

    vector: SteeringVector
    alpha: Alpha | Recommended | None = None
    mode: Mode = "add"
    layers: Sequence[int] | None = None
    positions: Positions | None = None
    site: Site | None = None
    scale: Scale = DEFAULT_SCALE
    preserve_norm: bool = False
    condition: Gate | None = None
    heads: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.condition is not None and not isinstance(self.condition, (Condition, Rule)):
            raise SteeringError(
                f"condition must be a Condition or a Rule, got {type(self.condition).__name__}; make one with "
                "Condition(vector, threshold=...)."
            )
        if not isinstance(self.vector, SteeringVector):
            raise SteeringError(
                f"an Intervention needs a SteeringVector, got {type(self.vector).__name__}; load one with "
                "SteeringVector.load(path) or make one with extract_vector(...)."
            )
        if isinstance(self.alpha, str):
            self._take_recommendation()
        alpha = default_alpha(self.mode) if self.alpha is None else self.alpha
        normalised = {
            "alpha": None if alpha is None else check_alpha(self.mode, alpha),
            "positions": parse_positions(default_positions(self.mode) if self.positions is None else self.positions),
            "layers": None if self.layers is None else tuple(checked_layers(self.vector, self.layers)),
            "preserve_norm": bool(self.preserve_norm),
            "heads": None if self.heads is None else _checked_heads(self.heads),
        }
        if self.site is not None:
            try:
                check_site(self.site)
            except ArchitectureError as err:
                raise SteeringError(str(err)) from None
        if self.scale not in SCALES:
            raise SteeringError(f"scale={self.scale!r} is not valid; expected one of {list(SCALES)}.")
        if self.heads is not None and (self.site or self.vector.site) != "heads":
            raise SteeringError(
                f"heads={list(self.heads)} picks attention heads, which exist at the 'heads' site; this intervention "
                f"acts at '{self.site or self.vector.site}'. Give site='heads' (with a vector of the heads' width, "
                "e.g. extracted with site='heads'), or leave heads out."
            )
        for name, value in normalised.items():  # frozen: normalise in place once, at construction
            object.__setattr__(self, name, value)
        if self.scale == "relative" and OPERATORS[self.mode].uses_scale:
            _check_norms(self.vector, self.layers)
        self._check_strength()

    def _take_recommendation(self) -> None:
        """Resolve ``alpha="recommended"`` from the vector's metadata, in place (before the usual checks)."""
        if self.alpha != "recommended":
            raise SteeringError(
                f"alpha={self.alpha!r} is not a strength; expected a number, a (lo, hi) band for clamp, or "
                "'recommended' (the setting steerlab calibrate recorded in the vector)."
            )
        rec = self.vector.extra.get("recommended")
        if not isinstance(rec, dict) or rec.get("found") is not True:
            found = "none" if rec is None else "one from an older steerlab, recorded without testing it"
            raise SteeringError(
                "alpha='recommended' needs a vector whose extra['recommended'] holds a setting that beat random "
                f"directions on held-out questions; this vector has {found}. Run `steerlab calibrate --vector ...` "
                "(or calibrate(sweep(...)).annotate(vec)), or give alpha as a number."
            )
        # A joint sweep's cell records its layers as a list: they are steered together.
        layers = tuple(int(x) for x in rec["layer"]) if isinstance(rec["layer"], list) else (int(rec["layer"]),)
        wanted = {"mode": rec["mode"], "layers": layers, "scale": rec["scale"]}
        given = {
            "mode": self.mode,
            "layers": None if self.layers is None else tuple(sorted({int(x) for x in self.layers})),
            "scale": self.scale,
        }
        clashes = [
            f"{name}={given[name]!r} (recommended: {wanted[name]!r})"
            for name in wanted
            if given[name] != _OPTION_DEFAULTS[name] and given[name] != wanted[name]
        ]
        if clashes:
            raise SteeringError(
                f"alpha='recommended' steers with the vector's recorded setting, but {', '.join(clashes)} contradicts "
                "it; leave those options out, or give alpha as a number to steer your own way."
            )
        alpha = tuple(rec["alpha"]) if isinstance(rec["alpha"], list) else float(rec["alpha"])
        for name, value in {"alpha": alpha, **wanted}.items():
            object.__setattr__(self, name, value)

    def _check_strength(self) -> None:
        """Refuse a push far past the breakdown point and warn past it (sweeps and the breakdown trace silence
        the warning: exploring there is their job)."""
        sizes = self.relative_size
        if not sizes:
            return
        layer = max(sizes, key=sizes.get)
        size = sizes[layer]
        if size <= BREAKDOWN_STRENGTH:
            return
        what = (
            f"{self.mode} with alpha={self.alpha!r} ({self.scale}) pushes {size:.2f}x the residual norm at layer "
            f"{layer}"
        )
        hint = (
            "give alpha as a fraction of the residual norm with scale='relative' (0.05-0.2 steers SmolLM2 with "
            "coherent text)"
            if self.scale == "absolute"
            else "use a smaller alpha (0.05-0.2 is typical)"
        )
        if size > MAX_STRENGTH:
            raise SteeringError(
                f"{what}, past the limit of {MAX_STRENGTH:g}x: the push would swamp the activation it is added to. "
                f"Expected a relative size under {MAX_STRENGTH:g}; {hint}."
            )
        warnings.warn(
            f"{what}; text breaks down past {BREAKDOWN_STRENGTH:g}x (docs/guide.md). If you mean it, silence "
            "steerlab.errors.StrengthWarning; otherwise " + hint + ".",
            StrengthWarning,
            stacklevel=4,
        )

    @property
    def relative_size(self) -> dict[int, float] | None:
        """Per layer, how far this intervention pushes as a fraction of the layer's mean residual norm: the
        added norm for ``add`` (``alpha * |v| / norm`` on the absolute scale, ``|alpha|`` on the relative one), the
        projection set for ``ablate_then_add``, the band's distance from zero for ``clamp``. ``None`` for a
        template, for ``ablate`` (its push depends on the activation) and where the vector has no recorded norms.

        Example:
            >>> Intervention(vec, alpha=20.0, scale="absolute", layers=[10]).relative_size   # |v| 7.7, norm 145
            {10: 1.06...}
        """
        if self.alpha is None:
            return None
        push = push_size(self.mode, self.alpha)
        layers = self.vector.layers if self.layers is None else list(self.layers)
        if push is None or any(layer not in self.vector.resid_norm for layer in layers):
            return None
        if self.scale == "relative":
            return dict.fromkeys(layers, push)
        if self.mode == "add":  # the stored direction's own norm multiplies alpha
            return {
                layer: push * float(self.vector.directions[layer].norm()) / self.vector.resid_norm[layer]
                for layer in layers
            }
        return {layer: push / self.vector.resid_norm[layer] for layer in layers}

    def at(self, alpha: Alpha) -> Intervention:
        """The same intervention at another strength (checked for this mode).

        Example:
            >>> template = Intervention(vec, scale="relative")
            >>> [template.at(a) for a in (-0.2, 0.0, 0.2)]
        """
        return dataclasses.replace(self, alpha=alpha)

    @property
    def is_identity(self) -> bool:
        """True when this intervention leaves the model unchanged (alpha 0 for ``add`` / ``ablate``): it is then
        run with no hooks at all, the true unsteered baseline. A template without a strength is not."""
        return self.alpha is not None and is_identity(self.mode, self.alpha)

    @property
    def resolved_site(self) -> Site:
        """The site it acts at: its own, or the vector's."""
        return self.site or self.vector.site  # type: ignore[return-value]

    def deltas(self) -> dict[int, torch.Tensor]:
        """The per-layer tensor that ``alpha = 1`` stands for at this intervention's layers and scale: for ``add``,
        ``alpha * deltas()[layer]`` is what is added to the hidden state.

        Example:
            >>> Intervention(vec, alpha=0.2, scale="relative").deltas()[12].norm()   # the layer's mean norm
        """
        scale = self.scale if OPERATORS[self.mode].uses_scale else "absolute"  # ablate: only the direction counts
        return resolve_deltas(self.vector, self.layers, scale)


def _checked_heads(heads: Sequence[int]) -> tuple[int, ...]:
    try:
        chosen = tuple(sorted({int(h) for h in heads if not isinstance(h, bool)}))
    except (TypeError, ValueError):
        raise SteeringError(f"heads must be a list of head indices, got {heads!r}.") from None
    if not chosen or len(chosen) != len(set(heads)) or chosen[0] < 0:
        raise SteeringError(f"heads={list(heads)!r} is not valid; expected a non-empty list of head indices >= 0.")
    return chosen


_OPTION_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Intervention) if f.name != "vector"}


def as_interventions(
    what: SteeringVector | Intervention | Sequence[Intervention], **options: Any
) -> list[Intervention]:
    """The one normaliser of "what to steer with": a vector with keyword options becomes one
    :class:`Intervention`; an Intervention or a list of them is taken as it is, and then the keyword options must
    be left at their defaults (each Intervention carries its own). Used by :func:`steer`, :func:`compare` and
    baking, so every entry point accepts the same things and refuses the same mistakes.

    Example:
        >>> as_interventions(vec, alpha=0.1, scale="relative")
        [Intervention(vector=..., alpha=0.1, ...)]
    """
    unknown = sorted(set(options) - set(_OPTION_DEFAULTS))
    if unknown:
        raise SteeringError(f"unknown steering options {unknown}; expected some of {sorted(_OPTION_DEFAULTS)}.")
    if isinstance(what, SteeringVector):
        return [Intervention(what, **options)]
    changed = sorted(k for k, v in options.items() if v != _OPTION_DEFAULTS[k])
    if changed:
        raise SteeringError(
            f"got Interventions and the keyword options {changed}; put the options in each Intervention instead "
            "(e.g. Intervention(vector, alpha=0.1, scale='relative'))."
        )
    return _as_interventions(what)


def _check_norms(vector: SteeringVector, layers: Sequence[int] | None) -> None:
    """``scale="relative"`` needs the residual norm recorded at every chosen layer."""
    chosen = vector.layers if layers is None else layers
    absent = [layer for layer in chosen if layer not in vector.resid_norm]
    if absent:
        raise SteeringError(
            f"scale='relative' (the default) needs the residual norm at layers {absent}, which this vector's metadata "
            "lacks (it was not extracted by steerlab). Pass scale='absolute' to multiply the stored direction as it "
            "is, or import it with steerlab.io.import_gguf(path, model), which measures the norms."
        )


def checked_layers(vector: SteeringVector, layers: Sequence[int] | None = None) -> list[int]:
    """The one check that chosen layers exist in the vector; returns them sorted and unique (``None``: all of the
    vector's layers).

    Example:
        >>> checked_layers(vec, [12, 10, 12])
        [10, 12]
    """
    if layers is None:
        return list(vector.layers)
    try:
        chosen = sorted({int(x) for x in layers})
    except (TypeError, ValueError):
        raise SteeringError(f"layers must be a list of layer indices, got {layers!r}.") from None
    missing = [layer for layer in chosen if layer not in vector.directions]
    if missing or not chosen:
        raise SteeringError(
            f"layers {missing or chosen} are not in the vector, which has layers {vector.layers}; "
            "steer at layers the vector was extracted for."
        )
    return chosen


@dataclass
class _Entry:
    """An intervention resolved at one hook point."""

    direction: torch.Tensor  # already scaled for "add"; only its direction matters for the other modes
    mode: str
    alpha: Alpha
    positions: PositionSpec
    preserve_norm: bool
    rows: list[int] | None  # batch rows it applies to; None = all
    gate: Gate | None = None  # rows are further limited to those whose prompt met it
    heads: tuple[int, ...] | None = None  # at the "heads" site: the heads it acts on, each with its own slice
    head_size: int = 0


def resolve_deltas(vector: SteeringVector, layers: Sequence[int] | None, scale: Scale) -> dict[int, torch.Tensor]:
    """The per-layer vector to add for ``alpha = 1``.

    ``scale="absolute"`` uses the stored directions as they are; ``scale="relative"`` rescales each to the
    mean activation norm recorded at extraction, so ``alpha = 0.5`` adds half a typical residual norm.
    """
    chosen = checked_layers(vector, layers)
    if scale == "absolute":
        return {layer: vector.directions[layer] for layer in chosen}
    if scale != "relative":
        raise SteeringError(f"scale={scale!r} is not valid; expected 'absolute' or 'relative'.")
    _check_norms(vector, chosen)
    unit = vector.normalized_copy().directions
    return {layer: unit[layer] * vector.resid_norm[layer] for layer in chosen}


def _resolve(
    model: nn.Module, item: Intervention, rows: list[int] | None
) -> tuple[dict[tuple[int, str], _Entry], bool]:
    """Validate one intervention against ``model`` and resolve it to entries per (layer, site); also: needs
    positions?"""
    _check_strength_given(item)
    item.vector.check_fits(model)
    site = _checked_site(item)
    if item.condition is not None:
        _check_gate(model, item, site)
    if site == "heads":
        _check_heads_width(model, item.vector)
    head_size = _check_heads(model, item) if item.heads is not None else 0
    return resolve_entries(item, rows, head_size=head_size)


def _checked_site(item: Intervention) -> str:
    site = item.resolved_site
    try:
        check_site(site)  # a vector's own site, read from a file, is checked here
    except ArchitectureError as err:
        raise SteeringError(str(err)) from None
    return site


def _check_strength_given(item: Intervention) -> None:
    if item.alpha is None:
        raise SteeringError(
            f"mode {item.mode!r} needs a strength: give alpha (for 'add' a fraction of the residual norm with the "
            "default scale='relative', e.g. 0.1; a projection value for 'ablate_then_add', a band (lo, hi) for "
            "'clamp'), e.g. Intervention(vector, alpha=0.1) or template.at(alpha)."
        )


def resolve_entries(
    item: Intervention, rows: list[int] | None = None, *, head_size: int = 0
) -> tuple[dict[tuple[int, str], _Entry], bool]:
    """One intervention resolved to what each hook point applies (direction, operator, alpha in activation units,
    positions, norm preservation, rows), without a model: the fit is the caller's check (:func:`steer` checks the
    vector against its model; another engine, such as the vLLM plugin, against that model's fingerprint). Also
    returns whether the entries depend on token positions.

    Example:
        >>> entries, positional = resolve_entries(Intervention(vec, alpha=0.1, layers=[10]))
        >>> list(entries), positional
        ([(10, 'resid_post')], False)
    """
    _check_strength_given(item)
    vector = item.vector
    site = _checked_site(item)
    if item.heads is not None and head_size <= 0:
        raise SteeringError(
            "per-head steering (heads=...) needs the model's head width; steer through steer() / steer_rows() on "
            "the model, which checks the heads against it."
        )
    entries = {}
    for layer, delta in item.deltas().items():
        factor = vector.resid_norm.get(layer, 1.0) if item.scale == "relative" else 1.0
        entries[layer, site] = _Entry(
            delta,
            item.mode,
            scaled_alpha(item.mode, item.alpha, factor),
            item.positions,
            item.preserve_norm,
            rows,
            item.condition,
            item.heads,  # type: ignore[arg-type]
            head_size,
        )
    return entries, item.positions != "all" or item.condition is not None


def _check_heads_width(model: nn.Module, vector: SteeringVector) -> None:
    """At the ``heads`` site a direction must be as wide as the attention output projection's input."""
    width = get_layout(model).site_width("heads")
    widths = sorted({int(d.shape[0]) for d in vector.directions.values()})
    if widths != [width]:
        raise SteeringError(
            f"at the 'heads' site this model's directions are {width} wide (heads x head width), but the vector's "
            f"are {widths}; extract it at site='heads' on this model."
        )


def _check_heads(model: nn.Module, item: Intervention) -> int:
    """The chosen heads exist at every layer of the intervention; returns the head width."""
    layout = get_layout(model)
    for layer in checked_layers(item.vector, item.layers):
        _, count, head_size = layout.heads(layer)
        outside = [h for h in item.heads or () if h >= count]
        if outside:
            raise SteeringError(
                f"heads {outside} do not exist: block {layer} of '{layout.model_type}' has {count} attention heads "
                f"(0..{count - 1}); pick heads in that range."
            )
    return head_size


def _forward_order(layer: int, site: str) -> tuple[int, int]:
    return layer, SITES.index(site)


def _check_gate(model: nn.Module, item: Intervention, site: str) -> None:
    """A gated intervention's conditions fit the model and are read before the intervention acts on the prompt.

    The gate is decided when the prompt pass reaches the condition's layer. An intervention at or before it would
    have to steer the prompt's tokens before its gate is known: refused, unless it steers generated tokens only
    (their forward passes come after the prompt pass)."""
    gate = item.condition
    assert gate is not None
    for condition in gate.conditions():
        condition.vector.check_fits(model)
    if item.positions == "generated":
        return
    read_layer, read_site = max(read_points(gate), key=lambda point: _forward_order(*point))
    early = [
        layer
        for layer in checked_layers(item.vector, item.layers)
        if _forward_order(layer, site) <= _forward_order(read_layer, read_site)
    ]
    if early:
        raise SteeringError(
            f"the intervention steers {site} of layers {early} with positions={item.positions!r}, but its condition "
            f"reads the prompt at {read_site} of layer {read_layer}: those layers run on the prompt before its gate "
            f"is decided. Expected intervention layers after {read_layer}; read the condition at an earlier layer, "
            "steer later layers, or steer positions='generated' (decided on the prompt, applied from the first "
            "generated token on)."
        )


def _as_interventions(what: Intervention | Sequence[Intervention]) -> list[Intervention]:
    if isinstance(what, Intervention):
        return [what]
    if isinstance(what, SteeringVector):
        raise SteeringError(
            "give each row an Intervention with its strength, e.g. Intervention(vector, alpha=0.1), "
            "not a bare SteeringVector."
        )
    items = list(what)
    for item in items:
        if not isinstance(item, Intervention):
            raise SteeringError(
                f"expected Intervention objects, found {type(item).__name__}; wrap a vector as "
                "Intervention(vector, alpha=...)."
            )
    return items


def _plain_add(entry: _Entry) -> bool:
    return (
        entry.mode == "add"
        and entry.positions == "all"
        and not entry.preserve_norm
        and entry.gate is None
        and entry.heads is None
    )


def check_interventions(model: nn.Module, items: Intervention | Sequence[Intervention]) -> None:
    """Validate interventions against ``model`` exactly as :func:`steer` would, without adding any hook: safe
    to call while another thread runs the model (a server checks each request before it joins a batch).

    Example:
        >>> check_interventions(model, [Intervention(vec, alpha=0.2, layers=[10])])
    """
    for item in _as_interventions(items):
        _resolve(model, item, None)


@contextmanager
def _install(
    model: nn.Module, groups: list[tuple[list[Intervention], list[int] | None]], batch_size: int | None
) -> Iterator[None]:
    """Resolve every group (interventions + the rows they apply to) and hook them in."""
    layout = get_layout(model)
    plan: dict[tuple[int, str], list[_Entry]] = {}
    needs_positions = False
    for items, rows in groups:
        for item in items:
            entries, positional = _resolve(model, item, rows)
            needs_positions |= positional
            for key, entry in entries.items():
                plan.setdefault(key, []).append(entry)
    tracker = PositionTracker() if needs_positions else None
    gates = _Gates(tracker, [item.condition for items, _ in groups for item in items if item.condition is not None])

    def make_hook(layer: int, site: str, entries: list[_Entry]):
        cast: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}
        row_masks: dict[tuple[int, torch.device], torch.Tensor] = {}
        summed: dict[tuple[int, torch.device, torch.dtype, int], torch.Tensor] = {}
        # Consecutive plain additions (every position, no norm preservation) fold into one (rows, width) delta,
        # built once: a batch with a different vector per row then costs one addition per hook point, not one
        # masked pass per row. A row without any addition gets exactly zero added, so it stays bit-identical.
        segments: list[list[int]] = []
        for i, entry in enumerate(entries):
            if _plain_add(entry) and segments and _plain_add(entries[segments[-1][0]]):
                segments[-1].append(i)
            else:
                segments.append([i])

        def direction(i: int, hidden: torch.Tensor) -> torch.Tensor:
            key = (i, hidden.device, hidden.dtype)
            if key not in cast:
                width = entries[i].direction.shape[0]
                if hidden.shape[-1] != width:
                    raise ArchitectureError(
                        f"{site} of block {layer} has width {hidden.shape[-1]} but the vector has width {width}; "
                        "the layer layout found for this model is wrong, or the site does not carry the residual "
                        "width. Override it with steerlab.arch.set_architecture."
                    )
                cast[key] = entries[i].direction.to(device=hidden.device, dtype=hidden.dtype)
            return cast[key]

        def row_mask(i: int, batch: int, device: torch.device) -> torch.Tensor:
            key = (i, device)
            if key not in row_masks:
                mask = torch.zeros(batch, dtype=torch.bool, device=device)
                mask[entries[i].rows] = True
                row_masks[key] = mask
            return row_masks[key]

        def summed_delta(s: int, group: list[int], hidden: torch.Tensor) -> torch.Tensor:
            key = (s, hidden.device, hidden.dtype, hidden.shape[0])
            if key not in summed:
                per_row = any(entries[i].rows is not None for i in group)
                total = hidden.new_zeros(hidden.shape[0] if per_row else 1, hidden.shape[-1])
                for i in group:
                    step = entries[i].alpha * direction(i, hidden)
                    if entries[i].rows is None:
                        total += step
                    else:
                        total[row_mask(i, hidden.shape[0], hidden.device)] += step
                summed[key] = total[:, None, :]
            return summed[key]

        def hook(hidden: torch.Tensor) -> torch.Tensor:
            batch, length = hidden.shape[0], hidden.shape[1]
            if batch_size is not None and batch != batch_size:
                raise SteeringError(
                    f"per-row steering was set up for a batch of {batch_size} rows, but the model ran a batch of "
                    f"{batch}; beam search and num_return_sequences change the batch: use one row per sequence."
                )
            for s, group in enumerate(segments):
                entry = entries[group[0]]
                if _plain_add(entry):
                    hidden = hidden + summed_delta(s, group, hidden)
                    continue
                i = group[0]
                mask = tracker.select(entry.positions, batch, length) if tracker is not None else None
                if entry.rows is not None:
                    rows = row_mask(i, batch, hidden.device)[:, None].expand(batch, length)
                    mask = rows if mask is None else mask & rows
                if entry.gate is not None:
                    opened = gates.opened(entry.gate, mask, batch, layer, site)
                    if opened is None:
                        continue  # the prompt pass of a "generated"-only intervention: nothing to steer yet
                    opened = opened.to(hidden.device)[:, None].expand(batch, length)
                    mask = opened if mask is None else mask & opened
                v = direction(i, hidden)
                if entry.heads is None:
                    hidden = apply_operator(entry.mode, hidden, v, entry.alpha, mask, entry.preserve_norm)
                    continue
                size = entry.head_size
                for head in entry.heads:  # each head with its own slice; the others are copied as they are
                    span = slice(head * size, (head + 1) * size)
                    part = apply_operator(
                        entry.mode, hidden[..., span], v[span], entry.alpha, mask, entry.preserve_norm
                    )
                    hidden = torch.cat([hidden[..., : span.start], part, hidden[..., span.stop :]], dim=-1)
            return hidden

        return hook

    with HookSet() as hooks:
        if tracker is not None:
            tracker.attach(hooks, model)
        for (layer, site), entries in sorted(plan.items(), key=lambda kv: (kv[0][0], SITES.index(kv[0][1]))):
            module, is_input = layout.site_module(layer, site)
            hooks.on_hidden(module, is_input, make_hook(layer, site, entries), prepend=True)
        for (layer, site), reader in gates.readers().items():
            module, is_input = layout.site_module(layer, site)
            # Appended: the condition reads the value steering has left at this point (as recording does).
            hooks.on_hidden(module, is_input, reader)
        yield


class _Gates:
    """The conditions of one steering scope: readers that score each row's prompt at the conditions' layers during
    the prompt pass, and the per-row decision of each gate for the sequence now running.

    Scores are kept per sequence (:attr:`PositionTracker.sequence`): a new prompt pass forgets the last sequence's,
    and the calls that continue a sequence (one token with a KV cache, or the whole sequence again without one) read
    nothing, so a row's gate holds for its whole generation."""

    def __init__(self, tracker: PositionTracker | None, gates: list[Gate]) -> None:
        self.tracker = tracker
        conditions: dict[int, Condition] = {}
        for gate in gates:
            for condition in gate.conditions():
                conditions.setdefault(id(condition), condition)
        self.points: dict[tuple[int, str], list[Condition]] = {}
        for condition in conditions.values():
            for layer in condition.layers:  # type: ignore[union-attr]
                self.points.setdefault((layer, condition.site), []).append(condition)
        self.scores: dict[tuple[int, int], torch.Tensor] = {}
        self.sequence = -1

    def readers(self) -> dict[tuple[int, str], Any]:
        return {point: self._reader(*point, conditions) for point, conditions in self.points.items()}

    def _reader(self, layer: int, site: str, conditions: list[Condition]):
        directions: dict[tuple[int, torch.device], torch.Tensor] = {}

        def read(hidden: torch.Tensor) -> None:
            tracker = self.tracker
            assert tracker is not None
            if not tracker.new_sequence:
                return
            if self.sequence != tracker.sequence:
                self.scores.clear()
                self.sequence = tracker.sequence
            index = tracker.token_index(hidden.shape[0], hidden.shape[1])
            rows = {reduce: aggregate(hidden, index, reduce) for reduce in {c.reduce for c in conditions}}
            for condition in conditions:
                key = (id(condition), hidden.device)
                if key not in directions:
                    directions[key] = condition.vector.directions[layer].to(hidden.device)
                self.scores[id(condition), layer] = condition_scores(
                    rows[condition.reduce], directions[key], condition.comparison
                )

        return read

    def _score(self, condition: Condition) -> torch.Tensor | None:
        if self.tracker is None or self.sequence != self.tracker.sequence:
            return None
        parts = [self.scores.get((id(condition), layer)) for layer in condition.layers]  # type: ignore[union-attr]
        if any(part is None for part in parts):
            return None
        return torch.stack(parts).mean(0)  # type: ignore[arg-type]

    def opened(
        self, gate: Gate, positions: torch.Tensor | None, batch: int, layer: int, site: str
    ) -> torch.Tensor | None:
        """Per row, whether ``gate`` lets the intervention act; ``None`` when nothing is selected yet (the prompt
        pass of a ``"generated"`` intervention). An undecided gate where tokens are selected raises."""
        fired = gate.fires(self._score)
        if fired is None:
            if positions is not None and not bool(positions.any()):
                return None
            raise SteeringError(
                f"a conditional intervention at {site} of layer {layer} would act before its condition was read on "
                "this sequence's prompt (the prompt pass was not seen: a KV cache filled outside the steer() block, "
                "or the block called directly). Run the prompt through the model inside the steer() block."
            )
        if fired.shape[0] != batch:
            raise SteeringError(
                f"the condition was decided for a batch of {fired.shape[0]} rows, but the model ran a batch of "
                f"{batch}; beam search and num_return_sequences change the batch: use one row per sequence."
            )
        return fired


@contextmanager
def steer(
    model: nn.Module,
    vector: SteeringVector | Intervention | Sequence[Intervention],
    alpha: Alpha | Recommended | None = None,
    *,
    mode: Mode = "add",
    layers: Sequence[int] | None = None,
    positions: Positions | None = None,
    site: Site | None = None,
    scale: Scale = DEFAULT_SCALE,
    preserve_norm: bool = False,
    condition: Gate | None = None,
    heads: Sequence[int] | None = None,
) -> Iterator[None]:
    """Apply a vector (with the options below), or a list of :class:`Intervention`, while the block runs.

    Args:
        vector: a :class:`SteeringVector` that fits ``model`` (checked; a mismatch raises), or
            interventions, which carry their own options (the keyword options here must then be left alone).
        alpha: the strength (see :class:`Intervention` for what it means per mode); for ``add`` a fraction of
            the layer's residual norm by default (0.05-0.2 typical; warned past 0.3, refused past 3).
            ``"recommended"``: the setting ``steerlab calibrate`` recorded in the vector (layer, mode, scale too).
        mode: ``add`` (default), ``ablate``, ``ablate_then_add`` or ``clamp``.
        layers: which of the vector's layers to use (default: all of them).
        positions: ``"all"`` tokens, the ``"prompt"`` only, ``"generated"`` tokens only, or an int ``k``:
            every real token from position ``k`` on. Positions count real tokens of each row, so they stay
            right with left padding and with a KV cache. Default: ``"all"`` for ``add``, ``1`` (the attention sink
            left alone) for the projection modes.
        site: where in the block (default: the vector's site, usually ``resid_post``).
        scale: ``"relative"`` (default: alpha in units of the layer's mean residual norm) or ``"absolute"``.
        preserve_norm: keep each changed token's original L2 norm.
        condition: steer only the rows whose prompt meets this condition (or rule); see :class:`Intervention`.
        heads: at the ``heads`` site, the attention heads to change (each with its own slice of the direction).

    Example:
        >>> with steer(model, vec, alpha=0.15, positions="generated"):  # 15% of the residual norm
        ...     out = model.generate(**inputs, max_new_tokens=30)
        >>> with steer(model, refusal, mode="ablate"):
        ...     out = model.generate(**inputs, max_new_tokens=30)
        >>> with steer(model, calibrated, alpha="recommended"):   # layer and strength from steerlab calibrate
        ...     out = model.generate(**inputs, max_new_tokens=30)
    """
    if isinstance(vector, SteeringVector):
        vector.check_fits(model, warn=False)  # the first mistake to name: a vector of another model
    items = as_interventions(
        vector,
        alpha=alpha,
        mode=mode,
        layers=layers,
        positions=positions,
        site=site,
        scale=scale,
        preserve_norm=preserve_norm,
        condition=condition,
        heads=heads,
    )
    with _install(model, [(items, None)], None):
        yield


@contextmanager
def steer_rows(
    model: nn.Module,
    rows: Sequence[Intervention | Sequence[Intervention] | None],
) -> Iterator[None]:
    """Give every row of the batch its own interventions (or none): row ``i`` of the result equals row ``i``
    run alone under ``steer(model, rows[i])``.

    Example:
        >>> rows = [Intervention(happy, alpha=0.2), None, Intervention(sad, alpha=6.0, scale="absolute")]
        >>> with steer_rows(model, rows):
        ...     out = model.generate(**left_padded_batch_of_3, max_new_tokens=30)
    """
    if not rows:
        raise SteeringError("steer_rows needs one entry per batch row; got none.")
    groups: dict[tuple[int, ...], tuple[list[Intervention], list[int]]] = {}
    for index, row in enumerate(rows):
        items = [] if row is None else _as_interventions(row)
        key = tuple(id(item) for item in items)
        groups.setdefault(key, (items, []))[1].append(index)
    with _install(model, [(items, members) for items, members in groups.values() if items], len(rows)):
        yield


def directional_ablation(
    model: nn.Module, vector: SteeringVector, source: int | None = None, *, positions: PositionSpec = "all"
) -> list[Intervention]:
    """Interventions that remove one direction wherever it is written to the residual stream: the input of the
    first block and the attention and MLP outputs of every block, so no block ever reads it (Arditi et al.).
    The result equals orthogonalising the weights (:func:`steerlab.bake.orthogonalize`). For architectures
    without separate sublayer sites (Bloom) it ablates every block's input and output instead, which is close
    but not exact (the MLP still reads what its block's attention wrote).

    Example:
        >>> with steer(model, directional_ablation(model, refusal, source=12)):
        ...     model.generate(**harmful_prompt)
    """
    layout = get_layout(model)
    everywhere = vector.at_layers(range(layout.num_layers), source)
    try:
        layout.site_module(0, "attn_out")
        layout.site_module(0, "mlp_out")
        sites = [("resid_pre", [0]), ("attn_out", None), ("mlp_out", None)]
    except ArchitectureError:
        sites = [("resid_pre", None), ("resid_post", None)]
    # positions="all" by default, the first token too: the orthogonalised weights act on every token.
    return [
        Intervention(everywhere, mode="ablate", site=site, layers=layers, positions=positions) for site, layers in sites
    ]
