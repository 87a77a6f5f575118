"""Record residual-stream activations at chosen layers: batched, padding-aware, stopping early.

By default the residual stream is read at the output of a decoder block (site ``resid_post``), the same
tensor as ``output_hidden_states[layer + 1]`` in Hugging Face numbering; the other sites are the block's
input and the attention and MLP contributions (:data:`steerlab.arch.SITES`).

Attention sink: in most decoder models the first token of every sequence carries a residual norm orders of
magnitude larger than the rest (on SmolLM2-135M about 24,000 against about 175). A mean over tokens that
includes it is dominated by it, and a difference of such means points almost entirely along the sink. So
``reduce="mean"`` and ``reduce="all"`` leave the first real token out unless ``exclude_first_token=False``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from steerlab.arch.registry import check_layer_index, check_site, get_layout
from steerlab.errors import ArchitectureError, DataError
from steerlab.hooks import HookSet
from steerlab.text import encode, forward_kwargs, pad_batch, pad_id

__all__ = ["Activations", "Reduce", "record"]

Reduce = Literal["last", "mean", "all"]


@dataclass
class Activations:
    """Recorded activations, in the order of the input texts.

    Attributes:
        values: ``layer -> tensor``; ``(n_texts, hidden)`` for ``last``/``mean``; for ``all`` the kept
            tokens of every text stacked, ``(sum(lengths), hidden)``.
        lengths: for ``all``, how many tokens of each text are in ``values`` (else ``None``).
        resid_norm: ``layer -> mean L2 norm`` of the activations at the site over the real tokens read
            (sink excluded): the model's own activation scale there.
    """

    layers: list[int]
    reduce: str
    values: dict[int, torch.Tensor]
    lengths: list[int] | None = None
    resid_norm: dict[int, float] = field(default_factory=dict)
    site: str = "resid_post"

    def per_text(self, layer: int) -> list[torch.Tensor]:
        """For ``reduce="all"``: one ``(tokens, hidden)`` tensor per text."""
        if self.lengths is None:
            return list(self.values[layer])
        return list(torch.split(self.values[layer], self.lengths))


class _StopForward(Exception):
    """Raised by the hook on the deepest layer asked for: nothing above it needs computing."""


def _check_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    if isinstance(layers, int):
        layers = [layers]
    chosen = sorted(set(int(x) if not isinstance(x, bool) else x for x in layers))
    if not chosen:
        raise ArchitectureError("no layers were given; pass at least one layer index, e.g. layers=[12].")
    for layer in chosen:
        check_layer_index(layer, num_layers)
    return chosen


def record(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    layers: Sequence[int] | int,
    reduce: Reduce = "last",
    batch_size: int = 16,
    exclude_first_token: bool = True,
    padding_side: str = "left",
    site: str = "resid_post",
    progress: bool | None = None,
) -> Activations:
    """Run ``texts`` through ``model`` and keep the block outputs at ``layers``.

    Args:
        layers: 0-based block indices (Hugging Face numbering).
        reduce: ``"last"`` (the last real token), ``"mean"`` (mean over real tokens) or ``"all"``.
        exclude_first_token: leave the attention-sink token out of ``mean``/``all`` (see module doc).
        padding_side: ``"left"`` or ``"right"``; both give the same numbers (position ids count only real
            tokens), the choice only matters for speed on some kernels.
        site: ``resid_post`` (block output, default), ``resid_pre`` (block input), ``attn_out`` or ``mlp_out``
            (a sublayer's contribution to the residual stream); see :data:`steerlab.arch.SITES`.
        progress: show a progress bar; ``None`` shows one when there are more than 8 batches.

    Example:
        >>> acts = record(model, tokenizer, ["I love it", "I hate it"], layers=[10, 12])
        >>> acts.values[10].shape
        torch.Size([2, 576])
    """
    if reduce not in ("last", "mean", "all"):
        raise DataError(f"reduce={reduce!r} is not valid; expected 'last', 'mean' or 'all'.")
    texts = list(texts)
    if not texts:
        raise DataError("no texts to record; pass at least one string.")
    if any(not isinstance(t, str) or not t for t in texts):
        raise DataError("every text must be a non-empty string; found an empty or non-string entry.")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}.")
    check_site(site)
    layout = get_layout(model)
    chosen = _check_layers(layers, layout.num_layers)
    deepest = chosen[-1]
    token_ids = encode(tokenizer, texts)
    # Batch texts of similar length together: little compute is spent on padding.
    order = sorted(range(len(texts)), key=lambda i: len(token_ids[i]), reverse=True)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    device = next(model.parameters()).device

    per_text: dict[int, list[torch.Tensor | None]] = {layer: [None] * len(texts) for layer in chosen}
    norm_sum = dict.fromkeys(chosen, 0.0)
    norm_count = dict.fromkeys(chosen, 0)
    state: dict[str, Any] = {}
    single_token = {"seen": False}

    def make_hook(layer: int):
        def hook(hidden: torch.Tensor) -> None:
            if hidden.shape[-1] != layout.hidden_size:
                raise ArchitectureError(
                    f"{site} of block {layer} has width {hidden.shape[-1]}, but config.hidden_size is "
                    f"{layout.hidden_size}; the layer layout is wrong for this model. Override it with "
                    "steerlab.arch.set_architecture."
                )
            hidden = hidden.float()
            mask, index, rows = state["mask"], state["index"], state["rows"]
            keep = mask.bool() & (index > 0) if exclude_first_token else mask.bool()
            empty = ~keep.any(-1)
            if empty.any():  # a one-token text: its only token is the sink; keep it rather than nothing
                single_token["seen"] = True
                keep = keep | (mask.bool() & empty[:, None])
            norms = hidden.norm(dim=-1)
            norm_sum[layer] += float(norms[keep].sum())
            norm_count[layer] += int(keep.sum())
            if reduce == "last":
                last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)
                picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
                for row, text_i in enumerate(rows):
                    per_text[layer][text_i] = picked[row].cpu()
            elif reduce == "mean":
                weights = keep.to(hidden.dtype)[..., None]
                means = (hidden * weights).sum(1) / weights.sum(1)
                for row, text_i in enumerate(rows):
                    per_text[layer][text_i] = means[row].cpu()
            else:
                for row, text_i in enumerate(rows):
                    per_text[layer][text_i] = hidden[row][keep[row]].cpu()
            if layer == deepest:
                raise _StopForward

        return hook

    from rich.progress import track

    show = progress if progress is not None else len(batches) > 8
    pad = pad_id(tokenizer)
    with HookSet() as hooks, torch.inference_mode():
        for layer in chosen:
            module, is_input = layout.site_module(layer, site)
            hooks.on_hidden(module, is_input, make_hook(layer))
        for rows in track(batches, description="recording", disable=not show, transient=True):
            input_ids, mask = pad_batch([token_ids[i] for i in rows], pad, side=padding_side)
            input_ids, mask = input_ids.to(device), mask.to(device)
            state.update(mask=mask, index=mask.cumsum(-1) - 1, rows=rows)
            try:
                model(**forward_kwargs(model, input_ids, mask))
            except _StopForward:
                pass
            else:  # pragma: no cover - the deepest hook always raises
                raise ArchitectureError(f"{site} of block {deepest} was never reached in the forward pass.")

    if single_token["seen"] and reduce != "last" and exclude_first_token:
        warnings.warn(
            "some texts have a single token; for them the first token was kept despite exclude_first_token=True.",
            stacklevel=2,
        )
    values: dict[int, torch.Tensor] = {}
    lengths = None
    for layer in chosen:
        items = [t for t in per_text[layer] if t is not None]
        if reduce == "all":
            lengths = [t.shape[0] for t in items]
            values[layer] = torch.cat(items)
        else:
            values[layer] = torch.stack(items)
    resid_norm = {layer: norm_sum[layer] / max(norm_count[layer], 1) for layer in chosen}
    return Activations(chosen, reduce, values, lengths, resid_norm, site)
