"""Request validation, free of HTTP: a parsed request body becomes the engine's :class:`~steerlab.serve.engine.Job`
(prompt token ids, :class:`~steerlab.Intervention` list, max_tokens, sampling settings) or an :class:`ApiError`
with a status, a message that says expected / found / fix, the field at fault and a code.

The steering itself is checked by the library, never re-implemented here: each ``steering`` entry becomes an
``Intervention`` (which checks mode, alpha, layers, positions and scale at construction) and is then checked
against the served model with :func:`steerlab._steer.check_interventions` (the vector fits, relative scale has
its residual norms), with no hook. What is added here are the server's own limits (:class:`ServeLimits`: the
largest alpha, the number of entries, prompt and answer lengths) and OpenAI's request rules (one prompt, up to
four stop strings). A request that passes is safe to queue; one that fails touches nobody else.

Example:
    >>> validator = Validator(model, tokenizer, library, ServeLimits(), served="smollm2-135m")
    >>> job = validator.chat(ChatRequest(model="smollm2-135m", messages=[{"role": "user", "content": "Hi"}]))
    >>> job.max_tokens, job.temperature
    (256, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from torch import nn

from steerlab._conditions import Condition, Gate, Rule
from steerlab._steer import Intervention, check_interventions
from steerlab._text import apply_messages, encode, has_chat_template
from steerlab.errors import SteerlabError
from steerlab.serve.engine import Job
from steerlab.serve.errors import ApiError
from steerlab.serve.library import VectorLibrary
from steerlab.serve.schemas import (
    ChatRequest,
    CompletionRequest,
    ConditionSpec,
    ServeLimits,
    SteeringSpec,
    SweepRequest,
)

__all__ = ["Validator", "request_error"]

# OpenAI's defaults for max_tokens when a request gives none (chat: ours, capped by the server's limit).
_DEFAULT_CHAT_TOKENS = 256
_DEFAULT_COMPLETION_TOKENS = 16
_DEFAULT_SWEEP_TOKENS = 24


class Validator:
    """Turns request bodies into engine jobs for one served model, or raises :class:`ApiError`.

    Args:
        model: the served model (interventions are checked against it; its context length bounds a request).
        tokenizer: its tokenizer (chat template, prompt token ids).
        library: the vectors a request may name.
        limits: what one request may ask for.
        served: the model name requests must give (``GET /v1/models``).
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, library: VectorLibrary, limits: ServeLimits, *, served: str
    ) -> None:
        self.model, self.tokenizer, self.library, self.limits, self.served = model, tokenizer, library, limits, served
        self.max_positions: int | None = getattr(model.config, "max_position_embeddings", None)

    # ----- whole requests ---------------------------------------------------------------------------------
    def chat(self, body: ChatRequest) -> Job:
        """``POST /v1/chat/completions``: the messages through the model's chat template."""
        self.check_model(body.model)
        if not has_chat_template(self.tokenizer):
            raise ApiError(
                400,
                f"'{self.served}' has no chat template; use /v1/completions with a plain prompt.",
                code="no_chat_template",
            )
        try:
            messages = [
                # OpenAI's newer "developer" role is what chat templates call "system".
                {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages
            ]
        except ValueError as error:
            raise ApiError(400, f"messages: {error}", param="messages", code="unsupported_content") from None
        ids = self.prompt_ids(apply_messages(self.tokenizer, messages), param="messages")
        # max_completion_tokens is OpenAI's newer name; `is None`, not `or`, so that 0 is refused, not ignored.
        requested = body.max_tokens if body.max_completion_tokens is None else body.max_completion_tokens
        return self._job(body, ids, self.max_tokens(requested, len(ids), _DEFAULT_CHAT_TOKENS))

    def completion(self, body: CompletionRequest) -> Job:
        """``POST /v1/completions``: one plain-text prompt, no template."""
        self.check_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(
                400,
                f"got {len(prompts)} prompts; send exactly one prompt per request (batching happens on the server).",
                param="prompt",
                code="one_prompt_per_request",
            )
        ids = self.prompt_ids(prompts[0], param="prompt")
        return self._job(body, ids, self.max_tokens(body.max_tokens, len(ids), _DEFAULT_COMPLETION_TOKENS))

    def sweep(self, body: SweepRequest) -> list[Job]:
        """``POST /v1/sweep``: one greedy job per strength (a strength that is the identity runs unsteered, with
        no hook: the true baseline)."""
        if len(body.alphas) > self.limits.max_sweep:
            raise ApiError(
                400,
                f"the sweep has {len(body.alphas)} strengths; at most {self.limits.max_sweep} are allowed.",
                param="alphas",
                code="too_many_alphas",
            )
        chat = has_chat_template(self.tokenizer)
        text = apply_messages(self.tokenizer, [{"role": "user", "content": body.prompt}]) if chat else body.prompt
        ids = self.prompt_ids(text, param="prompt")
        limit = self.max_tokens(body.max_tokens, len(ids), _DEFAULT_SWEEP_TOKENS)
        jobs = []
        for i, alpha in enumerate(body.alphas):
            spec = SteeringSpec(
                vector=body.vector,
                alpha=alpha,
                layers=body.layers,
                mode=body.mode,
                positions=body.positions,
                scale=body.scale,
            )
            item = self.intervention(spec, f"alphas[{i}]")
            jobs.append(Job(prompt_ids=ids, interventions=[] if item.is_identity else [item], max_tokens=limit))
        return jobs

    # ----- parts ------------------------------------------------------------------------------------------
    def check_model(self, requested: str) -> None:
        """404 unless ``requested`` is the served model's name."""
        if requested != self.served:
            raise ApiError(
                404,
                f"model '{requested}' is not served here; this server serves '{self.served}' (GET /v1/models).",
                param="model",
                code="model_not_found",
            )

    def steering(
        self, specs: Sequence[SteeringSpec] | None, conditions: dict[str, ConditionSpec] | None = None
    ) -> list[Intervention]:
        """A request's ``steering`` list as interventions, each checked by the library and against the limits;
        ``conditions`` are the request's named conditions, which the entries' ``condition`` rules refer to."""
        specs = list(specs or [])
        if len(specs) > self.limits.max_interventions:
            raise ApiError(
                400,
                f"steering has {len(specs)} entries; at most {self.limits.max_interventions} are allowed.",
                param="steering",
                code="too_many_interventions",
            )
        conditions = dict(conditions or {})
        if len(conditions) > self.limits.max_interventions:
            raise ApiError(
                400,
                f"conditions has {len(conditions)} entries; at most {self.limits.max_interventions} are allowed.",
                param="conditions",
                code="too_many_conditions",
            )
        named = {name: self.condition(spec, f"conditions.{name}") for name, spec in conditions.items()}
        return [self.intervention(spec, f"steering[{i}]", named) for i, spec in enumerate(specs)]

    def condition(self, spec: ConditionSpec, where: str) -> Condition:
        """A condition: its vector from the library, the options given, the rest from the point recorded in the
        vector (``find_condition_point``) or the library's defaults; checked by :class:`steerlab.Condition`."""
        vector = self._vector(spec.vector, where)
        given = {
            name: value
            for name, value in spec.model_dump(exclude={"vector"}).items()
            if value is not None  # left out: recorded or default
        }
        try:
            vector.check_fits(self.model, warn=False)
            return Condition.recorded(vector, **given)
        except SteerlabError as error:
            # Name the missing field when that is what failed, so a client knows which one to add.
            unset = "threshold" not in given and not isinstance(vector.extra.get("condition"), dict)
            raise ApiError(
                400,
                f"{where}: {error}",
                param=f"{where}.threshold" if unset else where,
                code="invalid_condition",
            ) from None

    def gate(self, rule: str | dict[str, Any], named: dict[str, Condition], where: str) -> Gate:
        """A steering entry's ``condition``: a condition given inline, a name from the request's ``conditions``, or
        a rule (any / all / not) of those, nested freely."""
        named = dict(named)

        def inline(part: Any, path: str) -> Any:
            # A condition written in place becomes a name of its own, so Rule.parse sees names only.
            if isinstance(part, dict) and "vector" in part:
                try:
                    spec = ConditionSpec.model_validate(part)
                except ValidationError as error:
                    first = error.errors()[0]
                    field = ".".join(str(x) for x in first.get("loc", ()))
                    raise ApiError(
                        400,
                        f"{path}: {field + ': ' if field else ''}{first.get('msg')}",
                        param=path,
                        code="invalid_condition",
                    ) from None
                key = f"{path}#inline"
                named[key] = self.condition(spec, path)
                return key
            if isinstance(part, dict) and len(part) == 1:
                ((op, value),) = part.items()
                if isinstance(value, list):
                    return {op: [inline(v, f"{path}.{op}[{i}]") for i, v in enumerate(value)]}
                return {op: inline(value, f"{path}.{op}")}
            return part

        parsed = inline(rule, where)
        try:
            return Rule.parse(parsed, named)
        except SteerlabError as error:
            raise ApiError(400, f"{where}: {error}", param=where, code="invalid_condition") from None

    def _vector(self, name: str, where: str) -> Any:
        try:
            return self.library.get(name)  # one lookup: a concurrent DELETE cannot slip in between
        except KeyError:
            raise ApiError(
                404,
                f"{where}: no vector named '{name}' in this server's library; available: "
                f"{self.library.names() or 'none'} (GET /v1/vectors, upload with POST /v1/vectors).",
                param=f"{where}.vector",
                code="vector_not_found",
            ) from None

    def intervention(self, spec: SteeringSpec, where: str, named: dict[str, Condition] | None = None) -> Intervention:
        """One entry: the vector from the library, the server's alpha limits (for ``"recommended"``, once the
        Intervention has read the recorded setting), then the checks of the library's :class:`Intervention` (the
        strength's size against the residual norm included). ``where`` names the entry in
        messages and ``param`` (``"steering[0]"``). ``named``: the request's conditions, for its ``condition``."""
        vector = self._vector(spec.vector, where)
        if spec.alpha != "recommended":
            self._check_alpha_limit(spec.mode, spec.scale, spec.alpha, where)  # first: the server's own limits
        gate = None if spec.condition is None else self.gate(spec.condition, named or {}, f"{where}.condition")
        try:
            item = Intervention(
                vector,
                spec.alpha,
                spec.mode,
                spec.layers,
                spec.positions,
                scale=spec.scale,
                condition=gate,
                heads=spec.heads,
            )
        except SteerlabError as error:
            raise ApiError(400, f"{where}: {error}", param=where, code="invalid_steering") from None
        if spec.alpha == "recommended":  # the recorded setting obeys the same limits as a written one
            self._check_alpha_limit(item.mode, item.scale, item.alpha, where)  # type: ignore[arg-type]
        try:
            check_interventions(self.model, item)  # fits the served model; relative scale has its norms
        except SteerlabError as error:
            raise ApiError(400, f"{where}: {error}", param=where, code="invalid_steering") from None
        return item

    def _check_alpha_limit(self, mode: str, scale: str, alpha: float | tuple, where: str) -> None:
        limits = self.limits
        if mode == "ablate":
            lo, hi, what = 0.0, 1.0, "the fraction removed"
        elif scale == "relative":
            lo, hi, what = -limits.max_relative_alpha, limits.max_relative_alpha, "a fraction of the residual norm"
        else:
            lo, hi, what = -limits.max_absolute_alpha, limits.max_absolute_alpha, "an absolute strength"
        # The schema has checked alpha's form for the mode (a number, or [lo, hi] for clamp); a NaN or infinity is
        # left to the library's check (invalid_steering: "alpha must be a finite number").
        ends = [x for x in alpha if x is not None] if isinstance(alpha, tuple) else [alpha]
        if not all(lo <= x <= hi for x in ends if math.isfinite(x)):
            shown = list(alpha) if isinstance(alpha, tuple) else alpha
            raise ApiError(
                400,
                f"{where}: alpha={shown} is out of range for mode '{mode}' with scale '{scale}' "
                f"({what}); allowed: [{lo}, {hi}].",
                param=f"{where}.alpha",
                code="alpha_out_of_range",
            )

    def prompt_ids(self, text: str, *, param: str) -> list[int]:
        """The prompt's token ids (no double BOS), refused when empty or longer than the limit."""
        ids = encode(self.tokenizer, [text])[0]
        if not ids:
            raise ApiError(400, "the prompt is empty; send some text.", param=param, code="empty_prompt")
        if len(ids) > self.limits.max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt has {len(ids)} tokens; this server accepts at most {self.limits.max_prompt_tokens}.",
                param=param,
                code="context_length_exceeded",
            )
        return ids

    def max_tokens(self, value: int | None, prompt_len: int, default: int) -> int:
        """``max_tokens`` (``None``: ``default``, capped by the limit), within the limit and the model's context."""
        value = min(default, self.limits.max_tokens) if value is None else value
        if not 1 <= value <= self.limits.max_tokens:
            raise ApiError(
                400,
                f"max_tokens={value} is out of range; allowed: 1..{self.limits.max_tokens}.",
                param="max_tokens",
                code="max_tokens_out_of_range",
            )
        if self.max_positions and prompt_len + value > self.max_positions:
            raise ApiError(
                400,
                f"prompt ({prompt_len} tokens) + max_tokens ({value}) exceeds the model's context of "
                f"{self.max_positions}; ask for fewer tokens or send a shorter prompt.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return value

    def _job(self, body: ChatRequest | CompletionRequest, ids: list[int], limit: int) -> Job:
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise ApiError(
                400, f"stop takes at most 4 non-empty strings, got {stop!r}.", param="stop", code="invalid_stop"
            )
        return Job(
            prompt_ids=ids,
            interventions=self.steering(body.steering, body.conditions),
            max_tokens=limit,
            temperature=1.0 if body.temperature is None else body.temperature,  # OpenAI's default
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            stop=stop,
        )


def request_error(errors: Sequence[dict[str, Any]]) -> ApiError:
    """The :class:`ApiError` for a body the schemas refused, from pydantic's error list (FastAPI's
    ``RequestValidationError.errors()``): the first error, with its field as ``param``.

    Example:
        >>> request_error([{"type": "missing", "loc": ("body", "messages"), "msg": "Field required"}]).message
        'messages: this field is required'
    """
    first = dict(errors[0]) if errors else {}
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {first.get('msg')}", code="invalid_json")
    param = _field(first.get("loc", ()))
    if first.get("type") == "missing":
        return ApiError(400, f"{param}: this field is required", param=param, code="invalid_value")
    # pydantic prefixes the messages of the schemas' own checks with "Value error, "; the field name says enough.
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return ApiError(400, f"{param or 'body'}: {message}", param=param, code="invalid_value")


def _field(loc: Sequence[str | int]) -> str | None:
    """A pydantic location as the validator names fields: ``("body", "steering", 0, "alpha")`` ->
    ``"steering[0].alpha"``; ``None`` for the body itself."""
    name = ""
    for part in loc:
        if part == "body" and not name:
            continue
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or None
