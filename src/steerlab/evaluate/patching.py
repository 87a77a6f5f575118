"""Activation patching and attribution patching: which activations carry the difference between a clean and a
corrupted prompt, for any logit metric.

A *pair* is a clean prompt and a corrupted one of the same token length (``"When Mary and John ..., John gave a
drink to"`` and the same with the names swapped). A *metric* maps the logits of a batch to one number per row
(e.g. :func:`logit_diff_metric`: the logit of the right answer minus the wrong one at the last position).

- :func:`activation_patching` runs the corrupted prompt once per cell (layer, site, position, head) with the clean
  activation written in at that cell, and reports the normalised recovery
  ``(m_patched - m_corrupted) / (m_clean - m_corrupted)``: 1 where the cell alone restores the clean answer, 0
  where it does nothing.
- :func:`attribution_patching` estimates the same numbers from one forward and one backward pass on the corrupted
  prompts: ``m_patched - m_corrupted ~= (a_clean - a_corrupted) . dm/da`` (a first-order Taylor expansion), which
  is exact when the metric is linear in the patched activation and poor where it is not.

Both return a ``ResultTable(kind="patching")``; :func:`patching_error` compares two of them. Hooks are added
through :class:`steerlab._hooks.HookSet` on the layout's site modules (removed also on error); no module is
replaced and no parameter's ``.grad`` is written.

Example:
    >>> metric = logit_diff_metric(tokenizer, [" Mary", " John"], [" John", " Mary"])
    >>> table = activation_patching(model, tokenizer, clean, corrupted, metric, layers=[0, 6, 12])
    >>> table.where(layer=6, position=4)
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from steerlab._forward import frozen_weights, input_device
from steerlab._hooks import HookSet
from steerlab._steer import Intervention, steer
from steerlab._text import encode, forward_kwargs, pad_batch, pad_id
from steerlab.arch import get_layout
from steerlab.arch.registry import check_layer_index
from steerlab.errors import ArchitectureError, DataError
from steerlab.evaluate.metrics import _token_ids
from steerlab.evaluate.results import ResultTable
from steerlab.types import SITES

__all__ = [
    "PATCH_SITES",
    "activation_patching",
    "attribution_patching",
    "logit_diff_metric",
    "patching_error",
]

# Where activations can be patched: the residual/sublayer sites of steerlab.types.SITES, and "head": each attention
# head's output before the attention output projection (that projection's input, split into equal head slices).
PATCH_SITES = (*SITES, "head")
# Names of the attention output projection inside an attention module, over the registered architectures.
_OUT_PROJECTIONS = ("o_proj", "out_proj", "c_proj", "dense")

Prompt = str | Sequence[int]
Metric = Callable[..., torch.Tensor]
Positions = Literal["each", "all"] | Sequence[int]
Steering = Intervention | Sequence[Intervention] | None


def logit_diff_metric(
    tokenizer: Any, correct: str | int | Sequence[str | int], wrong: str | int | Sequence[str | int]
) -> Metric:
    """A metric: the logit of the ``correct`` token minus that of the ``wrong`` one at the last position.

    ``correct`` and ``wrong`` are one token each (text of exactly one token, or an id), or a list with one token
    per pair (e.g. each IOI prompt's own names). The batches are left padded, so the last position is every row's
    last token.

    Example:
        >>> metric = logit_diff_metric(tokenizer, " Mary", " John")
        >>> metric = logit_diff_metric(tokenizer, [" Mary", " Tom"], [" John", " Anna"])   # one per pair
    """
    right, other = _tokens(tokenizer, correct, "correct"), _tokens(tokenizer, wrong, "wrong")
    if len(right) != len(other) and 1 not in (len(right), len(other)):
        raise DataError(f"correct has {len(right)} tokens and wrong {len(other)}; give one each, or one per pair.")

    def metric(logits: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        n = max(len(right), len(other))
        if n > 1 and int(pairs.max()) >= n:
            raise DataError(f"the metric has tokens for {n} pairs, but pair {int(pairs.max())} was asked for.")
        r = torch.tensor(right, device=last.device)[pairs if len(right) > 1 else torch.zeros_like(pairs)]
        w = torch.tensor(other, device=last.device)[pairs if len(other) > 1 else torch.zeros_like(pairs)]
        rows = torch.arange(last.shape[0], device=last.device)
        return last[rows, r] - last[rows, w]

    metric.__name__ = f"logit_diff({_short(correct)} - {_short(wrong)})"
    return metric


def activation_patching(
    model: nn.Module,
    tokenizer: Any,
    clean: Sequence[Prompt],
    corrupted: Sequence[Prompt],
    metric: Metric,
    *,
    layers: Sequence[int] | None = None,
    sites: Sequence[str] = ("resid_post",),
    positions: Positions = "each",
    heads: Sequence[int] | None = None,
    batch_size: int = 16,
) -> ResultTable:
    """Patch each clean activation into the corrupted run, one cell at a time, and measure the recovery.

    Args:
        clean, corrupted: prompts (text or token ids), pair by pair; each pair must tokenize to the same length,
            and with ``positions="each"`` every prompt must (positions are compared across pairs).
        metric: ``metric(logits)`` or ``metric(logits, pairs)`` -> one value per row; ``logits`` are float32
            ``(rows, tokens, vocab)`` of a left-padded batch and ``pairs`` the pair index of each row.
        layers: block indices (negative counts from the last); ``None``: every block.
        sites: any of :data:`PATCH_SITES` (``"head"``: each attention head's output, before the output projection).
        positions: ``"each"`` patches one position at a time; ``"all"`` every position at once; a list of
            indices (negative counts from the end) patches those positions, one at a time (every prompt must then
            have the same token length, as with ``"each"``).
        heads: with the ``"head"`` site, which heads to patch (default: every head).

    Returns:
        ``ResultTable(kind="patching")``: one record per cell (``layer``, ``site``, ``position`` (``"all"`` or an
        index), ``head`` (``None`` except for ``"head"``), ``token``, ``recovery`` (of the pair means), ``metric``
        (the mean patched metric)); ``meta`` holds the clean and corrupted means and the per-pair values.

    Example:
        >>> table = activation_patching(model, tokenizer, clean, corrupted, metric, layers=range(0, 30, 4))
        >>> heads = activation_patching(model, tokenizer, clean, corrupted, metric, sites=["head"], positions=[-1])
    """
    run = _Run.prepare(model, tokenizer, clean, corrupted, metric, layers, sites, positions, batch_size, heads)
    return _activation_table(run, "activation")


def _activation_table(run: _Run, method: str) -> ResultTable:
    """Activation patching of every cell of ``run`` (also :func:`~steerlab.evaluate.circuits.mediation`'s)."""
    model = run.model
    batch_size = run.batch_size
    device = input_device(model)
    cells = run.cells()
    # Every (cell, pair) is one row; rows of different cells share batches (each row patches its own cell).
    rows = [(c, p) for c in range(len(cells)) for p in range(run.n)]
    values = torch.empty(len(cells), run.n, dtype=torch.float64)
    with _eval(model), torch.no_grad():
        clean_acts, clean_m = run.forward(run.clean_ids, record=True, side="clean")
        corrupt_m = run.forward(run.corrupt_ids, side="corrupted")[1]
        run.check_metric(clean_m, corrupt_m)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            pair_index = torch.tensor([p for _, p in chunk])
            ids, mask = run.corrupt_ids[0][pair_index], run.corrupt_ids[1][pair_index]
            with run.steering("corrupted"), HookSet() as hooks:
                for key in {cells[c][:2] for c, _ in chunk}:
                    module, is_input = run.modules[key]
                    picked = [(i, cells[c], p) for i, (c, p) in enumerate(chunk) if cells[c][:2] == key]
                    hooks.on_hidden(module, is_input, _patcher(picked, clean_acts[key], run.head_size))
                logits = model(**forward_kwargs(model, ids.to(device), mask.to(device))).logits.float()
            out = run.call_metric(logits, pair_index)
            for i, (c, p) in enumerate(chunk):
                values[c, p] = out[i]
    return run.table(cells, values, clean_m, corrupt_m, method)


def attribution_patching(
    model: nn.Module,
    tokenizer: Any,
    clean: Sequence[Prompt],
    corrupted: Sequence[Prompt],
    metric: Metric,
    *,
    layers: Sequence[int] | None = None,
    sites: Sequence[str] = ("resid_post",),
    positions: Positions = "each",
    heads: Sequence[int] | None = None,
    batch_size: int = 16,
) -> ResultTable:
    """The first-order estimate of :func:`activation_patching` from one forward and backward pass per batch.

    ``m_patched - m_corrupted ~= (a_clean - a_corrupted) . dm/da`` with the gradient taken on the corrupted run.
    The arguments and the table are those of :func:`activation_patching` (``meta["method"]`` is
    ``"attribution"``). Exact where the metric is linear in the patched activation; expect it to be poor where it is
    far from linear (early residual stream positions, a saturated softmax): measure with :func:`patching_error`.

    Example:
        >>> fast = attribution_patching(model, tokenizer, clean, corrupted, metric)
        >>> patching_error(activation_patching(model, tokenizer, clean, corrupted, metric), fast)
    """
    run = _Run.prepare(model, tokenizer, clean, corrupted, metric, layers, sites, positions, batch_size, heads)
    cells = run.cells()
    with _eval(model), torch.no_grad():
        clean_acts, clean_m = run.forward(run.clean_ids, record=True, side="clean")
    keys = list(run.modules)
    estimates = {key: [] for key in keys}
    corrupt_parts = []
    device = input_device(model)
    with _eval(model), frozen_weights(model):  # gradients reach the taps only
        for start in range(0, run.n, batch_size):
            pair_index = torch.arange(start, min(start + batch_size, run.n))
            ids, mask = run.corrupt_ids[0][pair_index], run.corrupt_ids[1][pair_index]
            found: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
            with torch.enable_grad(), run.steering("corrupted"), HookSet() as hooks:
                for key in keys:
                    module, is_input = run.modules[key]
                    hooks.on_hidden(module, is_input, gradient_tap(found, key))
                logits = model(**forward_kwargs(model, ids.to(device), mask.to(device))).logits.float()
                m = run.call_metric(logits, pair_index)
                # autograd.grad, not backward: nothing is accumulated into any parameter's .grad.
                zeros = [found[key][1] for key in keys]
                grads = torch.autograd.grad(m.sum(), zeros, allow_unused=True)
            corrupt_parts.append(m.detach().double().cpu())
            for key, grad in zip(keys, grads, strict=True):
                act = found[key][0]
                grad = torch.zeros_like(act) if grad is None else grad
                delta = clean_acts[key][pair_index.to(clean_acts[key].device)].to(act.device) - act
                estimates[key].append((delta.double() * grad.double()).cpu())  # (pairs, tokens, width)
            del found, zeros, grads, logits
    corrupt_m = torch.cat(corrupt_parts)
    run.check_metric(clean_m, corrupt_m)
    products = {key: torch.cat(parts) for key, parts in estimates.items()}
    values = torch.empty(len(cells), run.n, dtype=torch.float64)
    for c, (layer, site, position, head) in enumerate(cells):
        x = products[layer, site]
        if head is not None:
            x = x[..., head * run.head_size : (head + 1) * run.head_size]
        x = x.sum(-1)  # (pairs, tokens)
        gain = x.sum(-1) if position == "all" else x[:, run.column(position)]
        values[c] = corrupt_m + gain
    return run.table(cells, values, clean_m, corrupt_m, "attribution")


def patching_error(exact: ResultTable, estimate: ResultTable) -> dict[str, float]:
    """How far an attribution table is from the activation table of the same cells: the largest and mean absolute
    difference of the recoveries, and their Pearson correlation.

    Example:
        >>> patching_error(activation_table, attribution_table)
        {'max_abs': 0.41, 'mean_abs': 0.06, 'correlation': 0.93, 'cells': 96}
    """
    for table in (exact, estimate):
        if table.kind != "patching":
            raise DataError(f"patching_error compares two 'patching' tables, got {table.kind!r}.")
    key = ("layer", "site", "position", "head")
    theirs = {tuple(r.get(k) for k in key): r["recovery"] for r in estimate.records}
    pairs = [(r["recovery"], theirs[tuple(r.get(k) for k in key)]) for r in exact.records]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if len(pairs) != len(exact.records) or len(pairs) != len(estimate.records):
        raise DataError("the two tables do not cover the same cells; run both with the same layers, sites, positions.")
    a = torch.tensor([x for x, _ in pairs], dtype=torch.float64)
    b = torch.tensor([y for _, y in pairs], dtype=torch.float64)
    diff = (a - b).abs()
    corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1]) if len(pairs) > 1 else float("nan")
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "correlation": corr, "cells": len(pairs)}


