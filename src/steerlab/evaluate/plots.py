"""Figures for result tables (matplotlib, Agg backend: no display needed).

Each function takes a :class:`~steerlab.evaluate.results.ResultTable` and returns a matplotlib ``Figure``;
:func:`figures_for` gives every figure that fits a table's kind, with a title. Needs the ``eval`` extra.

Example:
    >>> fig = sweep_heatmaps(result)
    >>> fig.savefig("sweep.png", dpi=120)
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: figures are written to files or embedded in HTML, never shown

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from steerlab.errors import DataError  # noqa: E402
from steerlab.evaluate.results import ResultTable  # noqa: E402

__all__ = [
    "breakdown_curves",
    "figures_for",
    "frontier",
    "patching_heatmaps",
    "pca_scatter",
    "probe_accuracy",
    "sweep_heatmaps",
    "refusal_recipe",
    "sae_feature_bars",
    "sae_targeting_bars",
    "transfer_by_layer",
    "transfer_heatmap",
]


def _need(table: ResultTable, kind: str) -> None:
    if table.kind != kind:
        raise DataError(f"this figure needs a {kind!r} table, got {table.kind!r}.")
    if not table.records:
        raise DataError(f"the {kind} table has no records to plot.")


def _row_label(layer: int | list[int]) -> Any:
    """A sweep row's layer, or ``"2+3"`` for a joint cell (its layers steered together)."""
    return "+".join(str(x) for x in layer) if isinstance(layer, list) else layer


def _grid(rows: list[dict[str, Any]], value: str) -> tuple[list[Any], list[Any], np.ndarray]:
    layers = sorted({_row_label(r["layer"]) for r in rows}, key=lambda x: (isinstance(x, str), x))
    alphas = sorted({r["alpha"] for r in rows})
    grid = np.full((len(layers), len(alphas)), np.nan)
    for r in rows:
        if r.get(value) is not None:
            grid[layers.index(_row_label(r["layer"])), alphas.index(r["alpha"])] = r[value]
    return layers, alphas, grid


def _heat(
    ax: Any, layers: list, alphas: list, grid: np.ndarray, title: str, cmap: str, center: bool, limit: float | None
) -> None:
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap=cmap,
                      vmin=-limit if limit else None, vmax=limit if limit else None)  # fmt: skip
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas], rotation=45)
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_xlabel("alpha")
    ax.set_ylabel("layer")
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax)


def sweep_heatmaps(table: ResultTable, *, mode: str | None = None) -> Figure:
    """Layer x alpha heatmaps of the effect (vector, then the random baseline: the mean over its seeds) and of the
    KL cost. A cell whose effect does not beat the random directions (``beats_random`` false: its interval does
    not lie wholly beyond zero and the random band) is crossed out."""
    _need(table, "sweep")
    mode = mode or table.records[0]["mode"]
    metric = table.meta.get("metric", "effect")
    vector = table.where(direction="vector", mode=mode)
    random = table.where(direction="random", mode=mode)
    banded = any(r.get("random_mean") is not None for r in vector)
    seeds = len({r.get("seed") for r in random})
    panels = [(vector, "effect", f"effect on {metric} (vector; x: not beyond random)", "RdBu_r", True)]
    if banded:
        panels.append((vector, "random_mean", f"effect on {metric} (random, mean of {seeds} seeds)", "RdBu_r", True))
    elif random:  # a table without per-cell bands (one random direction)
        panels.append((random, "effect", f"effect on {metric} (random, same norm)", "RdBu_r", True))
    panels.append((vector, "kl", "KL from unsteered (nats/token)", "viridis", False))
    # One colour scale for the vector's and the random direction's effects, so the two panels compare by eye.
    effects = [abs(r[v]) for rows, v, *_ in panels[:-1] for r in rows if r.get(v) is not None]
    shared = max(effects) if effects and max(effects) > 0 else None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (rows, value, title, cmap, center) in zip(axes[0], panels, strict=True):
        _heat(ax, *_grid(rows, value), title, cmap, center, shared if center else None)
    layers, alphas, _ = _grid(vector, "effect")
    for r in vector:
        if r.get("beats_random") is False:
            row = layers.index(_row_label(r["layer"]))
            axes[0][0].text(alphas.index(r["alpha"]), row, "x", ha="center", va="center", color="0.3", fontsize=11)
    fig.suptitle(f"sweep ({mode}, scale {table.meta.get('scale', '?')}, n = {table.meta.get('n_items', '?')})")
    fig.tight_layout()
    return fig


