"""``steerlab condition ...``: condition gates (CAST). ``find`` searches layers x aggregate x comparison x side x
threshold for the gate that best tells two sets of prompts apart and writes a condition file; ``check`` says which
prompts a condition file's gate opens for. ``steerlab generate --condition FILE`` steers only those prompts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.table import Table

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
    read_prompts,
    user_errors,
)
from steerlab.errors import SteerlabError
from steerlab.types import CONDITION_COMPARISONS, CONDITION_REDUCES, CONDITION_SIDES

__all__ = ["condition_app"]

condition_app = typer.Typer(
    no_args_is_help=True, help="Condition gates (CAST): find where a property of the prompt is read; check prompts."
)
app.add_typer(condition_app, name="condition")

CHAT_OPT = typer.Option(
    None,
    "--chat/--no-chat",
    help="Put each prompt in the chat template first, as `steerlab generate` does (default: when the tokenizer has "
    "one), so the gate reads the prompt as generation will.",
)


def _choices(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    wrong = [part for part in chosen if part not in allowed]
    if wrong or not chosen:
        raise SteerlabError(f"{what} '{text}' is not valid; expected a comma-separated subset of {list(allowed)}.")
    return chosen


@condition_app.command("find")
@user_errors
def condition_find_command(
    positive: Path = typer.Option(..., "--positive", help="Prompts that have the property (the gate should open)."),
    negative: Path = typer.Option(..., "--negative", help="Prompts that lack it (the gate should stay shut)."),
    out_path: Path = typer.Option(..., "--out", help="The condition file (.json) to write; its vector goes beside it."),
    name: str = typer.Option("condition", "--name", help="The condition's name in the file (and in rules)."),
    vector: Path | None = typer.Option(
        None,
        "--vector",
        help="The condition's direction, a .safetensors vector (default: the mean difference of the training "
        "split's activations at each layer, so held-out prompts are unseen by direction and threshold).",
    ),
    layers: str | None = typer.Option(None, "--layers", help="Candidate layers, e.g. 2-9 (default: all)."),
    reduces: str = typer.Option("mean,last", "--reduces", help="Candidate aggregates over the prompt: mean, last."),
    comparisons: str = typer.Option("cosine,projection", "--comparisons", help="Candidate comparisons."),
    sides: str = typer.Option("greater,smaller", "--sides", help="Candidate sides of the threshold."),
    held_out: float = typer.Option(0.25, "--held-out", help="Fraction of each set held out to report F1 on."),
    seed: int = typer.Option(0, "--seed", help="Seed of the held-out split."),
    top: int = typer.Option(10, "--top", help="Candidates shown in the table (best training F1 first)."),
    chat: bool | None = CHAT_OPT,
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Find the condition point (layer, aggregate, comparison, side, threshold) with the best F1 on labelled
    prompts; show the candidates with their held-out F1 and write a condition file."""
    from steerlab._vector import SteeringVector
    from steerlab.engines import apply_chat
    from steerlab.evaluate.conditions import find_condition_point
    from steerlab.io.conditions import save_conditions

    if out_path.suffix != ".json":
        raise SteerlabError(f"--out '{out_path}' should be a .json file (the condition file); e.g. --out gate.json.")
    candidates = {
        "reduces": _choices(reduces, CONDITION_REDUCES, "--reduces"),
        "comparisons": _choices(comparisons, CONDITION_COMPARISONS, "--comparisons"),
        "sides": _choices(sides, CONDITION_SIDES, "--sides"),
    }
    layer_list = parse_ints(layers, "--layers") if layers else None
    direction = SteeringVector.load(vector) if vector is not None else None
    pos, neg = read_lines(positive, "--positive"), read_lines(negative, "--negative")
    lm, tokenizer = _load(model, device, dtype)
    pos, neg = ([apply_chat(tokenizer, p, chat=chat) for p in texts] for texts in (pos, neg))
    search = find_condition_point(lm, tokenizer, pos, neg, vector=direction, layers=layer_list, held_out=held_out,
                                  seed=seed, **candidates)  # fmt: skip
    info = {
        "positive": str(positive),
        "negative": str(negative),
        "n_train": search.n_train,
        "n_held_out": search.n_held_out,
        "train": search.train,
        "held_out": search.held_out,
    }
    save_conditions(out_path, {name: search.condition}, info=info)
    table = Table(title=f"condition points ({search.n_train} prompts to choose, {search.n_held_out} held out)")
    for column in ("layer", "reduce", "comparison", "side", "threshold", "train F1", "held-out F1"):
        table.add_column(column, justify="right" if column not in ("reduce", "comparison", "side") else "left")
    point = search.condition.vector.extra["condition"]
    ranked = sorted(search.rows, key=lambda r: (-r["train_f1"], -r.get("held_out_f1", 0.0)))
    for row in ranked[: max(top, 1)]:
        chosen = all(row[k] == point[k] for k in ("layer", "reduce", "comparison", "side"))
        held = row.get("held_out_f1")
        table.add_row(str(row["layer"]), row["reduce"], row["comparison"], row["side"], f"{row['threshold']:.4g}",
                      f"{row['train_f1']:.3f}", "-" if held is None else f"{held:.3f}",
                      style="bold green" if chosen else None)  # fmt: skip
    out.print(table)
    held = "-" if search.held_out_f1 is None else f"{search.held_out_f1:.3f} ({search.n_held_out} prompts)"
    out.print(f"chosen: {search.condition!r}; train F1 {search.train_f1:.3f}, held-out F1 {held}")
    err.print(f"wrote {out_path}; steer with it: steerlab generate --vector V.safetensors --condition {out_path} ...")


@condition_app.command("check")
@user_errors
def condition_check_command(
    condition: Path = typer.Option(..., "--condition", help="A condition file (steerlab condition find)."),
    prompt: str | None = typer.Option(None, "--prompt", help="One prompt."),
    prompts: Path | None = typer.Option(None, "--prompts", help="A file with one prompt per line."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON Lines: the prompt and whether the gate opens."),
    chat: bool | None = CHAT_OPT,
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """Say for each prompt whether a condition file's gate opens (steering would act) or stays shut."""
    from steerlab.engines import apply_chat
    from steerlab.evaluate.conditions import gate_opens
    from steerlab.io.conditions import load_conditions

    prompt_list = read_prompts(prompt, prompts)
    gate = load_conditions(condition)
    lm, tokenizer = _load(model, device, dtype)
    opened = gate_opens(lm, tokenizer, [apply_chat(tokenizer, p, chat=chat) for p in prompt_list], gate).tolist()
    if as_json:
        for text, state in zip(prompt_list, opened, strict=True):
            sys.stdout.write(json.dumps({"prompt": text, "gate_open": state}, ensure_ascii=False) + "\n")
        return
    table = Table("gate", "prompt", title=f"{gate!r}", title_justify="left")
    for text, state in zip(prompt_list, opened, strict=True):
        table.add_row("[green]open[/]" if state else "shut", text)
    out.print(table)
    err.print(f"the gate opens for {sum(opened)} of {len(opened)} prompts")
