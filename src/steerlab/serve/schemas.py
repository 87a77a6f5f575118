"""Request bodies of the server: OpenAI's chat and completion requests plus the ``steering`` field, and the
server's limits.

Only what steerlab can honour is accepted: unknown top-level fields that OpenAI clients send (``user``,
``logprobs: false``...) are ignored, but a steering entry with an unknown key is refused (a typo there would
otherwise silently steer differently from what was meant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from steerlab.types import (
    DEFAULT_SCALE,
    ConditionComparison,
    ConditionReduce,
    ConditionSide,
    Mode,
    Positions,
    Recommended,
    Scale,
)

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "CompletionRequest",
    "ConditionSpec",
    "ServeLimits",
    "SteeringSpec",
    "SweepRequest",
]


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for; anything beyond gets a 4xx error that names the limit.

    Attributes:
        max_body_bytes: largest JSON request body.
        max_vector_bytes: largest uploaded ``.safetensors`` vector.
        max_prompt_tokens: longest prompt (after the chat template), in tokens.
        max_tokens: most new tokens one request may ask for.
        max_relative_alpha: largest ``|alpha|`` with ``scale="relative"`` (1.0 = a whole mean residual norm).
        max_absolute_alpha: largest ``|alpha|`` with ``scale="absolute"``.
        max_interventions: most entries in one request's ``steering`` list, and most conditions it defines.
        max_sweep: most strengths in one ``/v1/sweep`` request.
    """

    max_body_bytes: int = 1 * 2**20
    max_vector_bytes: int = 16 * 2**20
    max_prompt_tokens: int = 2048
    max_tokens: int = 512
    max_relative_alpha: float = 1.0
    max_absolute_alpha: float = 100.0
    max_interventions: int = 8
    max_sweep: int = 9


class ConditionSpec(BaseModel):
    """A condition on the prompt (:class:`steerlab.Condition`): a vector from the server's library and how the
    prompt is compared with it. Options left out come from the point ``find_condition_point`` recorded in the vector
    (``threshold`` is then required only for a vector without one), else the library's defaults (cosine, greater,
    mean over the prompt, every layer of the vector)."""

    model_config = ConfigDict(extra="forbid")

    vector: str
    threshold: float | None = None
    layers: list[int] | None = None
    comparison: ConditionComparison | None = None
    side: ConditionSide | None = None
    reduce: ConditionReduce | None = None


class SteeringSpec(BaseModel):
    """One entry of ``steering``: a vector from the server's library and how to apply it.

    ``alpha`` is a number, or ``[lo, hi]`` for ``mode="clamp"`` (``null`` = unbounded), or ``"recommended"``: the
    layer, strength, mode and scale ``steerlab calibrate`` recorded in the vector. With the default
    ``scale="relative"`` it is a fraction of the layer's mean residual norm (0.15 adds 15%); ``"absolute"``
    multiplies the stored direction as it is. ``layers`` picks a subset of the vector's layers.

    The schema checks only the JSON form; the values are checked by :class:`steerlab.Intervention` (see
    :mod:`steerlab.serve.validate`), and the choices come from :mod:`steerlab.types`, so a new mode reaches the
    server without an edit here.
    """

    model_config = ConfigDict(extra="forbid")

    vector: str
    mode: Mode = "add"  # before alpha: alpha's validator reads it
    alpha: Recommended | float | tuple[float | None, float | None]  # "recommended": the vector's calibrated setting
    layers: list[int] | None = None
    positions: Positions | None = None  # None: the mode's default (the projection modes leave token 0 alone)
    scale: Scale = DEFAULT_SCALE
    # Steer only rows whose prompt meets it: a condition ({"vector": ..., "threshold": ...}), the name of one in the
    # request's ``conditions``, or a rule {"any": [...]}, {"all": [...]}, {"not": ...} of those (checked by
    # steerlab.Rule.parse in serve/validate.py).
    condition: str | dict[str, Any] | None = None
    heads: list[int] | None = None  # at a "heads" vector's site: the attention heads to steer (default: all)

    @field_validator("alpha")
    @classmethod
    def _alpha_form(cls, alpha: float | tuple | str, info: ValidationInfo) -> float | tuple | str:
        if alpha == "recommended":  # its form and values come from the vector's metadata (checked by Intervention)
            return alpha
        # Which JSON form alpha takes depends on the mode; said here in the request's own notation ([lo, hi]),
        # where the library would say it in Python's ((lo, hi)).
        mode = info.data.get("mode")  # absent when mode itself was refused: that error is reported instead
        if mode == "clamp" and not isinstance(alpha, tuple):
            raise ValueError(f"mode 'clamp' takes alpha as [lo, hi] (null: unbounded), got {alpha}.")
        if mode is not None and mode != "clamp" and isinstance(alpha, tuple):
            raise ValueError(f"mode '{mode}' takes alpha as a number, got {list(alpha)}.")
        return alpha


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    n: int | None = Field(None, ge=1, le=1)
    steering: list[SteeringSpec] | None = None
    conditions: dict[str, ConditionSpec] | None = None  # named conditions the steering entries' rules refer to


class ChatMessage(BaseModel):
    """A chat turn; ``content`` is text, or OpenAI's list of ``{"type": "text", "text": ...}`` parts."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


class CompletionRequest(_Sampling):
    """``POST /v1/completions`` (one prompt string; no chat template)."""

    prompt: str | list[str]
    max_tokens: int | None = 16


class SweepRequest(BaseModel):
    """``POST /v1/sweep``: one prompt at several strengths of one vector, with the coherence figure (mean NLL of
    each answer under the unsteered model) per strength. Used by the playground's sweep button."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    vector: str
    alphas: list[float] = Field(min_length=1)
    layers: list[int] | None = None
    # Narrower than steerlab.types.Mode: a sweep varies one number, and clamp's strength is a band.
    mode: Literal["add", "ablate", "ablate_then_add"] = "add"
    positions: Positions | None = None  # None: the mode's default (the projection modes leave token 0 alone)
    scale: Scale = DEFAULT_SCALE
    max_tokens: int = 24
