"""Learn a steering vector by gradient descent through steerlab's own hooks, the model frozen.

Objectives (``objective=``):

* ``"promote"`` / ``"suppress"``: raise / lower the log-probability of target completions after their prompts
  with the vector added (one-shot optimised vectors, Dunefsky & Cohan 2025, from one example or many).
* ``"bipo"``: bi-directional preference optimisation (Cao et al. 2024) on (chosen, rejected) pairs: added at +1 the
  vector should prefer the chosen completion over the rejected one *relative to the unsteered model* (a DPO loss
  with the unsteered model as reference), and added at -1 the rejected one: one direction that moves a behaviour
  both ways.

A coherence term (``coherence_weight`` > 0) adds the mean ``KL(steered || unsteered)`` of the next-token
distributions on neutral texts, so the vector buys its effect with as little damage as it can; its norm is kept at
or under ``max_relative`` of the layer's residual norm (default 0.3, where text starts to break down). The vector
is applied at strength 1 (absolute): the learned tensor is what is added.

Gradients reach only the vector (``torch.autograd.grad``): the parameters' ``.grad`` is never touched, their
``requires_grad`` is off during each steered pass and given back as it was, and the hooks are scoped per step, so
both are restored also when a step raises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn

from steerlab._forward import batched_logits, frozen_weights, input_device, kl_and_entropy, log_probs_at
from steerlab._models import fingerprint, model_id
from steerlab._pairs import dataset_hash, pair_texts
from steerlab._progress import track
from steerlab._record import record, shared_prefix_length
from steerlab._steer import Intervention, steer
from steerlab._text import (
    ScoredIds,
    apply_chat,
    completion_ids,
    encode,
    forward_kwargs,
    pad_batch,
    pad_id,
    takes_logits_to_keep,
)
from steerlab._vector import SteeringVector
from steerlab.datasets.pairs import neutral_texts
from steerlab.errors import DataError, SteeringError
from steerlab.types import BREAKDOWN_STRENGTH, MAX_STRENGTH

__all__ = ["OBJECTIVES", "Objective", "optimize_vector"]

Objective = Literal["promote", "suppress", "bipo"]
OBJECTIVES: tuple[str, ...] = ("promote", "suppress", "bipo")


def _sequence_logp(model: nn.Module, scored: ScoredIds, rows: Sequence[int]) -> torch.Tensor:
    """Sum of log p(token | tokens before) over the scored tokens of each row, ``(len(rows),)``, differentiable.

    Left-padded, so every row's scored tokens end in the last column: the output head and the softmax run over
    the last ``k`` positions only (``k``: the longest scored stretch + 1), not the whole prompt (for an A/B pair,
    two positions instead of a hundred)."""
    texts = [scored.ids[r] for r in rows]
    ids, mask = pad_batch(texts, 0, side="left")
    device = input_device(model)
    ids, mask = ids.to(device), mask.to(device)
    width = ids.shape[1]
    keep = max(len(t) - scored.starts[r] for t, r in zip(texts, rows, strict=True)) + 1
    extra = {"logits_to_keep": keep} if takes_logits_to_keep(model) else {}
    logits = model(**forward_kwargs(model, ids, mask), **extra).logits[:, -keep:]
    logp = torch.log_softmax(logits[:, :-1].float(), -1)  # column width - keep + j predicts the next column
    targets = ids[:, width - keep + 1 :]
    token = logp.gather(-1, targets[..., None])[..., 0]
    columns = torch.arange(width - keep + 1, width, device=device)
    first = torch.tensor([width - len(t) + scored.starts[r] for t, r in zip(texts, rows, strict=True)], device=device)
    return (token * (columns[None, :] >= first[:, None])).sum(-1)


def _margin(model: nn.Module, chosen: ScoredIds, rejected: ScoredIds, rows: Sequence[int]) -> torch.Tensor:
    """``log p(chosen) - log p(rejected)`` per row over the tokens where the two part, differentiable. Where every
    row's two texts differ only in their last token (an A/B answer letter), both are read from one forward pass of
    the shared prefix, half the compute of scoring each text."""
    if not all(len(chosen.ids[r]) == len(rejected.ids[r]) == chosen.starts[r] + 1 for r in rows):
        return _sequence_logp(model, chosen, rows) - _sequence_logp(model, rejected, rows)
    ids, mask = pad_batch([chosen.ids[r][: chosen.starts[r]] for r in rows], 0, side="left")
    device = input_device(model)
    extra = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}
    logits = model(**forward_kwargs(model, ids.to(device), mask.to(device)), **extra).logits[:, -1]
    logp = torch.log_softmax(logits.float(), -1)
    pick = torch.tensor([[chosen.ids[r][-1], rejected.ids[r][-1]] for r in rows], device=device)
    both = logp.gather(-1, pick)
    return both[:, 0] - both[:, 1]


def optimize_vector(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Any],
    *,
    layer: int,
    objective: Objective = "bipo",
    init: SteeringVector | None = None,
    steps: int = 100,
    lr: float = 0.05,
    batch_size: int = 8,
    beta: float = 0.1,
    coherence: Sequence[str] | None = None,
    coherence_weight: float = 0.0,
    max_relative: float = BREAKDOWN_STRENGTH,
    patience: int = 20,
    chat: bool | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> SteeringVector:
    """Learn a one-layer steering vector for ``objective`` (see the module doc) by Adam on the vector alone.

    Args:
        examples: ``promote`` / ``suppress``: (prompt, completion) pairs; ``bipo``: contrast pairs (chosen =
            positive; CAA A/B pairs balanced with :func:`steerlab.datasets.balance_ab` as for extraction).
        layer: the block whose output the vector is added to.
        init: start from this vector's direction at ``layer`` (default: zero; bipo then starts at its saddle, so a
            zero start takes a small seeded random step first).
        beta: bipo's inverse temperature on the log-probability ratios.
        coherence, coherence_weight: neutral texts (default: steerlab's) and the weight of their mean KL.
        max_relative: the largest norm allowed, as a fraction of the layer's residual norm on the prompts.
        patience: stop when the loss has not improved for this many steps; the best vector is returned.

    The result's ``extra`` records the objective, steps run, final and best loss, the loss per step, the data's
    hash, the KL on the coherence texts when weighted, and ``strength: 1.0`` with ``scale: absolute``.

    Example:
        >>> vec = optimize_vector(model, tok, [("Tell me a story.", " Once upon a happy day")], layer=10,
        ...                       objective="promote", steps=40)
        >>> with steer(model, vec, 1.0, scale="absolute"): ...
    """
    if objective not in OBJECTIVES:
        raise DataError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}.")
    examples = list(examples)
    if not examples:
        raise DataError("optimize_vector needs at least one example.")
    num_layers = model.config.num_hidden_layers
    if not 0 <= layer < num_layers:
        raise SteeringError(f"layer {layer} does not exist: the model has blocks 0-{num_layers - 1}.")
    if not 0 < max_relative < MAX_STRENGTH:
        raise DataError(f"max_relative must be between 0 and {MAX_STRENGTH} (the steering limit); got {max_relative}.")
    if steps < 1 or lr <= 0 or batch_size < 1:
        raise DataError(f"steps, lr and batch_size must be positive; got {steps}, {lr}, {batch_size}.")
    if objective == "bipo":
        pos, neg = pair_texts(examples, tokenizer, chat=chat)
        pos_ids, neg_ids = encode(tokenizer, pos), encode(tokenizer, neg)
        # Only where the two texts part is scored: the tokens they share have the same log-probabilities in both
        # (a causal model), so they cancel in the chosen - rejected margin exactly.
        starts = [max(1, shared_prefix_length(a, b)) for a, b in zip(pos_ids, neg_ids, strict=True)]
        chosen, rejected = ScoredIds(pos_ids, starts), ScoredIds(neg_ids, starts)
        prompts = pos + neg
        n = len(pos)
        data_hash = dataset_hash(examples)
    else:
        chosen = completion_ids(tokenizer, examples, chat, what="promote / suppress")
        rejected = None
        prompts = [apply_chat(tokenizer, p, chat=chat) for p, _ in examples]
        n = len(examples)
        data_hash = dataset_hash([(p, c) for p, c in examples])
    acts = record(model, tokenizer, prompts, layers=[layer], reduce="mean")
    resid = acts.resid_norm[layer]
    max_norm = max_relative * resid
    hidden = model.config.hidden_size
    gen = torch.Generator().manual_seed(seed)
    start = (
        init.directions[layer].detach().float().clone()
        if init is not None
        else torch.randn(hidden, generator=gen) * (0.01 * resid / math.sqrt(hidden))
    )
    param = start.to(input_device(model)).requires_grad_(True)
    optimizer = torch.optim.Adam([param], lr=lr * resid / math.sqrt(hidden))  # lr in units of the layer's scale
    template = SteeringVector(
        directions={layer: param}, model_id=model_id(model), fingerprint=fingerprint(model), site="resid_post",
        method=f"optimized_{objective}", resid_norm={layer: resid},
    )  # fmt: skip

    @contextlib.contextmanager
    def steered(sign: float) -> Iterator[None]:
        # The norm is bounded by max_relative below: the strength warning would fire every step, and torch warns
        # that the strength check reads the norm of a tensor that requires grad.
        # The weights frozen: autograd keeps nothing for weight gradients nobody takes, and the layers below the
        # vector run without a graph (benchmarks/optimize_memory.py: 2.4x less memory at peak).
        with warnings.catch_warnings(), frozen_weights(model):
            warnings.simplefilter("ignore")
            with steer(model, Intervention(template, sign, layers=[layer], scale="absolute")):
                yield

    reference: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if rejected is not None:  # the unsteered log-probabilities, in batches of batch_size
            chunks = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
            reference["margin"] = torch.cat([_margin(model, chosen, rejected, rows) for rows in chunks])
    if coherence_weight > 0:
        texts = list(coherence) if coherence is not None else neutral_texts()
        kl_ids, kl_mask = pad_batch(encode(tokenizer, texts), pad_id(tokenizer), side="left")
        unsteered = batched_logits(model, kl_ids, kl_mask, batch_size=batch_size)
        reference["kl"] = log_probs_at(unsteered, kl_mask).to(param.device)
        kl_ids, kl_mask = kl_ids.to(param.device), kl_mask.to(param.device)

    rng = random.Random(seed)
    losses: list[float] = []
    best_loss, best, since_best, kl_value = math.inf, param.detach().clone(), 0, None
    began = time.perf_counter()
    show = progress if progress is not None else steps > 20
    for _ in track(range(steps), f"optimising ({objective})", show=show):
        rows = rng.sample(range(n), min(batch_size, n))
        if objective == "bipo":
            assert rejected is not None
            ref = reference["margin"][rows]
            loss = torch.zeros((), device=param.device)
            for sign in (1.0, -1.0):  # +v prefers chosen, -v prefers rejected (Cao et al.'s two directions)
                with steered(sign):
                    margin = _margin(model, chosen, rejected, rows)
                loss = loss - torch.nn.functional.logsigmoid(sign * beta * (margin - ref)).mean()
        else:
            with steered(1.0):
                logp = _sequence_logp(model, chosen, rows)
            tokens = torch.tensor([len(chosen.ids[r]) - chosen.starts[r] for r in rows], device=param.device)
            mean = (logp / tokens).mean()  # per token: long completions do not dominate
            loss = -mean if objective == "promote" else mean
        if coherence_weight > 0:
            with steered(1.0):
                logits = model(**forward_kwargs(model, kl_ids, kl_mask)).logits
            kl = kl_and_entropy(logits, reference["kl"], kl_mask)[0].mean()
            kl_value = float(kl)
            loss = loss + coherence_weight * kl
        value = float(loss)
        if not math.isfinite(value):
            if not losses:
                raise SteeringError(f"the {objective} loss is {value} at the first step; check the examples.")
            break  # keep the best vector so far; the metadata says where it stopped
        losses.append(value)
        if value < best_loss - 1e-6:
            best_loss, best, since_best = value, param.detach().clone(), 0
        else:
            since_best += 1
            if since_best >= patience:
                break
        (grad,) = torch.autograd.grad(loss, [param])
        param.grad = grad
        optimizer.step()
        with torch.no_grad():  # stay at or under max_norm: past it the text breaks down
            norm = param.norm()
            if norm > max_norm:
                param.mul_(max_norm / norm)
    seconds = time.perf_counter() - began
    extra: dict[str, Any] = {
        "objective": objective, "steps": len(losses), "steps_asked": steps, "final_loss": losses[-1],
        "best_loss": best_loss, "losses": losses, "lr": lr, "batch_size": batch_size, "seed": seed,
        "examples": n, "beta": beta if objective == "bipo" else None, "coherence_weight": coherence_weight,
        "kl": kl_value, "max_relative": max_relative, "seconds_per_step": seconds / max(1, len(losses)),
        "strength": 1.0, "scale": "absolute",
    }  # fmt: skip
    return dataclasses.replace(template, directions={layer: best.cpu()}, dataset_hash=data_hash, extra=extra)
