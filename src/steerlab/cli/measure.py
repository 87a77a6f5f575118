"""The measuring commands of the ``steerlab`` CLI: ``sweep``, ``calibrate``, ``probe``, ``pca``, ``breakdown``,
``report``.

Every command is a thin layer over :mod:`steerlab.evaluate` (``sweep``, ``probes``, ``structure``, ``breakdown``,
``report``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import typer

from steerlab.cli._common import (
    COHERENCE_TEXTS_OPT,
    DEVICE_OPT,
    DTYPE_OPT,
    MODEL_OPT,
    _load,
    app,
    err,
    out,
    parse_floats,
    parse_ints,
    read_lines,
    user_errors,
    write_table,
)
from steerlab.errors import SteerlabError
from steerlab.evaluate.breakdown_point import DEFAULT_BREAKDOWN_ALPHAS
from steerlab.evaluate.sweeps import DEFAULT_ALPHAS, DEFAULT_KL_BUDGET, DEFAULT_RANDOM_SEEDS
from steerlab.types import DEFAULT_SCALE, Scale

__all__ = [
    "breakdown_command",
    "calibrate_command",
    "pca_command",
    "probe_command",
    "report_command",
    "sweep_command",
]

QUESTIONS_OPT = typer.Option(
    ..., "--questions", help="CAA A/B questions (e.g. datasets/caa/test/<b>/test_dataset_ab.json)."
)
LIMIT_OPT = typer.Option(None, "--limit", help="Use only the first N questions (each is asked in both A/B orders).")


def _listed(values: tuple[float, ...]) -> str:
    """A library default as the comma-separated text an option takes, so the CLI's defaults are the library's."""
    return ",".join(f"{v:g}" for v in values)


SWEEP_ALPHAS_OPT = typer.Option(
    _listed(DEFAULT_ALPHAS), "--alphas", help="Strengths (relative to the residual norm by default)."
)
RANDOM_SEEDS_OPT = typer.Option(
    len(DEFAULT_RANDOM_SEEDS),
    "--random-seeds",
    help="How many same-norm random directions (seeds 0..N-1) to sweep as the baseline; each costs as much as "
    "the vector.",
)
JOINT_OPT = typer.Option(
    False,
    "--joint",
    help="Steer the layers together, as one cell per mode, instead of each alone (a vector that acts across "
    "layers, such as ITI's top-k heads).",
)
PARTIAL_OPT = typer.Option(
    None,
    "--partial",
    help="Keep each finished cell in this file (JSON lines) as the run goes; run the same command again with "
    "the same file and an interrupted run resumes from it. A file from another run is refused.",
)


def _run_sweep(
    vector_path, questions, limit, layers, alphas, modes, scale, random_seeds, coherence_texts, model, device, dtype,
    *, partial=None, joint=False,
):  # fmt: skip
    from steerlab._vector import SteeringVector
    from steerlab.evaluate.metrics import load_ab
    from steerlab.evaluate.sweeps import sweep

    vec = SteeringVector.load(vector_path)
    items = load_ab(questions)
    if limit is not None:
        if limit < 1:
            raise SteerlabError(f"--limit must be >= 1, got {limit}.")
        items = items[:limit]
    layer_list = parse_ints(layers, "--layers") if layers else None
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    texts = read_lines(coherence_texts, "--coherence-texts") if coherence_texts is not None else None
    if random_seeds < 0:
        raise SteerlabError(f"--random-seeds must be >= 0 (how many random directions), got {random_seeds}.")
    lm, tokenizer = _load(model, device, dtype)
    result = sweep(
        lm, tokenizer, vec, items, layers=layer_list, alphas=parse_floats(alphas, "--alphas"), modes=mode_list,
        scale=scale, coherence=texts, random_seeds=range(random_seeds), partial=partial,  # type: ignore[arg-type]
        joint=joint,
    )  # fmt: skip
    return vec, result


def _print_sweep(result: Any) -> None:
    from rich.table import Table

    metric = result.meta["metric"]
    seeds = len(result.meta.get("random_seeds") or [])
    table = Table(
        title=f"{metric} (unsteered {result.meta['unsteered'][metric]:.3f}); random: {seeds} directions; "
        "*: the effect's 95% interval is beyond 0 and the random bound"
    )
    for col in ("mode", "layer", "alpha", metric, "effect", "95% interval", "random mean (sd)", "kl"):
        table.add_column(col, justify="right")
    for r in result.where(direction="vector"):
        interval = f"[{r['effect_lo']:+.3f}, {r['effect_hi']:+.3f}]" if r.get("effect_lo") is not None else "n/a"
        random = "n/a" if r.get("random_mean") is None else f"{r['random_mean']:+.3f} ({r['random_sd']:.3f})"
        mark = "*" if r.get("beats_random") else " "
        table.add_row(r["mode"], str(r["layer"]), f"{r['alpha']:g}", f"{r[metric]:.3f}", f"{r['effect']:+.3f}{mark}",
                      interval, random, f"{r['kl']:.3f}")  # fmt: skip
    out.print(table)


@app.command("sweep")
@user_errors
def sweep_command(
    vector: Path = typer.Option(..., "--vector", help="The .safetensors steering vector."),
    questions: Path = QUESTIONS_OPT,
    out_prefix: Path = typer.Option(..., "--out", help="Output prefix: writes PREFIX.csv and PREFIX.json."),
    layers: str | None = typer.Option(None, "--layers", help="Layers to sweep (default: all of the vector's)."),
    alphas: str = SWEEP_ALPHAS_OPT,
    modes: str = typer.Option("add", "--modes", help="Operators, comma-separated (add, ablate, ...)."),
    scale: Scale = typer.Option(DEFAULT_SCALE, "--scale", help="relative (to the residual norm) or absolute."),
    limit: int | None = LIMIT_OPT,
    random_seeds: int = RANDOM_SEEDS_OPT,
    coherence_texts: Path | None = COHERENCE_TEXTS_OPT,
    partial: Path | None = PARTIAL_OPT,
    joint: bool = JOINT_OPT,
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Sweep layers x strengths: A/B behaviour, KL coherence, and random directions as the baseline."""
    _, result = _run_sweep(
        vector, questions, limit, layers, alphas, modes, scale, random_seeds, coherence_texts, model, device, dtype,
        partial=partial, joint=joint,
    )  # fmt: skip
    _print_sweep(result)
    err.print("wrote " + ", ".join(str(p) for p in write_table(result, out_prefix)))


