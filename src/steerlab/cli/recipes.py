"""The recipe commands of the ``steerlab`` CLI: ``refusal-direction``.

Each is a thin layer over :mod:`steerlab.recipes`: data paths in; the vector, the result table (for ``steerlab
report``) and a Markdown summary out, always beside a random direction of the same norm.
"""

from __future__ import annotations

from pathlib import Path

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
    user_errors,
    write_table,
)

__all__ = ["refusal_direction_command"]

_PROMPTS_HELP = "JSON list (strings or objects with 'instruction'/'prompt'/'goal'/'text'), JSON Lines, or text."


@app.command("refusal-direction")
@user_errors
def refusal_direction_command(
    harmful_train: Path = typer.Option(..., "--harmful-train", help=f"Harmful training prompts. {_PROMPTS_HELP}"),
    harmless_train: Path = typer.Option(..., "--harmless-train", help="Harmless training prompts (same formats)."),
    harmful_val: Path = typer.Option(..., "--harmful-val", help="Harmful validation prompts (same formats)."),
    harmless_val: Path = typer.Option(..., "--harmless-val", help="Harmless validation prompts (same formats)."),
    judge_data: Path = typer.Option(
        ...,
        "--judge-data",
        help="CAA refusal A/B file the P(refusal) classifier is trained on (e.g. "
        "datasets/caa/generate/refusal/generate_dataset.json).",
    ),
    out_prefix: Path = typer.Option(..., "--out", help="Output prefix: PREFIX.json/.csv/.md and PREFIX.safetensors."),
    layers: str | None = typer.Option(None, "--layers", help="Candidate layers (default: every 2nd from 2 to 90%)."),
    limit: int | None = typer.Option(None, "--limit", help="Use at most N prompts of each file."),
    select_prompts: int = typer.Option(24, "--select-prompts", help="Harmless validation prompts that pick the layer."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", help="Tokens generated per answer in the result."),
    seed: int = typer.Option(0, "--seed", help="Sampling of the training prompts and the random control."),
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """The refusal direction (Arditi et al.): difference of means per layer, the layer chosen on validation
    prompts, then added to harmless and ablated from harmful prompts beside a same-norm random direction."""
    from steerlab.datasets import load_instructions
    from steerlab.evaluate import RefusalClassifier
    from steerlab.recipes import refusal_direction

    files = {"harmful_train": harmful_train, "harmless_train": harmless_train, "harmful_val": harmful_val,
             "harmless_val": harmless_val}  # fmt: skip
    data = {name: load_instructions(path, limit=limit) for name, path in files.items()}
    candidates = parse_ints(layers, "--layers") if layers else None
    judge = RefusalClassifier.train(judge_data)
    lm, tokenizer = _load(model, device, dtype)
    result = refusal_direction(lm, tokenizer, **data, judge=judge, layers=candidates, select_prompts=select_prompts,
                               max_new_tokens=max_new_tokens, seed=seed)  # fmt: skip
    summary = result.markdown()
    out.print(summary)
    written = write_table(result.table, out_prefix)
    markdown = out_prefix.with_suffix(".md")
    markdown.write_text(summary + "\n", encoding="utf-8")
    vector_path = out_prefix.with_suffix(".safetensors")
    result.chosen().save(vector_path)
    err.print("wrote " + ", ".join(str(p) for p in [*written, markdown, vector_path]))
