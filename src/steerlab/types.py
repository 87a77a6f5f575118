"""The vocabulary of an intervention, shared by the library, the server's request schemas and the CLI's choices.

A new operator is added in one place (:data:`steerlab._interventions.OPERATORS`) plus its name here; the tests check
that the two agree, and the server and CLI take their choices from these literals.

Example:
    >>> from typing import get_args
    >>> from steerlab.types import Mode
    >>> get_args(Mode)
    ('add', 'ablate', 'ablate_then_add', 'clamp')
"""

from __future__ import annotations

from typing import Literal, Union, get_args

__all__ = [
    "BREAKDOWN_STRENGTH",
    "DEFAULT_SCALE",
    "MAX_STRENGTH",
    "MODES",
    "NAMED_POSITIONS",
    "SCALES",
    "SITES",
    "Alpha",
    "CONDITION_COMPARISONS",
    "CONDITION_REDUCES",
    "CONDITION_SIDES",
    "ConditionComparison",
    "ConditionReduce",
    "ConditionSide",
    "METHODS",
    "Method",
    "Mode",
    "NamedPositions",
    "Positions",
    "Recommended",
    "Scale",
    "Site",
]

Mode = Literal["add", "ablate", "ablate_then_add", "clamp"]
"""How an intervention changes a hidden state ``h`` along a direction ``v`` (see :mod:`steerlab.steer`'s table)."""

Site = Literal["resid_pre", "heads", "attn_out", "mlp_out", "resid_post"]
"""Where in a block activations are read and changed, in forward order:

* ``resid_pre``: the block's input (the residual stream before the block);
* ``heads``: the attention heads' outputs side by side, before the attention output projection (its input;
  ``num_heads x head_size`` wide, head ``h`` at ``[h * head_size, (h + 1) * head_size)``); an Intervention's
  ``heads`` picks heads there;
* ``attn_out``: the attention sublayer's contribution to the residual stream (after its post-norm, where the
  architecture has one, e.g. Gemma 2/3, OLMo 2);
* ``mlp_out``: the MLP sublayer's contribution;
* ``resid_post``: the block's output (the residual stream after the block), the default.
"""

Scale = Literal["absolute", "relative"]
"""``absolute``: alpha multiplies the stored direction as it is; ``relative``: alpha is a fraction of the layer's
mean residual-stream norm recorded at extraction (0.1 adds a tenth of a typical activation's norm)."""

DEFAULT_SCALE: Scale = "relative"
"""The one default of every entry point that takes a strength (library, CLI, server, playground): a strength means
the same on every model and layer, and the documented ones keep text coherent on the shipped model."""

BREAKDOWN_STRENGTH = 0.3
"""The relative strength (a push of this fraction of the layer's residual norm) past which SmolLM2's text breaks
down (docs/core-figures.md): a stronger intervention warns with :class:`steerlab.errors.StrengthWarning`."""

MAX_STRENGTH = 10 * BREAKDOWN_STRENGTH
"""The relative strength past which an intervention is refused: the push would be several times the activation
it is added to, and no model keeps text there (a typo such as ``alpha=1e4`` or an absolute number given as
relative lands here)."""

NamedPositions = Literal["all", "prompt", "generated"]
Positions = Union[NamedPositions, int]  # noqa: UP007 - a runtime alias (pydantic and typer read it)
"""``"all"`` tokens, the ``"prompt"`` only, ``"generated"`` tokens only, or an int ``k``: every real token from
position ``k`` on (positions count real tokens of each row, so they stay right with left padding and a KV cache)."""

Method = Literal["mean_diff", "pca_diff", "pca_center", "actadd"]
"""How a direction is read from contrast pairs (see :func:`steerlab.extract_vector`)."""

Alpha = Union[float, tuple[Union[float, None], Union[float, None]]]  # noqa: UP007 - a runtime alias
"""A strength: a number, or a ``(lo, hi)`` band (either end ``None``) for ``clamp``."""

Recommended = Literal["recommended"]
"""``alpha="recommended"``: the layer, strength, mode and scale that ``steerlab calibrate`` recorded in the vector's
``extra["recommended"]`` (only a setting whose held-out effect beat random directions is recorded)."""

ConditionComparison = Literal["cosine", "projection"]
"""How a condition compares a prompt's activation with its direction: the cosine, or the projection on the unit
direction (in activation units)."""

ConditionSide = Literal["greater", "smaller"]
"""Whether a condition holds above (``"greater"``) or below (``"smaller"``) its threshold."""

ConditionReduce = Literal["mean", "last"]
"""How a condition aggregates the prompt: the ``"mean"`` over its real tokens (the attention sink left out, as
``record`` does) or its ``"last"`` token."""

MODES: tuple[str, ...] = get_args(Mode)
METHODS: tuple[str, ...] = get_args(Method)
SITES: tuple[str, ...] = get_args(Site)
SCALES: tuple[str, ...] = get_args(Scale)
NAMED_POSITIONS: tuple[str, ...] = get_args(NamedPositions)
CONDITION_COMPARISONS: tuple[str, ...] = get_args(ConditionComparison)
CONDITION_SIDES: tuple[str, ...] = get_args(ConditionSide)
CONDITION_REDUCES: tuple[str, ...] = get_args(ConditionReduce)
