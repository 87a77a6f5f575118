"""Commands that look inside the model: ``steerlab sae ...`` (sparse autoencoders on a model's activations,
:mod:`steerlab.evaluate.sae`, through sae-lens: ``train``, ``decompose`` (which features a steering vector is made
of), ``target`` (SAE-targeted steering) and ``feature`` (a feature as a steering vector)) and ``steerlab patch``
(activation and attribution patching of clean/corrupted pairs, :mod:`steerlab.evaluate.patching`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from steerlab.cli._common import (
    DEVICE_OPT,
    DTYPE_OPT,
    MODEL_OPT,
    _load,
    app,
    err,
    out,
    parse_ints,
    read_lines,
    user_errors,
    write_table,
)
from steerlab.errors import SteerlabError

__all__ = ["patch_command", "sae_app"]

sae_app = typer.Typer(no_args_is_help=True, help="Sparse autoencoders (sae-lens): train, decompose a vector, features.")
app.add_typer(sae_app, name="sae")

SAE_OPT = typer.Option(..., "--sae", help="An SAE folder in sae-lens's format (as `steerlab sae train` writes).")


@sae_app.command("train")
@user_errors
def sae_train_command(
    texts: list[Path] = typer.Option(..., "--texts", help="Training text, one per line (repeat for more files)."),
    layer: int = typer.Option(..., "--layer", help="The block whose output (resid_post) the SAE reads."),
    out_dir: Path = typer.Option(..., "--out", help="Folder to write the SAE to (sae-lens's format)."),
    width: int | None = typer.Option(None, "--width", help="Features (default: 8x the residual width)."),
    k: int = typer.Option(32, "--k", help="Active features per token (TopK)."),
    epochs: float = typer.Option(3.0, "--epochs", help="Passes over the recorded tokens."),
    batch_size: int = typer.Option(1024, "--batch-size", help="Tokens per training step."),
    chat: bool = typer.Option(False, "--chat", help="Put each text in the chat template first (as a user turn)."),
    seed: int = typer.Option(0, "--seed"),
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Train a TopK SAE with sae-lens's trainer on a block's outputs for the texts; print what it learned."""
    from steerlab.engines import apply_chat
    from steerlab.evaluate.sae import train_sae

    lines = [line for path in texts for line in read_lines(path, "--texts")]
    lm, tokenizer = _load(model, device, dtype)
    if chat:
        lines = [apply_chat(tokenizer, line, chat=True) for line in lines]
    sae = train_sae(lm, tokenizer, lines, layer=layer, width=width, k=k, epochs=epochs, batch_size=batch_size,
                    seed=seed, progress=True)  # fmt: skip
    sae.save(out_dir)
    s = sae.stats
    out.print(f"{s['tokens']} tokens, width {s['width']}, k {s['k']}: L0 {s['l0']:.1f}, explained variance "
              f"{s['explained_variance']:.3f}, dead features {s['dead_features']}, trained in "
              f"{s['train_seconds']:.0f} s")  # fmt: skip
    err.print(f"wrote {out_dir}")


