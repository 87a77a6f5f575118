"""Which components carry a steering vector's effect: patch the steered activations of one component at a time into
the unsteered run (:func:`mediation`), or of a set of components at once in either direction (:func:`patch_nodes`).

Steering adds a vector at one layer; everything downstream then computes on the changed residual stream. The effect
of the steering on a metric (``m_steered - m_unsteered``) reaches the logits through the later attention heads and
MLPs and directly through the residual stream. :func:`mediation` runs the prompts unsteered with one component's
output replaced by its steered value and reports the share of the whole effect that this one component alone
restores: activation patching (:mod:`steerlab.evaluate.patching`, the same engine and table) with the steered run
as the clean one. :func:`patch_nodes` patches several components at once, which answers "steer only through these
nodes" (steered values into the unsteered run) and "ablate the steering at these nodes" (unsteered values into the
steered run), and also patches a circuit's nodes from clean into corrupted prompts.

Example:
    >>> steering = Intervention(vec, alpha=0.15, layers=[10])
    >>> table = mediation(model, tokenizer, prompts, steering, metric, layers=range(10, 30))
    >>> nodes = [(r["layer"], r["site"], r["head"]) for r in sorted(table.records, key=lambda r: -r["recovery"])[:5]]
    >>> patch_nodes(model, tokenizer, prompts, prompts, metric, nodes, clean_steering=steering)["recovery"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from steerlab._forward import input_device
from steerlab._hooks import HookSet
from steerlab._text import forward_kwargs
from steerlab.arch import get_layout
from steerlab.arch.registry import check_layer_index
from steerlab.errors import DataError
from steerlab.evaluate.patching import (
    PATCH_SITES,
    Metric,
    Prompt,
    Steering,
    _activation_table,
    _eval,
    _patcher,
    _Run,
)
from steerlab.evaluate.results import ResultTable

__all__ = ["Node", "mediation", "patch_nodes"]

Node = tuple[int, str] | tuple[int, str, int | None]
"""A component: ``(layer, site)`` (a site of :data:`~steerlab.evaluate.patching.PATCH_SITES` but ``"head"``) or
``(layer, "head", head)``."""


def mediation(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    steering: Steering,
    metric: Metric,
    *,
    layers: Sequence[int] | None = None,
    sites: Sequence[str] = ("attn_out", "mlp_out"),
    heads: Sequence[int] | None = None,
    batch_size: int = 16,
) -> ResultTable:
    """The share of a steering intervention's effect on ``metric`` that each component alone carries.

    Each cell runs the prompts unsteered with one component's output (every position) replaced by its value under
    ``steering``: ``recovery = (m_patched - m_unsteered) / (m_steered - m_unsteered)``, 1 where the component alone
    brings the whole effect, 0 where it brings none, negative where it works against it. Components upstream of the
    steered layer are exactly 0 (nothing there changes). The shares need not add up to 1: the vector also reaches
    the logits directly through the residual stream, and components interact.

    Args:
        prompts: texts or token ids (any lengths: every position is patched).
        steering: the :class:`~steerlab.Intervention` (or several) whose effect is split.
        metric: as in :func:`~steerlab.evaluate.patching.activation_patching` (``metric(logits)`` or
            ``metric(logits, prompt_index)``, one value per row).
        layers: blocks (default: every block); ``sites``: any of ``PATCH_SITES`` (``"head"`` per attention head,
            ``heads`` choosing which).

    Returns:
        ``ResultTable(kind="patching")`` with ``meta["method"] == "mediation"``: one record per (layer, site, head),
        ``position`` ``"all"``; ``clean_metric`` is the steered mean and ``corrupted_metric`` the unsteered one.

    Example:
        >>> metric = logit_diff_metric(tokenizer, " good", " bad")
        >>> table = mediation(model, tokenizer, prompts, Intervention(vec, alpha=0.15, layers=[10]), metric,
        ...                   layers=range(10, 30))
        >>> sorted(table.records, key=lambda r: -r["recovery"])[:3]
    """
    if steering is None:
        raise DataError("mediation splits the effect of a steering: give an Intervention (or several), not None.")
    prompts = list(prompts)
    run = _Run.prepare(model, tokenizer, prompts, prompts, metric, layers, sites, "all", batch_size, heads,
                       clean_steering=steering)  # fmt: skip
    return _activation_table(run, "mediation")


def patch_nodes(
    model: nn.Module,
    tokenizer: Any,
    clean: Sequence[Prompt],
    corrupted: Sequence[Prompt],
    metric: Metric,
    nodes: Sequence[Node],
    *,
    clean_steering: Steering = None,
    corrupted_steering: Steering = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Patch the clean run's outputs of every node at once (every position) into the corrupted run.

    Uses: a circuit's sufficiency (clean and corrupted prompts, the circuit's nodes); steering only through some
    nodes (``clean=corrupted=prompts, clean_steering=steering``: the steered values of the nodes into the unsteered
    run); ablating a steering at some nodes (``corrupted_steering=steering``: the unsteered values into the steered
    run, and ``recovery`` is the share of the effect removed).

    Returns:
        ``{"clean_metric", "corrupted_metric", "patched_metric", "recovery", "n_pairs", "nodes"}``: the means over
        pairs and ``recovery = (patched - corrupted) / (clean - corrupted)``.

    Example:
        >>> circuit = [(9, "head", 6), (10, "head", 1), (14, "mlp_out")]
        >>> patch_nodes(model, tokenizer, clean, corrupted, metric, circuit)["recovery"]
        >>> patch_nodes(model, tokenizer, prompts, prompts, metric, circuit, clean_steering=steering)
    """
    cells = [_node(node) for node in nodes]
    if not cells:
        raise DataError("nodes is empty; give at least one (layer, site) or (layer, 'head', head).")
    count = get_layout(model).num_layers
    cells = list(
        dict.fromkeys((check_layer_index(layer, count, negative=True), site, head) for layer, site, head in cells)
    )
    layers = sorted({layer for layer, _, _ in cells})
    sites = list(dict.fromkeys(site for _, site, _ in cells))
    head_list = sorted({head for _, site, head in cells if site == "head"}) or None
    run = _Run.prepare(model, tokenizer, clean, corrupted, metric, layers, sites, "all", batch_size, head_list,
                       clean_steering=clean_steering, corrupted_steering=corrupted_steering)  # fmt: skip
    device = input_device(model)
    patched = []
    with _eval(model), torch.no_grad():
        clean_acts, clean_m = run.forward(run.clean_ids, record=True, side="clean")
        corrupt_m = run.forward(run.corrupt_ids, side="corrupted")[1]
        run.check_metric(clean_m, corrupt_m)
        for start in range(0, run.n, run.batch_size):
            pair_index = torch.arange(start, min(start + run.batch_size, run.n))
            ids, mask = run.corrupt_ids[0][pair_index], run.corrupt_ids[1][pair_index]
            with run.steering("corrupted"), HookSet() as hooks:
                for key in dict.fromkeys((layer, site) for layer, site, _ in cells):
                    module, is_input = run.modules[key]
                    picked = [(row, (layer, site, "all", head), int(pair))
                              for row, pair in enumerate(pair_index)
                              for layer, site, head in cells if (layer, site) == key]  # fmt: skip
                    hooks.on_hidden(module, is_input, _patcher(picked, clean_acts[key], run.head_size))
                logits = model(**forward_kwargs(model, ids.to(device), mask.to(device))).logits.float()
            patched.append(run.call_metric(logits, pair_index).double().cpu())
    clean_mean, corrupt_mean, patched_mean = (
        float(clean_m.mean()),
        float(corrupt_m.mean()),
        float(torch.cat(patched).mean()),
    )
    return {
        "clean_metric": clean_mean,
        "corrupted_metric": corrupt_mean,
        "patched_metric": patched_mean,
        "recovery": (patched_mean - corrupt_mean) / (clean_mean - corrupt_mean),
        "n_pairs": run.n,
        "nodes": [list(node) for node in cells],
    }


def _node(node: Any) -> tuple[int, str, int | None]:
    """A node as ``(layer, site, head)``, checked (the model-dependent checks are the patching run's)."""
    items = list(node) if isinstance(node, (tuple, list)) else None
    if items is not None and len(items) == 3 and items[1] != "head" and items[2] is None:
        items = items[:2]  # (layer, site, None), as the patching tables' records give it
    ok = (
        items is not None
        and len(items) in (2, 3)
        and isinstance(items[0], int)
        and not isinstance(items[0], bool)
        and items[1] in PATCH_SITES
        and ((items[1] == "head") == (len(items) == 3))
        and (len(items) == 2 or (isinstance(items[2], int) and not isinstance(items[2], bool)))
    )
    if not ok:
        raise DataError(
            f"node {node!r}: expected (layer, site) with a site of {[s for s in PATCH_SITES if s != 'head']}, or "
            "(layer, 'head', head index)."
        )
    return items[0], items[1], items[2] if len(items) == 3 else None
