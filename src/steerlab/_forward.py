"""The one batched forward pass for scoring: logits (all positions or the last), token NLL, KL and entropy.

Every measurement that runs the model on fixed tokens goes through here (metrics, the replay's unsteered
reference, generation scoring, the breakdown), so batching, the device the inputs go to, left-padding trimming and
``logits_to_keep`` are decided once. Steering applies when called inside :func:`steerlab.steer`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from steerlab._text import forward_kwargs, pad_batch, position_ids_from_mask, takes_logits_to_keep, takes_position_ids

__all__ = [
    "batched_logits",
    "continuation_nll",
    "frozen_weights",
    "input_device",
    "kl_and_entropy",
    "log_probs_at",
    "mean_entropy",
    "next_token_nll",
]


def input_device(model: nn.Module) -> torch.device:
    """Where token ids must go: the input embedding's device (with ``device_map`` the first block may sit
    elsewhere than other parameters)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    return weight.device if isinstance(weight, torch.Tensor) else next(model.parameters()).device


@contextlib.contextmanager
def frozen_weights(model: nn.Module) -> Iterator[None]:
    """The model's parameters with ``requires_grad`` off for the block, given back as they were, also if it raises.

    For gradients with respect to a steering vector or an activation: with the weights frozen, autograd records only
    the operations that lead to the tensor asked for, and keeps no activation of the layers before it for weight
    gradients nobody takes (SmolLM2, BiPO at layer 15, batch 16: 2.8 GB at peak over the model instead of 6.5 GB,
    benchmarks/optimize_memory.py).
    """
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        for param, _ in flags:
            param.requires_grad_(False)
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def trim_left_padding(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the leading columns that are padding in every row (a left-padded chunk of a longer batch)."""
    first = int(mask.any(0).long().argmax())
    return ids[:, first:], mask[:, first:]


def batched_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    last_only: bool = False,
    batch_size: int = 16,
) -> torch.Tensor:
    """Float32 logits on the CPU: ``(n, tokens, vocab)``, or ``(n, vocab)`` at the last position with
    ``last_only`` (then the batch must be left-padded: every row's last real token is in the last column).

    Example:
        >>> logits = batched_logits(model, ids, mask, last_only=True)
    """
    device = input_device(model)
    # Only the last position's logits are needed: skip the unembedding of the others (most of a pass's cost).
    extra = {"logits_to_keep": 1} if last_only and takes_logits_to_keep(model) else {}
    parts = []
    with torch.inference_mode():
        for start in range(0, input_ids.shape[0], batch_size):
            ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
            if last_only:
                ids, mask = trim_left_padding(ids, mask)
            logits = model(**forward_kwargs(model, ids.to(device), mask.to(device)), **extra).logits
            parts.append((logits[:, -1] if last_only else logits).float().cpu())
    return torch.cat(parts)


def next_token_nll(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, batch_size: int = 8
) -> torch.Tensor:
    """``-log p(token t+1 | tokens <= t)`` for every position of a right-padded batch, ``(n, tokens - 1)``
    float32 on the CPU (padding positions hold meaningless values: select with the mask)."""
    device = input_device(model)
    parts = []
    with torch.inference_mode():
        for start in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[start : start + batch_size].to(device)
            mask = attention_mask[start : start + batch_size].to(device)
            logprobs = torch.log_softmax(model(**forward_kwargs(model, ids, mask)).logits[:, :-1].float(), dim=-1)
            parts.append(-logprobs.gather(-1, ids[:, 1:, None])[..., 0].cpu())
    return torch.cat(parts)


def continuation_nll(
    model: nn.Module, pairs: list[tuple[list[int], list[int]]], *, batch_size: int = 8
) -> list[torch.Tensor]:
    """``-log p`` of each continuation token given the prompt and the tokens before it, per (prompt,
    continuation) pair: a float32 tensor of ``len(continuation)`` values each, on the CPU.

    Continuations of one prompt (the strengths of a comparison) share its pass where the model takes position
    ids: the prompt runs once and its KV cache is repeated for each continuation (as beam search does), so n
    continuations of one prompt cost one prompt and n continuations, not n of both. Elsewhere every pair runs
    whole, right-padded.
    """
    out: list[torch.Tensor] = [torch.zeros(0)] * len(pairs)
    todo = [i for i, (_, g) in enumerate(pairs) if g]
    if not takes_position_ids(model):  # positions would count the prompt's left padding: run each pair whole
        for start in range(0, len(todo), batch_size):
            rows = todo[start : start + batch_size]
            ids, mask = pad_batch([pairs[i][0] + pairs[i][1] for i in rows], 0, side="right")
            nll = next_token_nll(model, ids, mask, batch_size=batch_size)
            for row, i in enumerate(rows):
                p, g = pairs[i]
                # Position t scores token t + 1: the continuation is scored from the prompt's last position.
                out[i] = nll[row, len(p) - 1 : len(p) - 1 + len(g)]
        return out
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i in todo:
        by_prompt.setdefault(tuple(pairs[i][0]), []).append(i)
    chunk: list[int] = []
    for rows in by_prompt.values():
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            if len(chunk) + len(part) > batch_size:
                _shared_prompt_nll(model, pairs, chunk, out)
                chunk = []
            chunk += part
    if chunk:
        _shared_prompt_nll(model, pairs, chunk, out)
    return out


def _shared_prompt_nll(
    model: nn.Module, pairs: list[tuple[list[int], list[int]]], rows: list[int], out: list[torch.Tensor]
) -> None:
    """Fill ``out[i]`` for ``rows`` (grouped by prompt): one pass over the distinct prompts, left-padded, then one
    over the continuations, right-padded, on the prompts' cache repeated per row."""
    from transformers import DynamicCache

    from steerlab._calling import cache_argument

    device = input_device(model)
    prompts: dict[tuple[int, ...], int] = {}
    owner = torch.tensor([prompts.setdefault(tuple(pairs[i][0]), len(prompts)) for i in rows])
    p_ids, p_mask = pad_batch([list(p) for p in prompts], 0, side="left")
    g_ids, g_mask = pad_batch([pairs[i][1] for i in rows], 0, side="right")
    mask = torch.cat([p_mask[owner], g_mask], 1)
    positions = p_mask[owner].sum(1, keepdim=True) + torch.arange(g_ids.shape[1])
    extra = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}
    cache = DynamicCache(config=model.config)
    name = cache_argument(model)  # `cache` from transformers 5.24 on, `past_key_values` before
    with torch.inference_mode():
        first = model(input_ids=p_ids.to(device), attention_mask=p_mask.to(device),
                      position_ids=position_ids_from_mask(p_mask).to(device), use_cache=True, **{name: cache},
                      **extra)  # fmt: skip
        cache.reorder_cache(owner.to(device))  # each row gets its prompt's keys and values (as in beam search)
        rest = model(input_ids=g_ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                     use_cache=True, **{name: cache})  # fmt: skip
        # The prompt's last position scores the first continuation token; continuation position t scores t + 1.
        logits = torch.cat([first.logits[:, -1:][owner.to(device)], rest.logits[:, :-1]], 1)
        nll = -torch.log_softmax(logits.float(), -1).gather(-1, g_ids.to(device)[..., None])[..., 0].cpu()
    for row, i in enumerate(rows):
        out[i] = nll[row, : len(pairs[i][1])]


def log_probs_at(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities at the real tokens of ``mask`` only, ``(real tokens, vocab)`` in float64
    (padding is never normalised: on short neutral texts it is a fifth of the positions)."""
    return torch.log_softmax(logits[mask.bool()].double(), -1)


def kl_and_entropy(
    logits: torch.Tensor, reference_logp: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``KL(softmax(logits) || reference)`` and the entropy of ``softmax(logits)`` at every real token of ``mask``
    (nats, float64), from one normalisation; ``reference_logp`` is :func:`log_probs_at` of the reference logits."""
    logp = log_probs_at(logits, mask)
    p = logp.exp()
    return (p * (logp - reference_logp.double())).sum(-1), -(p * logp).sum(-1)


def mean_entropy(logits: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean entropy (nats) of the next-token distributions in ``logits`` over the real tokens of ``mask``."""
    logp = torch.log_softmax(logits.double(), -1)
    entropy = -(logp.exp() * logp).sum(-1)
    return float(entropy[mask.bool()].mean() if mask is not None else entropy.mean())