def frontier(table: ResultTable, *, budget: float | None = None) -> Figure:
    """Effect against coherence cost (KL) for every cell; the random baseline in grey."""
    from steerlab.evaluate.sweeps import DEFAULT_KL_BUDGET

    _need(table, "sweep")
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, colour in (("random", "0.6"), ("vector", "C0")):
        rows = [r for r in table.where(direction=name) if r.get("kl") is not None]
        if rows:
            ax.scatter([r["kl"] for r in rows], [r["effect"] for r in rows], s=18, c=colour, label=name)
    ax.axvline(DEFAULT_KL_BUDGET if budget is None else budget, ls="--", c="C3", lw=1, label="KL budget")
    ax.axhline(0, c="k", lw=0.5)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(left=0)  # KL is never negative: symlog's autoscale would otherwise show a negative tick
    ax.set_xlabel("KL from unsteered (nats/token)")
    ax.set_ylabel(f"effect on {table.meta.get('metric', 'behaviour')}")
    ax.set_title("effect vs coherence cost")
    ax.legend()
    fig.tight_layout()
    return fig


def probe_accuracy(table: ResultTable) -> Figure:
    """Held-out probe accuracy by layer, one line per method."""
    _need(table, "probe")
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted({r["method"] for r in table.records}):
        rows = sorted(table.where(method=method), key=lambda r: r["layer"])
        ax.plot([r["layer"] for r in rows], [r["test_accuracy"] for r in rows], marker="o", label=method)
    ax.axhline(0.5, c="k", lw=0.5, ls=":")
    ax.set_ylim(0.3, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"probes on {table.meta.get('dataset', '?')} (n = {table.meta.get('n', '?')})")
    ax.legend()
    fig.tight_layout()
    return fig


