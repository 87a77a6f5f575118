"""Linear probes on the residual stream: which layers linearly encode a label (e.g. truth), and does it transfer?

Two probes per layer, both on the last token of each statement (Marks & Tegmark, "The Geometry of Truth"):

* ``mass_mean``: the difference of the class means, thresholded at the midpoint of the two means. No fitting,
  hard to overfit, and its direction is the one that steers best in their experiments.
* ``logistic``: an L2-regularised logistic regression (scikit-learn, ``C=0.1``).

Accuracy is measured on a held-out split (stratified, seeded). :func:`transfer_matrix` trains on one data set
and tests on others; :meth:`Probe.to_vector` turns a probe into a :class:`SteeringVector` (unit direction, with
the layer's residual norm so ``scale="relative"`` works).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from steerlab._models import ModelFingerprint, fingerprint, model_id
from steerlab._record import record
from steerlab._vector import SteeringVector
from steerlab.errors import DataError
from steerlab.evaluate.results import ResultTable

__all__ = ["PROBE_METHODS", "Probe", "ProbeRun", "probe_layers", "split", "train_probe", "transfer_matrix"]

PROBE_METHODS = ("mass_mean", "logistic")


@dataclass
class Probe:
    """A linear probe ``x @ direction + bias > 0`` at one layer.

    Example:
        >>> probe = train_probe(x_train, y_train, method="mass_mean", layer=12)
        >>> probe.accuracy(x_test, y_test)
    """

    layer: int
    method: str
    direction: torch.Tensor
    bias: float
    train_accuracy: float = float("nan")
    test_accuracy: float = float("nan")
    resid_norm: float | None = None
    site: str = "resid_post"
    dataset: str = "data"
    meta: dict[str, Any] = field(default_factory=dict)

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        """The signed score of each row of ``x`` (positive means label 1)."""
        return x.double() @ self.direction.double() + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted labels (0 or 1) of the rows of ``x``."""
        return (self.decision(x) > 0).long()

    def accuracy(self, x: torch.Tensor, y: Sequence[int] | torch.Tensor) -> float:
        """Share of rows of ``x`` whose predicted label equals ``y``."""
        y = torch.as_tensor(y).long()
        return float((self.predict(x) == y).double().mean())

    def to_vector(self, model: nn.Module | None = None) -> SteeringVector:
        """The probe's unit direction as a :class:`SteeringVector` at its layer (steer towards label 1 with a
        positive alpha); ``scale="relative"`` uses the residual norm recorded when the probe was trained.

        Example:
            >>> truth = run.best().to_vector(model)
            >>> with steer(model, truth, 0.1, scale="relative"): ...
        """
        fp = fingerprint(model) if model is not None else self.meta.get("fingerprint")
        if not isinstance(fp, ModelFingerprint):
            raise DataError("to_vector needs the model the probe was trained on (probe.to_vector(model)).")
        unit = (self.direction / self.direction.norm().clamp_min(1e-12)).float()
        return SteeringVector(
            directions={self.layer: unit},
            model_id=model_id(model) if model is not None else str(self.meta.get("model_id", "unknown")),
            fingerprint=fp,
            site=self.site,
            method=f"probe_{self.method}",
            normalized=True,
            resid_norm={} if self.resid_norm is None else {self.layer: float(self.resid_norm)},
            extra={"probe_dataset": self.dataset, "probe_test_accuracy": self.test_accuracy},
        )


def _check_xy(x: torch.Tensor, y: Sequence[int] | torch.Tensor) -> torch.Tensor:
    y = torch.as_tensor(y).long()
    if x.dim() != 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"probe data must be x (n, hidden) and y (n,); found {tuple(x.shape)} and {tuple(y.shape)}.")
    if set(y.tolist()) != {0, 1}:
        raise DataError(f"probe labels must contain both 0 and 1; found {sorted(set(y.tolist()))}.")
    if not torch.isfinite(x).all():
        raise DataError("probe activations contain NaN or inf.")
    return y


def train_probe(
    x: torch.Tensor, y: Sequence[int] | torch.Tensor, *, method: str = "mass_mean", layer: int = -1, C: float = 0.1
) -> Probe:
    """Fit a probe on activations ``x`` (n, hidden) and labels ``y`` in {0, 1}.

    Example:
        >>> probe = train_probe(acts.values[12][:300], labels[:300], method="logistic", layer=12)
    """
    y = _check_xy(x, y)
    if method == "mass_mean":
        mu1, mu0 = x[y == 1].double().mean(0), x[y == 0].double().mean(0)
        direction = mu1 - mu0
        bias = float(-(direction @ (mu1 + mu0) / 2))
    elif method == "logistic":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=C, max_iter=5000).fit(x.double().numpy(), y.numpy())
        direction, bias = torch.from_numpy(clf.coef_[0]).double(), float(clf.intercept_[0])
    else:
        raise DataError(f"unknown probe method {method!r}; choose one of {PROBE_METHODS}.")
    probe = Probe(layer, method, direction, bias)
    probe.train_accuracy = probe.accuracy(x, y)
    return probe


