"""Directions from contrasting activations.

The functions at the top are pure: ``(positives, negatives) -> direction`` on ``(n_pairs, hidden)``
tensors, row ``i`` of each forming pair ``i``. :func:`extract_vector` runs the model and applies one of them
at every layer.

Methods:

* ``mean_diff`` (CAA, Rimsky et al.): mean of ``pos - neg``.
* ``pca_diff`` (repeng's ``pca_diff``): first principal component of the pair differences, after centring
  them (so it is the main axis along which the differences *vary*; equal to repeng's output).
* ``pca_center`` (RepE / repeng's ``pca_center``): first principal component of the activations after each
  pair is centred on its own midpoint; this keeps the mean difference and is the more stable of the two.
* ``actadd`` (Turner et al.): the difference of a single pair.

PCA directions are unit vectors with their sign fixed so that, in most pairs, the positive text projects
higher than the negative one (ties broken by the mean projection).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from steerlab.data import ContrastPair, dataset_hash, pair_texts
from steerlab.errors import ExtractionError
from steerlab.models import fingerprint, model_id
from steerlab.record import Reduce, record

__all__ = ["METHODS", "actadd", "extract_vector", "mean_diff", "pca_center", "pca_diff"]


def _check(pos: torch.Tensor, neg: torch.Tensor, *, min_pairs: int = 1, method: str = "") -> None:
    if pos.dim() != 2 or pos.shape != neg.shape:
        raise ExtractionError(
            f"{method}: positives and negatives must both be (n_pairs, hidden) with the same shape; found "
            f"{tuple(pos.shape)} and {tuple(neg.shape)}. Pass one positive and one negative per pair."
        )
    if pos.shape[0] < min_pairs:
        raise ExtractionError(f"{method} needs at least {min_pairs} pairs, found {pos.shape[0]}.")
    bad = ~(torch.isfinite(pos).all(-1) & torch.isfinite(neg).all(-1))
    if bad.any():
        rows = bad.nonzero().flatten().tolist()[:5]
        raise ExtractionError(
            f"{method}: activations of pairs {rows} contain NaN or inf (the model overflowed, often fp16 on "
            "a model trained in bf16). Load the model in float32 or bfloat16."
        )


def mean_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Mean of ``pos - neg`` (CAA). Not normalised: its norm is the typical separation of the pairs."""
    _check(pos, neg, method="mean_diff")
    return (pos.double() - neg.double()).mean(0).to(pos.dtype)


def actadd(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """The difference of a single pair (ActAdd: e.g. "Love" minus "Hate")."""
    if pos.shape[0] != 1:
        raise ExtractionError(
            f"actadd uses exactly one contrast pair, found {pos.shape[0]}; use mean_diff for several pairs."
        )
    _check(pos, neg, method="actadd")
    return (pos[0].double() - neg[0].double()).to(pos.dtype)


def _first_component(points: torch.Tensor) -> torch.Tensor:
    # Right singular vector of the (already centred) data: the first principal axis.
    _, _, vh = torch.linalg.svd(points.double(), full_matrices=False)
    return vh[0]


def _orient(direction: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    proj = (pos.double() - neg.double()) @ direction
    votes = int((proj > 0).sum()) - int((proj < 0).sum())
    if votes < 0 or (votes == 0 and float(proj.mean()) < 0):
        direction = -direction
    return direction


def pca_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First principal component of the centred pair differences (repeng ``pca_diff``), unit norm."""
    _check(pos, neg, min_pairs=2, method="pca_diff")
    diffs = pos.double() - neg.double()
    diffs = diffs - diffs.mean(0)
    if float(diffs.abs().max()) == 0.0:
        raise ExtractionError(
            "pca_diff: all pair differences are identical, so they have no principal axis; use mean_diff or pca_center."
        )
    return _orient(_first_component(diffs), pos, neg).to(pos.dtype)


def pca_center(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First principal component of the activations centred on each pair's midpoint (RepE), unit norm."""
    _check(pos, neg, min_pairs=2, method="pca_center")
    mid = (pos.double() + neg.double()) / 2
    points = torch.cat([pos.double() - mid, neg.double() - mid])
    return _orient(_first_component(points), pos, neg).to(pos.dtype)


METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean_diff": mean_diff,
    "pca_diff": pca_diff,
    "pca_center": pca_center,
    "actadd": actadd,
}


def extract_vector(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[ContrastPair],
    *,
    layers: Sequence[int] | int,
    method: str = "mean_diff",
    reduce: Reduce = "last",
    site: str = "resid_post",
    normalize: bool = False,
    chat: bool | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
):
    """Extract a :class:`~steerlab.vector.SteeringVector` (one direction per layer) from contrast pairs.

    Args:
        layers: block indices to read (0-based, Hugging Face numbering).
        method: one of ``mean_diff``, ``pca_diff``, ``pca_center``, ``actadd``.
        reduce: which tokens stand for a text: ``last`` (default) or ``mean`` (first token excluded).
        site: where in the block to read (``resid_post`` default; see :data:`steerlab.arch.SITES`).
        normalize: scale each layer's direction to unit norm, so ``alpha`` is a force in residual units.
        chat: put a pair's ``prompt`` in the chat template (``None``: when the tokenizer has one).

    Example:
        >>> pairs = [ContrastPair("I love it", "I hate it"), ContrastPair("So happy", "So sad")]
        >>> vec = extract_vector(model, tokenizer, pairs, layers=[12], method="mean_diff")
        >>> vec.save("sentiment.safetensors")
    """
    from steerlab.vector import SteeringVector

    if method not in METHODS:
        raise ExtractionError(f"unknown method {method!r}; choose one of {sorted(METHODS)}.")
    if reduce == "all":
        raise ExtractionError("reduce='all' gives one row per token, not per pair; use 'last' or 'mean'.")
    pairs = list(pairs)
    if not pairs:
        raise ExtractionError("no contrast pairs were given; at least one is needed (two for PCA methods).")
    pos_texts, neg_texts = pair_texts(pairs, tokenizer, chat=chat)
    acts = record(
        model,
        tokenizer,
        pos_texts + neg_texts,
        layers=layers,
        reduce=reduce,
        batch_size=batch_size,
        progress=progress,
    )
    n = len(pairs)
    directions = {}
    for layer in acts.layers:
        values = acts.values[layer]
        directions[layer] = METHODS[method](values[:n], values[n:]).float()
    vector = SteeringVector(
        directions=directions,
        model_id=model_id(model),
        fingerprint=fingerprint(model),
        site=site,
        method=method,
        dataset_hash=dataset_hash(pairs),
        resid_norm=acts.resid_norm,
        extra={"reduce": reduce, "n_pairs": n},
    )
    return vector.normalized_copy() if normalize else vector
