"""The ``steerlab`` command line: a thin layer over the library.

Every command defaults ``--model`` to ``smollm2-135m`` and reports user errors as one line on stderr with
exit code 1 (no traceback).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from steerlab.data import NEUTRAL_PROMPTS
from steerlab.errors import SteerlabError
from steerlab.models import DEFAULT_MODEL

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Extract steering vectors, steer generation, compare.",
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

MODEL_OPT = typer.Option(DEFAULT_MODEL, "--model", help="Alias, .gguf file, model folder or hub id.")
DEVICE_OPT = typer.Option(None, "--device", help="cpu, cuda, cuda:1, mps (default: transformers' choice).")
DTYPE_OPT = typer.Option(None, "--dtype", help="float32, bfloat16, float16 or auto.")


def user_errors(fn: F) -> F:
    """Turn steerlab's errors into one clear line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SteerlabError as error:
            err.print(f"[bold red]error:[/] {error}", highlight=False, markup=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def parse_ints(text: str, what: str) -> list[int]:
    """``"10,12"`` or ``"8-12"`` or ``"8-10,14"`` -> list of ints."""
    values: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                values.extend(range(int(lo), int(hi) + 1))
            else:
                values.append(int(part))
    except ValueError:
        raise SteerlabError(f"{what} '{text}' is not a list of integers; write e.g. 10,12 or 8-12.") from None
    if not values:
        raise SteerlabError(f"{what} is empty; write e.g. 10,12 or 8-12.")
    return values


def parse_floats(text: str, what: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise SteerlabError(f"{what} '{text}' is not a list of numbers; write e.g. -8,0,8.") from None
    if not values:
        raise SteerlabError(f"{what} is empty; write e.g. -8,0,8.")
    return values


def _load(model: str, device: str | None, dtype: str | None):
    from transformers.utils import logging as hf_logging

    from steerlab.models import load_model

    hf_logging.disable_progress_bar()
    with err.status(f"loading {model} ..."):
        return load_model(model, device=device, dtype=dtype)


@app.command()
@user_errors
def extract(
    pairs: Path = typer.Option(..., "--pairs", help="JSON/JSONL contrast pairs (plain or CAA A/B format)."),
    layers: str = typer.Option(..., "--layers", help="Layers to read, e.g. 10,12 or 8-14 (0-based)."),
    out_path: Path = typer.Option(..., "--out", help="Where to write the .safetensors vector."),
    method: str = typer.Option("mean_diff", "--method", help="mean_diff, pca_diff, pca_center or actadd."),
    reduce: str = typer.Option("last", "--reduce", help="Token read per text: last or mean."),
    normalize: bool = typer.Option(False, "--normalize", help="Scale each layer's direction to unit norm."),
    batch_size: int = typer.Option(16, "--batch-size"),
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Extract a steering vector from contrast pairs and save it."""
    from steerlab.data import load_pairs
    from steerlab.extract import extract_vector

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
        batch_size=batch_size,
    )
    seconds = time.perf_counter() - start
    vec.save(out_path)
    norms = ", ".join(f"L{k}: {float(v.norm()):.2f}" for k, v in sorted(vec.directions.items()))
    err.print(f"extracted {method} from {len(data)} pairs in {seconds:.2f} s -> {out_path} (norms {norms})")


def parse_alphas(text: str, mode: str) -> list:
    """``-8,0,8`` for most modes; ``lo:hi`` bands for clamp (an empty end is unbounded: ``:2``, ``-1:``)."""
    if mode != "clamp":
        return parse_floats(text, "--alphas")
    bands = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, sep, hi = part.partition(":")
        try:
            if not sep:
                raise ValueError
            bands.append((float(lo) if lo.strip() else None, float(hi) if hi.strip() else None))
        except ValueError:
            raise SteerlabError(f"--alphas '{text}': mode clamp takes bands lo:hi, e.g. -2:2 or :3.") from None
    if not bands:
        raise SteerlabError("--alphas is empty; mode clamp takes bands lo:hi, e.g. -2:2.")
    return bands


def load_combined(specs: list[str]):
    """``--vector PATH[:WEIGHT]`` repeated -> the weighted sum of the vectors."""
    from steerlab.vector import SteeringVector

    total = None
    for spec in specs:
        path, weight = spec, 1.0
        head, sep, tail = spec.rpartition(":")
        if sep and head:
            try:
                path, weight = head, float(tail)
            except ValueError:
                path, weight = spec, 1.0  # a ':' inside the path itself
        vec = weight * SteeringVector.load(path)
        total = vec if total is None else total + vec
    if total is None:
        raise SteerlabError("give at least one --vector PATH[:WEIGHT].")
    return total


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
    alphas: str = typer.Option(
        "-8,0,8", "--alphas", help="Strengths, e.g. -8,0,8 (0 = unsteered); for --mode clamp, bands lo:hi."
    ),
    mode: str = typer.Option("add", "--mode", help="add, ablate, ablate_then_add or clamp."),
    site: str | None = typer.Option(
        None, "--site", help="resid_pre, attn_out, mlp_out or resid_post (default: the vector's site)."
    ),
    layers: str | None = typer.Option(None, "--layers", help="Subset of the vector's layers (default: all)."),
    positions: str = typer.Option("all", "--positions", help="all, prompt, generated, or K (from token K on)."),
    scale: str = typer.Option("absolute", "--scale", help="absolute, or relative to the residual norm."),
    preserve_norm: bool = typer.Option(False, "--preserve-norm", help="Keep each token's residual norm."),
    max_new_tokens: int = typer.Option(40, "--max-new-tokens"),
    sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON Lines, one object per prompt."),
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Generate unsteered and steered text side by side."""
    from steerlab.generate import compare
    from steerlab.interventions import OPERATORS

    if (prompt is None) == (prompts is None):
        raise SteerlabError("give exactly one of --prompt TEXT or --prompts FILE.")
    if prompts is not None:
        if not prompts.is_file():
            raise SteerlabError(f"prompt file '{prompts}' does not exist.")
        prompt_list = [line for line in prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompt_list:
            raise SteerlabError(f"prompt file '{prompts}' has no non-empty lines; put one prompt per line.")
    else:
        prompt_list = [prompt or ""]
        if not prompt_list[0].strip():
            raise SteerlabError("--prompt is empty.")
    if mode not in OPERATORS:
        raise SteerlabError(f"--mode '{mode}' is not one of {sorted(OPERATORS)}.")
    vec = load_combined(vector)
    alpha_list = parse_alphas(alphas, mode)
    if mode in ("ablate_then_add", "clamp"):
        alpha_list = [None, *alpha_list]  # these modes have no identity alpha: show the unsteered model too
    layer_list = parse_ints(layers, "--layers") if layers else None
    lm, tokenizer = _load(model, device, dtype)
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
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        seed=seed,
    )
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row.as_dict(), ensure_ascii=False) + "\n")
        return
    for row in rows:
        show_comparison(row)


def alpha_label(alpha: Any) -> str:
    if alpha is None:
        return "unsteered"
    if isinstance(alpha, tuple):
        lo, hi = alpha
        return f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"
    return f"{alpha:+g}" + ("\n(unsteered)" if alpha == 0 else "")


def show_comparison(row: Any) -> None:
    table = Table(title=row.prompt, title_justify="left", show_lines=True, expand=True)
    table.add_column("alpha", justify="right", no_wrap=True)
    table.add_column("nll", justify="right", no_wrap=True)
    table.add_column("text", ratio=1)
    for g in row.generations:
        table.add_row(alpha_label(g.alpha), f"{g.nll:.2f}", g.text)
    out.print(table)


@app.command()
@user_errors
def info(
    vector: Path = typer.Argument(..., help="A .safetensors steering vector."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw header as JSON."),
) -> None:
    """Print a vector's metadata."""
    from steerlab.vector import SteeringVector

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
    layers = Table("layer", "norm", "residual norm (extraction data)")
    for layer, direction in sorted(vec.directions.items()):
        resid = vec.resid_norm.get(layer)
        layers.add_row(str(layer), f"{float(direction.norm()):.3f}", f"{resid:.1f}" if resid else "-")
    out.print(layers)


@app.command()
@user_errors
def bake(
    vector: Path = typer.Option(..., "--vector", help="A .safetensors steering vector."),
    out_dir: Path = typer.Option(..., "--out", help="Folder to write the baked model and tokenizer to."),
    alpha: float = typer.Option(1.0, "--alpha", help="Strength of the addition."),
    ablate: bool = typer.Option(
        False, "--ablate", help="Orthogonalise the weights against the direction instead (ablation at every layer)."
    ),
    source_layer: int | None = typer.Option(
        None,
        "--source-layer",
        help="With --ablate: the vector layer whose direction is removed (default: the only one).",
    ),
    layers: str | None = typer.Option(None, "--layers", help="Subset of the vector's layers (default: all)."),
    site: str | None = typer.Option(None, "--site", help="resid_post, mlp_out or attn_out (default: the vector's)."),
    scale: str = typer.Option("absolute", "--scale", help="absolute, or relative to the residual norm."),
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Bake a steering vector into the weights and save a model that plain transformers loads."""
    import torch
    from transformers import AutoModelForCausalLM

    from steerlab.bake import bake_addition, orthogonalize, save_baked
    from steerlab.steer import directional_ablation, steer
    from steerlab.text import apply_chat
    from steerlab.vector import SteeringVector

    vec = SteeringVector.load(vector)
    layer_list = parse_ints(layers, "--layers") if layers else None
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SteerlabError(f"--out '{out_dir}' exists and is not empty; choose a new folder.")
    lm, tokenizer = _load(model, device, dtype)
    probe = tokenizer(apply_chat(tokenizer, "Tell me about your weekend."), return_tensors="pt")
    probe = {k: v.to(next(lm.parameters()).device) for k, v in probe.items()}
    with torch.no_grad():  # the hooked model is the reference the baked one must reproduce
        if ablate:
            with steer(lm, directional_ablation(lm, vec, source_layer)):
                reference = lm(**probe).logits.float()
            orthogonalize(lm, vec, source_layer)
        else:
            with steer(lm, vec, alpha, layers=layer_list, site=site, scale=scale):  # type: ignore[arg-type]
                reference = lm(**probe).logits.float()
            bake_addition(lm, vec, alpha, layers=layer_list, site=site, scale=scale)  # type: ignore[arg-type]
    save_baked(lm, tokenizer, out_dir)
    with err.status("checking the saved folder with plain transformers ..."):
        plain = AutoModelForCausalLM.from_pretrained(out_dir).to(reference.device).eval()
        with torch.no_grad():
            reloaded = plain(**probe).logits.float()
    gap = float((reloaded - reference).abs().max())
    scale_ = float(reference.abs().max())
    what = "orthogonalised against" if ablate else f"alpha={alpha:g} x"
    err.print(
        f"baked ({what} {vector.name}) -> {out_dir}; plain transformers reproduces the hooked logits to "
        f"max |diff| {gap:.2e} (logits up to {scale_:.1f})."
    )
    if gap > 1e-3 * max(scale_, 1.0):
        raise SteerlabError(f"the saved model differs from the hooked one by {gap:.3g}; please report this.")


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
    from steerlab.io.hub import export_hub_folder
    from steerlab.vector import SteeringVector

    if fmt not in ("gguf", "hub"):
        raise SteerlabError(f"--format '{fmt}' is not supported; use gguf or hub.")
    vec = SteeringVector.load(vector)
    if fmt == "gguf":
        vec.export_gguf(out_path)
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
) -> None:
    """Import a llama.cpp control vector, checked against the model it is for."""
    from steerlab.vector import SteeringVector

    lm, _ = _load(model, None, None)
    vec = SteeringVector.from_gguf(gguf_file, lm)
    vec.save(out_path)
    err.print(f"imported {gguf_file} (layers {vec.layers}) -> {out_path}")


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
    from steerlab.data import sentiment_pairs
    from steerlab.extract import extract_vector
    from steerlab.generate import compare

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
        scale="relative",
        max_new_tokens=max_new_tokens,
    )
    for row in rows:
        show_comparison(row)


@app.command()
@user_errors
def serve(
    model: str = MODEL_OPT,
    vectors: Path | None = typer.Option(
        None, "--vectors", help="Folder of .safetensors vectors (uploads go there too; default: a temporary folder)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default: no authentication)."),
    port: int = typer.Option(8000, "--port"),
    batch_window_ms: float = typer.Option(15.0, "--batch-window-ms", help="How long to wait for requests to batch."),
    max_batch: int = typer.Option(16, "--max-batch", help="Most requests decoded together."),
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Serve the model over an OpenAI-compatible API with per-request steering, and a playground at /."""
    from steerlab.serve import serve as run_server

    run_server(
        model,
        vectors=vectors,
        host=host,
        port=port,
        device=device,
        dtype=dtype,
        batch_window=batch_window_ms / 1000,
        max_batch=max_batch,
    )


@app.command()
@user_errors
def chat(
    url: str | None = typer.Option(None, "--url", help="A running `steerlab serve`, e.g. http://127.0.0.1:8000."),
    model: str | None = typer.Option(None, "--model", help="Or load this model here (alias, folder, .gguf, hub id)."),
    vector: str | None = typer.Option(
        None, "--vector", help="With --url: a vector name in the server's library; with --model: a .safetensors path."
    ),
    alpha: float = typer.Option(
        0.15, "--alpha", help="Strength (a fraction of the residual norm with --scale relative)."
    ),
    layers: str | None = typer.Option(None, "--layers", help="Subset of the vector's layers (default: all)."),
    mode: str = typer.Option("add", "--mode", help="add, ablate or ablate_then_add."),
    scale: str = typer.Option("relative", "--scale", help="relative (to the residual norm) or absolute."),
    system: str | None = typer.Option(None, "--system", help="A system prompt."),
    max_tokens: int = typer.Option(128, "--max-tokens"),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
) -> None:
    """Chat in the terminal with a steered model (type /quit or end the input to leave)."""
    from steerlab.serve.chat import Conversation, local_backend, remote_backend

    if (url is None) == (model is None):
        raise SteerlabError("give exactly one of --url (a running server) or --model (load it here).")
    layer_list = parse_ints(layers, "--layers") if layers else None
    options = dict(
        alpha=alpha, layers=layer_list, mode=mode, scale=scale, max_tokens=max_tokens, temperature=temperature
    )
    stop = None
    if url is not None:
        backend = remote_backend(url, vector=vector, **options)  # type: ignore[arg-type]
    else:
        from steerlab.vector import SteeringVector

        vec = SteeringVector.load(vector) if vector else None
        lm, tokenizer = _load(model or "", None, None)
        backend, stop = local_backend(lm, tokenizer, vector=vec, **options)  # type: ignore[arg-type]
    talk = Conversation(backend, system=system)
    steering = f"{vector} x {alpha:g} ({mode}, {scale})" if vector else "unsteered"
    err.print(f"chatting with {url or model}, {steering}; /quit to leave.")
    try:
        while True:
            try:
                line = input("you> ")
            except EOFError:
                break
            if line.strip() in ("/quit", "/exit"):
                break
            if not line.strip():
                continue
            sys.stdout.write("model> ")
            for piece in talk.say(line):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
    finally:
        if stop is not None:
            stop()


@app.command()
def doctor() -> None:
    """Check that steering behaves on this installation (tiny random models, a few seconds); exit 1 if not.

    Prints the versions in use, then each check: add / ablate / clamp, positions prompt / generated / k with and
    without a KV cache, padded and not, and per-row steering. Paste the output into bug reports.
    """
    from rich.markup import escape

    from steerlab.doctor import run_checks, versions

    table = Table(show_header=False, box=None)
    for name, version in versions().items():
        table.add_row(name, version)
    out.print(table)
    with err.status("checking steering on tiny random models ..."):
        checks = run_checks()
    for check in checks:
        mark = "[green]ok  [/]" if check.ok else "[bold red]FAIL[/]"
        out.print(f"{mark} {escape(check.name)}", highlight=False)
        if not check.ok:
            out.print(f"     {check.detail}", highlight=False, markup=False)
    failed = [check for check in checks if not check.ok]
    if failed:
        err.print(
            f"[bold red]{len(failed)} of {len(checks)} checks failed:[/] steering is not reliable with these versions. "
            "Install the tested versions (pip install -r requirements.lock in a steerlab checkout) and report this "
            "output at the project's issue tracker.",
            highlight=False,
        )
        raise typer.Exit(1)
    out.print(f"all {len(checks)} checks passed.")


# The measuring commands (sweep, calibrate, probe, breakdown, report) live in their own module.
from steerlab import cli_measure  # noqa: E402, F401


def main() -> None:
    app()


if __name__ == "__main__":
    main()
