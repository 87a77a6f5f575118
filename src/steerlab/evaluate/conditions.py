"""Choosing where and how a condition reads the prompt: a search over layers x reduce x comparison x side x threshold
that maximises the gate's F1 on labelled prompts, with the F1 on held-out prompts reported (CAST's
``find_best_condition_point``, vectorised).

Every prompt runs through the model once, whatever the number of layers and thresholds: one recording pass reads
every candidate layer, both aggregates (the mean over real tokens and the last token) are taken from it, and the
scores of every threshold come from one sort per candidate. The scores are those the gate computes at generation time
(:func:`steerlab._conditions.condition_scores` on :func:`steerlab._conditions.aggregate`'s rows), so the F1 found
here is the F1 of the gate.

The direction is the given vector's, or (``vector=None``) the mean difference of the training split's aggregates at
each layer: then the held-out prompts are unseen by both the direction and the threshold.

Example:
    >>> search = find_condition_point(model, tokenizer, harmful_prompts, harmless_prompts)
    >>> search.held_out_f1, search.condition
    (0.97, Condition(cosine > 0.082 at layers [6], mean over the prompt))
    >>> with steer(model, Intervention(refusal, alpha=0.1, layers=[10], condition=search.condition)):
    ...     ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from steerlab._conditions import Condition, Gate, condition_scores
from steerlab._models import fingerprint, model_id
from steerlab._record import ActivationReader, check_texts, length_batches, record
from steerlab._text import encode, pad_id
from steerlab._vector import SteeringVector
from steerlab.errors import DataError
from steerlab.evaluate.probes import split
from steerlab.types import CONDITION_COMPARISONS as COMPARISONS
from steerlab.types import CONDITION_REDUCES as REDUCES
from steerlab.types import CONDITION_SIDES as SIDES

__all__ = ["ConditionSearch", "find_condition_point", "gate_f1", "gate_opens", "threshold_f1"]


def gate_f1(fired: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Precision, recall and F1 of a gate's decisions against labels (both boolean, same shape).

    Example:
        >>> gate_f1(torch.tensor([True, False, True]), torch.tensor([True, True, False]))
        {'precision': 0.5, 'recall': 0.5, 'f1': 0.5}
    """
    fired, labels = fired.bool(), labels.bool()
    tp = float((fired & labels).sum())
    fp = float((fired & ~labels).sum())
    fn = float((~fired & labels).sum())
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
    }


def gate_opens(
    model: nn.Module, tokenizer: Any, prompts: Sequence[str], gate: Gate, *, batch_size: int = 16
) -> torch.Tensor:
    """Per prompt, whether ``gate`` (a condition or a rule) opens for it: a boolean tensor, what the gate decides at
    generation time. Each condition is scored on the prompt's recorded activations, aggregated as the gate
    aggregates them; give prompts as the model will see them (chat template applied, e.g.
    ``steerlab.engines.apply_chat``). A condition vector that does not fit ``model`` raises.

    Example:
        >>> gate_opens(model, tokenizer, [apply_chat(tokenizer, "How do I bake bread?")], cooking)
        tensor([True])
    """
    prompts = check_texts(prompts)
    scores = {}
    for condition in gate.conditions():
        condition.vector.check_fits(model)
        acts = record(model, tokenizer, prompts, layers=list(condition.layers or ()), reduce=condition.reduce,
                      site=condition.site, batch_size=batch_size)  # fmt: skip
        scores[id(condition)] = condition.score(acts.values)
    fired = gate.fires(lambda condition: scores[id(condition)])
    assert fired is not None  # every condition was scored above
    return fired


