"""Unsupervised structure of the residual stream: PCA of activations (each axis usable as a steering vector),
covariance and correlation of activations, and the cosine similarity of a concept's vectors across layers.

These are open questions rather than recipes: a principal axis of activations over varied texts need not be a
concept, and what steering along it does is for the user to look at (``compare(model, tokenizer, prompts,
pca.vector(0), ...)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from steerlab._models import ModelFingerprint, fingerprint, model_id
from steerlab._record import Reduce, record
from steerlab._vector import SteeringVector
from steerlab.errors import DataError
from steerlab.evaluate.results import ResultTable

__all__ = ["ActivationPCA", "activation_covariance", "activation_pca", "cosine_matrix", "cross_layer_cosine"]


@dataclass
class ActivationPCA:
    """Principal axes of activations at one layer. ``components`` are unit rows ``(k, hidden)``,
    ``explained`` the share of variance of each, ``projections`` the texts' coordinates ``(n, k)``."""

    layer: int
    mean: torch.Tensor
    components: torch.Tensor
    explained: list[float]
    projections: torch.Tensor
    labels: list[Any] | None
    resid_norm: float
    site: str
    model_id: str
    fingerprint: ModelFingerprint

    def vector(self, index: int = 0) -> SteeringVector:
        """Principal axis ``index`` as a unit :class:`SteeringVector` (use ``scale="relative"`` to steer).

        Example:
            >>> with steer(model, pca.vector(0), 0.1, scale="relative"): ...
        """
        if not 0 <= index < self.components.shape[0]:
            raise DataError(f"component {index} does not exist; this PCA has {self.components.shape[0]}.")
        return SteeringVector(
            directions={self.layer: self.components[index].float()},
            model_id=self.model_id,
            fingerprint=self.fingerprint,
            site=self.site,
            method=f"activation_pca_{index}",
            normalized=True,
            resid_norm={self.layer: self.resid_norm},
            extra={"explained_variance": self.explained[index]},
        )

    def table(self) -> ResultTable:
        """The texts' coordinates (and labels) as a ``ResultTable(kind="pca")`` for plots and reports."""
        records = []
        for i, row in enumerate(self.projections):
            rec: dict[str, Any] = {"text": i, "label": None if self.labels is None else self.labels[i]}
            rec.update({f"pc{k + 1}": float(v) for k, v in enumerate(row)})
            records.append(rec)
        return ResultTable("pca", records, {"layer": self.layer, "explained": self.explained, "n": len(records)})


def activation_pca(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    layer: int,
    n_components: int = 4,
    labels: Sequence[Any] | None = None,
    reduce: Reduce = "last",
    batch_size: int = 32,
) -> ActivationPCA:
    """PCA of the activations of ``texts`` at ``layer`` (one row per text: last token, or ``reduce="mean"``).

    Example:
        >>> texts, labels = load_statements("datasets/geometry-of-truth/cities.csv", limit=300)
        >>> pca = activation_pca(model, tokenizer, texts, layer=12, labels=labels)
        >>> pca.explained[:2]
    """
    texts = list(texts)
    if labels is not None and len(labels) != len(texts):
        raise DataError(f"{len(texts)} texts but {len(labels)} labels.")
    if reduce == "all":
        raise DataError("activation_pca takes one row per text: reduce='last' or 'mean'.")
    if len(texts) < 2:
        raise DataError("PCA needs at least two texts.")
    acts = record(model, tokenizer, texts, layers=[layer], reduce=reduce, batch_size=batch_size)
    x = acts.values[layer].double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    k = min(n_components, vh.shape[0])
    variance = s**2
    explained = [float(v) for v in (variance / variance.sum())[:k]]
    components = vh[:k]
    return ActivationPCA(
        layer, mean.float(), components.float(), explained, ((x - mean) @ components.T).float(),
        None if labels is None else list(labels), acts.resid_norm[layer], acts.site, model_id(model),
        fingerprint(model),
    )  # fmt: skip


def activation_covariance(x: torch.Tensor, *, correlation: bool = False) -> torch.Tensor:
    """Covariance (or, with ``correlation=True``, Pearson correlation) matrix ``(hidden, hidden)`` of the rows
    of ``x`` (e.g. ``record(...).values[layer]``)."""
    if x.dim() != 2 or x.shape[0] < 2:
        raise DataError(f"expected activations (n >= 2, hidden), found {tuple(x.shape)}.")
    return torch.corrcoef(x.double().T) if correlation else torch.cov(x.double().T)


def cross_layer_cosine(vector: SteeringVector) -> tuple[list[int], torch.Tensor]:
    """Cosine similarity between a vector's directions at each pair of its layers: how the same concept's
    direction turns through the depth of the model.

    Example:
        >>> layers, sim = cross_layer_cosine(extract_vector(model, tokenizer, pairs, layers=range(2, 28, 2)))
    """
    layers = vector.layers
    units = torch.stack([vector.directions[layer].double() / vector.directions[layer].norm() for layer in layers])
    return layers, units @ units.T


def cosine_matrix(vectors: Mapping[str, SteeringVector], layer: int) -> tuple[list[str], torch.Tensor]:
    """Cosine similarity between several vectors at one layer (e.g. behaviours against each other)."""
    names = list(vectors)
    if not names:
        raise DataError("cosine_matrix needs at least one vector.")
    missing = [n for n in names if layer not in vectors[n].directions]
    if missing:
        raise DataError(f"vectors {missing} have no direction at layer {layer}.")
    units = torch.stack([vectors[n].directions[layer].double() / vectors[n].directions[layer].norm() for n in names])
    return names, units @ units.T
