"""Logits under many strengths of one intervention, computing the layers below it only once.

A sweep over strengths at layer ``L`` changes nothing below ``L``: every steered forward pass starts with the
same blocks ``0 .. L-1`` on the same tokens. :func:`logits_over_alphas` runs the model once (steered with the
first strength), keeps the input of the first block it steers and the arguments every later block was called
with, and then, for each further strength, calls only those blocks and the output head again. A vector on block
``L``'s output is applied as block ``L + 1``'s input (the same tensor), so the replay starts at ``L + 1``. The
steering itself is the ordinary :func:`steerlab.steer` hook on those blocks, so every operator and site
behaves as in a full pass; only positions other than ``"all"`` need the full pass (they are read from the
model-level call).

What it saves is measured by ``benchmarks/sweep_reuse.py`` (docs/benchmarks.md): the blocks below ``L`` once
instead of once per strength; the output head, which for full-sequence logits costs about a quarter of a
forward pass on SmolLM2-135M, still runs for every strength.

The replay is checked on the first pass: each block's input must be the previous block's output (true of
every architecture in the registry) and the head recomputed from the last block's output must give the
model's own logits. Where either fails (a model that does something between its blocks, or an output head
this module does not know), it warns and falls back to full passes: slower, never wrong.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from steerlab._forward import batched_logits, input_device, trim_left_padding
from steerlab._hooks import HookSet, block_hidden
from steerlab._interventions import Alpha
from steerlab._steer import Intervention, steer
from steerlab._text import forward_kwargs, takes_logits_to_keep
from steerlab.arch.registry import ModelLayout, get_layout, text_config
from steerlab.errors import SteeringError

__all__ = ["logits_over_alphas"]


def _output_head(model: nn.Module, layout: ModelLayout) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``last block output -> logits`` as the model computes it (the parts named by the layout's
    :class:`~steerlab.arch.ArchSpec`), or ``None`` when its final norm or unembedding is not found."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    norm, project_out, spec = layout.final_norm, layout.project_out, layout.spec
    if norm is None or head is None:
        return None
    config = text_config(model)

    def setting(name: str | None) -> float | None:
        return None if name is None else getattr(config, name, None)

    logit_scale, logit_divisor, softcap = (
        setting(spec.logit_scale),
        setting(spec.logit_divisor),
        setting(spec.logit_softcap),
    )

    def apply(hidden: torch.Tensor) -> torch.Tensor:
        hidden = norm(hidden)
        if project_out is not None:
            hidden = project_out(hidden)
        logits = head(hidden)
        if logit_scale is not None:
            logits = logits * logit_scale
        if logit_divisor is not None:
            logits = logits / logit_divisor
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return apply


def _call_block(block: nn.Module, hidden: torch.Tensor, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    if args:
        return block_hidden(block(hidden, *args[1:], **kwargs))
    return block_hidden(block(**{**kwargs, "hidden_states": hidden}))


def _layers_of(item: Intervention) -> list[int]:
    return sorted(int(x) for x in (item.layers if item.layers is not None else item.vector.layers))


def _as_next_block_input(item: Intervention, num_layers: int) -> Intervention:
    """The same intervention on the same tensor, addressed as the next block's input.

    Block ``L``'s output is block ``L + 1``'s input, so ``resid_post`` at ``L`` equals ``resid_pre`` at ``L + 1``
    (same values, same operator); addressed that way, a replay starts one block higher.
    """
    layers = _layers_of(item)
    vector = item.vector
    if (item.site or vector.site) != "resid_post" or max(layers) >= num_layers - 1:
        return item
    shifted = dataclasses.replace(
        vector,
        directions={layer + 1: vector.directions[layer] for layer in layers},
        resid_norm={layer + 1: vector.resid_norm[layer] for layer in layers if layer in vector.resid_norm},
        site="resid_pre",
    )
    return dataclasses.replace(item, vector=shifted, layers=[layer + 1 for layer in layers], site="resid_pre")


def logits_over_alphas(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    intervention: Intervention | None,
    alphas: Sequence[Alpha | None],
    *,
    last_only: bool = False,
    batch_size: int | None = None,
    reuse_prefix: bool = True,
) -> Iterator[tuple[Alpha | None, torch.Tensor]]:
    """Yield ``(alpha, logits)`` for a fixed batch under ``intervention`` at each strength, in the order given: the
    unit of work of every sweep cell and every logit metric.

    Args:
        input_ids, attention_mask: a left-padded batch (``steerlab.engines.pad_batch``).
        intervention: the operator, vector, layers, site and scale (its own ``alpha`` is ignored), or ``None``
            for the unsteered model at every strength.
        alphas: strengths; ``None``, and an identity strength (0 for ``add`` / ``ablate``), run the unsteered
            model with no hooks (the reference for KL).
        last_only: logits of the last position only, ``(batch, vocab)``, instead of ``(batch, tokens, vocab)``.
        batch_size: rows per forward pass (default: the whole batch at once). The chunks' replays advance
            together, so only one strength's logits are held at a time.
        reuse_prefix: compute blocks below the intervention once (default). ``False`` runs full passes.

    Logits are float32 on the CPU and equal a full steered forward pass up to float rounding.

    Example:
        >>> template = Intervention(vec, mode="add", scale="relative")
        >>> for alpha, logits in logits_over_alphas(model, ids, mask, template, [None, -0.2, 0.2]):
        ...     print(alpha, logits.shape)
    """
    if intervention is not None and not isinstance(intervention, Intervention):
        raise SteeringError(
            f"logits_over_alphas needs an Intervention as the template, got {type(intervention).__name__}; "
            "wrap the vector: Intervention(vector, mode='add')."
        )
    alphas = list(alphas)
    if not alphas:
        raise SteeringError("no strengths were given; pass at least one alpha (None for the unsteered model).")
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise SteeringError(
            f"expected input_ids and attention_mask of the same (batch, tokens) shape, found "
            f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}."
        )
    if last_only and not bool(attention_mask[:, -1].all()):
        raise SteeringError(
            "last_only=True reads the last position, so the batch must be left-padded; found a row whose last "
            "position is padding. Build it with steerlab.engines.pad_batch(..., side='left')."
        )
    size = batch_size or input_ids.shape[0]
    steps = [None if a is None or intervention is None or intervention.at(a).is_identity else a for a in alphas]
    if all(step is None for step in steps):  # nothing to steer: one unsteered pass serves every strength
        logits = batched_logits(model, input_ids, attention_mask, last_only=last_only, batch_size=size)
        for alpha in alphas:
            yield alpha, logits
        return
    device = input_device(model)
    chunks = []
    for start in range(0, input_ids.shape[0], size):
        ids, mask = input_ids[start : start + size], attention_mask[start : start + size]
        if last_only:
            ids, mask = trim_left_padding(ids, mask)
        chunk = _replay_chunk(model, ids.to(device), mask.to(device), intervention, steps, last_only, reuse_prefix)
        chunks.append(chunk)
    for alpha in alphas:
        yield alpha, torch.cat([next(chunk).cpu() for chunk in chunks])


def _replay_chunk(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    intervention: Intervention,
    alphas: list[Alpha | None],
    last_only: bool,
    reuse_prefix: bool,
) -> Iterator[torch.Tensor]:
    """Logits of one batch (on the model's device) at each strength, reusing the blocks below the intervention."""
    layout = get_layout(model)
    head = _output_head(model, layout)
    replayable = reuse_prefix and intervention.positions == "all" and head is not None and len(alphas) > 1
    if replayable:
        intervention = _as_next_block_input(intervention, layout.num_layers)
    items = [None if a is None else intervention.at(a) for a in alphas]
    start = _layers_of(intervention)[0]
    kwargs = forward_kwargs(model, input_ids, attention_mask)
    if last_only and takes_logits_to_keep(model):
        kwargs["logits_to_keep"] = 1  # the output head at the last position only: most of a pass's cost here

    def full_pass(item: Intervention | None) -> torch.Tensor:
        with steer(model, [item]) if item is not None else nullcontext():
            logits = model(**kwargs).logits
        return (logits[:, -1] if last_only else logits).float()

    # Inference mode is entered around each computation and left before every yield: a generator suspended inside
    # the mode would leak it into the caller (and several suspended chunks, closed out of order, would leave it on
    # for good), turning off autograd in whatever the caller runs next.
    if not replayable:
        for item in items:
            with torch.inference_mode():
                logits = full_pass(item)
            yield logits
        return

    calls: dict[int, tuple[tuple, dict[str, Any]]] = {}
    outputs: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        steering = steer(model, [items[0]]) if items[0] is not None else nullcontext()
        with steering, HookSet() as hooks:
            for index in range(start, layout.num_layers):
                block = layout.block(index)

                def capture(mod: nn.Module, args: tuple, kw: dict[str, Any], index: int = index) -> None:
                    calls[index] = (args, kw)

                def keep(mod: nn.Module, args: tuple, out: Any, index: int = index) -> None:
                    outputs[index] = block_hidden(out)

                # Registered after the steering hooks and prepended: the capture sees a block's input before
                # a steering pre-hook (site resid_pre) changes it; `keep` runs last and sees the steered output.
                hooks.pre_forward(block, capture, with_kwargs=True, prepend=True)
                hooks.forward(block, keep)
            logits = model(**kwargs).logits
            first = (logits[:, -1] if last_only else logits).float()
            del logits
        hidden_in = {i: (args[0] if args else kw.get("hidden_states")) for i, (args, kw) in calls.items()}
        chained = len(calls) == layout.num_layers - start and all(
            isinstance(hidden_in[i], torch.Tensor) and torch.equal(hidden_in[i], outputs[i - 1])
            for i in range(start + 1, layout.num_layers)
        )
        if chained:
            last = outputs[layout.num_layers - 1]
            recomputed = head(last[:, -1:]).float()[:, 0]
            reference = first if last_only else first[:, -1]
            tolerance = 1e-4 * max(1.0, float(reference.abs().max()))
            chained = bool(torch.allclose(recomputed, reference, rtol=1e-4, atol=tolerance))
    yield first
    if not chained:
        warnings.warn(
            f"cannot replay the blocks above layer {start} of this {type(model).__name__} exactly (its blocks "
            "are not chained output-to-input, or its output head is not the known norm + unembedding); "
            "running full forward passes instead.",
            stacklevel=2,
        )
        for item in items[1:]:
            with torch.inference_mode():
                logits = full_pass(item)
            yield logits
        return
    start_input = hidden_in[start].clone()
    outputs.clear()  # only the input of the first replayed block is needed from here on
    for item in items[1:]:
        with torch.inference_mode():
            hidden = start_input
            with steer(model, [item]) if item is not None else nullcontext():
                for index in range(start, layout.num_layers):
                    args, kw = calls[index]
                    hidden = _call_block(layout.block(index), hidden, args, kw)
            logits = head(hidden[:, -1] if last_only else hidden).float()
        yield logits
