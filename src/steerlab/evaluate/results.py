"""Tidy result tables: one record (a flat dict) per measurement, with the run's settings in ``meta``.

Sweeps, probe runs and breakdown runs all return a :class:`ResultTable`, written as CSV (the records) or JSON
(records and meta, readable back with :meth:`ResultTable.load`); ``steerlab report`` turns the JSON into an
HTML page.

:data:`KINDS` holds one :class:`ResultKind` record per kind of table: its name, the paragraph a report prints
above it, and its figures (by their names in :mod:`steerlab.evaluate.plots`, which needs the ``eval`` extra and
is imported only when a figure is drawn). A new kind is one record here and its figure functions there.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerlab.errors import DataError

__all__ = ["JSON_ONLY", "KINDS", "ResultKind", "ResultTable"]

JSON_ONLY = ("per_question",)
"""Record fields too long for a CSV cell or a report's table (a sweep's per-question values): kept in the JSON."""


@dataclass(frozen=True)
class ResultKind:
    """One kind of result table.

    Attributes:
        name: the table's ``kind``.
        summary: what the records mean, printed above the table in a report.
        figures: ``(title, name of a function in steerlab.evaluate.plots)`` for each figure that fits the kind;
            each function takes the table and returns a matplotlib ``Figure``.

    Example:
        >>> [title for title, _ in KINDS["sweep"].figures]
        ['Layer x alpha', 'Effect vs coherence']
    """

    name: str
    summary: str
    figures: tuple[tuple[str, str], ...]


KINDS: dict[str, ResultKind] = {
    kind.name: kind
    for kind in (
        ResultKind(
            "sweep",
            "Effect = change of the behaviour from the unsteered model; KL = mean KL(steered || unsteered) of the "
            "next-token distributions on the neutral text set (nats/token); effect_lo / effect_hi = its 95% "
            "bootstrap interval over the questions. 'random' rows steer along random directions of the same norm, "
            "one per seed; random_mean / random_sd summarise them per cell, and beats_random says whether the "
            "vector's interval lies wholly beyond zero and beyond the bound one more random direction passes 1% "
            "of the time (cells that do not are crossed out in the heatmap). Per cell, on every question: "
            "calibrate chooses on some questions and tests on the others.",
            (("Layer x alpha", "sweep_heatmaps"), ("Effect vs coherence", "frontier")),
        ),
        ResultKind(
            "probe",
            "Held-out accuracy of linear probes (mass-mean: difference of class means; logistic: L2 logistic "
            "regression) on the last token of each statement, per layer.",
            (("Probe accuracy by layer", "probe_accuracy"),),
        ),
        ResultKind(
            "transfer",
            "AUROC and accuracy of a probe trained on one data set (rows) and tested on another (columns): protocol "
            "'all' trains on all of the row's set and tests on all of the column's; 'held_out' (the diagonal, or "
            "train='split') trains on a train split and tests on the held-out split. AUROC is threshold-free: a "
            "direction that transfers while its threshold does not keeps a high AUROC at chance accuracy.",
            (("Probe transfer", "transfer_heatmap"), ("Transfer by layer", "transfer_by_layer")),
        ),
        ResultKind(
            "refusal",
            "The refusal-direction recipe (Arditi et al.): stage 'selection' scores each candidate layer on "
            "validation prompts (rise of mean P(refusal) on harmless prompts with the difference of means added + "
            "its fall on harmful prompts with the direction ablated everywhere); stage 'evaluation' measures the "
            "chosen layer on all validation prompts, beside a random direction of the same norm (the control); "
            "change = P(refusal) minus the unsteered one.",
            (("Refusal direction", "refusal_recipe"),),
        ),
        ResultKind(
            "finetune",
            "Steering during fine-tuning (preventative steering; concept ablation fine-tuning): copies of one model "
            "fine-tuned on the same trait-teaching data, each with another intervention active while training "
            "only, then measured unsteered on held-out prompts: a judge's mean score of the generations, its change "
            "from the plain fine-tune (paired per prompt) and the mean projection of the generated tokens on the "
            "trait direction, each with a 95% bootstrap interval. 'random' arms use a random direction of the "
            "trait's norm (the control).",
            (("Steering during fine-tuning", "finetune_arms"),),
        ),
        ResultKind(
            "breakdown",
            "As the added vector grows (in units of the layer's natural residual norm), how the residual norms, "
            "next-token entropy, KL from unsteered and the perplexity of generations change; collapse = first "
            "alpha with KL above the threshold.",
            (("Breakdown of large coefficients", "breakdown_curves"),),
        ),
        ResultKind(
            "pca",
            "Texts projected on the first principal axes of their activations at one layer.",
            (("Activation PCA", "pca_scatter"),),
        ),
        ResultKind(
            "patching",
            "Recovery = (metric with one clean activation patched into the corrupted run - corrupted metric) / "
            "(clean metric - corrupted metric), of the means over pairs: 1 where that activation alone restores the "
            "clean answer, 0 where it does nothing. method 'attribution' is the first-order (gradient) estimate of "
            "the same numbers, poor where the model is far from linear in that activation. method 'mediation': the "
            "clean run is the steered one and the corrupted run the unsteered one, so recovery is the share of a "
            "steering intervention's effect that one component (every position) carries alone.",
            (("Layer x position", "patching_heatmaps"),),
        ),
        ResultKind(
            "sae_features",
            "The features of one sparse autoencoder a steering vector points along (sign '+') and against ('-') "
            "most: cosine between the vector at the SAE's layer and each feature's decoder row. A cosine near 1 "
            "says the vector is that one feature; many small ones say it is spread over many.",
            (("Features by cosine", "sae_feature_bars"),),
        ),
        ResultKind(
            "sae_targeting",
            "SAE-targeted steering: for each targeted feature, vectors steered at one strength (the SAE-TS vector "
            "solved from fitted feature effects, the feature's decoder row, a random direction of the same norm) "
            "and what they did on held-out texts: target = change of the feature's mean activation, others = norm "
            "of every other feature's change, ratio = target / others (higher: cleaner), target_pre = change of the "
            "target's pre-activation (how much nearer to firing), KL = mean KL(steered || unsteered) of next-token "
            "distributions (nats/token).",
            (("Target vs side effects", "sae_targeting_bars"),),
        ),
    )
}


@dataclass
class ResultTable:
    """Records of one run. ``kind`` says what they are (a name in :data:`KINDS`).

    Example:
        >>> result = sweep(model, tokenizer, vec, questions, layers=[8, 12], alphas=[-0.1, 0, 0.1])
        >>> result.to_csv("sweep.csv"); result.to_json("sweep.json")
        >>> ResultTable.load("sweep.json").where(direction="vector")[:2]
    """

    kind: str
    records: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"unknown result kind {self.kind!r}; expected one of {tuple(KINDS)}.")

    @property
    def kind_record(self) -> ResultKind:
        """The :class:`ResultKind` of this table: its report summary and figures."""
        return KINDS[self.kind]

    def where(self, **conditions: Any) -> list[dict[str, Any]]:
        """The records whose fields equal every given value."""
        return [r for r in self.records if all(r.get(k) == v for k, v in conditions.items())]

    def column(self, name: str, **conditions: Any) -> list[Any]:
        """One field of the records matching ``conditions``."""
        return [r.get(name) for r in self.where(**conditions)]

    def to_csv(self, path: str | Path) -> Path:
        """Write the records as CSV (columns: the union of the records' keys, in first-seen order, less
        :data:`JSON_ONLY`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        columns: list[str] = []
        for rec in self.records:
            columns.extend(k for k in rec if k not in columns and k not in JSON_ONLY)
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.records)
        return path

    def to_json(self, path: str | Path) -> Path:
        """Write kind, meta and records as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": "steerlab.results", "kind": self.kind, "meta": self.meta, "records": self.records}
        path.write_text(json.dumps(payload, indent=1, default=_plain), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ResultTable:
        """Read a table written by :meth:`to_json`."""
        from steerlab.datasets.pairs import read_json_file

        path = Path(path)
        payload = read_json_file(path, "result file", "a file written by to_json")
        if not isinstance(payload, dict) or payload.get("format") != "steerlab.results":
            raise DataError(f"'{path}' is not a steerlab result file (no 'format': 'steerlab.results').")
        return cls(str(payload.get("kind")), list(payload.get("records") or []), dict(payload.get("meta") or {}))


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
