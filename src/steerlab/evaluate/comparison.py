"""Generation, steered and unsteered side by side, with a coherence figure for each text.

The coherence figure is the mean negative log-likelihood of the generated tokens under the *unsteered*
model: steering that keeps the text fluent keeps it near the unsteered value; steering that breaks the
model sends it up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from steerlab._interventions import Alpha
from steerlab._steer import Intervention, as_interventions, steer
from steerlab._vector import SteeringVector
from steerlab.engines.transformers import generate, generated_nll
from steerlab.errors import SteeringError
from steerlab.types import DEFAULT_SCALE, Mode, Positions, Scale, Site

__all__ = ["DEFAULT_COMPARE_ALPHAS", "Comparison", "Generation", "compare"]


@dataclass
class Generation:
    """One generated text: its strength (``None``: unsteered), the text, its coherence figure (mean NLL,
    nats/token), and ``size``: how far the strength pushes as a fraction of the residual norm (the largest of
    :attr:`~steerlab.Intervention.relative_size` over the layers; ``None`` unsteered or where it is not known),
    so an absolute strength can be read against the breakdown point (~0.3)."""

    alpha: Alpha | None
    text: str
    nll: float
    tokens: int
    size: float | None = None


@dataclass
class Comparison:
    """All generations for one prompt, the unsteered one at ``alpha == 0``."""

    prompt: str
    generations: list[Generation] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "generations": [{"alpha": g.alpha, "size": g.size, "text": g.text, "nll": g.nll} for g in self.generations],
        }


DEFAULT_COMPARE_ALPHAS: tuple[float, ...] = (-0.15, 0.0, 0.15)
"""Strengths :func:`compare` and ``steerlab generate`` show by default: both ways and unsteered, as fractions of the
residual norm (the default scale), within the range that keeps SmolLM2's text coherent."""


def compare(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    vector: SteeringVector | Intervention,
    *,
    alphas: Sequence[Alpha | None] = DEFAULT_COMPARE_ALPHAS,
    mode: Mode = "add",
    layers: Sequence[int] | None = None,
    positions: Positions | None = None,
    site: Site | None = None,
    scale: Scale = DEFAULT_SCALE,
    preserve_norm: bool = False,
    max_new_tokens: int = 40,
    chat: bool | None = None,
    system: str | None = None,
    do_sample: bool = False,
    seed: int = 0,
    batch_size: int = 8,
) -> list[Comparison]:
    """Generate every prompt unsteered and steered at each alpha, side by side.

    ``vector`` is a :class:`~steerlab.SteeringVector` with the options below (those of :func:`steerlab.steer`),
    or an :class:`~steerlab.Intervention` that carries them (then leave the options alone); its strength is
    replaced by each alpha. An alpha of ``None`` is the unsteered model; so is an identity strength (0 for ``add``
    and ``ablate``), which then runs with no hooks at all.

    Example:
        >>> for row in compare(model, tokenizer, ["Tell me about your day."], vec, alphas=[-0.15, 0, 0.15]):
        ...     for g in row.generations:
        ...         print(g.alpha, round(g.nll, 2), g.text)
    """
    prompts = list(prompts)
    if not prompts:
        raise SteeringError("no prompts were given; pass at least one.")
    items = as_interventions(
        vector, mode=mode, layers=layers, positions=positions, site=site, scale=scale, preserve_norm=preserve_norm
    )
    if len(items) != 1:
        raise SteeringError(f"compare varies the strength of one intervention; got {len(items)}.")
    template = items[0]
    template.vector.check_fits(model)  # fail before the unsteered run, not after it
    steps = [None if alpha is None else template.at(alpha) for alpha in alphas]  # every strength checked up front
    options = dict(
        max_new_tokens=max_new_tokens, chat=chat, system=system, do_sample=do_sample, seed=seed, batch_size=batch_size
    )
    rows = [Comparison(p) for p in prompts]
    for step in steps:
        if step is None or step.is_identity:
            outputs = generate(model, tokenizer, prompts, **options)  # no hooks at all: the true baseline
        else:
            with steer(model, step):
                outputs = generate(model, tokenizer, prompts, **options)
        nlls = generated_nll(model, outputs, batch_size=batch_size)
        sizes = None if step is None else step.relative_size
        size = max(sizes.values()) if sizes else None
        for row, (_, gen), nll in zip(rows, outputs, nlls, strict=True):
            text = tokenizer.decode(gen, skip_special_tokens=True).strip()
            row.generations.append(Generation(None if step is None else step.alpha, text, nll, len(gen), size))
    return rows
