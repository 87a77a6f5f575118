"""Logits under many strengths and directions of an intervention, computing the layers below it only once.

A sweep over strengths at layer ``L`` changes nothing below ``L``: every steered forward pass starts with the
same blocks ``0 .. L-1`` on the same tokens. A pass is *recorded*: the input of the first block a replay starts
at and the arguments every later block was called with are kept; then, for each further strength, only those
blocks and the output head run again. A vector on block ``L``'s output is applied as block ``L + 1``'s input (the
same tensor), so the replay starts at ``L + 1``. The steering itself is the ordinary :func:`steerlab.steer` hook
on those blocks, so every operator and site behaves as in a full pass; only positions other than ``"all"`` need
the full pass (they are read from the model-level call).

Two entry points: :func:`logits_over_alphas` (one intervention, many strengths: its first strength's pass is
recorded) and :class:`UnsteeredPass` (one recorded unsteered pass serving every layer, direction and strength of
a sweep, so the blocks below each layer run once for the whole sweep).

What it saves is measured by ``benchmarks/sweep_reuse.py`` and ``benchmarks/sweep_speed.py``
(docs/benchmarks.md): the output head, which for full-sequence logits costs about a quarter of a forward pass
on SmolLM2-135M, still runs for every strength.

The replay is checked on the recorded pass: each block's input must be the previous block's output (true of
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
from steerlab._packing import pack_rows, packed_tokens
from steerlab._steer import Intervention, steer
from steerlab._text import forward_kwargs, takes_logits_to_keep, takes_position_ids
from steerlab.arch.registry import ModelLayout, get_layout, text_config
from steerlab.errors import SteeringError

__all__ = ["UnsteeredPass", "logits_over_alphas"]


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


def _check_template(intervention: Intervention | None) -> None:
    if intervention is not None and not isinstance(intervention, Intervention):
        raise SteeringError(
            f"logits_over_alphas needs an Intervention as the template, got {type(intervention).__name__}; "
            "wrap the vector: Intervention(vector, mode='add')."
        )


def _check_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor, last_only: bool) -> None:
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


def _steps(intervention: Intervention | None, alphas: Sequence[Alpha | None]) -> list[Intervention | None]:
    """The intervention at each strength; ``None`` where the model runs unsteered (``None`` or an identity)."""
    return [
        None if a is None or intervention is None or intervention.at(a).is_identity else intervention.at(a)
        for a in alphas
    ]


@dataclasses.dataclass
class _Chunk:
    """Rows of the batch that run together (on the model's device), with their forward call's arguments."""

    kwargs: dict[str, Any]
    recording: _Recording | None = None
    ends: tuple[torch.Tensor, torch.Tensor] | None = None  # packed rows: (sequence, column) of each row's end


def _read(hidden: torch.Tensor, chunk: _Chunk, last_only: bool) -> torch.Tensor:
    """The positions whose logits are wanted: every one, the last, or each packed row's end."""
    if chunk.ends is not None:
        return hidden[chunk.ends]
    return hidden[:, -1] if last_only else hidden


@dataclasses.dataclass
class _Recording:
    """One pass over a chunk kept for replays: every block's call from the first recorded block up (without its
    hidden-state input), the inputs of the blocks a replay starts at, and whether the blocks are chained (each
    block's input is the previous block's output and the head recomputes the model's logits)."""

    calls: dict[int, tuple[bool, tuple, dict[str, Any]]]
    inputs: dict[int, torch.Tensor]
    chained: bool


def _split(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int | None, last_only: bool
) -> list[_Chunk]:
    device = input_device(model)
    size = batch_size or input_ids.shape[0]
    chunks = []
    for start in range(0, input_ids.shape[0], size):
        ids, mask = input_ids[start : start + size], attention_mask[start : start + size]
        if last_only:
            ids, mask = trim_left_padding(ids, mask)
        kwargs = forward_kwargs(model, ids.to(device), mask.to(device))
        if last_only and takes_logits_to_keep(model):
            kwargs["logits_to_keep"] = 1  # the output head at the last position only: most of a pass's cost here
        chunks.append(_Chunk(kwargs))
    return chunks


# Inference mode is entered around each computation and left before every yield: a generator suspended inside
# the mode would leak it into the caller (and several suspended generators, closed out of order, would leave it
# on for good), turning off autograd in whatever the caller runs next.


def _full_pass(model: nn.Module, chunk: _Chunk, item: Intervention | None, last_only: bool) -> torch.Tensor:
    with torch.inference_mode(), steer(model, [item]) if item is not None else nullcontext():
        logits = model(**chunk.kwargs).logits
        return (logits[:, -1] if last_only else logits).float()


def _record_pass(
    model: nn.Module,
    layout: ModelLayout,
    head: Callable[[torch.Tensor], torch.Tensor],
    chunk: _Chunk,
    item: Intervention | None,
    starts: set[int],
    last_only: bool,
) -> torch.Tensor:
    """Run ``chunk`` once (steered by ``item``, which must act at or above every block of ``starts``), keep its
    :class:`_Recording` on the chunk and return the logits."""
    first_block = min(starts)
    calls: dict[int, tuple[bool, tuple, dict[str, Any]]] = {}
    inputs: dict[int, torch.Tensor] = {}
    chained = True
    previous: dict[str, torch.Tensor] = {}  # the last block output seen (only one is held at a time)

    def capture(mod: nn.Module, args: tuple, kw: dict[str, Any], index: int) -> None:
        nonlocal chained
        hidden = args[0] if args else kw.get("hidden_states")
        calls[index] = (bool(args), args[1:], {k: v for k, v in kw.items() if k != "hidden_states"})
        if index in starts:
            inputs[index] = hidden
        if index > first_block:
            chained = chained and isinstance(hidden, torch.Tensor) and torch.equal(hidden, previous.get("out"))

    def keep(mod: nn.Module, args: tuple, out: Any) -> None:
        previous["out"] = block_hidden(out)

    with torch.inference_mode():
        steering = steer(model, [item]) if item is not None else nullcontext()
        with steering, HookSet() as hooks:
            for index in range(first_block, layout.num_layers):
                block = layout.block(index)
                # Registered after the steering hooks and prepended: the capture sees a block's input before
                # a steering pre-hook (site resid_pre) changes it; `keep` runs last and sees the steered output.
                hooks.pre_forward(
                    block, lambda m, a, k, index=index: capture(m, a, k, index), with_kwargs=True, prepend=True
                )
                hooks.forward(block, keep)
            logits = model(**chunk.kwargs).logits
            logits = (logits[:, -1] if last_only else logits).float()
        chained = chained and len(calls) == layout.num_layers - first_block and "out" in previous
        if chained:
            recomputed = head(previous["out"][:, -1:]).float()[:, 0]
            reference = logits if last_only else logits[:, -1]
            tolerance = 1e-4 * max(1.0, float(reference.abs().max()))
            chained = bool(torch.allclose(recomputed, reference, rtol=1e-4, atol=tolerance))
            if chunk.ends is not None:
                logits = head(previous["out"][chunk.ends]).float()
    chunk.recording = _Recording(calls, {i: x.clone() for i, x in inputs.items()}, chained)
    return logits


def _replay(
    model: nn.Module,
    layout: ModelLayout,
    head: Callable[[torch.Tensor], torch.Tensor],
    chunk: _Chunk,
    start: int,
    item: Intervention | None,
    last_only: bool,
) -> torch.Tensor:
    """Logits of a recorded chunk under ``item`` (acting at block ``start`` and above; ``None``: unsteered), from
    the recorded input of block ``start``: only blocks ``start ..`` and the head run."""
    recording = chunk.recording
    with torch.inference_mode(), steer(model, [item]) if item is not None else nullcontext():
        hidden = recording.inputs[start]
        for index in range(start, layout.num_layers):
            positional, args, kw = recording.calls[index]
            block = layout.block(index)
            out = block(hidden, *args, **kw) if positional else block(**{**kw, "hidden_states": hidden})
            hidden = block_hidden(out)
        return head(_read(hidden, chunk, last_only)).float()


def _fallback_warning(model: nn.Module, start: int) -> None:
    warnings.warn(
        f"cannot replay the blocks above layer {start} of this {type(model).__name__} exactly (its blocks "
        "are not chained output-to-input, or its output head is not the known norm + unembedding); "
        "running full forward passes instead.",
        stacklevel=3,
    )


def _replay_start(intervention: Intervention, layout: ModelLayout) -> tuple[Intervention, int] | None:
    """The intervention addressed where a replay starts and that block's index, or ``None`` when it cannot be
    replayed (positions other than ``"all"`` and conditions are read from the model-level call)."""
    if intervention.positions != "all" or intervention.condition is not None:  # gates are read at model calls
        return None
    shifted = _as_next_block_input(intervention, layout.num_layers)
    return shifted, _layers_of(shifted)[0]


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
    unit of work of every logit metric.

    Args:
        input_ids, attention_mask: a left-padded batch (``steerlab.engines.pad_batch``).
        intervention: the operator, vector, layers, site and scale (its own ``alpha`` is ignored), or ``None``
            for the unsteered model at every strength.
        alphas: strengths; ``None``, and an identity strength (0 for ``add`` / ``ablate``), run the unsteered
            model with no hooks (the reference for KL).
        last_only: logits of the last position only, ``(batch, vocab)``, instead of ``(batch, tokens, vocab)``.
        batch_size: rows per forward pass (default: the whole batch at once). The chunks advance together, so
            only one strength's logits are held at a time.
        reuse_prefix: compute blocks below the intervention once (default). ``False`` runs full passes.

    Logits are float32 on the CPU and equal a full steered forward pass up to float rounding. Many
    interventions on one batch (a sweep) share more through :class:`UnsteeredPass`.

    Example:
        >>> template = Intervention(vec, mode="add", scale="relative")
        >>> for alpha, logits in logits_over_alphas(model, ids, mask, template, [None, -0.2, 0.2]):
        ...     print(alpha, logits.shape)
    """
    _check_template(intervention)
    alphas = list(alphas)
    if not alphas:
        raise SteeringError("no strengths were given; pass at least one alpha (None for the unsteered model).")
    _check_batch(input_ids, attention_mask, last_only)
    steps = _steps(intervention, alphas)
    if all(step is None for step in steps):  # nothing to steer: one unsteered pass serves every strength
        logits = batched_logits(
            model, input_ids, attention_mask, last_only=last_only, batch_size=batch_size or input_ids.shape[0]
        )
        for alpha in alphas:
            yield alpha, logits
        return
    chunks = _split(model, input_ids, attention_mask, batch_size, last_only)
    layout = get_layout(model)
    head = _output_head(model, layout)
    place = _replay_start(intervention, layout) if reuse_prefix and head is not None and len(alphas) > 1 else None
    if place is None:
        for alpha, item in zip(alphas, steps, strict=True):
            yield alpha, torch.cat([_full_pass(model, chunk, item, last_only).cpu() for chunk in chunks])
        return
    shifted, start = place
    items = [None if step is None else shifted.at(alpha) for alpha, step in zip(alphas, steps, strict=True)]
    # The first strength runs a whole pass, recorded; the blocks below `start` are unchanged by steering, so
    # every further strength replays from the recorded input of block `start`.
    first = [_record_pass(model, layout, head, chunk, items[0], {start}, last_only).cpu() for chunk in chunks]
    yield alphas[0], torch.cat(first)
    del first
    chained = all(chunk.recording.chained for chunk in chunks)
    if not chained:
        _fallback_warning(model, start)
    for alpha, item in zip(alphas[1:], items[1:], strict=True):
        parts = [
            _replay(model, layout, head, chunk, start, item, last_only)
            if chained
            else _full_pass(model, chunk, item, last_only)
            for chunk in chunks
        ]
        yield alpha, torch.cat([part.cpu() for part in parts])


class UnsteeredPass:
    """One unsteered pass over a fixed batch, recorded so that many interventions can be replayed from it: each
    runs only the blocks from its own layer up and the output head, never the blocks below (which no
    steering at or above them changes). What a sweep over layers, directions and strengths shares.

    ``templates`` name the interventions that will be replayed (their layers and sites decide which block inputs
    are kept: one ``(rows, tokens, width)`` tensor per distinct start block). Others still work, through full
    passes. With ``last_only`` and ``groups`` (a group id per row, e.g. the question each A/B row asks), rows of
    a group are packed into one sequence that computes their common beginning once (:mod:`steerlab._packing`);
    the first chunk is checked against the rows run alone, and the batch runs unpacked, with a warning, if the
    model does not honour the packing mask.

    Example:
        >>> templates = [Intervention(vec, layers=[layer]) for layer in (8, 12)]
        >>> base = UnsteeredPass(model, ids, mask, templates, last_only=True, batch_size=16)
        >>> base.logits.shape                                        # unsteered, (rows, vocab)
        >>> for alpha, logits in base.steered(templates[0], [-0.2, 0.2]):
        ...     print(alpha, logits.shape)
    """

    def __init__(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        templates: Sequence[Intervention],
        *,
        last_only: bool = False,
        batch_size: int | None = None,
        groups: Sequence[int] | None = None,
    ):
        for template in templates:
            _check_template(template)
        _check_batch(input_ids, attention_mask, last_only)
        if groups is not None and len(groups) != input_ids.shape[0]:
            raise SteeringError(f"groups has {len(groups)} ids for a batch of {input_ids.shape[0]} rows.")
        self.model, self.last_only = model, last_only
        self._batch = (input_ids, attention_mask, batch_size)
        self._layout = get_layout(model)
        self._head = _output_head(model, self._layout)
        places = [_replay_start(t, self._layout) for t in templates] if self._head is not None else []
        self._starts = {place[1] for place in places if place is not None}
        self._order: torch.Tensor | None = None  # original row of each output row, when packed
        self._plain: list[_Chunk] | None = None  # unpacked chunks, for full passes (made on demand when packed)
        self._chunks: list[_Chunk] = []
        parts = self._record_packed(groups) if groups is not None and last_only and self._starts else None
        if parts is None:
            self._order = None
            self._chunks = self._plain = _split(model, input_ids, attention_mask, batch_size, last_only)
            if self._starts:
                parts = [self._record(chunk) for chunk in self._chunks]
                self._chained = all(chunk.recording.chained for chunk in self._chunks)
                if not self._chained:
                    _fallback_warning(model, min(self._starts))
            else:
                parts = [_full_pass(model, chunk, None, last_only).cpu() for chunk in self._chunks]
                self._chained = False
        self.logits = self._in_order(parts)
        """The unsteered logits, float32 on the CPU."""

    def _record(self, chunk: _Chunk) -> torch.Tensor:
        return _record_pass(self.model, self._layout, self._head, chunk, None, self._starts, self.last_only).cpu()

    def _record_packed(self, groups: Sequence[int]) -> list[torch.Tensor] | None:
        """Record the packed batch; ``None`` (run unpacked) where packing saves little or the model disagrees."""
        input_ids, attention_mask, batch_size = self._batch
        tokens = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask, strict=True)]
        if not takes_position_ids(self.model) or packed_tokens(tokens, groups) > 0.9 * sum(map(len, tokens)):
            return None
        device = input_device(self.model)
        dtype = next(self.model.parameters()).dtype
        # Padding columns are never attended to: any token id in the vocabulary serves (here the first one seen).
        packed = pack_rows(tokens, groups, rows_per_chunk=batch_size or len(tokens), pad_id=tokens[0][0], dtype=dtype)
        for part in packed:
            kwargs = {
                "input_ids": part.input_ids.to(device),
                "attention_mask": part.attention_mask.to(device),
                "position_ids": part.position_ids.to(device),
                "use_cache": False,
            }
            if takes_logits_to_keep(self.model):
                kwargs["logits_to_keep"] = 1  # the recording reads each row's end from the last block's output
            self._chunks.append(_Chunk(kwargs, ends=(part.ends[0].to(device), part.ends[1].to(device))))
        parts = [self._record(chunk) for chunk in self._chunks]
        rows = packed[0].rows
        alone = batched_logits(self.model, input_ids[rows], attention_mask[rows], last_only=True)
        tolerance = 1e-4 * max(1.0, float(alone.abs().max()))
        if all(chunk.recording.chained for chunk in self._chunks) and torch.allclose(
            parts[0], alone, rtol=1e-4, atol=tolerance
        ):
            self._chained = True
            self._order = torch.tensor([row for part in packed for row in part.rows])
            return parts
        warnings.warn(
            f"this {type(self.model).__name__} does not give packed rows (a shared beginning computed once, with a "
            "4-D attention mask) the logits of the rows run alone; running the rows unpacked instead.",
            stacklevel=3,
        )
        self._chunks = []
        return None

    def _in_order(self, parts: list[torch.Tensor]) -> torch.Tensor:
        logits = torch.cat([part.cpu() for part in parts])
        if self._order is None:
            return logits
        out = torch.empty_like(logits)
        out[self._order] = logits
        return out

    def steered(
        self, intervention: Intervention | None, alphas: Sequence[Alpha | None]
    ) -> Iterator[tuple[Alpha | None, torch.Tensor]]:
        """Yield ``(alpha, logits)`` under ``intervention`` at each strength (as :func:`logits_over_alphas`; an
        identity or ``None`` strength yields the unsteered logits)."""
        _check_template(intervention)
        place = _replay_start(intervention, self._layout) if self._chained and intervention is not None else None
        replayable = place is not None and place[1] in self._starts
        for alpha, step in zip(alphas, _steps(intervention, alphas), strict=True):
            if step is None:
                yield alpha, self.logits
            elif replayable:
                shifted, start = place
                item = shifted.at(alpha)
                yield (
                    alpha,
                    self._in_order(
                        [
                            _replay(self.model, self._layout, self._head, chunk, start, item, self.last_only)
                            for chunk in self._chunks
                        ]
                    ),
                )
            else:  # full passes, row by row as given (a packed chunk cannot be steered at chosen positions)
                if self._plain is None:
                    self._plain = _split(self.model, *self._batch, self.last_only)
                parts = [_full_pass(self.model, chunk, step, self.last_only).cpu() for chunk in self._plain]
                yield alpha, torch.cat(parts)
