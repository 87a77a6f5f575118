"""Sweep layers x strengths (x operators), measuring a behaviour and coherence, and calibrate from the sweep.

Every cell of :func:`sweep` is one call of :func:`steerlab.evaluate.logits_over_alphas` (one fixed token batch,
one intervention at one layer, many alphas) per metric, for the vector and for a random direction of the same
norm (the baseline). :func:`calibrate` then picks the cell with the largest effect whose coherence cost stays
within a budget and can record it in the vector's metadata (``extra["recommended"]``).

The default budget, :data:`DEFAULT_KL_BUDGET` = 0.2 nats/token of ``KL(steered || unsteered)`` on the neutral
text set, is where SmolLM2-135M's generations are still fluent: at its middle layers that KL is reached near
a relative strength of 0.2 (a push of 20% of the residual norm), and text breaks down past ~0.3, where KL is
0.5-0.8 (docs/measure.md has the numbers).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from torch import nn

from steerlab._interventions import Alpha, is_identity
from steerlab._replay import logits_over_alphas
from steerlab._steer import Intervention, Scale, checked_layers
from steerlab._vector import SteeringVector
from steerlab.errors import SteeringError, StrengthWarning
from steerlab.evaluate.metrics import ABBehaviour, ABQuestion, NeutralKL
from steerlab.evaluate.results import ResultTable
from steerlab.types import DEFAULT_SCALE

__all__ = ["DEFAULT_ALPHAS", "DEFAULT_KL_BUDGET", "Recommendation", "calibrate", "sweep"]

DEFAULT_KL_BUDGET = 0.2
"""Default coherence budget of :func:`calibrate`: mean ``KL(steered || unsteered)`` in nats per token."""

DEFAULT_ALPHAS = (-0.3, -0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2, 0.3)
"""Default strengths of a sweep, relative to the layer's residual norm (``scale="relative"``)."""


def _alpha_key(alpha: Alpha | None) -> Any:
    return list(alpha) if isinstance(alpha, tuple) else alpha


def sweep(
    model: nn.Module,
    tokenizer: Any,
    vector: SteeringVector,
    behaviour: ABBehaviour | Sequence[ABQuestion],
    *,
    layers: Sequence[int] | None = None,
    alphas: Sequence[Alpha] = DEFAULT_ALPHAS,
    modes: Sequence[str] = ("add",),
    scale: Scale = DEFAULT_SCALE,
    coherence: NeutralKL | Sequence[str] | None = None,
    baseline: bool = True,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool | None = None,
) -> ResultTable:
    """Measure a behaviour and coherence for every (mode, layer, alpha), for ``vector`` and a same-norm random
    direction (``baseline``).

    Args:
        behaviour: an :class:`~steerlab.evaluate.metrics.ABBehaviour` (or A/B questions, wrapped with A/B balancing), or
            any object with ``name``, ``input_ids``, ``attention_mask``, ``last_only`` and ``score(logits) ->
            dict`` whose first key is the behaviour value.
        layers: layers to sweep, each one steered alone (default: all of the vector's layers).
        alphas: strengths; with ``scale="relative"`` (default) fractions of the layer's residual norm.
        coherence: a :class:`~steerlab.evaluate.metrics.NeutralKL`, or texts for one (default: the neutral set).

    Returns a ``ResultTable(kind="sweep")`` with one record per cell: ``mode, layer, alpha, scale, direction``
    (``vector`` or ``random``), the behaviour's values, ``effect`` (the change from unsteered), ``kl``,
    ``entropy`` and ``added_norm`` (norm of the added vector; for ``add``).

    Example:
        >>> questions = load_ab("datasets/caa/test/refusal/test_dataset_ab.json")[:20]
        >>> result = sweep(model, tokenizer, vec, questions, layers=[8, 12], alphas=[-0.2, 0, 0.2])
        >>> calibrate(result).as_dict()
    """
    from rich.progress import track

    vector.check_fits(model)
    if not isinstance(behaviour, ABBehaviour) and not hasattr(behaviour, "score"):
        behaviour = ABBehaviour(tokenizer, list(behaviour))
    if not isinstance(coherence, NeutralKL):
        coherence = NeutralKL(tokenizer, coherence)
    layers = checked_layers(vector, layers)
    alphas = list(alphas)
    if not alphas or not layers or not modes:
        raise SteeringError("a sweep needs at least one layer, one alpha and one mode.")
    coherence.reference(model, batch_size)
    directions = {"vector": vector}
    if baseline:
        directions["random"] = vector.random_like(seed=seed)

    def measure(metric: Any, template: Intervention | None, cell_alphas: list):
        out = {}
        for alpha, logits in logits_over_alphas(
            model, metric.input_ids, metric.attention_mask, template, cell_alphas, last_only=metric.last_only,
            batch_size=batch_size,
        ):  # fmt: skip
            out[repr(alpha)] = metric.score(logits)
        return out

    unsteered = measure(behaviour, None, [None])[repr(None)]
    first = next(iter(unsteered))
    cells = [(mode, layer, name) for mode in modes for layer in layers for name in directions]
    show = progress if progress is not None else len(cells) > 4
    records = []
    with warnings.catch_warnings():  # a sweep measures what strong pushes cost: no StrengthWarning per cell
        warnings.simplefilter("ignore", StrengthWarning)
        for mode, layer, name in track(cells, description="sweeping", disable=not show, transient=True):
            template = Intervention(directions[name], mode=mode, layers=[layer], scale=scale)
            moving = [a for a in alphas if not is_identity(mode, a)]
            scores = measure(behaviour, template, moving) if moving else {}
            kls = measure(coherence, template, moving) if moving else {}
            delta_norm = float(template.deltas()[layer].norm())
            for alpha in alphas:
                key = repr(alpha)
                values = scores.get(key, unsteered)
                coh = kls.get(key, {"kl": 0.0, "entropy": None})
                rec = {"mode": mode, "layer": layer, "alpha": _alpha_key(alpha), "scale": scale, "direction": name}
                rec.update(values)
                rec["effect"] = values[first] - unsteered[first]
                rec.update(coh)
                rec["added_norm"] = abs(float(alpha)) * delta_norm if mode == "add" else None
                records.append(rec)
    meta = {
        "metric": first,
        "behaviour": getattr(behaviour, "name", first),
        "unsteered": unsteered,
        "n_items": int(behaviour.input_ids.shape[0]),
        "n_coherence_texts": int(coherence.input_ids.shape[0]),
        "layers": layers,
        "alphas": [_alpha_key(a) for a in alphas],
        "modes": list(modes),
        "scale": scale,
        "vector": {"model_id": vector.model_id, "method": vector.method, "layers": vector.layers},
        "random_seed": seed if baseline else None,
        "resid_norm": {str(k): v for k, v in vector.resid_norm.items() if k in layers},
    }
    return ResultTable("sweep", records, meta)