def transfer_heatmap(table: ResultTable) -> Figure:
    """AUROC and accuracy of a probe trained on each data set (rows) and tested on each (columns), at the layer
    that transfers best (``meta["best_layer"]``) for the first method."""
    _need(table, "transfer")
    method = table.meta.get("methods", [table.records[0]["method"]])[0]
    layer = table.meta.get("best_layer", table.records[0]["layer"])
    rows = table.where(layer=layer, method=method)
    names = list(dict.fromkeys(r["train"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(2.8 * len(names) + 5, 1.2 * len(names) + 2), squeeze=False)
    for ax, key in zip(axes[0], ("auroc", "accuracy"), strict=True):
        grid = np.full((len(names), len(names)), np.nan)
        for r in rows:
            grid[names.index(r["train"]), names.index(r["test"])] = r[key]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w" if grid[i, j] < 0.7 else "k")
        ax.set_xticks(range(len(names)), names, rotation=30)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("tested on")
        ax.set_ylabel("trained on")
        ax.set_title(f"{key} (layer {layer}, {method})")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def transfer_by_layer(table: ResultTable) -> Figure:
    """Mean AUROC off the diagonal (probes tested on the other data sets) and on it (held out), by layer, one line
    pair per method."""
    _need(table, "transfer")
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in table.records)):
        for label, same, style in (("other sets", False, "-"), ("held out", True, ":")):
            rows = [r for r in table.where(method=method) if (r["train"] == r["test"]) == same]
            layers = sorted({r["layer"] for r in rows})
            means = [float(np.mean([r["auroc"] for r in rows if r["layer"] == layer])) for layer in layers]
            if layers:
                ax.plot(layers, means, style, marker="o", c=f"C{i}", label=f"{method}, {label}")
    ax.axhline(0.5, c="k", lw=0.5, ls=":")
    ax.set_ylim(0.3, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean AUROC")
    ax.set_title("probe transfer by layer")
    ax.legend()
    fig.tight_layout()
    return fig


def refusal_recipe(table: ResultTable) -> Figure:
    """Left: the layer selection (score and separation per candidate layer, the chosen one marked). Right: mean
    P(refusal) unsteered, with the direction and with the same-norm random direction, per prompt set."""
    _need(table, "refusal")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    rows = table.where(stage="selection")
    layers = [r["layer"] for r in rows]
    left.plot(layers, [r["score"] for r in rows], marker="o", label="score (validation)")
    left.plot(layers, [r["separation"] for r in rows], marker="s", ls=":", label="separation")
    left.axvline(table.meta.get("chosen_layer", layers[0]), c="C3", lw=1, ls="--", label="chosen")
    left.axhline(0, c="k", lw=0.5)
    left.set_xlabel("layer")
    left.set_title("layer selection")
    left.legend()
    evaluation = table.where(stage="evaluation")
    groups = list(dict.fromkeys(r["prompts"] for r in evaluation))
    for k, (direction, colour) in enumerate(((None, "0.4"), ("vector", "C0"), ("random", "0.75"))):
        values = [next((r["p_refusal"] for r in evaluation if r["prompts"] == g and r["direction"] == direction),
                       np.nan) for g in groups]  # fmt: skip
        right.bar(np.arange(len(groups)) + (k - 1) * 0.27, values, 0.27, color=colour,
                  label=direction or "unsteered")  # fmt: skip
    right.set_xticks(range(len(groups)), [f"{g} ({'add' if g == 'harmless' else 'ablate'})" for g in groups])
    right.set_ylabel("mean P(refusal)")
    right.set_title(f"at layer {table.meta.get('chosen_layer')}")
    right.legend()
    fig.tight_layout()
    return fig


def finetune_arms(table: ResultTable) -> Figure:
    """Per fine-tuning arm, measured unsteered: the judge's mean score (left) and the projection of the generated
    tokens on the trait direction (right), with 95% intervals."""
    _need(table, "finetune")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    arms = [r["arm"] for r in table.records]
    colours = ["0.4" if a in ("base", "finetune") else "0.75" if "random" in a else "C0" for a in arms]
    panels = (("judge", table.meta.get("judge", "judge")),
              ("projection", f"projection on the trait, layer {table.meta.get('layer')}"))  # fmt: skip
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = np.array([r[key] for r in table.records])
        errors = np.array([[r[key] - r[f"{key}_lo"], r[f"{key}_hi"] - r[key]] for r in table.records]).T
        ax.bar(range(len(arms)), values, yerr=errors, color=colours, capsize=3)
        ax.set_xticks(range(len(arms)), arms, rotation=20)
        ax.axhline(0, c="k", lw=0.5)
        ax.set_title(f"{title} (n = {table.records[0]['n']})")
    fig.tight_layout()
    return fig


def pca_scatter(table: ResultTable) -> Figure:
    """The texts on the first two principal axes, coloured by label."""
    _need(table, "pca")
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    labels = [r.get("label") for r in table.records]
    for label in sorted(set(labels), key=str):
        rows = [r for r in table.records if r.get("label") == label]
        ax.scatter([r["pc1"] for r in rows], [r.get("pc2", 0.0) for r in rows], s=12, label=str(label))
    explained = table.meta.get("explained", [])
    ax.set_xlabel("PC1" + (f" ({explained[0]:.0%})" if explained else ""))
    ax.set_ylabel("PC2" + (f" ({explained[1]:.0%})" if len(explained) > 1 else ""))
    ax.set_title(f"activation PCA, layer {table.meta.get('layer')} (n = {table.meta.get('n')})")
    ax.legend(title="label")
    fig.tight_layout()
    return fig


def breakdown_curves(table: ResultTable) -> Figure:
    """KL, next-token entropy, generation perplexity and last-layer norm growth against alpha, per layer."""
    _need(table, "breakdown")
    panels = [
        ("kl", "KL from unsteered"),
        ("entropy", "next-token entropy"),
        ("perplexity", "perplexity of generations"),
        ("final_norm_ratio", "last-layer norm / unsteered"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, (value, title) in zip(axes, panels, strict=True):
        for layer in sorted({r["layer"] for r in table.records}):
            rows = [r for r in table.where(layer=layer) if r.get(value) is not None]
            ax.plot([r["alpha"] for r in rows], [r[value] for r in rows], marker="o", label=f"layer {layer}")
        ax.set_xscale("log")
        ax.set_xlabel("added norm / natural residual norm")
        ax.set_title(title)
        if value in ("kl", "perplexity"):
            ax.set_yscale("log")
    axes[0].axhline(table.meta.get("collapse_kl", 1.0), ls="--", c="C3", lw=1)
    axes[0].legend()
    fig.tight_layout()
    return fig


def patching_heatmaps(table: ResultTable) -> Figure:
    """Recovery by layer (rows; ``layer.head`` for the ``head`` site) and position (columns), one panel per site."""
    _need(table, "patching")
    sites = list(dict.fromkeys(r["site"] for r in table.records))
    fig, axes = plt.subplots(1, len(sites), figsize=(0.5 * _n_positions(table) + 4.5 * len(sites), 4.5), squeeze=False)
    values = [abs(r["recovery"]) for r in table.records if r.get("recovery") is not None]
    limit = max([1.0, *values])
    for ax, site in zip(axes[0], sites, strict=True):
        rows = table.where(site=site)
        names = list(dict.fromkeys(_row_name(r) for r in rows))
        positions = list(dict.fromkeys(r["position"] for r in rows))
        grid = np.full((len(names), len(positions)), np.nan)
        labels = {}
        for r in rows:
            grid[names.index(_row_name(r)), positions.index(r["position"])] = r["recovery"]
            labels.setdefault(r["position"], r.get("token"))
        image = ax.imshow(grid, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit)
        ticks = [f"{p}" if labels.get(p) is None else f"{p} {labels[p]!r}" for p in positions]
        ax.set_xticks(range(len(positions)), ticks, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7 if len(names) > 20 else None)
        ax.set_xlabel("position")
        ax.set_ylabel("layer.head" if site == "head" else "layer")
        ax.set_title(f"{site} ({table.meta.get('method', '?')})")
        fig.colorbar(image, ax=ax, label="recovery")
    fig.suptitle(f"patching: {table.meta.get('metric', '?')} (n = {table.meta.get('n_pairs', '?')} pairs)")
    fig.tight_layout()
    return fig


def sae_feature_bars(table: ResultTable) -> Figure:
    """Per decomposed vector, the cosine of each listed SAE feature's decoder row with it (along, then against)."""
    _need(table, "sae_features")
    names = list(dict.fromkeys(r["vector"] for r in table.records))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        rows = table.where(vector=name)
        cosines = [r["cosine"] for r in rows]
        ax.barh(range(len(rows)), cosines, color=["C0" if c > 0 else "C3" for c in cosines])
        ax.set_yticks(range(len(rows)), [f"#{r['feature']}" for r in rows])
        ax.invert_yaxis()
        ax.axvline(0, c="k", lw=0.5)
        ax.set_xlabel("cosine with the decoder row")
        ax.set_title(f"{name} (SAE at layer {table.meta.get('sae_layer')})")
    fig.tight_layout()
    return fig


def sae_targeting_bars(table: ResultTable) -> Figure:
    """Per targeted feature and arm: the target's change and the norm of the other features' change."""
    _need(table, "sae_targeting")
    features = list(dict.fromkeys(r["feature"] for r in table.records))
    fig, axes = plt.subplots(1, len(features), figsize=(6 * len(features), 4), squeeze=False)
    for ax, feature in zip(axes[0], features, strict=True):
        rows = table.where(feature=feature)
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["target"] for r in rows], 0.4, label="target feature's change", color="C0")
        ax.bar(x + 0.2, [r["others"] for r in rows], 0.4, label="other features' change (norm)", color="0.6")
        ax.set_xticks(x, [r["arm"] for r in rows], rotation=20, ha="right")
        ax.axhline(0, c="k", lw=0.5)
        ax.set_title(f"feature {feature} (alpha {table.meta.get('alpha')}, n = {table.meta.get('n_texts')} texts)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _n_positions(table: ResultTable) -> int:
    return len({r["position"] for r in table.records})


def _row_name(record: dict[str, Any]) -> str:
    return str(record["layer"]) if record.get("head") is None else f"{record['layer']}.{record['head']}"


def figures_for(table: ResultTable) -> list[tuple[str, Figure]]:
    """Every figure that fits ``table``'s kind, as ``(title, figure)`` (the kind's :class:`ResultKind` names them)."""
    return [(title, globals()[function](table)) for title, function in table.kind_record.figures]