@app.command("calibrate")
@user_errors
def calibrate_command(
    vector: Path = typer.Option(..., "--vector", help="The .safetensors steering vector."),
    out_path: Path = typer.Option(..., "--out", help="Where to save the vector with its recommendation."),
    questions: Path | None = typer.Option(None, "--questions", help="CAA A/B questions (to run a sweep)."),
    from_sweep: Path | None = typer.Option(None, "--sweep", help="Calibrate from this sweep JSON instead."),
    budget: float = typer.Option(DEFAULT_KL_BUDGET, "--budget", help="Max KL (nats/token) of the chosen setting."),
    goal: Literal["increase", "decrease"] = typer.Option(
        "increase", "--goal", help="Which way the behaviour should move."
    ),
    layers: str | None = typer.Option(None, "--layers", help="Layers to sweep (default: all of the vector's)."),
    alphas: str = SWEEP_ALPHAS_OPT,
    modes: str = typer.Option("add", "--modes", help="Operators, comma-separated."),
    scale: Scale = typer.Option(DEFAULT_SCALE, "--scale", help="relative (to the residual norm) or absolute."),
    limit: int | None = LIMIT_OPT,
    random_seeds: int = RANDOM_SEEDS_OPT,
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the split into selection / held-out questions."),
    coherence_texts: Path | None = COHERENCE_TEXTS_OPT,
    partial: Path | None = PARTIAL_OPT,
    joint: bool = JOINT_OPT,
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Choose a (layer, alpha) within a KL budget on half of the questions, test it on the other half against
    random directions, and record it in the vector only if it beats them. Exit code 1 when no setting is found
    (then --out is not written)."""
    from steerlab._vector import SteeringVector
    from steerlab.evaluate.results import ResultTable
    from steerlab.evaluate.sweeps import calibrate

    if (questions is None) == (from_sweep is None):
        raise SteerlabError("give exactly one of --questions FILE (run a sweep) or --sweep RESULT.json.")
    if partial is not None and from_sweep is not None:
        raise SteerlabError(
            "--partial keeps and resumes the sweep that --questions runs; with --sweep RESULT.json no sweep runs. "
            "Drop --partial, or give --questions instead of --sweep."
        )
    if from_sweep is not None:
        vec, result = SteeringVector.load(vector), ResultTable.load(from_sweep)
    else:
        vec, result = _run_sweep(
            vector,
            questions,
            limit,
            layers,
            alphas,
            modes,
            scale,
            random_seeds,
            coherence_texts,
            model,
            device,
            dtype,
            partial=partial,
            joint=joint,
        )
        written = write_table(result, out_path.with_name(out_path.stem + "-sweep"))
        err.print("wrote " + ", ".join(str(p) for p in written))
    rec = calibrate(result, kl_budget=budget, goal=goal, split_seed=split_seed)
    out.print(rec.summary())
    if not rec.found:
        # A pipeline must not go on with a vector that carries no setting: say so and fail, writing nothing.
        raise SteerlabError(
            f"no setting found; {out_path} was not written. Sweep more questions (--limit), other layers or "
            "strengths, or steer with an explicit --alpha."
        )
    rec.annotate(vec).save(out_path)
    err.print(f"saved {out_path} with extra['recommended']; steer with alpha='recommended'")


@app.command("probe")
@user_errors
def probe_command(
    data: list[Path] = typer.Option(..., "--data", help="True/false statement CSV (statement,label); repeat."),
    layers: str = typer.Option(..., "--layers", help="Layers to probe, e.g. 4-20 or 6,10,14."),
    out_prefix: Path = typer.Option(..., "--out", help="Output prefix: PREFIX.csv/.json (+ PREFIX-transfer.*)."),
    limit: int | None = typer.Option(None, "--limit", help="Use at most N statements of each file."),
    test_fraction: float = typer.Option(0.25, "--test-fraction", help="Held-out share of each data set."),
    transfer_train: Literal["all", "split"] = typer.Option(
        "all",
        "--transfer-train",
        help="all: train on all of one file, test on all of another; split: train and "
        "test splits only. In-domain cells always use the held-out split.",
    ),
    seed: int = typer.Option(0, "--seed"),
    save_vector: Path | None = typer.Option(None, "--save-vector", help="Save the best probe as a vector."),
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Per-layer linear probes (mass-mean, logistic) on the first file with held-out accuracy and AUROC, and with
    several files a transfer matrix at every layer; each file is recorded once."""
    from steerlab.datasets.statements import load_statements
    from steerlab.evaluate.probes import fit_probes, record_labelled, transfer_matrix

    sets = {path.stem: load_statements(path, limit=limit, seed=seed) for path in data}
    layer_list = parse_ints(layers, "--layers")
    lm, tokenizer = _load(model, device, dtype)
    recorded = record_labelled(lm, tokenizer, sets, layers=layer_list)
    first = next(iter(sets))
    run = fit_probes(recorded[first], test_fraction=test_fraction, seed=seed)
    written = write_table(run.table, out_prefix)
    for r in run.table.records:
        out.print(f"{first} layer {r['layer']:>2} {r['method']:<9} held-out accuracy {r['test_accuracy']:.3f} "
                  f"AUROC {r['test_auroc']:.3f} (shuffled-label control {r['control_accuracy']:.3f})")  # fmt: skip
    best = run.best()
    out.print(f"best: layer {best.layer} {best.method} ({best.test_accuracy:.3f})")
    if len(sets) > 1:
        table = transfer_matrix(recorded, methods=[best.method], train=transfer_train,
                                test_fraction=test_fraction, seed=seed)  # fmt: skip
        written += write_table(table, out_prefix.with_name(out_prefix.name + "-transfer"))
        for r in table.where(layer=best.layer):
            out.print(f"layer {best.layer}: train {r['train']} -> test {r['test']} ({r['protocol']}): accuracy "
                      f"{r['accuracy']:.3f}, AUROC {r['auroc']:.3f}")  # fmt: skip
        out.print(f"transfers best at layer {table.meta['best_layer']} (mean AUROC off the diagonal)")
    if save_vector is not None:
        best.to_vector(lm).save(save_vector)
        written.append(save_vector)
    err.print("wrote " + ", ".join(str(p) for p in written))


@app.command("pca")
@user_errors
def pca_command(
    layer: int = typer.Option(..., "--layer", help="Block whose output (resid_post) is analysed."),
    out_prefix: Path = typer.Option(..., "--out", help="Output prefix: writes PREFIX.csv and PREFIX.json."),
    data: Path | None = typer.Option(None, "--data", help="Statement CSV (statement,label): points get labels."),
    texts: Path | None = typer.Option(None, "--texts", help="Or a text file, one text per line (no labels)."),
    limit: int | None = typer.Option(None, "--limit", help="Use at most N texts."),
    components: int = typer.Option(4, "--components", help="How many principal axes to keep."),
    save_vector: Path | None = typer.Option(None, "--save-vector", help="Save one axis as a steering vector."),
    component: int = typer.Option(0, "--component", help="Which axis --save-vector saves (0 = the first)."),
    seed: int = typer.Option(0, "--seed"),
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """PCA of the activations of a set of texts at one layer; an axis can be saved as a steering vector."""
    from steerlab.datasets.statements import load_statements
    from steerlab.evaluate.structure import activation_pca

    if (data is None) == (texts is None):
        raise SteerlabError("give exactly one of --data (a statement CSV with labels) or --texts (one per line).")
    labels: list[int] | None = None
    if data is not None:
        items, labels = load_statements(data, limit=limit, seed=seed)
    elif texts is not None:
        items = read_lines(texts, "--texts")[:limit]
    lm, tokenizer = _load(model, device, dtype)
    pca = activation_pca(lm, tokenizer, items, layer=layer, n_components=components, labels=labels)
    for i, share in enumerate(pca.explained):
        out.print(f"layer {layer} axis {i}: {share:.1%} of the variance")
    written = write_table(pca.table(), out_prefix)
    if save_vector is not None:
        pca.vector(component).save(save_vector)
        written.append(save_vector)
    err.print("wrote " + ", ".join(str(p) for p in written))


@app.command("breakdown")
@user_errors
def breakdown_command(
    vector: Path = typer.Option(..., "--vector", help="The .safetensors steering vector."),
    out_prefix: Path = typer.Option(..., "--out", help="Output prefix: writes PREFIX.csv and PREFIX.json."),
    layers: str | None = typer.Option(None, "--layers", help="Layers (default: all of the vector's)."),
    alphas: str = typer.Option(_listed(DEFAULT_BREAKDOWN_ALPHAS), "--alphas", help="Added norm / residual norm."),
    max_new_tokens: int = typer.Option(24, "--max-new-tokens", help="Length of the generations scored (0: none)."),
    coherence_texts: Path | None = COHERENCE_TEXTS_OPT,
    partial: Path | None = PARTIAL_OPT,
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Why large coefficients break the model: norms, entropy, KL and perplexity as alpha grows."""
    from steerlab._vector import SteeringVector
    from steerlab.evaluate.breakdown_point import breakdown

    vec = SteeringVector.load(vector)
    lm, tokenizer = _load(model, device, dtype)
    layer_list = parse_ints(layers, "--layers") if layers else None
    texts = read_lines(coherence_texts, "--coherence-texts") if coherence_texts is not None else None
    table = breakdown(lm, tokenizer, vec, layers=layer_list, alphas=parse_floats(alphas, "--alphas"), texts=texts,
                      max_new_tokens=max_new_tokens, partial=partial)  # fmt: skip
    for layer, value in table.meta["collapse"].items():
        shown = "not reached" if value is None else f"{value:g} x the residual norm"
        out.print(f"layer {layer}: coherence collapses at {shown}")
    err.print("wrote " + ", ".join(str(p) for p in write_table(table, out_prefix)))


@app.command("report")
@user_errors
def report_command(
    results: list[Path] = typer.Argument(..., help="Result JSON files (from sweep, probe, breakdown)."),
    out_path: Path = typer.Option(..., "--out", help="The HTML file to write."),
    title: str = typer.Option("steerlab report", "--title"),
) -> None:
    """Write one self-contained HTML page (figures embedded) for result files."""
    from steerlab.evaluate.report import write_report
    from steerlab.evaluate.results import ResultTable

    tables = [ResultTable.load(path) for path in results]
    write_report(tables, out_path, title=title)
    err.print(f"wrote {out_path}")
