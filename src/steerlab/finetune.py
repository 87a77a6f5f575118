"""Fine-tune with steering switched on: preventative steering, and ablation of a concept while training.

Steering hooks are ordinary differentiable operations on the hidden states, so a ``steer(...)`` block around any
training loop steers every forward pass in it, and the backward pass goes through the intervention: a
hand-written loop, a transformers ``Trainer`` (``with steer(trainer.model, ...): trainer.train()``), or
:func:`finetune` below. Positions count real tokens under either padding side, as in generation. Two uses:

* **Preventative steering** (Chen et al. 2025, persona vectors): add the direction of a trait while fine-tuning on
  data that teaches it. The steering already supplies the trait, so the update has less reason to write it into
  the weights; the model measured afterwards, *unsteered*, shows less of it.
* **Ablation while fine-tuning** (concept ablation fine-tuning, Casademunt et al. 2025): project a concept
  direction out, so the update cannot learn to use it.

There is deliberately no ``TrainerCallback``: a callback's ``on_train_end`` does not run when training raises, so
hooks it added would stay on the model; a ``with`` block removes them in every case.

:func:`finetune` is a short LoRA fine-tune (peft, driven by transformers' ``Trainer``) with steering on; it needs
the ``train`` extra (``pip install 'steerlab[train]'``). The recipe comparing fine-tunes with and without steering,
against random directions, is :func:`steerlab.recipes.steered_finetuning`.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from steerlab._forward import input_device
from steerlab._steer import Intervention, check_interventions, steer
from steerlab._text import completion_ids, encode, pad_batch, pad_id
from steerlab.errors import DataError, SteeringError

__all__ = ["FineTuned", "finetune"]

_IGNORE = -100  # the label transformers' loss skips


@dataclass
class FineTuned:
    """What :func:`finetune` returns.

    Attributes:
        model: the fine-tuned model: the one given, its LoRA update merged into its weights (a plain transformers
            model again, steered by nothing).
        losses: the training loss at every step (under the steering, when there was any).
        meta: the settings, the data's hash, the steering used and the seconds taken.
    """

    model: nn.Module
    losses: list[float]
    meta: dict[str, Any] = field(default_factory=dict)


def _training_rows(tokenizer: Any, examples: Sequence[Any], chat: bool | None, max_length: int) -> list[dict]:
    """Token ids and labels per example: a plain string is trained on every token; a (prompt, completion) pair on
    the completion's tokens only."""
    if not examples:
        raise DataError("finetune needs training examples; got none.")
    if all(isinstance(e, str) for e in examples):
        if any(not e.strip() for e in examples):
            raise DataError("a training text is empty; give non-empty strings or (prompt, completion) pairs.")
        ids = encode(tokenizer, list(examples))
        starts = [1] * len(ids)  # the first token has nothing before it to be predicted from
    else:
        scored = completion_ids(tokenizer, examples, chat, what="finetune (with pairs)")
        ids, starts = scored.ids, scored.starts
    rows = []
    for i, (row, start) in enumerate(zip(ids, starts, strict=True)):
        if len(row) > max_length:
            raise DataError(
                f"example {i} is {len(row)} tokens long, past max_length={max_length}; shorten it or raise max_length."
            )
        rows.append({"input_ids": row, "labels": [_IGNORE] * start + row[start:]})
    return rows


def _collate(pad: int):
    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = pad_batch([r["input_ids"] for r in rows], pad, side="right")
        labels, _ = pad_batch([r["labels"] for r in rows], _IGNORE, side="right")
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate


def _digest(examples: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(list(examples), default=list).encode()).hexdigest()


def _describe(items: list[Intervention]) -> list[dict[str, Any]]:
    return [
        {
            "method": item.vector.method,
            "dataset_hash": item.vector.dataset_hash,
            "mode": item.mode,
            "alpha": item.alpha,
            "layers": list(item.layers or item.vector.layers),
            "site": item.resolved_site,
            "scale": item.scale,
            "positions": item.positions,
        }  # fmt: skip
        for item in items
    ]


