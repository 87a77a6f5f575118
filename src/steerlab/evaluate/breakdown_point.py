"""Why large coefficients break the model: what happens to the residual stream and the output as alpha grows.

For each layer and each strength (given as the added vector's norm divided by the layer's natural residual norm,
measured on the neutral text set), :func:`breakdown` records the mean residual norm at every later layer, the
next-token entropy, ``KL(steered || unsteered)`` and the perplexity of steered generations under the unsteered
model, and reports the strength at which coherence collapses (KL above ``collapse_kl``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from steerlab._forward import batched_logits, kl_and_entropy, log_probs_at
from steerlab._hooks import HookSet
from steerlab._models import fingerprint, model_id
from steerlab._progress import track
from steerlab._steer import checked_layers, steer
from steerlab._text import encode, pad_batch, pad_id
from steerlab._vector import SteeringVector
from steerlab.arch.registry import get_layout
from steerlab.errors import SteeringError
from steerlab.evaluate._partial import PartialResults, digest
from steerlab.evaluate.metrics import generation_perplexity, neutral_texts, next_token_entropy
from steerlab.evaluate.results import ResultTable

__all__ = ["DEFAULT_BREAKDOWN_ALPHAS", "DEFAULT_COLLAPSE_KL", "breakdown"]

DEFAULT_BREAKDOWN_ALPHAS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)
"""Added norms traced by :func:`breakdown`, as multiples of the layer's natural residual norm."""

DEFAULT_COLLAPSE_KL = 1.0
"""KL (nats/token) above which :func:`breakdown` calls coherence collapsed: five times the calibration budget;
on SmolLM2 generations there are repetitive or off-topic."""


def _run(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, batch_size: int):
    """Logits (through the one scoring forward, :func:`batched_logits`) and the mean residual norm at every
    block's output over real tokens, the first (sink) left out.

    The norms are read by hooks on the blocks (``resid_post``), not from ``output_hidden_states``, whose last
    entry is after the final norm on many architectures. Steering hooks are prepended, so these see the steered
    stream.
    """
    layout = get_layout(model)
    norms: list[list[torch.Tensor]] = [[] for _ in range(layout.num_layers)]  # per layer, one (rows, tokens) per batch

    def observe(layer: int):
        def hook(hidden: torch.Tensor) -> None:
            norms[layer].append(hidden.float().norm(dim=-1).cpu())

        return hook

    with HookSet() as hooks:
        for layer in range(layout.num_layers):
            module, is_input = layout.site_module(layer, "resid_post")
            hooks.on_hidden(module, is_input, observe(layer))
        logits = batched_logits(model, ids, mask, batch_size=batch_size)
    keep = (mask.bool() & (mask.cumsum(-1) > 1)).double()  # real tokens but each row's first
    means = torch.stack([(torch.cat(per_batch).double() * keep).sum() for per_batch in norms])
    return logits, means / keep.sum().clamp_min(1)


