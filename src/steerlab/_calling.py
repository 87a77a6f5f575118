"""How transformers releases call a model's forward, read in one place.

The names of ``forward``'s arguments move between releases: 5.24 renamed the KV cache from ``past_key_values``
to ``cache`` (the old name warns until 5.40), ``cache_position`` is no longer passed, and ``generate`` drops the
attention mask of an unpadded batch, so a lone prompt's decoding steps arrive with no mask at all. Everything in
steerlab that depends on those names asks this module: the position tracker (how many tokens came before this
call), and the places that pass a cache themselves (shared-beginning extraction).

The rule is never to guess. A call whose past length cannot be read (a cache under a name or of a type this
module does not know) raises :class:`~steerlab.errors.SteeringError` naming the transformers version and the
arguments seen: steering the wrong tokens without a word is the worst thing a steering library can do.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from steerlab.errors import SteeringError

__all__ = ["CACHE_ARGUMENTS", "cache_argument", "describe_call", "past_length", "transformers_version"]

CACHE_ARGUMENTS = ("cache", "past_key_values")
"""The names a model's forward has taken its KV cache under: ``cache`` from transformers 5.24 on,
``past_key_values`` before (and, deprecated, until 5.40)."""

# Arguments whose names mention a cache but never carry one.
_NOT_A_CACHE = frozenset({"use_cache", "cache_position", "cache_implementation", "cache_config"})


def transformers_version() -> str:
    import transformers

    return transformers.__version__


@functools.cache
def _forward_parameters(model_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(model_class.forward).parameters)


def cache_argument(model: nn.Module) -> str:
    """The keyword under which ``model.forward`` takes its KV cache in the installed release.

    Example:
        >>> model(input_ids=ids, **{cache_argument(model): DynamicCache(config=model.config)}, use_cache=True)
    """
    params = _forward_parameters(type(model))
    for name in CACHE_ARGUMENTS:
        if name in params:
            return name
    raise SteeringError(
        f"{type(model).__name__}.forward takes none of {list(CACHE_ARGUMENTS)} (transformers "
        f"{transformers_version()}); steerlab does not know how to hand it a KV cache. Expected a causal LM of "
        "transformers; report the model class and version (steerlab doctor prints them)."
    )


def _is_cache(value: Any) -> bool:
    """A transformers cache object, or the legacy tuple of per-layer (key, value) tensors."""
    from transformers.cache_utils import Cache  # here, not at the top: keeps `import steerlab` ~0.4 s faster

    if isinstance(value, Cache) or hasattr(value, "get_seq_length"):
        return True
    return (
        isinstance(value, (tuple, list))
        and len(value) > 0
        and isinstance(value[0], (tuple, list))
        and len(value[0]) >= 2
        and isinstance(value[0][0], torch.Tensor)
    )


def _cache_length(name: str, cache: Any) -> int:
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if _is_cache(cache):  # legacy tuples: (batch, heads, past, head_dim) per layer
        return int(cache[0][0].shape[-2])
    raise SteeringError(
        f"the model was called with {name}={type(cache).__name__}, which steerlab cannot read a past length from "
        f"(transformers {transformers_version()}); expected a transformers Cache. Pass a transformers cache "
        "(DynamicCache) or steer with positions='all'."
    )


def describe_call(args: tuple, kwargs: Mapping[str, Any]) -> str:
    """A short account of a forward call's arguments for error messages: names, shapes and types."""

    def show(value: Any) -> str:
        if isinstance(value, torch.Tensor):
            return f"tensor{tuple(value.shape)}"
        if value is None or isinstance(value, (bool, int, float, str)):
            return repr(value)
        return type(value).__name__

    parts = [f"arg{i}={show(v)}" for i, v in enumerate(args)]
    parts += [f"{k}={show(v)}" for k, v in kwargs.items()]
    return ", ".join(parts) or "no arguments"


def past_length(args: tuple, kwargs: Mapping[str, Any], mask: torch.Tensor | None, length: int) -> int:
    """How many tokens each row saw before this forward call (its KV cache length).

    Read, in order, from the 2-D attention mask over past and current tokens, the cache (under any name in
    :data:`CACHE_ARGUMENTS`), and ``cache_position``. A call with no cache starts a new sequence (0). A cache
    under an unknown name, a positional cache or one of an unknown type raises :class:`SteeringError`.

    ``mask`` is the 2-D mask already taken from the call (or ``None``); ``length`` is the number of current
    tokens per row.
    """
    known = {name: kwargs[name] for name in CACHE_ARGUMENTS if kwargs.get(name) is not None}
    hidden = [
        f"{name}={type(value).__name__}"
        for name, value in kwargs.items()
        if name not in CACHE_ARGUMENTS
        and name not in _NOT_A_CACHE
        and value is not None
        and (_is_cache(value) or (("cache" in name or "past" in name) and not isinstance(value, bool)))
    ]
    hidden += [f"positional arg{i}={type(v).__name__}" for i, v in enumerate(args) if _is_cache(v)]
    if hidden:
        raise SteeringError(
            f"the model was called with a KV cache steerlab does not know where to read ({', '.join(hidden)}; "
            f"transformers {transformers_version()}, known cache arguments: {list(CACHE_ARGUMENTS)}). Without it "
            "steerlab cannot tell prompt tokens from generated ones, so it refuses rather than steer the wrong "
            "tokens. Pass the cache as one of the known keywords, use positions='all', or report this with the "
            f"output of `steerlab doctor`. Call seen: {describe_call(args, kwargs)}."
        )
    if len(known) > 1:
        raise SteeringError(
            f"the model was called with both {' and '.join(known)} (transformers {transformers_version()}); "
            "pass the cache once, as " + f"{CACHE_ARGUMENTS[0]!r} or {CACHE_ARGUMENTS[1]!r}."
        )
    if mask is not None:
        return int(mask.shape[1]) - length
    if known:
        name, cache = next(iter(known.items()))
        return _cache_length(name, cache)
    position = kwargs.get("cache_position")
    if isinstance(position, torch.Tensor) and position.numel() > 0:
        return int(position.reshape(-1)[0])
    return 0  # no cache of any kind: the model itself sees no past tokens
