"""Linear probes on the residual stream: which layers linearly encode a label (e.g. truth), and does it transfer?

Two probes per layer, both on the last token of each statement (Marks & Tegmark, "The Geometry of Truth"):

* ``mass_mean``: the difference of the class means, thresholded at the midpoint of the two means. No fitting,
  hard to overfit, and its direction is the one that steers best in their experiments.
* ``logistic``: an L2-regularised logistic regression (scikit-learn, ``C=0.1``).

Accuracy and AUROC are measured on a held-out split (stratified, seeded). Each labelled set is recorded once at
all layers (:func:`record_labelled`); :func:`fit_probes` and :func:`transfer_matrix` (train on one data set, test
on others) fit from that recording, so many layers, methods and pairs of sets cost no further passes.
:meth:`Probe.to_vector` turns a probe into a :class:`SteeringVector` (unit direction, with the layer's residual
norm so ``scale="relative"`` works).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from steerlab._models import ModelFingerprint, fingerprint, model_id
from steerlab._progress import track
from steerlab._record import record
from steerlab._vector import SteeringVector
from steerlab.errors import DataError
from steerlab.evaluate.results import ResultTable

__all__ = [
    "PROBE_METHODS",
    "LabelledActivations",
    "Probe",
    "ProbeRun",
    "TransferTraining",
    "auroc",
    "fit_probes",
    "probe_layers",
    "record_labelled",
    "split",
    "train_probe",
    "transfer_matrix",
]

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


@dataclass
class LabelledActivations:
    """One labelled text set's last-token activations at several layers, recorded once by
    :func:`record_labelled`: probes at any of its layers, by any method and any split, are fit from it without
    running the model again.

    Example:
        >>> sets = record_labelled(model, tokenizer, {"cities": cities}, layers=range(4, 24, 2))
        >>> sets["cities"].values[12].shape, sets["cities"].labels[:4]
    """

    name: str
    values: dict[int, torch.Tensor]
    labels: torch.Tensor
    resid_norm: dict[int, float] = field(default_factory=dict)
    site: str = "resid_post"
    model_id: str = "unknown"
    fingerprint: ModelFingerprint | None = None

    @property
    def layers(self) -> list[int]:
        return sorted(self.values)

    def __len__(self) -> int:
        return len(self.labels)


def record_labelled(
    model: nn.Module,
    tokenizer: Any,
    datasets: Mapping[str, tuple[Sequence[str], Sequence[int]]],
    *,
    layers: Sequence[int] | int | None,
    batch_size: int = 32,
    progress: bool | None = None,
) -> dict[str, LabelledActivations]:
    """Record every named ``(texts, labels)`` set once, at all ``layers`` (the last token of each text): the one
    recording that :func:`fit_probes` and :func:`transfer_matrix` fit any number of probes from.

    Example:
        >>> names = ("cities", "sp_en_trans", "larger_than")
        >>> sets = {n: load_statements(f"datasets/geometry-of-truth/{n}.csv") for n in names}
        >>> recorded = record_labelled(model, tokenizer, sets, layers=range(2, 28, 2))
    """
    if not datasets:
        raise DataError("record_labelled needs at least one named data set of (texts, labels).")
    out = {}
    for name, (texts, labels) in datasets.items():
        texts, labels = list(texts), [int(v) for v in labels]
        if len(texts) != len(labels):
            raise DataError(f"data set {name!r} has {len(texts)} texts but {len(labels)} labels; give one per text.")
        if set(labels) != {0, 1}:
            raise DataError(f"data set {name!r} needs labels 0 and 1; found {sorted(set(labels))}.")
        acts = record(model, tokenizer, texts, layers=layers, batch_size=batch_size, progress=progress)
        out[name] = LabelledActivations(name, acts.values, torch.tensor(labels), acts.resid_norm, acts.site,
                                        model_id(model), fingerprint(model))  # fmt: skip
    return out


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` in {0, 1}: threshold-free, so a probe whose
    direction transfers but whose bias does not (another data set sits elsewhere along it) still scores high
    here while its accuracy falls to chance."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels.numpy(), scores.double().numpy()))


def _fit(data: LabelledActivations, layer: int, method: str, rows: list[int] | None) -> Probe:
    x, y = data.values[layer], data.labels
    if rows is not None:
        x, y = x[rows], y[rows]
    probe = train_probe(x, y, method=method, layer=layer)
    probe.resid_norm, probe.site, probe.dataset = data.resid_norm.get(layer), data.site, data.name
    probe.meta.update(fingerprint=data.fingerprint, model_id=data.model_id)
    return probe


def _score(probe: Probe, data: LabelledActivations, rows: list[int] | None) -> dict[str, float]:
    x, y = data.values[probe.layer], data.labels
    if rows is not None:
        x, y = x[rows], y[rows]
    return {"accuracy": probe.accuracy(x, y), "auroc": auroc(probe.decision(x), y)}


def _layers_of(sets: Sequence[LabelledActivations], layers: Sequence[int] | int | None) -> list[int]:
    common = sorted(set.intersection(*(set(d.layers) for d in sets)))
    if layers is None:
        return common
    wanted = [layers] if isinstance(layers, int) else list(layers)
    missing = [layer for layer in wanted if layer not in common]
    if missing:
        raise DataError(f"layers {missing} were not recorded (recorded: {common}); record them with "
                        "record_labelled(..., layers=...) or choose among the recorded.")  # fmt: skip
    return wanted


def _check_methods(methods: Sequence[str]) -> list[str]:
    for method in methods:
        if method not in PROBE_METHODS:
            raise DataError(f"unknown probe method {method!r}; choose from {PROBE_METHODS}.")
    return list(methods)


def _control(data: LabelledActivations, train: list[int], test: list[int], seed: int) -> LabelledActivations:
    """``data`` with its labels shuffled within the train rows and within the test rows (seeded; the class counts
    of each split kept): the control task. A probe can fit it only by memorising, and its held-out accuracy on the
    shuffled test labels is chance unless it does. (Scored against the true test labels instead, a control probe
    on data with one dominant label direction reads it by chance, either way round: accuracy 0 or 1.)"""
    labels = data.labels.clone()
    rng = random.Random(seed)
    for rows in (train, test):
        order = list(rows)
        rng.shuffle(order)
        labels[rows] = data.labels[order]
    return LabelledActivations(data.name, data.values, labels, data.resid_norm, data.site, data.model_id,
                               data.fingerprint)  # fmt: skip


def fit_probes(
    data: LabelledActivations,
    *,
    layers: Sequence[int] | int | None = None,
    methods: Sequence[str] = PROBE_METHODS,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> ProbeRun:
    """Train every probe method at every layer (default: all recorded) on a seeded, stratified train split of
    ``data`` and measure held-out accuracy and AUROC, beside the control task: the labels shuffled within each
    split, the same probe trained and tested on them (``control_accuracy``, ``control_auroc``: near chance unless
    the probe can fit noise). ``selectivity`` = test accuracy - control accuracy (Hewitt & Liang's control tasks,
    with shuffled labels).

    Example:
        >>> run = fit_probes(recorded["cities"], methods=["mass_mean"])
        >>> run.best().layer, run.table.column("selectivity")
    """
    methods = _check_methods(methods)
    layers = _layers_of([data], layers)
    train, test = split(data.labels.tolist(), test_fraction, seed)
    shuffled = _control(data, train, test, seed)
    records, probes = [], {}
    for layer in layers:
        for method in methods:
            probe = _fit(data, layer, method, train)
            scores = _score(probe, data, test)
            control = _score(_fit(shuffled, layer, method, train), shuffled, test)
            probe.test_accuracy = scores["accuracy"]
            probes[layer, method] = probe
            records.append({"dataset": data.name, "layer": layer, "method": method,
                            "train_accuracy": probe.train_accuracy, "test_accuracy": scores["accuracy"],
                            "test_auroc": scores["auroc"], "control_accuracy": control["accuracy"],
                            "control_auroc": control["auroc"], "selectivity": scores["accuracy"] - control["accuracy"],
                            "n_train": len(train), "n_test": len(test)})  # fmt: skip
    meta = {"dataset": data.name, "n": len(data), "layers": layers, "methods": methods,
            "test_fraction": test_fraction, "seed": seed, "model_id": data.model_id}  # fmt: skip
    return ProbeRun(ResultTable("probe", records, meta), probes)


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
    progress: bool | None = None,
) -> ProbeRun:
    """Record one labelled set at ``layers`` and :func:`fit_probes` on it: every method at every layer, trained
    on a train split, with held-out accuracy and AUROC.

    Example:
        >>> texts, labels = load_statements("datasets/geometry-of-truth/cities.csv", limit=400)
        >>> run = probe_layers(model, tokenizer, texts, labels, layers=range(2, 28, 2), name="cities")
        >>> run.table.to_csv("probes.csv"); run.best().layer
    """
    methods = _check_methods(methods)  # before the model runs (record_labelled checks the data before it too)
    data = record_labelled(model, tokenizer, {name: (texts, labels)}, layers=layers, batch_size=batch_size,
                           progress=progress)[name]  # fmt: skip
    return fit_probes(data, methods=methods, test_fraction=test_fraction, seed=seed)


TransferTraining = Literal["all", "split"]


def transfer_matrix(
    data: Mapping[str, LabelledActivations],
    *,
    layers: Sequence[int] | int | None = None,
    methods: Sequence[str] = ("mass_mean",),
    train: TransferTraining = "all",
    test_fraction: float = 0.25,
    seed: int = 0,
    progress: bool | None = None,
) -> ResultTable:
    """Does a probe trained on one data set work on another? For every recorded layer (or ``layers``), method
    and ordered pair of sets: accuracy and AUROC, fit from one recording of each set (:func:`record_labelled`).

    ``train="all"`` (default, a transfer test as usually run): the probe is trained on all of X and tested on all
    of Y; on the diagonal (X = Y) it is trained on X's train split and tested on its held-out split, so in-domain
    accuracy is never training accuracy (column ``protocol``: ``all`` or ``held_out``). ``train="split"``: every
    probe is trained on X's train split and tested on Y's held-out split.

    Returns a ``ResultTable(kind="transfer")`` with records ``train, test, layer, method, protocol, n_train,
    n_test, accuracy, auroc``; ``meta["best_layer"]`` is the layer of the highest mean AUROC off the diagonal
    (of the first method; the diagonal's with one set).

    Example:
        >>> recorded = record_labelled(model, tokenizer, sets, layers=range(2, 28, 2))
        >>> table = transfer_matrix(recorded, methods=["mass_mean", "logistic"])
        >>> table.where(train="cities", test="sp_en_trans", method="mass_mean")
    """
    if not data:
        raise DataError("transfer_matrix needs at least one recorded data set (record_labelled).")
    if train not in ("all", "split"):
        raise DataError(f"train must be 'all' (train on all of X, test on all of Y) or 'split'; got {train!r}.")
    methods = _check_methods(methods)
    sets = list(data.values())
    layers = _layers_of(sets, layers)
    splits = {d.name: split(d.labels.tolist(), test_fraction, seed) for d in sets}
    cells = [(layer, method, source) for layer in layers for method in methods for source in sets]
    show = progress if progress is not None else len(cells) > 20
    records = []
    for layer, method, source in track(cells, "fitting probes", show=show):
        held_out = _fit(source, layer, method, splits[source.name][0])
        whole = _fit(source, layer, method, None) if train == "all" and len(sets) > 1 else held_out
        for target in sets:
            diagonal = target is source
            probe = held_out if diagonal or train == "split" else whole
            rows = splits[target.name][1] if diagonal or train == "split" else None
            protocol = "held_out" if diagonal or train == "split" else "all"
            n_train = len(splits[source.name][0]) if probe is held_out else len(source)
            records.append({"train": source.name, "test": target.name, "layer": layer, "method": method,
                            "protocol": protocol, "n_train": n_train,
                            "n_test": len(target) if rows is None else len(rows),
                            **_score(probe, target, rows)})  # fmt: skip
    meta = {"layers": layers, "methods": methods, "train": train, "datasets": {d.name: len(d) for d in sets},
            "test_fraction": test_fraction, "seed": seed, "model_id": sets[0].model_id,
            "best_layer": _best_transfer_layer(records, methods[0])}  # fmt: skip
    return ResultTable("transfer", records, meta)


def _best_transfer_layer(records: list[dict[str, Any]], method: str) -> int:
    """The layer whose probes (of ``method``) transfer best: highest mean AUROC off the diagonal."""
    rows = [r for r in records if r["method"] == method]
    off = [r for r in rows if r["train"] != r["test"]] or rows
    by_layer: dict[int, list[float]] = {}
    for r in off:
        by_layer.setdefault(r["layer"], []).append(r["auroc"])
    return max(by_layer, key=lambda layer: sum(by_layer[layer]) / len(by_layer[layer]))
