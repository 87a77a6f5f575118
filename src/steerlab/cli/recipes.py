"""The recipe commands of the ``steerlab`` CLI: ``refusal-direction``, ``caa``.

Each is a thin layer over :mod:`steerlab.recipes`: data paths in; the vector, the result table (for ``steerlab
report``) and a Markdown summary out, always beside a random direction of the same norm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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
from steerlab.cli.measure import LIMIT_OPT, PARTIAL_OPT, QUESTIONS_OPT, RANDOM_SEEDS_OPT, SWEEP_ALPHAS_OPT
from steerlab.errors import SteerlabError
from steerlab.evaluate.sweeps import DEFAULT_KL_BUDGET

__all__ = ["caa_command", "refusal_direction_command"]

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
    select_tokens: int = typer.Option(16, "--select-tokens", help="Tokens generated per answer to pick the layer."),
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
                               select_tokens=select_tokens, max_new_tokens=max_new_tokens, seed=seed)  # fmt: skip
    summary = result.markdown()
    out.print(summary)
    written = write_table(result.table, out_prefix)
    markdown = out_prefix.with_suffix(".md")
    markdown.write_text(summary + "\n", encoding="utf-8")
    vector_path = out_prefix.with_suffix(".safetensors")
    result.chosen().save(vector_path)
    err.print("wrote " + ", ".join(str(p) for p in [*written, markdown, vector_path]))


@app.command("caa")
@user_errors
def caa_command(
    pairs: Path = typer.Option(
        ...,
        "--pairs",
        help="CAA A/B contrast pairs (e.g. datasets/caa/generate/<b>/"
        "generate_dataset.json); each is also used with its choices swapped.",
    ),
    questions: Path = QUESTIONS_OPT,
    layers: str = typer.Option(..., "--layers", help="Layers to extract and sweep, e.g. 8-14 or 8,10,12."),
    out_prefix: Path = typer.Option(..., "--out", help="Output prefix: PREFIX.safetensors and PREFIX-sweep.*"),
    pair_limit: int | None = typer.Option(None, "--pair-limit", help="Use only the first N pairs."),
    limit: int | None = LIMIT_OPT,
    alphas: str = SWEEP_ALPHAS_OPT,
    random_seeds: int = RANDOM_SEEDS_OPT,
    budget: float = typer.Option(DEFAULT_KL_BUDGET, "--budget", help="Max KL (nats/token) of the chosen setting."),
    goal: Literal["increase", "decrease"] = typer.Option("increase", "--goal", help="Which way to move it."),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the split into selection / held-out questions."),
    coherence_texts: Path | None = COHERENCE_TEXTS_OPT,
    partial: Path | None = PARTIAL_OPT,
    instruction: str | None = typer.Option(
        None,
        "--instruction",
        help="Also ask for the behaviour in words on the same questions (the prompting baseline); 'default' takes "
        "steerlab's instruction for a shipped CAA behaviour, named by the --pairs folder.",
    ),
    model: str = MODEL_OPT,
    device: str | None = DEVICE_OPT,
    dtype: str | None = DTYPE_OPT,
) -> None:
    """A CAA behaviour vector (Rimsky et al.), swept against same-norm random directions and calibrated: the
    vector is saved with its setting when one beats them, else as extracted (and the command says so)."""
    from steerlab.datasets import load_pairs
    from steerlab.evaluate.metrics import load_ab
    from steerlab.recipes import CAA_INSTRUCTIONS, caa_behaviour

    if instruction == "default":
        behaviour = pairs.resolve().parent.name
        if behaviour not in CAA_INSTRUCTIONS:
            raise SteerlabError(
                f"--instruction default knows the shipped CAA behaviours {sorted(CAA_INSTRUCTIONS)}, but the pairs' "
                f"folder is {behaviour!r}; give the instruction's text instead."
            )
        instruction = CAA_INSTRUCTIONS[behaviour]
    if random_seeds < 0:
        raise SteerlabError(f"--random-seeds must be >= 0 (how many random directions), got {random_seeds}.")
    pair_list = load_pairs(pairs)[:pair_limit]
    items = load_ab(questions)[:limit]
    texts = read_lines(coherence_texts, "--coherence-texts") if coherence_texts is not None else None
    lm, tokenizer = _load(model, device, dtype)
    result = caa_behaviour(lm, tokenizer, pair_list, items, layers=parse_ints(layers, "--layers"),
                           alphas=parse_floats(alphas, "--alphas"), random_seeds=range(random_seeds),
                           kl_budget=budget, goal=goal, split_seed=split_seed, coherence=texts,
                           partial=partial, instruction=instruction)  # fmt: skip
    out.print(result.recommendation.summary())
    if result.prompting is not None:
        p = result.prompting
        out.print(
            f"prompting baseline ({p['instruction']!r}): p(matching) {p['unsteered']:.3f} -> {p['prompted']:.3f}, "
            f"effect {p['effect']:+.3f} [{p['effect_lo']:+.3f}, {p['effect_hi']:+.3f}] (n = {p['n']} questions)"
        )
    written = write_table(result.sweep, out_prefix.with_name(out_prefix.name + "-sweep"))
    vector_path = out_prefix.with_suffix(".safetensors")
    result.result_vector().save(vector_path)
    written.append(vector_path)
    if not result.recommendation.found:
        err.print(f"{vector_path} carries no recommended setting (none beat the random directions): steer it with "
                  "an explicit --alpha, or sweep more questions (--limit) or other layers.")  # fmt: skip
    err.print("wrote " + ", ".join(str(p) for p in written))
