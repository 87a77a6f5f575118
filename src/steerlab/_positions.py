"""Absolute token positions, correct under padding and KV-cached generation.

A hook on a decoder block sees only the tokens of the current forward call: the whole prompt on the first
call of ``generate`` and one token per row after that (with a KV cache), or the whole sequence again at
every step (without one). Libraries that count positions per call therefore steer the wrong tokens once a
cache is used. Here a pre-hook on the top-level model reads the 2-D attention mask, which covers the past
and the current tokens, and gives every current token its index among the *real* (non-padding) tokens of
its row, and it remembers how long each row's prompt was. Where there is no mask (transformers drops it for an
unpadded batch), the past length comes from the KV cache, under whichever name the installed release passes it
(:mod:`steerlab._calling`); a call whose past cannot be read raises instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from steerlab._calling import describe_call, past_length, transformers_version
from steerlab._hooks import HookSet
from steerlab.errors import SteeringError
from steerlab.types import Positions

__all__ = ["PositionSpec", "PositionTracker", "parse_positions", "real_token_index"]

PositionSpec = Positions
"""``"all"``, ``"prompt"``, ``"generated"``, or an int ``k``: tokens from real position ``k`` on."""


def parse_positions(spec: PositionSpec) -> PositionSpec:
    """Validate a position spec; strings of digits (from the CLI) become ints."""
    if isinstance(spec, str) and spec.strip().lstrip("-").isdigit():
        spec = int(spec.strip())
    if isinstance(spec, bool) or (isinstance(spec, int) and spec < 0):
        raise SteeringError(
            f"positions={spec!r} is not valid: expected 'all', 'prompt', 'generated' or a token index k >= 0 "
            "(steer from the k-th real token of each row on)."
        )
    if isinstance(spec, str) and spec not in ("all", "prompt", "generated"):
        raise SteeringError(
            f"positions={spec!r} is not valid: expected 'all', 'prompt', 'generated' or a token index k >= 0."
        )
    return spec


def real_token_index(
    attention_mask: torch.Tensor | None, batch: int, length: int, past: int, device: torch.device
) -> torch.Tensor:
    """Index of each current token among the real tokens of its row; -1 for padding.

    ``attention_mask`` is the 2-D mask over past and current tokens (or ``None``: no padding).
    Returns a ``(batch, length)`` long tensor.
    """
    if attention_mask is None:
        return (torch.arange(length, device=device) + past).expand(batch, length)
    mask = attention_mask.to(device=device, dtype=torch.long)
    index = mask.cumsum(-1)[:, -length:] - 1
    return index.masked_fill(mask[:, -length:] == 0, -1)


@dataclass
class _Call:
    token_index: torch.Tensor  # (batch, length)
    prompt_length: torch.Tensor  # (batch,)


class PositionTracker:
    """Follows forward calls on a model and answers "which current tokens are selected by ``spec``".

    A call with no past tokens starts a new sequence, and its real tokens are the prompt, unless it extends
    the previous call's input ids (generation without a KV cache re-feeds the growing sequence), in which
    case the prompt length is kept. A call that arrives with a cache continues the current sequence.
    """

    def __init__(self) -> None:
        self._call: _Call | None = None
        self._prev_ids: torch.Tensor | None = None
        self._prev_whole = False  # whether the previous call ran its whole sequence (no past)
        self.sequence = 0  # counts the sequences started (the prompt passes seen); what a gate is decided for
        self.new_sequence = False  # whether the current call is a prompt pass (it starts a sequence)

    def attach(self, hooks: HookSet, model: nn.Module) -> None:
        hooks.pre_forward(model, self._before_forward, with_kwargs=True)

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids")
        if ids is None and args and isinstance(args[0], torch.Tensor):
            ids = args[0]
        embeds = kwargs.get("inputs_embeds")
        ref = ids if ids is not None else embeds
        if ref is None:  # nothing to count: forget the last call so select() cannot answer with stale positions
            self._call = self._prev_ids = None
            self.new_sequence = False
            return
        batch, length = ref.shape[0], ref.shape[1]
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
            mask = args[1]
        if mask is not None and mask.dim() != 2:
            # A 4-D mask (static caches, compiled generation) hides which tokens are padding: refuse rather than
            # count padding as prompt.
            raise SteeringError(
                "positional steering needs the 2-D (batch, tokens) attention mask, but the model was called with a "
                f"{mask.dim()}-D mask (transformers {transformers_version()}; call seen: "
                f"{describe_call(args, kwargs)}). "
                "Generate with the default dynamic cache (no cache_implementation='static', no torch.compile), or "
                "steer with positions='all'."
            )
        past = past_length(args, kwargs, mask, length)
        index = real_token_index(mask, batch, length, past, ref.device)

        self.new_sequence = False
        if past > 0 and self._call is not None and self._call.prompt_length.shape[0] == batch:
            prompt_length = self._call.prompt_length
        elif past > 0:
            self.sequence += 1  # a cache filled elsewhere: a sequence whose prompt pass was not seen
            # Continuing a cache filled outside our scope: everything before this call is the prompt.
            real_before = index.clamp(min=0).amax(-1) + 1 - (index >= 0).sum(-1)
            prompt_length = real_before
        elif self._extends_previous(ids):
            prompt_length = self._call.prompt_length  # type: ignore[union-attr]
        else:
            prompt_length = (index >= 0).sum(-1)
            self.sequence += 1
            self.new_sequence = True
        self._prev_ids = ids
        self._prev_whole = past == 0
        self._call = _Call(index, prompt_length.to(index.device))

    def _extends_previous(self, ids: torch.Tensor | None) -> bool:
        prev = self._prev_ids
        # Only a call that ran its whole sequence can be re-fed longer (generation without a cache); after a cached
        # step (one token per row), a call with no past is a new prompt even if it begins with that token.
        if ids is None or prev is None or self._call is None or not self._prev_whole:
            return False
        if prev.shape[0] != ids.shape[0] or prev.shape[1] >= ids.shape[1]:
            return False
        return bool(torch.equal(ids[:, : prev.shape[1]], prev))

    def token_index(self, batch: int, length: int) -> torch.Tensor:
        """The ``(batch, length)`` index of each current token among its row's real tokens (-1: padding)."""
        call = self._call
        if call is None or call.token_index.shape != (batch, length):
            raise SteeringError(
                "position-dependent steering needs the model's own forward call (steerlab watches its input "
                "ids and attention mask); the hooked block was called directly or with a batch of another "
                "shape. Call the model (or generate) inside the steer() block, or use positions='all'."
            )
        return call.token_index

    def select(self, spec: PositionSpec, batch: int, length: int) -> torch.Tensor | None:
        """Boolean ``(batch, length)`` mask of the current tokens that ``spec`` selects; None means all."""
        if spec == "all":
            return None
        index = self.token_index(batch, length)
        prompt = self._call.prompt_length[:, None]  # type: ignore[union-attr]
        if spec == "prompt":
            return (index >= 0) & (index < prompt)
        if spec == "generated":
            return index >= prompt
        return index >= int(spec)
