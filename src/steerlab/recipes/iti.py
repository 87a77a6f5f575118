"""Inference-time intervention (ITI, Li et al. 2023): probe every attention head, shift the best ones.

A mass-mean probe per (layer, head) on the head's output (the ``heads`` site, the last token of each labelled text),
fitted on a training split and scored on a held-out one; the K heads with the best held-out accuracy are shifted
along their mass-mean direction, scaled by the standard deviation of the training activations along it. Every head
of every layer is read in one recording pass, and the probes of all heads are fitted at once (a mass-mean probe is
two means and a midpoint).

The result is a :class:`~steerlab.SteeringVector` at the ``heads`` site whose directions are zero outside the chosen
heads, so a plain ``add`` moves those heads only (the others get exactly zero added: bit-identical); it records the
heads and their accuracies in ``extra["iti"]``, so it can be saved, shared and served like any vector. Its strength
is in standard deviations with ``scale="absolute"`` (ITI's alpha); choose K and the strength with
:func:`steerlab.evaluate.sweep` / :func:`steerlab.evaluate.calibrate` under the KL budget, beside a random set of
heads (:meth:`HeadProbes.random_vector`).

Example:
    >>> texts, labels = load_statements("datasets/geometry-of-truth/cities.csv")
    >>> probes = head_probes(model, tokenizer, texts, labels)
    >>> truthful = probes.vector(k=16)
    >>> with steer(model, truthful, alpha=5.0, scale="absolute"):
    ...     ...
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from steerlab._models import ModelFingerprint, fingerprint, model_id
from steerlab._record import record
from steerlab._vector import SteeringVector
from steerlab.arch import get_layout
from steerlab.errors import DataError
from steerlab.evaluate.probes import split

__all__ = ["HeadProbes", "head_probes"]


@dataclass
class HeadProbes:
    """Mass-mean probes of every attention head at the recorded layers.

    Attributes:
        layers: the layers read (rows of the tensors below).
        directions: ``(layers, heads, head_size)`` mass-mean directions (mean of label 1 minus mean of label 0).
        accuracy: ``(layers, heads)`` held-out accuracy of each head's probe.
        train_accuracy: ``(layers, heads)`` the same on the training split.
        std: ``(layers, heads)`` standard deviation of the training activations along each unit direction.
        resid_norm: the mean norm of the ``heads`` site per layer (so ``scale="relative"`` works too).
        n_train, n_held_out: texts in each split.
    """

    layers: list[int]
    directions: torch.Tensor
    accuracy: torch.Tensor
    train_accuracy: torch.Tensor
    std: torch.Tensor
    resid_norm: dict[int, float]
    model_id: str
    fingerprint: ModelFingerprint
    n_train: int = 0
    n_held_out: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_heads(self) -> int:
        return int(self.directions.shape[1])

    @property
    def head_size(self) -> int:
        return int(self.directions.shape[2])

    def top(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` (layer, head) pairs with the best held-out accuracy, best first (ties: lower layer, head).

        Example:
            >>> probes.top(3)
            [(12, 4), (11, 0), (14, 7)]
        """
        total = self.accuracy.numel()
        if not 1 <= k <= total:
            raise DataError(
                f"k={k} heads asked for; expected 1..{total} ({len(self.layers)} layers x {self.num_heads} heads)."
            )
        flat = self.accuracy.flatten().tolist()
        order = sorted(range(total), key=lambda i: (-flat[i], i))[:k]
        return [(self.layers[i // self.num_heads], i % self.num_heads) for i in order]

    def vector(self, k: int) -> SteeringVector:
        """ITI's shift at the top ``k`` heads: each head's unit mass-mean direction times its standard deviation,
        zero elsewhere; the heads and their held-out accuracies in ``extra["iti"]``.

        Example:
            >>> vec = probes.vector(k=16); vec.extra["iti"]["heads"]
            {'10': [3], '12': [0, 4], ...}
        """
        return self._vector(self.top(k), "iti")

    def random_vector(self, k: int, seed: int = 0) -> SteeringVector:
        """The control: ``k`` heads drawn at random, each shifted the same way (its own direction and deviation).

        Example:
            >>> control = probes.random_vector(k=16, seed=0)
        """
        total = self.accuracy.numel()
        self.top(k)  # the same check of k
        chosen = random.Random(seed).sample(range(total), k)
        pairs = [(self.layers[i // self.num_heads], i % self.num_heads) for i in chosen]
        return self._vector(pairs, "iti_random", seed=seed)

    def _vector(self, pairs: list[tuple[int, int]], method: str, **extra: Any) -> SteeringVector:
        width = self.num_heads * self.head_size
        directions: dict[int, torch.Tensor] = {}
        for layer, head in pairs:
            row = self.layers.index(layer)
            unit = self.directions[row, head] / self.directions[row, head].norm().clamp_min(1e-12)
            direction = directions.setdefault(layer, torch.zeros(width))
            direction[head * self.head_size : (head + 1) * self.head_size] = (unit * self.std[row, head]).float()
        heads = {str(layer): sorted(h for ly, h in pairs if ly == layer) for layer in sorted(directions)}
        accuracy = {f"{layer}.{head}": float(self.accuracy[self.layers.index(layer), head]) for layer, head in pairs}
        return SteeringVector(
            directions=directions,
            model_id=self.model_id,
            fingerprint=self.fingerprint,
            site="heads",
            method=method,
            resid_norm={layer: self.resid_norm[layer] for layer in directions},
            extra={"iti": {"heads": heads, "held_out_accuracy": accuracy, "k": len(pairs), **extra}},
        )


def head_probes(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    layers: Sequence[int] | None = None,
    held_out: float = 0.25,
    seed: int = 0,
    batch_size: int = 16,
) -> HeadProbes:
    """Fit a mass-mean probe on every attention head's output at the last token of each text, and score it on a
    held-out split (stratified, seeded): one recording pass, all heads at once.

    Args:
        texts, labels: labelled texts (labels 0 and 1; e.g. ``load_statements`` or an A/B set with its answers).
        layers: the layers to read (default: every block).
        held_out: the fraction of each label held out for the accuracy that ranks heads.

    Example:
        >>> probes = head_probes(model, tokenizer, texts, labels, layers=range(4, 28))
        >>> probes.top(5)
    """
    labels = [int(v) for v in labels]
    texts = list(texts)
    if len(texts) != len(labels):
        raise DataError(f"got {len(texts)} texts but {len(labels)} labels; give one label per text.")
    if set(labels) != {0, 1}:
        raise DataError(f"labels must be 0 and 1; found {sorted(set(labels))}.")
    layout = get_layout(model)
    acts = record(model, tokenizer, texts, layers=layers, site="heads", reduce="last", batch_size=batch_size)
    _, num_heads, head_size = layout.heads(acts.layers[0])
    x = torch.stack([acts.values[layer] for layer in acts.layers], 1).double()  # (n, L, width)
    x = x.view(x.shape[0], x.shape[1], num_heads, head_size)  # (n, L, H, d)
    y = torch.tensor(labels, dtype=torch.bool)
    train, test = split(labels, held_out, seed)
    xt, yt = x[train], y[train]
    mu1, mu0 = xt[yt].mean(0), xt[~yt].mean(0)  # (L, H, d)
    direction = mu1 - mu0
    bias = -(direction * (mu1 + mu0) / 2).sum(-1)  # (L, H): the midpoint of the class means, as train_probe's

    def accuracy(rows: list[int]) -> torch.Tensor:
        predicted = (x[rows] * direction).sum(-1) + bias > 0  # (n, L, H)
        return (predicted == y[rows, None, None]).double().mean(0)

    unit = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    std = (xt * unit).sum(-1).std(0)  # (L, H)
    return HeadProbes(
        layers=list(acts.layers),
        directions=direction.float(),
        accuracy=accuracy(test).float(),
        train_accuracy=accuracy(train).float(),
        std=std.float(),
        resid_norm=dict(acts.resid_norm),
        model_id=model_id(model),
        fingerprint=fingerprint(model),
        n_train=len(train),
        n_held_out=len(test),
    )
