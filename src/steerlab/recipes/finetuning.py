"""Steering during fine-tuning, measured (preventative steering: Chen et al. 2025; concept ablation fine-tuning:
Casademunt et al. 2025).

Fine-tune copies of one model on the same data that teaches a trait, each with another intervention active during
training only, then measure every fine-tuned model *unsteered* on held-out prompts:

* ``finetune``: no steering (what the data teaches on its own);
* ``add_trait`` / ``add_random``: the trait direction (preventative steering), or a random direction of the same
  norm (the control), added at the trait's layer;
* ``ablate_trait`` / ``ablate_random``: the trait direction, or the random one, projected out at that layer.

Measured per arm on greedy generations of the prompts: a judge's score per text (VADER sentiment by default) and
the mean projection of the generated tokens' activations on the trait's unit direction at its layer, each with a
95% bootstrap interval; and each arm's per-prompt change from the plain fine-tune, with its interval. The base
model, not fine-tuned, is measured too.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from steerlab._record import ActivationReader, length_batches
from steerlab._steer import Intervention, checked_layers
from steerlab._text import pad_id
from steerlab._vector import SteeringVector
from steerlab.errors import DataError
from steerlab.evaluate.comparison import generate_rows
from steerlab.evaluate.metrics import sentiment
from steerlab.evaluate.results import ResultTable
from steerlab.evaluate.sweeps import effect_interval
from steerlab.finetune import finetune

__all__ = ["ARMS", "SteeredFinetuning", "steered_finetuning"]

ARMS: tuple[str, ...] = ("finetune", "add_trait", "add_random", "ablate_trait", "ablate_random")
"""The fine-tunes :func:`steered_finetuning` can run (see the module doc); the base model is always measured."""


@dataclass
class SteeredFinetuning:
    """What :func:`steered_finetuning` measured: ``table`` (kind ``"finetune"``, one record per arm), a few
    generated ``examples`` per arm, and each fine-tune's training ``losses``."""

    table: ResultTable
    examples: dict[str, list[tuple[str, str]]]
    losses: dict[str, list[float]]

    def markdown(self) -> str:
        """The table as Markdown."""
        meta = self.table.meta
        lines = [
            f"| arm | steering during training | n | {meta['judge']} [95% CI] | change vs plain fine-tune "
            f"[95% CI] | projection on the trait, layer {meta['layer']} [95% CI] | final loss |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in self.table.records:
            change = "" if r["change"] is None else f"{r['change']:+.3f} [{r['change_lo']:+.3f}, {r['change_hi']:+.3f}]"
            loss = "" if r["final_loss"] is None else f"{r['final_loss']:.3f}"
            lines.append(
                f"| {r['arm']} | {r['steering']} | {r['n']} | {r['judge']:+.3f} [{r['judge_lo']:+.3f}, "
                f"{r['judge_hi']:+.3f}] | {change} | {r['projection']:+.2f} [{r['projection_lo']:+.2f}, "
                f"{r['projection_hi']:+.2f}] | {loss} |"
            )
        return "\n".join(lines)


def _generated_projection(
    model: nn.Module, tokenizer: Any, outputs: list[tuple[list[int], list[int]]], unit: torch.Tensor, layer: int,
    site: str,
) -> list[float]:  # fmt: skip
    """Per row: the mean projection of its generated tokens' activations at ``layer`` on ``unit`` (the model reads
    prompt + answer, as it did while generating)."""
    reader = ActivationReader(model, layers=[layer], reduce="all", site=site, exclude_first_token=False,
                              pad_id=pad_id(tokenizer))  # fmt: skip
    whole = [prompt + answer for prompt, answer in outputs]
    values: list[float] = [float("nan")] * len(whole)
    for rows, out in reader.run(whole, length_batches([len(ids) for ids in whole], 16)):
        for row, hidden in zip(rows, out[layer], strict=True):
            generated = len(outputs[row][1])
            values[row] = float((hidden[-generated:] @ unit).mean()) if generated else float("nan")
    return values


def _interval(values: Sequence[float], seed: int) -> tuple[float, float, float]:
    kept = [v for v in values if v == v]  # rows that generated nothing have no projection
    lo, hi = effect_interval(kept, seed=seed)
    return statistics.fmean(kept), lo, hi


def steered_finetuning(
    model: nn.Module,
    tokenizer: Any,
    train: Sequence[str] | Sequence[tuple[str, str]],
    prompts: Sequence[str],
    trait: SteeringVector,
    *,
    layer: int,
    alpha: float = 0.1,
    arms: Sequence[str] = ARMS,
    steps: int = 60,
    lr: float = 5e-4,
    batch_size: int = 8,
    lora_rank: int = 8,
    max_new_tokens: int = 32,
    judge: Callable[[list[str]], list[float]] | None = None,
    judge_name: str = "sentiment (VADER)",
    chat: bool | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> SteeredFinetuning:
    """Fine-tune copies of ``model`` on ``train`` under each of ``arms`` and measure each one unsteered.

    Args:
        train: the data that teaches the trait (strings, or (prompt, completion) pairs; see
            :func:`steerlab.finetune.finetune`).
        prompts: held-out prompts the fine-tuned models answer (greedy, ``max_new_tokens``), unsteered.
        trait: a vector pointing *towards* the trait (negate a vector that points away: ``-1 * sentiment``).
        layer: the trait's layer: where it is added or ablated while training, and where the projection is read.
        alpha: the strength added in ``add_trait`` / ``add_random`` (a fraction of the residual norm).
        judge, judge_name: a score per generated text (``None``: VADER compound sentiment, -1 to 1,
            :func:`steerlab.evaluate.sentiment`).
        steps, lr, batch_size, lora_rank: each fine-tune's (the same for every arm; the same seed too).
        chat: whether prompts and training pairs use the chat template (``None``: when the tokenizer has one).

    Each arm fine-tunes its own copy of the model (one at a time; the copy is freed after it is measured), so
    ``model`` is never changed.

    Example:
        >>> result = steered_finetuning(model, tok, sad_stories, openers, -1 * sentiment_vec, layer=12, steps=60)
        >>> print(result.markdown())
    """
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or not arms:
        raise DataError(f"unknown arms {unknown or list(arms)}; choose from {list(ARMS)}.")
    checked_layers(trait, [layer])
    trait.check_fits(model)
    prompts = list(prompts)
    if not prompts:
        raise DataError("steered_finetuning needs held-out prompts to measure the fine-tuned models on; got none.")
    control = trait.random_like(seed)
    steering: dict[str, list[Intervention]] = {
        "finetune": [],
        "add_trait": [Intervention(trait, alpha=alpha, layers=[layer])],
        "add_random": [Intervention(control, alpha=alpha, layers=[layer])],
        "ablate_trait": [Intervention(trait, mode="ablate", layers=[layer])],
        "ablate_random": [Intervention(control, mode="ablate", layers=[layer])],
    }
    unit = trait.directions[layer].float() / trait.directions[layer].float().norm()
    scores: dict[str, list[float]] = {}
    projections: dict[str, list[float]] = {}
    examples: dict[str, list[tuple[str, str]]] = {}
    losses: dict[str, list[float]] = {}

    def measure(arm: str, measured: nn.Module) -> None:
        outputs = generate_rows(measured, tokenizer, prompts, [None] * len(prompts), max_new_tokens=max_new_tokens,
                                chat=chat, progress=progress)  # fmt: skip
        texts = [tokenizer.decode(answer, skip_special_tokens=True) for _, answer in outputs]
        scores[arm] = [float(x) for x in (judge or sentiment)(texts)]
        projections[arm] = _generated_projection(measured, tokenizer, outputs, unit, layer, trait.site)
        examples[arm] = list(zip(prompts[:4], texts[:4], strict=False))

    measure("base", model)
    for arm in arms:
        settings = dict(steps=steps, lr=lr, batch_size=batch_size, lora_rank=lora_rank, seed=seed)
        tuned = finetune(copy.deepcopy(model), tokenizer, train, steering=steering[arm], chat=chat, progress=progress,
                         **settings)  # fmt: skip
        losses[arm] = tuned.losses
        measure(arm, tuned.model)
        del tuned

    records = []
    for arm in ("base", *arms):
        mean, lo, hi = _interval(scores[arm], seed)
        p_mean, p_lo, p_hi = _interval(projections[arm], seed)
        change = change_lo = change_hi = None
        if arm != "finetune" and "finetune" in scores:
            diffs = [a - b for a, b in zip(scores[arm], scores["finetune"], strict=True)]
            change, (change_lo, change_hi) = statistics.fmean(diffs), effect_interval(diffs, seed=seed)
        items = steering.get(arm, [])
        records.append({
            "arm": arm,
            "steering": "not fine-tuned" if arm == "base" else
                        ", ".join(f"{i.mode} {'trait' if i.vector is trait else 'random'}" for i in items) or "none",
            "n": len(prompts),
            "judge": mean, "judge_lo": lo, "judge_hi": hi,
            "change": change, "change_lo": change_lo, "change_hi": change_hi,
            "projection": p_mean, "projection_lo": p_lo, "projection_hi": p_hi,
            "final_loss": losses[arm][-1] if arm in losses else None,
        })  # fmt: skip
    meta = {"layer": layer, "alpha": alpha, "judge": judge_name, "steps": steps, "lr": lr, "batch_size": batch_size,
            "lora_rank": lora_rank, "n_train": len(train), "n_prompts": len(prompts), "max_new_tokens": max_new_tokens,
            "seed": seed}  # fmt: skip
    return SteeredFinetuning(ResultTable("finetune", records, meta), examples, losses)
