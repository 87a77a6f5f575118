"""Commands that make, use and move vectors: extract, optimize, generate, info, bake, export, import, demo."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Literal

import typer
from rich.table import Table

from steerlab.cli._common import (
    DEVICE_OPT,
    DTYPE_OPT,
    MODEL_OPT,
    _load,
    app,
    err,
    load_combined,
    out,
    parse_alphas,
    parse_ints,
    read_prompts,
    show_comparison,
    user_errors,
)
from steerlab.datasets.pairs import NEUTRAL_PROMPTS
from steerlab.errors import SteerlabError
from steerlab.evaluate.comparison import DEFAULT_COMPARE_ALPHAS
from steerlab.io.gguf import export_gguf, import_gguf
from steerlab.optimize import Objective
from steerlab.types import BREAKDOWN_STRENGTH, DEFAULT_SCALE, Method, Mode, Scale, Site


@app.command()
@user_errors
def extract(
    pairs: Path = typer.Option(..., "--pairs", help="JSON/JSONL contrast pairs (plain or CAA A/B format)."),
    layers: str = typer.Option(..., "--layers", help="Layers to read, e.g. 10,12 or 8-14 (0-based)."),
    out_path: Path = typer.Option(..., "--out", help="Where to write the .safetensors vector."),
    method: Method = typer.Option("mean_diff", "--method", help="How a direction is read from the pairs."),
    reduce: Literal["last", "mean"] = typer.Option("last", "--reduce", help="Token read per text."),
    normalize: bool = typer.Option(False, "--normalize", help="Scale each layer's direction to unit norm."),
    site: Site = typer.Option("resid_post", "--site", help="Where in the block activations are read."),
    batch_size: int = typer.Option(16, "--batch-size"),
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Extract a steering vector from contrast pairs and save it."""
    from steerlab._extract import extract_vector
    from steerlab.datasets.pairs import load_pairs

    data = load_pairs(pairs)
    layer_list = parse_ints(layers, "--layers")
    lm, tokenizer = _load(model, device, dtype)
    start = time.perf_counter()
    vec = extract_vector(
        lm,
        tokenizer,
        data,
        layers=layer_list,
        method=method,
        reduce=reduce,  # type: ignore[arg-type]
        normalize=normalize,
        site=site,
        batch_size=batch_size,
    )
    seconds = time.perf_counter() - start
    vec.save(out_path)
    norms = ", ".join(f"L{k}: {float(v.norm()):.2f}" for k, v in sorted(vec.directions.items()))
    err.print(f"extracted {method} from {len(data)} pairs in {seconds:.2f} s -> {out_path} (norms {norms})")