@sae_app.command("decompose")
@user_errors
def sae_decompose_command(
    sae_dir: Path = SAE_OPT,
    vector: Path = typer.Option(..., "--vector", help="The steering vector to read in the SAE's features."),
    top: int = typer.Option(10, "--top", help="Features shown each way (along and against the vector)."),
    texts: Path | None = typer.Option(None, "--texts", help="Texts (one per line) to show where each feature fires."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the table (kind sae_features) here."),
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """The SAE features a steering vector points along (and against) most, by cosine; with --texts, where each one
    fires most; with --json, the table for `steerlab report`."""
    from steerlab import SteeringVector
    from steerlab.evaluate.sae import SparseAutoencoder

    vec = SteeringVector.load(vector)
    lm, tokenizer = _load(model, device, dtype)
    sae = SparseAutoencoder.load(sae_dir, lm)
    lines = read_lines(texts, "--texts") if texts is not None else None
    table = sae.decomposition({vector.stem: vec}, top=top)
    if json_path is not None:
        table.to_json(json_path)
        err.print(f"wrote {json_path}")
    for row in table.records:
        where = ""
        if lines:
            tops = sae.top_activating(lm, tokenizer, lines, row["feature"], k=2)
            where = "  " + " | ".join(f"{t['context']!r} ({t['activation']:.1f})" for t in tops)
        out.print(f"{row['sign']}{row['rank'] + 1:<3} feature {row['feature']:>6}  cosine {row['cosine']:+.3f}{where}")


@sae_app.command("target")
@user_errors
def sae_target_command(
    sae_dir: Path = SAE_OPT,
    features: list[int] = typer.Option(..., "--feature", help="A feature to target (repeat to target several)."),
    texts: Path = typer.Option(..., "--texts", help="Texts (one per line) the feature effects are measured on."),
    out_path: Path = typer.Option(..., "--out", help="Where to write the targeted vector (.safetensors)."),
    layer: int | None = typer.Option(None, "--layer", help="Where to steer (default: the SAE's layer)."),
    samples: int = typer.Option(1024, "--samples", help="Random pushes measured for the fit."),
    alpha: float = typer.Option(0.2, "--alpha", help="Strength of the pushes (relative to the layer's norm)."),
    compare_texts: Path | None = typer.Option(
        None, "--compare-texts", help="Held-out texts: compare each feature's SAE-TS vector with its decoder row."
    ),
    json_path: Path | None = typer.Option(None, "--json", help="With --compare-texts: write the comparison here."),
    seed: int = typer.Option(0, "--seed"),
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """SAE-targeted steering: fit how random pushes at --layer move the SAE's features on --texts, then write the
    vector whose predicted effect is the chosen features alone."""
    from steerlab.evaluate.sae import SparseAutoencoder
    from steerlab.evaluate.sae_targeting import compare_targeting, feature_effects

    lines = read_lines(texts, "--texts")
    held_out = read_lines(compare_texts, "--compare-texts") if compare_texts is not None else None
    lm, tokenizer = _load(model, device, dtype)
    sae = SparseAutoencoder.load(sae_dir, lm)
    effects = feature_effects(lm, tokenizer, sae, lines, layer=layer, alpha=alpha, samples=samples, seed=seed,
                              progress=True)  # fmt: skip
    vec = effects.targeted_vector(features)
    vec.save(out_path)
    out.print(f"fit of {effects.samples} pushes at layer {effects.layer}: held-out R^2 {effects.r2:.3f}; predicted at "
              f"alpha {alpha}: target {vec.extra['predicted_target_effect']:+.3f}, others (norm) "
              f"{vec.extra['predicted_off_target_effect']:.3f}")  # fmt: skip
    err.print(f"wrote {out_path}")
    if held_out is not None:
        table = compare_targeting(lm, tokenizer, effects, features, held_out, alpha=alpha)
        for r in table.records:
            out.print(f"feature {r['feature']:>6}  {r['arm']:<22} target {r['target']:+.3f}  others {r['others']:.3f}"
                      f"  ratio {r['ratio']:+.3f}  KL {r['kl']:.4f}")  # fmt: skip
        if json_path is not None:
            table.to_json(json_path)
            err.print(f"wrote {json_path}")


@sae_app.command("feature")
@user_errors
def sae_feature_command(
    sae_dir: Path = SAE_OPT,
    feature: int = typer.Option(..., "--feature", help="The feature whose decoder row becomes the vector."),
    out_path: Path = typer.Option(..., "--out", help="Where to write the vector (.safetensors)."),
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Write one SAE feature's decoder row as a steering vector (steer it like any other)."""
    from steerlab.evaluate.sae import SparseAutoencoder

    lm, _ = _load(model, device, dtype)
    sae = SparseAutoencoder.load(sae_dir, lm)
    vec = sae.feature_vector(feature)
    vec.save(out_path)
    scale = "relative strengths work" if vec.resid_norm else "steer it with --scale absolute"
    err.print(f"wrote {out_path} (feature {feature} at layer {sae.layer}, {sae.site}; {scale})")


@app.command("patch")
@user_errors
def patch_command(
    pairs: Path = typer.Option(
        ...,
        "--pairs",
        help='JSON array or JSON Lines of {"clean", "corrupted", "correct", "wrong"}: the two prompts (same token '
        "length) and the answer tokens compared (logit(correct) - logit(wrong) at the last position).",
    ),
    out_prefix: Path = typer.Option(..., "--out", help="Output prefix: PREFIX.csv/.json (per method with 'both')."),
    method: Literal["activation", "attribution", "both"] = typer.Option(
        "activation", "--method", help="activation (one run per cell), attribution (gradient estimate), or both."
    ),
    sites: str = typer.Option(
        "resid_post", "--sites", help="Comma-separated: resid_pre, attn_out, mlp_out, resid_post, head."
    ),
    layers: str | None = typer.Option(None, "--layers", help="Blocks, e.g. 0-29 or 8,12 (default: every block)."),
    positions: str = typer.Option(
        "each",
        "--positions",
        help="each (one at a time), all (at once) or indices, e.g. -1 or 9,-1 (negative: from the end).",
    ),
    heads: str | None = typer.Option(None, "--heads", help="With the head site: which heads (default: all)."),
    limit: int | None = typer.Option(None, "--limit", help="Use only the first N pairs."),
    batch_size: int = typer.Option(16, "--batch-size", help="Rows per forward pass."),
    top: int = typer.Option(10, "--top", help="Cells printed, by recovery."),
    report: Path | None = typer.Option(None, "--report", help="Also write an HTML report (heatmaps) here."),
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Activation / attribution patching of clean-corrupted pairs: which layer, site, position and head carries the
    answer. Prints the clean and corrupted metric and the top cells; writes the result table(s)."""
    from steerlab.datasets.patch_pairs import load_patch_pairs
    from steerlab.evaluate.patching import (
        activation_patching,
        attribution_patching,
        logit_diff_metric,
        patching_error,
    )

    items = load_patch_pairs(pairs)
    if limit is not None:
        if limit < 1:
            raise SteerlabError(f"--limit must be >= 1, got {limit}.")
        items = items[:limit]
    site_list = [part.strip() for part in sites.split(",") if part.strip()]
    layer_list = parse_ints(layers, "--layers") if layers else None
    spots = positions if positions in ("each", "all") else _indices(positions, "--positions")
    head_list = parse_ints(heads, "--heads") if heads else None
    lm, tokenizer = _load(model, device, dtype)
    metric = logit_diff_metric(tokenizer, [p.correct for p in items], [p.wrong for p in items])
    clean, corrupted = [p.clean for p in items], [p.corrupted for p in items]
    methods = {"activation": activation_patching, "attribution": attribution_patching}
    chosen = list(methods) if method == "both" else [method]
    tables, written = {}, []
    for name in chosen:
        table = methods[name](lm, tokenizer, clean, corrupted, metric, layers=layer_list, sites=site_list,
                              positions=spots, heads=head_list, batch_size=batch_size)  # fmt: skip
        tables[name] = table
        written += write_table(
            table, out_prefix if len(chosen) == 1 else out_prefix.with_name(f"{out_prefix.name}-{name}")
        )
    first = next(iter(tables.values()))
    out.print(f"{len(items)} pairs: {first.meta['metric']} clean {first.meta['clean_metric']:+.3f}, corrupted "
              f"{first.meta['corrupted_metric']:+.3f}")  # fmt: skip
    for name, table in tables.items():
        for r in sorted(table.records, key=lambda r: -abs(r["recovery"]))[:top]:
            head = "" if r["head"] is None else f" head {r['head']}"
            token = "" if r.get("token") is None else f" {r['token']!r}"
            out.print(f"{name:<11} layer {r['layer']:>2} {r['site']}{head} position {r['position']}{token}: "
                      f"recovery {r['recovery']:+.3f}")  # fmt: skip
    if len(tables) == 2:
        error = patching_error(tables["activation"], tables["attribution"])
        out.print(f"attribution vs activation over {error['cells']} cells: mean |error| {error['mean_abs']:.3f}, "
                  f"max {error['max_abs']:.3f}, correlation {error['correlation']:.3f}")  # fmt: skip
    if report is not None:
        from steerlab.evaluate.report import write_report

        written.append(write_report(list(tables.values()), report, title=f"patching: {pairs.name}"))
    err.print("wrote " + ", ".join(str(p) for p in written))


def _indices(text: str, what: str) -> list[int]:
    """``"9,-1"`` -> [9, -1] (negative indices allowed, unlike ranges)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SteerlabError(f"{what} '{text}' is not each, all or a list of indices; write e.g. -1 or 9,-1.") from None
    if not values:
        raise SteerlabError(f"{what} is empty; write each, all, or indices such as 9,-1.")
    return values
