"""The built-in engine: generation through transformers' ``generate`` on left-padded batches.

Steering applies to whatever runs inside :func:`steerlab.steer` / :func:`steerlab.steer_rows`: the engine itself
knows nothing of vectors. :func:`generate_batch` is the one decode loop (the server's engine uses it too);
:func:`generated_nll` scores continuations under the model as it is when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from steerlab._forward import continuation_nll, input_device
from steerlab._text import apply_chat, encode, pad_batch, pad_id
from steerlab.errors import SteeringError

__all__ = ["eos_ids", "generate", "generate_batch", "generated_nll"]


def eos_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    """The token ids that end a generation: the model's generation config and the tokenizer's EOS."""
    ids = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 40,
    chat: bool | None = None,
    system: str | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
) -> list[tuple[list[int], list[int]]]:
    """Generate for each prompt; returns ``(prompt_ids, generated_ids)`` pairs, cut after the first EOS.

    Prompts are put in the chat template when the tokenizer has one (``chat=None``), batched with left
    padding. Sampling is seeded per batch, so a steered and an unsteered run draw the same random numbers.
    Steering applies when called inside :func:`steerlab.steer`.
    """
    if max_new_tokens < 1:
        raise SteeringError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    texts = [apply_chat(tokenizer, p, chat=chat, system=system) for p in prompts]
    ids = encode(tokenizer, texts)
    device = input_device(model)
    eos = eos_ids(model, tokenizer)
    pad = pad_id(tokenizer)
    results: list[tuple[list[int], list[int]]] = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        input_ids, mask = pad_batch(chunk, pad, side="left")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + start)
            out = generate_batch(
                model,
                input_ids.to(device),
                mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                do_sample=do_sample,
                temperature=temperature,
                top_p=top_p,
            )
        for row, prompt_ids in enumerate(chunk):
            gen = out[row].tolist()
            for i, tok in enumerate(gen):
                if tok in eos:
                    gen = gen[: i + 1]
                    break
            results.append((prompt_ids, gen))
    return results


def generate_batch(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    pad_token_id: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    **generate_kwargs: Any,
) -> torch.Tensor:
    """The one decode loop of steerlab: ``model.generate`` on a left-padded batch, returning only the new
    tokens ``(batch, steps)`` (rows that finished early are padded with ``pad_token_id``). Used by
    :func:`generate` and by the server (which adds its own ``stopping_criteria`` and ``logits_processor``
    through ``generate_kwargs``). Steering applies when called inside :func:`steerlab.steer` or
    :func:`steerlab.steer_rows`.

    Example:
        >>> new = generate_batch(model, input_ids, mask, max_new_tokens=20, pad_token_id=pad_id(tokenizer))
    """
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if do_sample
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_token_id,
            **sampling,
            **generate_kwargs,
        )
    return out[:, input_ids.shape[1] :]


def generated_nll(
    model: nn.Module, pairs: Sequence[tuple[list[int], list[int]]], *, batch_size: int = 8
) -> list[float]:
    """Mean negative log-likelihood (nats/token) of each generated continuation under ``model`` as it is
    now (call it outside any steering to score against the unsteered model); ``nan`` for an empty one.
    Continuations of one prompt share its pass (:func:`steerlab._forward.continuation_nll`)."""
    nlls = continuation_nll(model, [(list(p), list(g)) for p, g in pairs], batch_size=batch_size)
    return [float(nll.mean()) if len(nll) else float("nan") for nll in nlls]