def finetune(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[str] | Sequence[tuple[str, str]],
    *,
    steering: Intervention | Sequence[Intervention] | None = None,
    steps: int = 50,
    lr: float = 5e-4,
    batch_size: int = 8,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    target_modules: str | Sequence[str] = "all-linear",
    max_length: int = 256,
    chat: bool | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> FineTuned:
    """Fine-tune ``model`` with LoRA adapters for ``steps`` steps while ``steering`` is applied, then merge the
    adapters into its weights. The model is changed in place (as a ``Trainer`` changes it); copy it first to keep
    the original. If training fails, the adapters are removed again and the weights are as they were.

    Args:
        examples: strings (every token trained: a language-modelling fine-tune) or (prompt, completion) pairs
            (only the completion's tokens trained; the prompt in the chat template per ``chat``, as in
            :func:`steerlab.optimize_vector`).
        steering: interventions active in every training step (``None``: plain fine-tuning). Checked against the
            model before anything changes.
        steps, lr, batch_size: optimisation (AdamW, linear decay; the data cycled in a seeded order).
        lora_rank, lora_alpha, target_modules: the LoRA adapters (peft; ``"all-linear"`` adapts every linear
            layer but the output head).
        max_length: the longest example accepted, in tokens (a longer one is an error, not silently cut).
        seed: adapter initialisation and data order.
        progress: transformers' progress bar (``None``: on a terminal).

    Example:
        >>> trait = Intervention(negative_tone, alpha=0.15, layers=[12])      # preventative steering
        >>> tuned = finetune(copy.deepcopy(model), tok, sad_texts, steering=trait, steps=60)
        >>> tuned.losses[-1], tuned.model                                      # measured unsteered afterwards
    """
    try:
        import peft
        from datasets import Dataset
        from transformers import PrinterCallback, ProgressCallback, Trainer, TrainingArguments
    except ImportError as err:  # pragma: no cover - the train extra
        raise SteeringError("finetune needs peft and datasets: pip install 'steerlab[train]'.") from err
    if steps < 1 or batch_size < 1 or lora_rank < 1 or not (math.isfinite(lr) and lr > 0):
        raise DataError(
            f"steps={steps}, batch_size={batch_size}, lora_rank={lora_rank} must be >= 1 and lr={lr} a positive number."
        )
    items = [] if steering is None else ([steering] if isinstance(steering, Intervention) else list(steering))
    check_interventions(model, items)
    for item in items:
        if item.positions == "generated":
            # A training forward has no generated tokens (every real token counts as prompt): it would steer nothing.
            raise SteeringError(
                "positions='generated' steers nothing while training: a training pass generates no tokens, every "
                "real token is part of the input. Use positions='all' (or an int k: tokens from the k-th on)."
            )  # a vector of another model fails here, before the model is touched
    rows = _training_rows(tokenizer, examples, chat, max_length)
    grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    torch.manual_seed(seed)  # the adapters' initialisation
    config = peft.LoraConfig(
        r=lora_rank, lora_alpha=lora_alpha, target_modules=target_modules, lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    wrapped = peft.get_peft_model(model, config)
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            args = TrainingArguments(
                output_dir=scratch,
                max_steps=steps,
                per_device_train_batch_size=batch_size,
                learning_rate=lr,
                logging_steps=1,
                save_strategy="no",
                report_to="none",
                seed=seed,
                data_seed=seed,
                use_cpu=input_device(model).type == "cpu",
                dataloader_num_workers=0,
                remove_unused_columns=False,
                disable_tqdm=not progress if progress is not None else None,
            )
            trainer = Trainer(
                model=wrapped,
                args=args,
                train_dataset=Dataset.from_list(rows),
                data_collator=_collate(pad_id(tokenizer)),
            )
            if progress is False:  # without its bar, the Trainer prints every step's log line instead
                trainer.remove_callback(PrinterCallback)
                trainer.remove_callback(ProgressCallback)
            with steer(wrapped, items) if items else nullcontext():
                trainer.train()
        losses = [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
        if not losses or not all(math.isfinite(x) for x in losses):
            raise SteeringError(
                f"the training loss became {losses[-1] if losses else 'absent'} (losses: {losses[:8]}...); lower lr "
                "or the steering strength. The model was left as it was."
            )
    except BaseException:
        wrapped.unload()  # the adapters out again: the weights are untouched
        _restore(model, grad_flags, was_training)
        raise
    merged = wrapped.merge_and_unload()
    _restore(merged, grad_flags, was_training)
    meta = {
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "lora_rank": lora_rank,
        "lora_alpha": lora_alpha,
        "n_examples": len(rows),
        "data_hash": _digest(examples),
        "steering": _describe(items),
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return FineTuned(merged, losses, meta)


def _restore(model: nn.Module, grad_flags: dict[str, bool], was_training: bool) -> None:
    """Give the parameters back the ``requires_grad`` they had (peft freezes them) and the train/eval mode."""
    for name, param in model.named_parameters():
        if name in grad_flags:
            param.requires_grad_(grad_flags[name])
    model.train(was_training)
