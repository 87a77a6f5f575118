"""The one batched forward pass for scoring: logits (all positions or the last), token NLL, KL and entropy.

Every measurement that runs the model on fixed tokens goes through here (metrics, the replay's unsteered
reference, generation scoring, the breakdown), so batching, the device the inputs go to, left-padding trimming and
``logits_to_keep`` are decided once. Steering applies when called inside :func:`steerlab.steer`.
"""

from __future__ import annotations

import torch
from torch import nn

from steerlab._text import forward_kwargs, takes_logits_to_keep

__all__ = [
    "batched_logits",
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
