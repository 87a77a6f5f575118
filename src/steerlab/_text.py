"""Prompt formatting and tokenization shared by recording and generation."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from steerlab.errors import DataError

__all__ = [
    "ScoredIds",
    "apply_chat",
    "apply_messages",
    "completion_ids",
    "encode",
    "forward_kwargs",
    "has_chat_template",
    "pad_batch",
    "pad_id",
    "position_ids_from_mask",
]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def apply_chat(tokenizer: Any, prompt: str, *, chat: bool | None = None, system: str | None = None) -> str:
    """``prompt`` as a user turn followed by the assistant header, if the tokenizer has a chat template.

    ``chat=None`` uses the template when there is one; ``chat=False`` returns the prompt unchanged.
    """
    if chat is False or (chat is None and not has_chat_template(tokenizer)):
        return prompt
    if not has_chat_template(tokenizer):
        from steerlab.errors import SteerlabError

        raise SteerlabError("chat=True was asked for, but this tokenizer has no chat template; use chat=False.")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return apply_messages(tokenizer, messages)


def apply_messages(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """A whole conversation (``[{"role": ..., "content": ...}, ...]``) in the chat template, followed by the
    assistant header, ready to generate the next turn."""
    if not has_chat_template(tokenizer):
        from steerlab.errors import SteerlabError

        raise SteerlabError("this tokenizer has no chat template, so it cannot format a conversation; send plain text.")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, with the tokenizer's special tokens unless the text already starts with BOS
    (chat templates write it themselves; a second BOS would shift every activation)."""
    bos = getattr(tokenizer, "bos_token", None)
    out = []
    for text in texts:
        special = not (bos and text.startswith(bos))
        out.append(tokenizer(text, add_special_tokens=special)["input_ids"])
    return out


@dataclass
class ScoredIds:
    """Token ids of texts and, per row, the first position whose token is scored (a completion after its prompt)."""

    ids: list[list[int]]
    starts: list[int]


def completion_ids(tokenizer: Any, examples: Sequence[Any], chat: bool | None, *, what: str) -> ScoredIds:
    """Token ids of (prompt, completion) pairs, the prompt in the chat template per ``chat`` (see
    :func:`apply_chat`), each with the position where its completion starts. ``what`` names the caller in errors.
    """
    ids, starts = [], []
    for i, example in enumerate(examples):
        if not (isinstance(example, (tuple, list)) and len(example) == 2 and all(isinstance(t, str) for t in example)):
            raise DataError(f"example {i} is {example!r}; {what} needs (prompt, completion) string pairs.")
        prompt = apply_chat(tokenizer, example[0], chat=chat)
        head = encode(tokenizer, [prompt])[0]
        whole = encode(tokenizer, [prompt + example[1]])[0]
        if len(whole) <= len(head):
            raise DataError(f"the completion of example {i} ({example[1]!r}) tokenises to nothing after its prompt.")
        ids.append(whole)
        starts.append(len(head))
    return ScoredIds(ids, starts)


def pad_batch(ids: list[list[int]], pad_id: int, *, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id lists into ``(input_ids, attention_mask)``, on the left (for generation) or right."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', not {side!r}")
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        input_ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return input_ids, mask


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens, so a padded row sees the positions it would see alone."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@functools.cache
def _takes_position_ids(model_class: type) -> bool:
    return "position_ids" in inspect.signature(model_class.forward).parameters


@functools.cache
def _takes_logits_to_keep(model_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether the model's forward can compute the output head for the last positions only."""
    return _takes_logits_to_keep(type(model))


def takes_position_ids(model: nn.Module) -> bool:
    """Whether the model's forward takes ``position_ids`` (then padding never shifts a row's positions)."""
    return _takes_position_ids(type(model))


def forward_kwargs(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
    """Keyword arguments for a padding-correct forward call (position ids where the model takes them)."""
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask, "use_cache": False}
    if takes_position_ids(model):
        kwargs["position_ids"] = position_ids_from_mask(mask)
    return kwargs


def pad_id(tokenizer: Any) -> int:
    value = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(value if value is not None else 0)