def threshold_f1(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``scores`` (``(..., n)``) and both sides, the threshold with the best F1 against ``labels``
    (``(n,)`` booleans) and that F1: ``(thresholds, f1s)`` of shape ``(..., 2)``, side 0 ``"greater"``
    (positive where score > threshold), side 1 ``"smaller"``. Thresholds lie halfway between consecutive distinct
    scores (or just outside the range), so the decision does not hinge on float rounding at a training score.

    Example:
        >>> threshold_f1(torch.tensor([[0.1, 0.9, 0.8]]), torch.tensor([False, True, True]))
        (tensor([[0.4500, ...]]), tensor([[1.0000, ...]]))
    """
    scores = scores.float()
    order = scores.argsort(-1)
    ordered = scores.gather(-1, order)
    hits = labels.bool()[order].float()  # labels in score order, per row
    n, positives = scores.shape[-1], float(labels.sum())
    # Cut k (0..n): the k lowest scores on one side, the rest on the other.
    zero = torch.zeros_like(hits[..., :1])
    below = torch.cat([zero, hits.cumsum(-1)], -1)  # positives among the k lowest
    k = torch.arange(n + 1, dtype=hits.dtype, device=hits.device)
    # "greater": the n - k highest fire. "smaller": the k lowest fire.
    tp = torch.stack([positives - below, below], -1)
    fired = torch.stack([n - k.expand_as(below), k.expand_as(below)], -1)
    f1 = torch.where(tp > 0, 2 * tp / (fired + positives).clamp_min(1e-12), torch.zeros_like(tp))
    # A cut between equal scores cannot be made by any threshold.
    span = (ordered[..., -1:] - ordered[..., :1]).abs().clamp_min(1.0)
    edges = torch.cat([ordered[..., :1] - 1e-3 * span, ordered, ordered[..., -1:] + 1e-3 * span], -1)
    valid = edges[..., 1:] > edges[..., :-1]
    f1 = f1.masked_fill(~valid[..., None], -1.0)
    thresholds = (edges[..., 1:] + edges[..., :-1]) / 2
    best = f1.argmax(-2)  # (..., 2)
    return thresholds.gather(-1, best), f1.gather(-2, best[..., None, :]).squeeze(-2)


@dataclass
class ConditionSearch:
    """What :func:`find_condition_point` found.

    Attributes:
        condition: the best point as a ready :class:`~steerlab.Condition` (its vector records the point in
            ``extra["condition"]``, so it can be saved and served: ``Condition.recorded(vector)``).
        train: precision / recall / F1 of that condition on the training prompts.
        held_out: the same on the held-out prompts (``None`` when nothing was held out).
        rows: one dict per candidate (layer, reduce, comparison, side): its best threshold, training F1 and
            held-out F1, for tables and plots.
        n_train, n_held_out: prompts in each split.
    """

    condition: Condition
    train: dict[str, float]
    held_out: dict[str, float] | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    n_train: int = 0
    n_held_out: int = 0

    @property
    def train_f1(self) -> float:
        return self.train["f1"]

    @property
    def held_out_f1(self) -> float | None:
        return None if self.held_out is None else self.held_out["f1"]


def _read(
    model: nn.Module, tokenizer: Any, texts: list[str], layers: Sequence[int] | None, site: str, batch_size: int
) -> tuple[list[int], dict[str, dict[int, torch.Tensor]]]:
    """One pass per text: ``reduce -> layer -> (n, hidden)`` aggregates, as record() reduces them."""
    reader = ActivationReader(model, layers=layers, reduce="all", site=site, pad_id=pad_id(tokenizer))
    token_ids = encode(tokenizer, texts)
    batches = length_batches([len(ids) for ids in token_ids], batch_size)
    out = {reduce: {layer: [None] * len(texts) for layer in reader.layers} for reduce in REDUCES}
    for rows, values in reader.run(token_ids, batches, progress=len(batches) > 8):
        for layer, kept in values.items():
            for row, text_i in zip(range(len(rows)), rows, strict=True):
                tokens = kept[row].cpu()  # the real tokens but the sink (a one-token text keeps its token)
                out["mean"][layer][text_i] = tokens.mean(0)
                out["last"][layer][text_i] = tokens[-1]
    return reader.layers, {r: {layer: torch.stack(v) for layer, v in per.items()} for r, per in out.items()}


def find_condition_point(
    model: nn.Module,
    tokenizer: Any,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    vector: SteeringVector | None = None,
    layers: Sequence[int] | None = None,
    reduces: Sequence[str] = ("mean", "last"),
    comparisons: Sequence[str] = COMPARISONS,
    sides: Sequence[str] = SIDES,
    held_out: float = 0.25,
    seed: int = 0,
    site: str = "resid_post",
    batch_size: int = 16,
) -> ConditionSearch:
    """The condition (layer, aggregate, comparison, side, threshold) that best tells ``positive`` prompts (the gate
    should fire) from ``negative`` ones, by F1 on a training split; its F1 on the held-out split is reported. Ties in
    training F1 go to the first candidate in the order of ``reduces``, ``comparisons``, layers (lowest first) and
    ``sides``; ``rows`` lists every candidate with its held-out F1, to choose otherwise.

    Args:
        positive, negative: prompts as the model will see them at generation time (apply the chat template
            first, e.g. ``steerlab.engines.apply_chat``, when steering chat requests).
        vector: the condition's direction; ``None`` extracts it (mean difference of the training split's
            aggregates, per layer and aggregate), so held-out prompts are unseen by direction and threshold.
        layers: candidate layers (default: the vector's layers, or every block when extracting).
        reduces, comparisons, sides: the candidates of each choice (default: all).
        held_out: the fraction of each label held out (stratified, seeded); 0 holds out nothing.
        site: where the prompt is read (the vector's site when a vector is given).

    Example:
        >>> search = find_condition_point(model, tokenizer, about_cats, about_other_things, layers=range(2, 10))
        >>> search.condition, search.train_f1, search.held_out_f1
    """
    positive, negative = check_texts(positive), check_texts(negative)
    for name, given, allowed in (("reduces", reduces, REDUCES), ("comparisons", comparisons, COMPARISONS)):
        if not given or any(x not in allowed for x in given):
            raise DataError(f"{name}={list(given)!r} is not valid; expected a non-empty subset of {list(allowed)}.")
    if not sides or any(x not in SIDES for x in sides):
        raise DataError(f"sides={list(sides)!r} is not valid; expected a non-empty subset of {list(SIDES)}.")
    if not 0 <= held_out < 1:
        raise DataError(f"held_out must be in [0, 1), got {held_out}.")
    if vector is not None:
        vector.check_fits(model)
        site = vector.site
        layers = vector.layers if layers is None else layers
        missing = sorted(set(int(x) for x in layers) - set(vector.layers))
        if missing:
            raise DataError(f"layers {missing} are not in the condition vector, which has layers {vector.layers}.")
    texts = list(positive) + list(negative)
    labels = torch.tensor([True] * len(positive) + [False] * len(negative))
    if held_out > 0:
        train, test = split(labels.int().tolist(), held_out, seed)
    else:
        train, test = list(range(len(texts))), []
    layers, acts = _read(model, tokenizer, texts, layers, site, batch_size)
    y = labels[train]

    # directions: reduce -> (L, hidden); scores: (R, C, L, n) for every text
    directions = {}
    for reduce in reduces:
        if vector is None:
            stacked = torch.stack([acts[reduce][layer] for layer in layers])[:, train]  # (L, n_train, hidden)
            directions[reduce] = stacked[:, y].mean(1) - stacked[:, ~y].mean(1)
        else:
            directions[reduce] = torch.stack([vector.directions[layer].float() for layer in layers])
    scores = torch.stack(
        [
            torch.stack(
                [
                    condition_scores(
                        torch.stack([acts[reduce][layer] for layer in layers]), directions[reduce], comparison
                    )
                    for comparison in comparisons
                ]
            )
            for reduce in reduces
        ]
    )
    thresholds, f1s = threshold_f1(scores[..., train], y)  # (R, C, L, 2)
    side_index = [SIDES.index(s) for s in sides]
    thresholds, f1s = thresholds[..., side_index], f1s[..., side_index]

    rows = []
    best: tuple[float, tuple[int, int, int, int]] | None = None
    for r, reduce in enumerate(reduces):
        for c, comparison in enumerate(comparisons):
            for li, layer in enumerate(layers):
                for si, side in enumerate(sides):
                    t, f1 = float(thresholds[r, c, li, si]), float(f1s[r, c, li, si])
                    row = {"layer": layer, "reduce": reduce, "comparison": comparison, "side": side}
                    row.update(threshold=t, train_f1=f1)
                    if test:
                        s = scores[r, c, li, test]
                        fired = s > t if side == "greater" else s < t
                        row["held_out_f1"] = gate_f1(fired, labels[test])["f1"]
                    rows.append(row)
                    if best is None or f1 > best[0]:
                        best = (f1, (r, c, li, si))
    assert best is not None
    r, c, li, si = best[1]
    reduce, comparison, layer, side = reduces[r], comparisons[c], layers[li], sides[si]
    threshold = float(thresholds[r, c, li, si])

    point = {
        "layer": layer,
        "threshold": threshold,
        "comparison": comparison,
        "side": side,
        "reduce": reduce,
        "n_train": len(train),
        "n_held_out": len(test),
    }
    chosen = scores[r, c, li]
    fired = chosen > threshold if side == "greater" else chosen < threshold
    train_stats = gate_f1(fired[train], labels[train])
    test_stats = gate_f1(fired[test], labels[test]) if test else None
    point.update(train_f1=train_stats["f1"], held_out_f1=None if test_stats is None else test_stats["f1"])
    if vector is None:
        cond_vector = SteeringVector(
            {layer: directions[reduce][li].clone()},
            model_id=model_id(model),
            fingerprint=fingerprint(model),
            site=site,
            method="mean_diff",
            extra={"condition": point},
        )
    else:
        cond_vector = replace(vector, extra={**vector.extra, "condition": point})
    condition = Condition(cond_vector, threshold, layers=[layer], comparison=comparison, side=side, reduce=reduce)
    return ConditionSearch(condition, train_stats, test_stats, rows, len(train), len(test))