def split(labels: Sequence[int], test_fraction: float = 0.25, seed: int = 0) -> tuple[list[int], list[int]]:
    """A seeded, stratified (per-label) train/test split of indices."""
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be between 0 and 1, got {test_fraction}.")
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(set(labels)):
        idx = [i for i, v in enumerate(labels) if v == label]
        rng.shuffle(idx)
        cut = max(1, round(len(idx) * test_fraction))
        if cut >= len(idx):
            raise DataError(f"label {label} has {len(idx)} examples: too few to hold out a test split.")
        test += idx[:cut]
        train += idx[cut:]
    return sorted(train), sorted(test)


@dataclass
class ProbeRun:
    """What :func:`probe_layers` returns: the accuracy table and the fitted probes by ``(layer, method)``."""

    table: ResultTable
    probes: dict[tuple[int, str], Probe]

    def best(self, method: str | None = None) -> Probe:
        """The probe with the highest held-out accuracy (of ``method``, if given)."""
        candidates = [p for (_, m), p in self.probes.items() if method is None or m == method]
        if not candidates:
            raise DataError(f"no probe of method {method!r} in this run.")
        return max(candidates, key=lambda p: p.test_accuracy)


def probe_layers(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    layers: Sequence[int],
    methods: Sequence[str] = PROBE_METHODS,
    test_fraction: float = 0.25,
    seed: int = 0,
    name: str = "data",
    batch_size: int = 32,
) -> ProbeRun:
    """Train every probe method at every layer on a train split and measure held-out accuracy.

    Example:
        >>> texts, labels = load_statements("datasets/geometry-of-truth/cities.csv", limit=400)
        >>> run = probe_layers(model, tokenizer, texts, labels, layers=range(2, 28, 2), name="cities")
        >>> run.table.to_csv("probes.csv"); run.best().layer
    """
    texts, labels = list(texts), [int(v) for v in labels]
    if len(texts) != len(labels):
        raise DataError(f"{len(texts)} texts but {len(labels)} labels; give one label per text.")
    for method in methods:
        if method not in PROBE_METHODS:
            raise DataError(f"unknown probe method {method!r}; choose from {PROBE_METHODS}.")
    train, test = split(labels, test_fraction, seed)
    acts = record(model, tokenizer, texts, layers=list(layers), batch_size=batch_size)
    y = torch.tensor(labels)
    records, probes = [], {}
    for layer in acts.layers:
        x = acts.values[layer]
        for method in methods:
            probe = train_probe(x[train], y[train], method=method, layer=layer)
            probe.test_accuracy = probe.accuracy(x[test], y[test])
            probe.resid_norm, probe.site, probe.dataset = acts.resid_norm[layer], acts.site, name
            probes[layer, method] = probe
            records.append({"dataset": name, "layer": layer, "method": method,
                            "train_accuracy": probe.train_accuracy, "test_accuracy": probe.test_accuracy,
                            "n_train": len(train), "n_test": len(test)})  # fmt: skip
    meta = {"dataset": name, "n": len(texts), "layers": acts.layers, "methods": list(methods),
            "test_fraction": test_fraction, "seed": seed, "model_id": model_id(model)}  # fmt: skip
    return ProbeRun(ResultTable("probe", records, meta), probes)


def transfer_matrix(
    model: nn.Module,
    tokenizer: Any,
    datasets: Mapping[str, tuple[Sequence[str], Sequence[int]]],
    *,
    layer: int,
    method: str = "mass_mean",
    test_fraction: float = 0.25,
    seed: int = 0,
    batch_size: int = 32,
) -> ResultTable:
    """Train a probe on the train split of each data set and test it on the held-out split of every data set
    (the diagonal is in-domain accuracy). Returns a ``ResultTable(kind="transfer")`` with records
    ``train, test, layer, method, accuracy``.

    Example:
        >>> names = ("cities", "sp_en_trans")
        >>> sets = {n: load_statements(f"datasets/geometry-of-truth/{n}.csv", limit=300) for n in names}
        >>> transfer_matrix(model, tokenizer, sets, layer=12).records
    """
    if not datasets:
        raise DataError("transfer_matrix needs at least one named data set of (texts, labels).")
    data = {}
    for name, (texts, labels) in datasets.items():
        labels = [int(v) for v in labels]
        acts = record(model, tokenizer, list(texts), layers=[layer], batch_size=batch_size)
        train, test = split(labels, test_fraction, seed)
        data[name] = (acts.values[layer], torch.tensor(labels), train, test)
    records = []
    for source, (x, y, train, _) in data.items():
        probe = train_probe(x[train], y[train], method=method, layer=layer)
        for target, (x2, y2, _, test2) in data.items():
            records.append({"train": source, "test": target, "layer": layer, "method": method,
                            "accuracy": probe.accuracy(x2[test2], y2[test2])})  # fmt: skip
    meta = {"layer": layer, "method": method, "datasets": {k: len(v[1]) for k, v in data.items()},
            "test_fraction": test_fraction, "seed": seed, "model_id": model_id(model)}  # fmt: skip
    return ResultTable("transfer", records, meta)