# -- internals -----------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What both methods share: the tokenized pairs, the resolved cells and modules, the metric."""

    model: nn.Module
    tokenizer: Any
    metric: Metric
    metric_name: str
    n: int
    clean_ids: tuple[torch.Tensor, torch.Tensor]
    corrupt_ids: tuple[torch.Tensor, torch.Tensor]
    lengths: list[int]
    layers: list[int]
    sites: list[str]
    positions: str | list[int]
    modules: dict[tuple[int, str], tuple[nn.Module, bool]]
    heads: list[int]
    head_size: int
    batch_size: int
    clean_steering: Steering = None
    corrupted_steering: Steering = None

    @classmethod
    def prepare(
        cls,
        model: nn.Module,
        tokenizer: Any,
        clean: Sequence[Prompt],
        corrupted: Sequence[Prompt],
        metric: Metric,
        layers: Sequence[int] | None,
        sites: Sequence[str],
        positions: Positions,
        batch_size: int,
        heads: Sequence[int] | None = None,
        clean_steering: Steering = None,
        corrupted_steering: Steering = None,
    ) -> _Run:
        if not callable(metric):
            raise DataError(f"metric must be a function of the logits, got {type(metric).__name__}.")
        if isinstance(positions, str) and positions not in ("each", "all"):
            raise DataError(f"positions must be 'each', 'all' or a list of indices, not {positions!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, not {batch_size!r}.")
        sites = [sites] if isinstance(sites, str) else list(sites)
        unknown = [s for s in sites if s not in PATCH_SITES]
        if unknown or not sites:
            raise ArchitectureError(
                f"unknown patching site(s) {unknown or sites}; expected some of {list(PATCH_SITES)}."
            )
        clean, corrupted = list(clean), list(corrupted)
        if not clean or len(clean) != len(corrupted):
            raise DataError(
                f"expected as many corrupted prompts as clean ones (at least one), got {len(clean)} clean and "
                f"{len(corrupted)} corrupted."
            )
        clean_tok, corrupt_tok = _tokenize(tokenizer, clean, "clean"), _tokenize(tokenizer, corrupted, "corrupted")
        for i, (a, b) in enumerate(zip(clean_tok, corrupt_tok, strict=True)):
            if len(a) != len(b):
                raise DataError(
                    f"pair {i}: the clean prompt {_show(clean[i])} is {len(a)} tokens but the corrupted "
                    f"{_show(corrupted[i])} is {len(b)}; patching compares positions, so each pair must have the "
                    "same token length. Corrupt with words of the same token count (check "
                    "len(tokenizer(text)['input_ids']))."
                )
        lengths = [len(a) for a in clean_tok]
        if positions != "all" and len(set(lengths)) > 1:
            raise DataError(
                f"positions={positions!r} compares positions across pairs, so every prompt must have the same token "
                f"length; found lengths {sorted(set(lengths))}. Use prompts of one template, or positions='all'."
            )
        if not isinstance(positions, str):
            positions = _position_list(positions, lengths[0])
        layout = get_layout(model)
        chosen = range(layout.num_layers) if layers is None else layers
        chosen = list(dict.fromkeys(check_layer_index(i, layout.num_layers, negative=True) for i in chosen))
        if not chosen:
            raise DataError("no layers to patch; give at least one layer index, or layers=None for all.")
        n_heads, head_size, modules = 0, 0, {}
        for layer in chosen:
            for site in sites:
                if site == "head":
                    module, n_heads, head_size = _head_projection(model, layout, layer)
                    modules[layer, site] = (module, True)
                else:
                    modules[layer, site] = layout.site_module(layer, site)
        head_list = _head_list(heads, n_heads, "head" in sites)
        pad = pad_id(tokenizer) if tokenizer is not None else 0
        name = getattr(metric, "__name__", None) or type(metric).__name__
        return cls(
            model, tokenizer, _two_arguments(metric), name, len(clean), pad_batch(clean_tok, pad, side="left"),
            pad_batch(corrupt_tok, pad, side="left"), lengths, chosen, sites, positions, modules, head_list, head_size,
            batch_size, clean_steering, corrupted_steering,
        )  # fmt: skip

    def cells(self) -> list[tuple[int, str, int | str, int | None]]:
        """``(layer, site, position, head)`` of every cell, in table order."""
        if isinstance(self.positions, list):
            spots: list[int | str] = list(self.positions)
        else:
            spots = ["all"] if self.positions == "all" else list(range(self.lengths[0]))
        return [
            (layer, site, position, head)
            for site in self.sites
            for layer in self.layers
            for position in spots
            for head in (self.heads if site == "head" else [None])
        ]

    @contextlib.contextmanager
    def steering(self, side: Literal["clean", "corrupted"]) -> Iterator[None]:
        """The steering of the clean or corrupted runs (none by default; :func:`mediation` steers the clean)."""
        interventions = self.clean_steering if side == "clean" else self.corrupted_steering
        if interventions is None:
            yield
            return
        with steer(self.model, interventions):
            yield

    def column(self, position: int) -> int:
        """The batch column of a prompt position (batches are left padded; with 'each' every row is full)."""
        return self.clean_ids[0].shape[1] - self.lengths[0] + position

    def forward(
        self,
        batch: tuple[torch.Tensor, torch.Tensor],
        *,
        record: bool = False,
        side: Literal["clean", "corrupted"] = "clean",
    ) -> tuple[dict[tuple[int, str], torch.Tensor], torch.Tensor]:
        """The metric of every pair on ``batch`` (and the activations at every (layer, site) with ``record``), with
        ``side``'s steering."""
        device = input_device(self.model)
        acts: dict[tuple[int, str], list[torch.Tensor]] = {key: [] for key in self.modules}
        values = []
        for start in range(0, self.n, self.batch_size):
            pair_index = torch.arange(start, min(start + self.batch_size, self.n))
            ids, mask = batch[0][pair_index], batch[1][pair_index]
            with self.steering(side), HookSet() as hooks:
                if record:
                    for key, (module, is_input) in self.modules.items():
                        hooks.on_hidden(module, is_input, _keeper(acts[key]))
                logits = self.model(**forward_kwargs(self.model, ids.to(device), mask.to(device))).logits.float()
            values.append(self.call_metric(logits, pair_index).double().cpu())
        return {key: torch.cat(parts) for key, parts in acts.items() if parts}, torch.cat(values)

    def call_metric(self, logits: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        out = self.metric(logits, pairs.to(logits.device))
        if not isinstance(out, torch.Tensor) or out.shape != (logits.shape[0],):
            found = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise DataError(
                f"the metric {self.metric_name} must return one value per row, a tensor of shape "
                f"({logits.shape[0]},); it returned {found}."
            )
        return out

    def check_metric(self, clean: torch.Tensor, corrupt: torch.Tensor) -> None:
        if not (torch.isfinite(clean).all() and torch.isfinite(corrupt).all()):
            raise DataError(f"the metric {self.metric_name} is not finite on the clean or corrupted prompts.")
        a, b = float(clean.mean()), float(corrupt.mean())
        if abs(a - b) <= 1e-9 * (1.0 + abs(a) + abs(b)):
            if self.clean_steering is not None or self.corrupted_steering is not None:
                raise DataError(
                    f"the metric {self.metric_name} has the same mean with and without the steering ({a:.6g}); "
                    "there is no effect to mediate. Expected a steering that moves the metric: a larger alpha, "
                    "another layer, or a metric the vector acts on."
                )
            raise DataError(
                f"the metric {self.metric_name} has the same mean on the clean and the corrupted prompts ({a:.6g}); "
                "there is no difference to patch. Expected a metric that separates them, e.g. the logit of the "
                "clean answer minus the corrupted answer's."
            )

    def table(
        self, cells: list, values: torch.Tensor, clean_m: torch.Tensor, corrupt_m: torch.Tensor, method: str
    ) -> ResultTable:
        clean_mean, corrupt_mean = float(clean_m.mean()), float(corrupt_m.mean())
        tokens = self._tokens()
        records = []
        for (layer, site, position, head), row in zip(cells, values, strict=True):
            patched = float(row.mean())
            records.append({
                "layer": layer, "site": site, "position": position, "head": head,
                "token": tokens[position] if position != "all" and tokens else None,
                "recovery": (patched - corrupt_mean) / (clean_mean - corrupt_mean), "metric": patched,
            })  # fmt: skip
        meta = {
            "method": method, "metric": self.metric_name, "n_pairs": self.n, "positions": self.positions,
            "layers": self.layers, "sites": self.sites, "heads": self.heads if "head" in self.sites else None,
            "clean_metric": clean_mean, "corrupted_metric": corrupt_mean,
            "clean_per_pair": [float(v) for v in clean_m], "corrupted_per_pair": [float(v) for v in corrupt_m],
        }  # fmt: skip
        return ResultTable("patching", records, meta)

    def _tokens(self) -> list[str] | None:
        """The first clean prompt's tokens, to label positions."""
        if self.positions == "all" or self.tokenizer is None:
            return None
        ids = self.clean_ids[0][0, self.clean_ids[0].shape[1] - self.lengths[0] :].tolist()
        try:
            return [self.tokenizer.decode([i]) for i in ids]
        except Exception:  # a tokenizer without decode: positions stay unlabelled
            return None


class _eval:
    """Eval mode for the duration (dropout off), restoring the model's mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def _keeper(parts: list[torch.Tensor]) -> Callable[[torch.Tensor], None]:
    def keep(hidden: torch.Tensor) -> None:
        parts.append(hidden.detach().clone())

    return keep


def gradient_tap(found: dict, key: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Add a zero leaf to the activation: its gradient is the activation's, through every later path. Stores
    ``(activation, leaf)`` under ``key``; it works with the weights frozen (nothing else need require grad)."""

    def tap(hidden: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros_like(hidden, requires_grad=True)
        found[key] = (hidden.detach(), zero)
        return hidden + zero

    return tap


def _patcher(picked: list, source: torch.Tensor, head_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Write the clean activation of each picked row's pair into that row, at its cell."""

    def patch(hidden: torch.Tensor) -> torch.Tensor:
        out = hidden.clone()
        for row, (_, _, position, head), pair in picked:
            clean = source[pair].to(out.device, out.dtype)
            span = slice(None) if head is None else slice(head * head_size, (head + 1) * head_size)
            # "all": the batches are padded to the same width as the clean one; "each": every prompt is full width.
            where = slice(None) if position == "all" else position
            out[row, where, span] = clean[where, span]
        return out

    return patch


def _head_projection(model: nn.Module, layout: Any, layer: int) -> tuple[nn.Module, int, int]:
    """The attention output projection of block ``layer`` (its input holds the heads side by side)."""
    return layout.heads(layer)


def _position_list(positions: Sequence[int], length: int) -> list[int]:
    """Positions given as indices (negative from the end) as indices from the start, checked."""
    found = list(positions)
    bad = [p for p in found if isinstance(p, bool) or not isinstance(p, int) or not -length <= p < length]
    if not found or bad:
        raise DataError(
            f"positions {found!r}: expected a non-empty list of indices into the {length}-token prompts "
            f"({-length} to {length - 1}; negative counts from the end), or 'each' or 'all'."
        )
    return list(dict.fromkeys(p % length for p in found))


def _head_list(heads: Sequence[int] | None, n_heads: int, has_head_site: bool) -> list[int]:
    """The heads to patch: all by default; a given list must fit the model and comes with the 'head' site."""
    if heads is None:
        return list(range(n_heads))
    found = list(heads)
    if not has_head_site:
        raise DataError(f"heads={found!r} selects attention heads, which needs the 'head' site in sites.")
    bad = [h for h in found if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < n_heads]
    if not found or bad:
        raise DataError(f"heads {found!r}: expected a non-empty list of head indices 0-{n_heads - 1}.")
    return list(dict.fromkeys(found))


def _two_arguments(metric: Metric) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``metric`` as ``f(logits, pairs)`` (a one-argument metric ignores the pair indices)."""
    try:
        params = [
            p
            for p in inspect.signature(metric).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
    except (TypeError, ValueError):
        return metric
    if len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params):
        return metric
    return lambda logits, pairs: metric(logits)


def _tokenize(tokenizer: Any, prompts: list[Prompt], what: str) -> list[list[int]]:
    out = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if tokenizer is None:
                raise DataError(f"{what} prompt {i} is text but no tokenizer was given; pass one, or token ids.")
            out.append(encode(tokenizer, [prompt])[0])
        elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(t, int) for t in prompt):
            out.append(list(prompt))
        elif isinstance(prompt, torch.Tensor) and prompt.dim() == 1 and prompt.numel():
            out.append([int(t) for t in prompt])
        else:
            raise DataError(f"{what} prompt {i} must be text or a non-empty list of token ids, got {_show(prompt)}.")
    return out


def _tokens(tokenizer: Any, spec: Any, what: str) -> list[int]:
    """One token or several (ids, or one-token texts): the metrics' own token reader, after the checks it leaves
    to its callers (a bare token, a missing tokenizer)."""
    items = [spec] if isinstance(spec, (str, int)) else list(spec)
    if tokenizer is None and not all(isinstance(t, int) and not isinstance(t, bool) for t in items):
        raise DataError(f"{what}: {items!r} must be token ids, or one-token texts with a tokenizer.")
    return _token_ids(tokenizer, items, what)


def _short(spec: Any) -> str:
    text = repr(spec)
    return text if len(text) <= 40 else text[:37] + "..."


def _show(prompt: Any) -> str:
    text = repr(prompt) if not isinstance(prompt, torch.Tensor) else f"tensor{tuple(prompt.shape)}"
    return text if len(text) <= 80 else text[:77] + "..."