@app.command("optimize")
@user_errors
def optimize_command(
    data: Path = typer.Option(
        ...,
        "--data",
        help="bipo: contrast pairs (as extract reads them); promote / suppress: "
        'JSON or JSON Lines of {"prompt", "completion"} objects.',
    ),
    layer: int = typer.Option(..., "--layer", help="The block whose output the vector is added to."),
    out_path: Path = typer.Option(..., "--out", help="Where to write the .safetensors vector."),
    objective: Objective = typer.Option("bipo", "--objective", help="bipo, promote or suppress."),
    balance_ab: bool = typer.Option(
        False,
        "--balance-ab",
        help="bipo on CAA A/B pairs: add each with its choices "
        "swapped, as extraction does (so the vector cannot learn 'letter A').",
    ),
    steps: int = typer.Option(100, "--steps", help="Most optimiser steps (fewer when the loss stops improving)."),
    lr: float = typer.Option(0.05, "--lr", help="Adam learning rate, in units of the layer's residual norm."),
    batch_size: int = typer.Option(8, "--batch-size", help="Examples per step."),
    coherence_weight: float = typer.Option(0.0, "--coherence-weight", help="Weight of the KL on neutral texts."),
    seed: int = typer.Option(0, "--seed"),
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Learn a one-layer vector by gradient descent through the hooks, the model frozen (steerlab.optimize)."""
    from steerlab.datasets import balance_ab as balanced
    from steerlab.datasets import load_completions, load_pairs
    from steerlab.optimize import optimize_vector

    examples: list = load_pairs(data) if objective == "bipo" else load_completions(data)
    if balance_ab:
        if objective != "bipo":
            raise SteerlabError("--balance-ab applies to bipo's A/B pairs only.")
        examples = balanced(examples)
    lm, tokenizer = _load(model, device, dtype)
    vec = optimize_vector(lm, tokenizer, examples, layer=layer, objective=objective, steps=steps, lr=lr,
                          batch_size=batch_size, coherence_weight=coherence_weight, seed=seed)  # fmt: skip
    vec.save(out_path)
    extra = vec.extra
    err.print(f"optimised {objective} on {extra['examples']} examples: {extra['steps']} steps "
              f"({extra['seconds_per_step']:.2f} s each), loss {extra['losses'][0]:.3f} -> {extra['best_loss']:.3f}, "
              f"|v| = {float(vec.directions[layer].norm()):.2f} -> {out_path}; steer it at alpha 1 with "
              "--scale absolute")  # fmt: skip


@app.command()
@user_errors
def generate(
    vector: list[str] = typer.Option(
        ...,
        "--vector",
        help="A .safetensors vector, as PATH or PATH:WEIGHT; repeat to apply the weighted sum of several.",
    ),
    prompt: str | None = typer.Option(None, "--prompt", help="One prompt."),
    prompts: Path | None = typer.Option(None, "--prompts", help="A file with one prompt per line."),
    alphas: str | None = typer.Option(
        None,
        "--alphas",
        help="Strengths (fractions of the residual norm with the default --scale relative; 0 = unsteered); "
        "for --mode clamp, bands lo:hi. Default: the vector's calibrated setting (steerlab calibrate) beside the "
        "unsteered model when it carries one, else " + ",".join(f"{a:g}" for a in DEFAULT_COMPARE_ALPHAS) + ".",
    ),
    mode: Mode = typer.Option("add", "--mode", help="The operator."),
    site: Site | None = typer.Option(None, "--site", help="Where in the block (default: the vector's site)."),
    layers: str | None = typer.Option(None, "--layers", help="Subset of the vector's layers (default: all)."),
    positions: str | None = typer.Option(
        None,
        "--positions",
        help="all, prompt, generated, or K (from token K on). Default: all for add, 1 for the projection modes "
        "(the first token, the attention sink, left alone).",
    ),
    scale: Scale = typer.Option(DEFAULT_SCALE, "--scale", help="relative (to the residual norm) or absolute."),
    preserve_norm: bool = typer.Option(False, "--preserve-norm", help="Keep each token's residual norm."),
    condition: Path | None = typer.Option(
        None,
        "--condition",
        help="A condition file (steerlab condition find): steer only the prompts whose gate opens; the others are "
        "answered as unsteered at every strength.",
    ),
    max_new_tokens: int = typer.Option(40, "--max-new-tokens"),
    sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON Lines, one object per prompt."),
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Generate unsteered and steered text side by side (with --condition: steered only where the gate opens)."""
    from steerlab.engines import apply_chat
    from steerlab.evaluate.comparison import compare
    from steerlab.evaluate.conditions import gate_opens
    from steerlab.io.conditions import load_conditions

    prompt_list = read_prompts(prompt, prompts)
    vec = load_combined(vector)
    gate = load_conditions(condition) if condition is not None else None
    if alphas is None and "recommended" in vec.extra:
        # The calibrated setting (layer, mode, scale and strength) beside the unsteered model; Intervention checks
        # that --layers / --mode / --scale, if given, agree with it.
        alpha_list: list = [None, "recommended"]
        rec = vec.extra["recommended"]
        err.print(f"steering with the vector's calibrated setting: layer {rec.get('layer')}, alpha {rec.get('alpha')} "
                  f"({rec.get('mode')}, {rec.get('scale')}); give --alphas to choose your own")  # fmt: skip
    else:
        alpha_list = list(parse_alphas(alphas or ",".join(f"{a:g}" for a in DEFAULT_COMPARE_ALPHAS), mode))
    if mode in ("ablate_then_add", "clamp") and None not in alpha_list:
        alpha_list = [None, *alpha_list]  # these modes have no identity alpha: show the unsteered model too
    layer_list = parse_ints(layers, "--layers") if layers else None
    lm, tokenizer = _load(model, device, dtype)
    # Whether each prompt's gate opens, read as the gate reads it (the prompt in the chat template, as compare puts
    # it); first, so that a condition of another model is the error named, before any generation.
    opened = None if gate is None else gate_opens(lm, tokenizer, [apply_chat(tokenizer, p) for p in prompt_list], gate)
    rows = compare(
        lm,
        tokenizer,
        prompt_list,
        vec,
        alphas=alpha_list,
        mode=mode,
        layers=layer_list,
        positions=positions,
        site=site,
        scale=scale,
        preserve_norm=preserve_norm,  # type: ignore[arg-type]
        condition=gate,
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        seed=seed,
    )
    if as_json:
        for i, row in enumerate(rows):
            line = row.as_dict() if opened is None else {**row.as_dict(), "gate_open": bool(opened[i])}
            sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
        return
    for i, row in enumerate(rows):
        if opened is not None:
            out.print(f"gate {'open: steered' if opened[i] else 'shut: every answer unsteered'}", style="bold")
        show_comparison(row)


@app.command()
@user_errors
def info(
    vector: Path = typer.Argument(..., help="A .safetensors steering vector."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw header as JSON."),
) -> None:
    """Print a vector's metadata."""
    from steerlab._vector import SteeringVector

    vec = SteeringVector.load(vector)
    header = vec.header()
    if as_json:
        sys.stdout.write(json.dumps(header, indent=2) + "\n")
        return
    table = Table(show_header=False, box=None)
    for key, value in header.items():
        if key == "resid_norm":
            continue
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    out.print(table)
    # "relative size": what alpha=1 on the absolute scale pushes, as a fraction of the residual norm (text breaks
    # past ~0.3); on the relative scale alpha is that fraction itself.
    layers = Table("layer", "norm", "residual norm (extraction data)", "relative size of alpha=1 absolute")
    for layer, direction in sorted(vec.directions.items()):
        resid = vec.resid_norm.get(layer)
        norm = float(direction.norm())
        layers.add_row(
            str(layer), f"{norm:.3f}", f"{resid:.1f}" if resid else "-", f"{norm / resid:.3f}" if resid else "-"
        )
    out.print(layers)
    if vec.resid_norm:
        out.print(
            "With the default scale (relative), alpha is a fraction of the residual norm; text breaks past "
            f"~{BREAKDOWN_STRENGTH:g}."
        )


@app.command()
@user_errors
def bake(
    vector: Path = typer.Option(..., "--vector", help="A .safetensors steering vector."),
    out_dir: Path = typer.Option(..., "--out", help="Folder to write the baked model and tokenizer to."),
    alpha: float | None = typer.Option(
        None, "--alpha", help="Strength of the addition (a fraction of the residual norm with --scale relative)."
    ),
    ablate: bool = typer.Option(
        False, "--ablate", help="Orthogonalise the weights against the direction instead (ablation at every layer)."
    ),
    source_layer: int | None = typer.Option(
        None,
        "--source-layer",
        help="With --ablate: the vector layer whose direction is removed (default: the only one).",
    ),
    layers: str | None = typer.Option(None, "--layers", help="Subset of the vector's layers (default: all)."),
    site: Literal["resid_post", "mlp_out", "attn_out"] | None = typer.Option(
        None, "--site", help="Where the bias goes (default: the vector's site)."
    ),
    scale: Scale = typer.Option(DEFAULT_SCALE, "--scale", help="relative (to the residual norm) or absolute."),
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Bake a steering vector into the weights and save a model that plain transformers loads."""
    from steerlab._steer import Intervention, directional_ablation
    from steerlab._vector import SteeringVector
    from steerlab.bake import bake_addition, orthogonalize, probe_logits, save_baked, verify_baked

    vec = SteeringVector.load(vector)
    layer_list = parse_ints(layers, "--layers") if layers else None
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SteerlabError(f"--out '{out_dir}' exists and is not empty; choose a new folder.")
    if not ablate and alpha is None:
        raise SteerlabError("give the strength with --alpha (e.g. --alpha 0.1: 10% of the residual norm), or --ablate.")
    if ablate and source_layer is None and len(vec.layers) != 1:
        raise SteerlabError(
            f"the vector has layers {vec.layers}; say whose direction to remove everywhere with --source-layer L."
        )
    lm, tokenizer = _load(model, device, dtype)
    if ablate:
        steering = directional_ablation(lm, vec, source_layer)
        reference = probe_logits(lm, tokenizer, steering)  # the hooked model is what the baked one must reproduce
        orthogonalize(lm, vec, source_layer, inplace=True)  # the CLI owns this model: no second copy
    else:
        steering = Intervention(vec, alpha, layers=layer_list, site=site, scale=scale)
        reference = probe_logits(lm, tokenizer, steering)
        bake_addition(lm, steering, inplace=True)
    save_baked(lm, tokenizer, out_dir)
    with err.status("checking the saved folder with plain transformers ..."):
        check = verify_baked(out_dir, tokenizer, reference)
    what = "orthogonalised against" if ablate else f"alpha={alpha:g} ({scale}) x"
    err.print(
        f"baked ({what} {vector.name}) -> {out_dir}; plain transformers reproduces the hooked logits to "
        f"max |diff| {check.max_diff:.2e} (logits up to {check.logit_scale:.1f})."
    )
    if not check.ok:
        raise SteerlabError(f"the saved model differs from the hooked one by {check.max_diff:.3g}; please report this.")


@app.command("export")
@user_errors
def export_vector(
    vector: Path = typer.Argument(..., help="A .safetensors steering vector."),
    out_path: Path = typer.Option(..., "--out", help="Where to write the exported file (a folder for hub)."),
    fmt: str = typer.Option(
        "gguf",
        "--format",
        help="gguf: llama.cpp's control-vector format; hub: a folder "
        "with the vector and a model card, ready to upload to the Hugging Face Hub.",
    ),
) -> None:
    """Export a vector for another tool (llama.cpp: `llama-cli --control-vector OUT`) or for sharing."""
    from steerlab._vector import SteeringVector
    from steerlab.io.hub import export_hub_folder

    if fmt not in ("gguf", "hub"):
        raise SteerlabError(f"--format '{fmt}' is not supported; use gguf or hub.")
    vec = SteeringVector.load(vector)
    if fmt == "gguf":
        export_gguf(vec, out_path)
        err.print(
            f"wrote {out_path}: llama.cpp control vector, direction.<k> for layers {vec.layers} "
            "(llama.cpp's block k = Hugging Face model.layers[k])."
        )
    else:
        export_hub_folder(vec, out_path)
        err.print(
            f"wrote {out_path}/vector.safetensors and README.md; upload with: "
            f"huggingface-cli upload <you>/<name> {out_path}"
        )


@app.command("import")
@user_errors
def import_vector(
    gguf_file: Path = typer.Argument(..., help="A llama.cpp control vector (.gguf), from steerlab or repeng."),
    out_path: Path = typer.Option(..., "--out", help="Where to write the .safetensors vector."),
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Import a llama.cpp control vector, checked against the model it is for.

    A file without steerlab's header (repeng, llama.cpp's own tools) carries no residual norms; they are measured
    here on steerlab's neutral texts, so relative strengths (the server's and chat's default) work on it.
    """
    from steerlab.evaluate.metrics import neutral_texts

    lm, tokenizer = _load(model, device, dtype)
    vec = import_gguf(gguf_file, lm, tokenizer=tokenizer, norm_texts=neutral_texts())
    vec.save(out_path)
    measured = " (residual norms measured on the neutral texts)" if "resid_norm_measured_on" in vec.extra else ""
    err.print(f"imported {gguf_file} (layers {vec.layers}) -> {out_path}{measured}")


DEMO_PROMPTS = NEUTRAL_PROMPTS[:3]


@app.command()
@user_errors
def demo(
    layer: int = typer.Option(10, "--layer", help="Block whose output is steered."),
    strength: float = typer.Option(0.15, "--strength", help="Strength, as a fraction of the layer's residual norm."),
    max_new_tokens: int = typer.Option(40, "--max-new-tokens"),
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Extract a sentiment vector from the shipped contrast pairs and steer both ways."""
    from steerlab._extract import extract_vector
    from steerlab.datasets.pairs import sentiment_pairs
    from steerlab.evaluate.comparison import compare

    start = time.perf_counter()
    lm, tokenizer = _load(model, device, dtype)
    loaded = time.perf_counter() - start
    pairs = sentiment_pairs()
    start = time.perf_counter()
    vec = extract_vector(lm, tokenizer, pairs, layers=[layer], method="mean_diff")
    extracted = time.perf_counter() - start
    resid = vec.resid_norm[layer]
    out.print(
        f"[bold]steerlab demo[/] on {model}: loaded in {loaded:.1f} s; sentiment vector (mean_diff of "
        f"{len(pairs)} contrast pairs, last token) at layer {layer} in {extracted:.2f} s; "
        f"|v| = {float(vec.directions[layer].norm()):.2f}, mean residual norm there {resid:.0f}.\n"
        f"Steering adds alpha x (v scaled to {resid:.0f}) to every token's residual stream after block "
        f"{layer}; nll is the mean negative log-likelihood of the text under the unsteered model "
        "(lower = more fluent).\n"
    )
    rows = compare(
        lm,
        tokenizer,
        DEMO_PROMPTS,
        vec,
        alphas=[-strength, 0.0, strength],
        max_new_tokens=max_new_tokens,
    )
    for row in rows:
        show_comparison(row)
