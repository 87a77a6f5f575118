"""The refusal direction (Arditi et al. 2024, "Refusal in language models is mediated by a single direction").

1. Direction per candidate layer: mean of the harmful minus mean of the harmless training prompts, read at the
   last prompt token with the chat template applied (``extract_vector(..., chat=True)``).
2. Layer, chosen on validation prompts: the rise of P(refusal) on harmless prompts when the direction is added at
   that layer (strength 1, absolute: the difference of means itself) plus its fall on harmful prompts when the
   direction is ablated from every write to the residual stream (``directional_ablation``); ties broken by how
   well the layer's projection separates held-out harmful from harmless prompts.
3. Evaluation on all validation prompts at the chosen layer: unsteered, the direction, and a random direction of
   the same norm (the control), added to harmless prompts and ablated from harmful ones; two judges (refusal
   phrases, and a sentence-embedding classifier's P(refusal)).

Every setting of one prompt set is generated in shared batches, each row steered by its own setting
(:func:`steerlab.evaluate.comparison.generate_rows`).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from steerlab._extract import extract_vector
from steerlab._pairs import ContrastPair
from steerlab._record import record
from steerlab._steer import Intervention, directional_ablation
from steerlab._vector import SteeringVector
from steerlab.engines import apply_chat
from steerlab.errors import DataError
from steerlab.evaluate.comparison import generate_rows
from steerlab.evaluate.judges import RefusalClassifier, phrase_refusal
from steerlab.evaluate.results import ResultTable

__all__ = ["RefusalDirection", "refusal_direction"]


@dataclass
class RefusalDirection:
    """What :func:`refusal_direction` found: the direction at every candidate layer (``vector``), the chosen
    ``layer``, the random ``control`` of the same norm there, the measurements (``table``, kind ``"refusal"``:
    ``stage == "selection"`` per candidate layer, ``"evaluation"`` per prompt set and setting) and a few
    generated ``examples`` per evaluation setting."""

    vector: SteeringVector
    layer: int
    control: SteeringVector
    table: ResultTable
    examples: dict[str, list[tuple[str, str]]]

    def chosen(self) -> SteeringVector:
        """The direction at the chosen layer alone (to save, steer with, or ablate)."""
        return self.vector.at_layers([self.layer], source=self.layer)

    def markdown(self) -> str:
        """The evaluation and selection tables as Markdown."""
        meta = self.table.meta
        lines = [
            f"## Result at the chosen layer ({self.layer})",
            "",
            "| prompts | intervention | direction | n | refusal (phrases) | refusal (classifier) | mean P(refusal) "
            "| change |",
            "|---|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in self.table.where(stage="evaluation"):
            change = "" if r["change"] is None else f"{r['change']:+.3f}"
            lines.append(
                f"| {r['prompts']} | {r['intervention']} | {r['direction'] or ''} | {r['n']} | "
                f"{r['refusal_phrases']:.1%} | {r['refusal_classifier']:.1%} | {r['p_refusal']:.3f} | {change} |"
            )
        lines += [
            "",
            "## Layer selection (validation)",
            "",
            f"Score = rise of mean P(refusal) on {meta['n_select_harmless']} harmless prompts when adding (strength "
            f"1) + its fall on {meta['n_select_harmful']} harmful prompts when ablating, {meta['select_tokens']} new "
            "tokens; ties broken by how well the direction's projection separates held-out harmful from harmless "
            "prompts (accuracy at the median). Unsteered mean P(refusal): harmless "
            f"{meta['select_base_harmless']:.3f}, harmful {meta['select_base_harmful']:.3f}.",
            "",
            "| layer | norm | separation | P(refusal) harmless + add | P(refusal) harmful, ablated | score |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.table.where(stage="selection"):
            lines.append(
                f"| {r['layer']} | {r['norm']:.1f} | {r['separation']:.2f} | {r['p_harmless_added']:.3f} | "
                f"{r['p_harmful_ablated']:.3f} | {r['score']:+.3f} |"
            )
        return "\n".join(lines)


def _paired(harmful: list[str], harmless: list[str], seed: int) -> list[ContrastPair]:
    """One harmless prompt per harmful one: the longer list is sampled down (seeded), as the paper balances."""
    rng = random.Random(seed)
    if len(harmless) > len(harmful):
        harmless = rng.sample(harmless, len(harmful))
    elif len(harmful) > len(harmless):
        harmful = rng.sample(harmful, len(harmless))
    return [ContrastPair(h, s) for h, s in zip(harmful, harmless, strict=True)]


def _checked(name: str, prompts: Sequence[str], minimum: int) -> list[str]:
    prompts = [p for p in prompts if p.strip()]
    if len(prompts) < minimum:
        raise DataError(f"{name} holds {len(prompts)} prompts; the recipe needs at least {minimum}.")
    return prompts


def refusal_direction(
    model: nn.Module,
    tokenizer: Any,
    *,
    harmful_train: Sequence[str],
    harmless_train: Sequence[str],
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    judge: RefusalClassifier,
    layers: Sequence[int] | None = None,
    select_prompts: int = 24,
    select_tokens: int = 16,
    max_new_tokens: int = 48,
    seed: int = 0,
    batch_size: int = 32,
    examples: int = 3,
) -> RefusalDirection:
    """Find the refusal direction, choose its layer on validation prompts and measure it there against a random
    direction of the same norm (see the module doc for each step).

    Args:
        harmful_train, harmless_train: prompts the direction is the difference of means of (the longer list is
            sampled down to the shorter's length with ``seed``).
        harmful_val, harmless_val: held-out prompts: the first ``select_prompts`` harmless ones and every harmful
            one choose the layer (``select_tokens`` new tokens); all of them measure the result.
        judge: the classifier whose mean P(refusal) scores layers and results
            (``RefusalClassifier.train("datasets/caa/generate/refusal/generate_dataset.json")``).
        layers: candidate layers (default: every second block from 2 up to 90% of the depth).
        seed: the sampling of the training prompts and the random control's direction.

    Example:
        >>> from steerlab.datasets import load_instructions
        >>> splits = "datasets/refusal-direction/splits"
        >>> data = {name: load_instructions(f"{splits}/{name}.json") for name in
        ...         ("harmful_train", "harmless_train", "harmful_val", "harmless_val")}
        >>> judge = RefusalClassifier.train("datasets/caa/generate/refusal/generate_dataset.json")
        >>> result = refusal_direction(model, tok, **data, judge=judge)
        >>> print(result.markdown()); result.chosen().save("refusal.safetensors")
    """
    harmful_train = _checked("harmful_train", harmful_train, 2)
    harmless_train = _checked("harmless_train", harmless_train, 2)
    harmful_val = _checked("harmful_val", harmful_val, 2)
    harmless_val = _checked("harmless_val", harmless_val, 2)
    depth = model.config.num_hidden_layers
    candidates = sorted(set(layers)) if layers is not None else list(range(2, max(3, int(0.9 * depth)), 2))
    pairs = _paired(harmful_train, harmless_train, seed)
    vector = extract_vector(model, tokenizer, pairs, layers=candidates, chat=True, batch_size=batch_size)

    def p_refusal(prompts: list[str], settings: list[Any], tokens: int) -> list[list[str]]:
        """The answers to ``prompts`` under each setting (None: unsteered), all settings in shared batches."""
        rows = [setting for setting in settings for _ in prompts]
        outs = generate_rows(model, tokenizer, prompts * len(settings), rows, batch_size=batch_size,
                             max_new_tokens=tokens)  # fmt: skip
        texts = [tokenizer.decode(g, skip_special_tokens=True).strip() for _, g in outs]
        return [texts[i * len(prompts) : (i + 1) * len(prompts)] for i in range(len(settings))]

    def mean_p(texts: list[str]) -> float:
        return statistics.mean(judge.probabilities(texts))

    # How well each layer's direction separates held-out harmful from harmless prompts (median threshold).
    n_sep = min(len(harmful_val), len(harmless_val))
    held_out = [apply_chat(tokenizer, t) for t in harmful_val[:n_sep] + harmless_val[:n_sep]]
    acts = record(model, tokenizer, held_out, layers=candidates, batch_size=batch_size)
    truth = torch.tensor([True] * n_sep + [False] * n_sep)
    separation = {}
    for layer in candidates:
        proj = acts.values[layer] @ vector.directions[layer]
        separation[layer] = float(((proj > proj.median()) == truth).float().mean())

    select_harmless, select_harmful = harmless_val[:select_prompts], harmful_val
    add = {layer: Intervention(vector, 1.0, layers=[layer], scale="absolute") for layer in candidates}
    ablate = {layer: directional_ablation(model, vector, source=layer) for layer in candidates}
    induced = p_refusal(select_harmless, [None, *add.values()], select_tokens)
    bypassed = p_refusal(select_harmful, [None, *ablate.values()], select_tokens)
    base_harmless, base_harmful = mean_p(induced[0]), mean_p(bypassed[0])
    records: list[dict[str, Any]] = []
    scores = {}
    for i, layer in enumerate(candidates, start=1):
        up, down = mean_p(induced[i]), mean_p(bypassed[i])
        scores[layer] = (up - base_harmless) + (base_harmful - down)
        records.append({"stage": "selection", "layer": layer, "norm": float(vector.directions[layer].norm()),
                        "separation": separation[layer], "p_harmless_added": up, "p_harmful_ablated": down,
                        "score": scores[layer]})  # fmt: skip
    chosen = max(candidates, key=lambda layer: (scores[layer], separation[layer]))
    for r in records:
        r["chosen"] = r["layer"] == chosen

    single = vector.at_layers([chosen], source=chosen)
    control = single.random_like(seed=seed)
    added = [Intervention(single, 1.0, scale="absolute"), Intervention(control, 1.0, scale="absolute")]
    harmless_texts = p_refusal(harmless_val, [None, *added], max_new_tokens)
    ablated = [directional_ablation(model, single), directional_ablation(model, control)]
    harmful_texts = p_refusal(harmful_val, [None, *ablated], max_new_tokens)
    shown: dict[str, list[tuple[str, str]]] = {}
    for prompts_name, prompts, texts, operation in (("harmless", harmless_val, harmless_texts, "add"),
                                                    ("harmful", harmful_val, harmful_texts, "ablate")):  # fmt: skip
        base = None
        for (intervention, direction), answers in zip(
            (("unsteered", None), (operation, "vector"), (operation, "random")), texts, strict=True
        ):
            probabilities = judge.probabilities(answers)  # embedded once: the mean and the refusal rate
            p = statistics.mean(probabilities)
            base = p if base is None else base
            records.append({
                "stage": "evaluation", "layer": chosen, "prompts": prompts_name, "intervention": intervention,
                "direction": direction, "n": len(answers),
                "refusal_phrases": statistics.mean(map(phrase_refusal, answers)),
                "refusal_classifier": statistics.mean(q >= 0.5 for q in probabilities),
                "p_refusal": p, "change": None if direction is None else p - base,
            })  # fmt: skip
            label = f"{prompts_name}, {intervention}" + (f" ({direction})" if direction else "")
            shown[label] = list(zip(prompts[:examples], answers[:examples], strict=True))
    meta = {
        "chosen_layer": chosen, "candidates": candidates, "n_train_pairs": len(pairs),
        "n_harmful_val": len(harmful_val), "n_harmless_val": len(harmless_val),
        "n_select_harmless": len(select_harmless), "n_select_harmful": len(select_harmful),
        "select_tokens": select_tokens, "max_new_tokens": max_new_tokens, "seed": seed,
        "select_base_harmless": base_harmless, "select_base_harmful": base_harmful,
        "judge_held_out_accuracy": judge.held_out_accuracy, "judge_n_train": judge.n_train,
        "model_id": vector.model_id,
    }  # fmt: skip
    return RefusalDirection(vector, chosen, control, ResultTable("refusal", records, meta), shown)