def breakdown(
    model: nn.Module,
    tokenizer: Any,
    vector: SteeringVector,
    *,
    layers: Sequence[int] | None = None,
    alphas: Sequence[float] = DEFAULT_BREAKDOWN_ALPHAS,
    texts: Sequence[str] | None = None,
    prompts: Sequence[str] | None = None,
    max_new_tokens: int = 24,
    collapse_kl: float = DEFAULT_COLLAPSE_KL,
    batch_size: int = 16,
    progress: bool | None = None,
    partial: str | os.PathLike | None = None,
) -> ResultTable:
    """Trace the breakdown of the model as the added vector grows, per layer.

    Args:
        alphas: added norm as a multiple of the layer's natural residual norm on ``texts`` (0.5 = half of it).
        texts: where norms, entropy and KL are measured (default: the neutral set).
        prompts: prompts whose greedy generations are scored (default: the first 4 of ``NEUTRAL_PROMPTS``);
            ``max_new_tokens=0`` skips generation.
        progress: report progress on stderr (a bar on a terminal, a plain line every 10 s otherwise); ``None``
            reports when there are more than 4 (layer, alpha) steps.
        partial: a JSON Lines file each finished (layer, alpha) step is appended to; running the same breakdown
            with it again resumes (a file of another run is refused, as :func:`~steerlab.evaluate.sweep` does).

    Returns a ``ResultTable(kind="breakdown")``: one record per (layer, alpha) with ``added_norm``,
    ``natural_norm``, ``vector_ratio`` (the vector's own norm / natural norm), ``kl``, ``entropy``,
    ``perplexity``, ``final_norm_ratio`` (residual norm at the last block's output, steered / unsteered) and
    ``later_norms`` (mean residual norm after every block from ``layer`` on); ``meta["collapse"]`` maps each
    layer to the smallest alpha whose KL exceeds ``collapse_kl`` (``None``: not reached).

    Example:
        >>> table = breakdown(model, tokenizer, vec, layers=[6, 12, 18], alphas=[0.25, 0.5, 1, 2])
        >>> table.meta["collapse"]
    """
    from steerlab.datasets.pairs import NEUTRAL_PROMPTS

    vector.check_fits(model)
    layers = checked_layers(vector, layers)
    alphas = sorted(float(a) for a in alphas)
    if not alphas or any(a <= 0 for a in alphas):
        raise SteeringError(f"breakdown alphas must be positive multiples of the residual norm, got {alphas}.")
    texts = list(texts) if texts is not None else neutral_texts()
    prompts = list(prompts) if prompts is not None else list(NEUTRAL_PROMPTS[:4])
    ids, mask = pad_batch(encode(tokenizer, texts), pad_id(tokenizer), side="left")
    store = None
    if partial is not None:  # opened before any forward pass: a file from another run fails at once
        prompt_ids = [encode(tokenizer, [p]) for p in prompts]
        identity = {
            "model": f"{model_id(model)} ({next(model.parameters()).dtype})",
            "model_fingerprint": fingerprint(model).as_dict(),
            "vector": digest(*(vector.directions[k] for k in sorted(vector.directions))),
            "layers": layers, "alphas": alphas, "max_new_tokens": max_new_tokens,
            "texts": digest(ids, mask), "prompts": digest(prompt_ids),
        }  # fmt: skip
        store = PartialResults(partial, "breakdown", identity)
    base_logits, base_norms = _run(model, ids, mask, batch_size)
    base_logp = log_probs_at(base_logits, mask)  # the reference, once
    base_entropy = next_token_entropy(base_logits, mask)
    base_ppl = (
        generation_perplexity(
            model, tokenizer, prompts, vector, 0.0, layer=layers[0], scale="absolute", max_new_tokens=max_new_tokens
        )
        if max_new_tokens > 0 else None
    )  # fmt: skip
    num_layers = get_layout(model).num_layers
    unit = vector.normalized_copy()
    finished = dict(store.done) if store is not None else {}  # (layer, alpha) -> its record, read back
    steps = [(layer, alpha) for layer in layers for alpha in alphas]
    todo = [step for step in steps if step not in finished]
    for layer, alpha in track(todo, "tracing", show=progress if progress is not None else len(todo) > 4):
        natural = float(base_norms[layer])
        # The trace goes past the breakdown point on purpose: the scaled copy carries no recorded norm, so no
        # strength check (warning or limit) applies to it.
        scaled = dataclasses.replace(unit * (alpha * natural), resid_norm={})
        with steer(model, scaled, 1.0, layers=[layer], scale="absolute"):
            logits, norms = _run(model, ids, mask, batch_size)
        kl, entropy = kl_and_entropy(logits, base_logp, mask)
        ppl = None
        if max_new_tokens > 0:
            ppl = generation_perplexity(
                model, tokenizer, prompts, scaled, 1.0, layer=layer, scale="absolute", max_new_tokens=max_new_tokens
            )
        record = {
            "layer": layer, "alpha": alpha, "added_norm": alpha * natural, "natural_norm": natural,
            "vector_ratio": float(vector.directions[layer].norm()) / natural,
            "kl": float(kl.mean().clamp_min(0.0)), "entropy": float(entropy.mean()), "perplexity": ppl,
            "final_norm_ratio": float(norms[-1] / base_norms[-1]),
            "later_norms": [float(n) for n in norms[layer:num_layers]],
        }  # fmt: skip
        finished[layer, alpha] = [record]
        if store is not None:
            store.add((layer, alpha), [record])
    records = [finished[step][0] for step in steps]  # in step order, resumed or not
    collapse = {}
    for layer in layers:
        over = [r["alpha"] for r in records if r["layer"] == layer and r["kl"] > collapse_kl]
        collapse[str(layer)] = min(over) if over else None
    meta = {
        "collapse": collapse, "collapse_kl": collapse_kl, "n_texts": len(texts), "n_prompts": len(prompts),
        "max_new_tokens": max_new_tokens, "unsteered_entropy": base_entropy, "unsteered_perplexity": base_ppl,
        "unsteered_norms": [float(n) for n in base_norms], "layers": layers, "alphas": alphas,
        "vector": {"model_id": vector.model_id, "method": vector.method},
    }  # fmt: skip
    return ResultTable("breakdown", records, meta)