@dataclass
class Recommendation:
    """The (layer, alpha) chosen by :func:`calibrate`, with what it does and costs."""

    layer: int
    alpha: float
    mode: str
    scale: str
    metric: str
    value: float
    effect: float
    kl: float
    budget: float
    random_effect: float | None
    goal: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def annotate(self, vector: SteeringVector) -> SteeringVector:
        """A copy of ``vector`` whose metadata records this recommendation under ``extra["recommended"]``.

        Example:
            >>> calibrate(result).annotate(vec).save("refusal.safetensors")
        """
        return replace(vector, extra={**vector.extra, "recommended": self.as_dict()})


def calibrate(
    result: ResultTable,
    *,
    kl_budget: float = DEFAULT_KL_BUDGET,
    goal: Literal["increase", "decrease"] = "increase",
    metric: str | None = None,
) -> Recommendation:
    """Pick the cell of a sweep with the largest effect (in the ``goal`` direction) whose KL stays within
    ``kl_budget`` nats/token (default :data:`DEFAULT_KL_BUDGET`). Only the vector's cells compete; the random
    baseline's effect at the chosen cell is reported beside it.

    Example:
        >>> rec = calibrate(result, kl_budget=0.2)
        >>> vec = rec.annotate(vec)            # later users find vec.extra["recommended"]
    """
    if result.kind != "sweep":
        raise SteeringError(f"calibrate needs a sweep result, got a {result.kind!r} table.")
    if goal not in ("increase", "decrease"):
        raise SteeringError(f"goal={goal!r} is not valid; expected 'increase' or 'decrease'.")
    if not kl_budget > 0:
        raise SteeringError(f"kl_budget must be a positive number of nats per token, got {kl_budget}.")
    metric = metric or result.meta.get("metric", "p_matching")
    unsteered = (result.meta.get("unsteered") or {}).get(metric)
    sign = 1.0 if goal == "increase" else -1.0
    cells = [
        r for r in result.where(direction="vector")
        if r["kl"] is not None and r["kl"] <= kl_budget and not is_identity(r["mode"], r["alpha"])
    ]  # fmt: skip
    if not cells:
        raise SteeringError(
            f"no steered cell of the sweep has KL <= {kl_budget} nats/token; sweep smaller strengths or raise the "
            "budget (kl_budget=...)."
        )
    best = max(cells, key=lambda r: sign * (r[metric] - (unsteered if unsteered is not None else 0.0)))
    same_cell = result.where(direction="random", layer=best["layer"], mode=best["mode"])
    control = [r for r in same_cell if r["alpha"] == best["alpha"]]
    return Recommendation(
        layer=int(best["layer"]),
        alpha=best["alpha"],
        mode=best["mode"],
        scale=best["scale"],
        metric=metric,
        value=float(best[metric]),
        effect=float(best[metric] - unsteered) if unsteered is not None else float(best["effect"]),
        kl=float(best["kl"]),
        budget=float(kl_budget),
        random_effect=float(control[0]["effect"]) if control else None,
        goal=goal,
    )
