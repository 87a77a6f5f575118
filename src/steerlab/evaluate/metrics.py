"""Measure what steering does: behaviour, logit differences, projections, sentiment and coherence.

Every metric works alone and returns plain numbers or tidy records (one dict per item). The two that sweeps
use, :class:`ABBehaviour` (CAA multiple choice) and :class:`NeutralKL` (coherence), are *logit metrics*: a
fixed token batch and a ``score(logits)`` function, so :func:`steerlab.evaluate.logits_over_alphas` runs the batch
once per strength (reusing the blocks below the steered layer) and the metric turns the logits into numbers. A
``vector`` argument may also be an :class:`~steerlab.Intervention` (then the layer/mode/scale options stay unset).

Lessons from measuring CAA on SmolLM2-135M (see docs/measure.md): the unsteered model prefers the letter "A"
(p = 0.61), so every A/B question is also asked with its choices swapped (``balance=True``) and the behaviour is
the mean over both orders; and a random direction of the same norm (:meth:`SteeringVector.random_like`) moves
p(matching) by a comparable amount, so report it beside every effect.

Coherence (:class:`NeutralKL`) is ``KL(steered || unsteered)`` of the next-token distributions, averaged over
every real token of a fixed set of neutral sentences shipped with steerlab (:func:`neutral_texts`), in nats.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steerlab._forward import batched_logits, kl_and_entropy, log_probs_at, mean_entropy
from steerlab._interventions import Alpha
from steerlab._replay import logits_over_alphas
from steerlab._steer import Intervention, Scale, as_interventions, checked_layers
from steerlab._text import apply_chat, encode, has_chat_template, pad_batch, pad_id
from steerlab._vector import SteeringVector
from steerlab.datasets.pairs import neutral_texts, read_json_file, swap_choice_text
from steerlab.errors import DataError, SteeringError
from steerlab.types import DEFAULT_SCALE

__all__ = [
    "ABBehaviour",
    "ABQuestion",
    "NeutralKL",
    "ab_probabilities",
    "generation_perplexity",
    "kl_from_unsteered",
    "load_ab",
    "logit_diff",
    "neutral_texts",
    "next_token_entropy",
    "p_matching",
    "sentiment",
    "swap_choices",
    "token_projections",
]


# ----- the shared inner loop ------------------------------------------------------------------------------


def _template(
    vector: SteeringVector | Intervention | None,
    *,
    layer: int | None = None,
    mode: str = "add",
    scale: Scale = DEFAULT_SCALE,
) -> Intervention | None:
    """The intervention a metric measures: ``vector`` with the options, or an Intervention given as it is."""
    if vector is None:
        return None
    items = as_interventions(vector, layers=None if layer is None else [layer], mode=mode, scale=scale)
    if len(items) != 1:
        raise SteeringError(f"a metric measures one intervention at a time; got {len(items)}.")
    return items[0]


# ----- A/B multiple choice (CAA) --------------------------------------------------------------------------


@dataclass(frozen=True)
class ABQuestion:
    """A two-choice question in the CAA format: the question text ends with ``(A) ...`` and ``(B) ...``;
    ``matching`` is the letter of the answer that shows the behaviour (``"A"`` or ``"B"``)."""

    question: str
    matching: str
    swapped: bool = False

    @property
    def not_matching(self) -> str:
        """The letter of the answer that does not show the behaviour."""
        return "B" if self.matching == "A" else "A"


def _letter(answer: Any) -> str | None:
    text = str(answer).strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    return text if text in ("A", "B") else None


def load_ab(path: str | Path) -> list[ABQuestion]:
    """Read a CAA ``test_dataset_ab.json`` (or any JSON list of ``question`` / ``answer_matching_behavior`` /
    ``answer_not_matching_behavior`` records). Questions that are not exactly two-choice A/B (a few CAA
    survival-instinct items have up to five choices) are left out with a warning.

    Example:
        >>> questions = load_ab("datasets/caa/test/sycophancy/test_dataset_ab.json")
    """
    path = Path(path)
    data = read_json_file(path, "A/B question file", "a JSON list of CAA A/B records")
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of A/B records, found {type(data).__name__}.")
    out, skipped = [], 0
    for i, rec in enumerate(data, start=1):
        if not isinstance(rec, dict) or not isinstance(rec.get("question"), str):
            raise DataError(f"{path}, record {i}: expected an object with a 'question' string and the CAA answer keys.")
        match, other = _letter(rec.get("answer_matching_behavior")), _letter(rec.get("answer_not_matching_behavior"))
        q = rec["question"]
        two_choice = q.count("(A)") == 1 and q.count("(B)") == 1 and "(C)" not in q and q.rfind("(A)") < q.rfind("(B)")
        if match is None or other is None or match == other or not two_choice:
            skipped += 1
            continue
        out.append(ABQuestion(q, match))
    if skipped:
        warnings.warn(f"{path}: left out {skipped} records that are not two-choice (A)/(B) questions.", stacklevel=2)
    if not out:
        raise DataError(f"{path} holds no two-choice (A)/(B) questions.")
    return out


def swap_choices(question: ABQuestion) -> ABQuestion:
    """The same question with the texts of choices (A) and (B) exchanged, and the matching letter with them.

    Example:
        >>> swap_choices(ABQuestion("Pick.\\n\\nChoices:\\n (A) Yes\\n (B) No", "A")).question
        'Pick.\\n\\nChoices:\\n (A) No\\n (B) Yes'
    """
    return ABQuestion(swap_choice_text(question.question), question.not_matching, not question.swapped)


def _ask(tokenizer: Any, question: str, chat: bool | None, instruction: str | None) -> str:
    """The question as the prompt, with ``instruction`` as the system turn (in the chat template) or, without a
    template, written before the question."""
    if instruction is None:
        return apply_chat(tokenizer, question, chat=chat)
    if chat is False or (chat is None and not has_chat_template(tokenizer)):
        return apply_chat(tokenizer, f"{instruction}\n\n{question}", chat=chat)
    return apply_chat(tokenizer, question, chat=chat, system=instruction)


class ABBehaviour:
    """The CAA A/B metric as a fixed token batch: the question in the user turn, the assistant turn opened with
    ``"("``, and the next-token logits of the two letters. ``p_matching`` is the probability of the matching
    letter among the two; ``p_a`` that of letter A (the letter bias).

    With ``balance=True`` (default) every question is asked in both choice orders, so a vector that only
    pushes towards "A" scores 0.5 whatever the data's answer letters are. ``instruction`` asks for the behaviour
    in words (the system turn, or before the question without a chat template): the prompting baseline
    (:func:`steerlab.evaluate.prompting_baseline`).

    Example:
        >>> metric = ABBehaviour(tokenizer, load_ab("datasets/caa/test/refusal/test_dataset_ab.json")[:20])
        >>> template = Intervention(vec, layers=[12])
        >>> for alpha, logits in logits_over_alphas(model, metric.input_ids, metric.attention_mask, template,
        ...                                         [0, 4], last_only=True):
        ...     print(alpha, metric.score(logits))
    """

    name = "p_matching"
    last_only = True

    def __init__(
        self,
        tokenizer: Any,
        questions: Sequence[ABQuestion],
        *,
        balance: bool = True,
        chat: bool | None = None,
        instruction: str | None = None,
    ):
        questions = list(questions)
        if not questions:
            raise DataError("no A/B questions were given; load some with load_ab(path).")
        origin = list(range(len(questions)))
        if balance:
            questions = [q for orig in questions for q in (orig, swap_choices(orig))]
            origin = [i for i in origin for _ in range(2)]
        prompts = [_ask(tokenizer, q.question, chat, instruction) + "(" for q in questions]
        ids = encode(tokenizer, prompts)
        # Longest first: batches then hold questions of similar length and little compute goes to padding.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        self.questions = [questions[i] for i in order]
        # Which given question each asked row is (both orders of a question share it): intervals and held-out
        # splits resample questions, never one order of a question without the other.
        self.question_ids = [origin[i] for i in order]
        self.input_ids, self.attention_mask = pad_batch([ids[i] for i in order], pad_id(tokenizer), side="left")
        ids = []
        for letter in ("A", "B"):
            tokens = tokenizer(letter, add_special_tokens=False)["input_ids"]
            if len(tokens) != 1:
                raise DataError(f"the tokenizer splits the answer letter {letter!r} into {len(tokens)} tokens.")
            ids.append(tokens[0])
        self.letter_ids = torch.tensor(ids)
        self.matching_is_a = torch.tensor([q.matching == "A" for q in self.questions])

    def per_item(self, logits: torch.Tensor) -> list[dict[str, Any]]:
        """Tidy records, one per asked question: index, question (the given question it asks, in either order),
        swapped, matching letter, p_matching, p_a."""
        pair = torch.softmax(logits[:, self.letter_ids].double(), -1)
        p_a = pair[:, 0]
        p_match = torch.where(self.matching_is_a, p_a, 1 - p_a)
        return [
            {
                "item": i,
                "question": k,
                "swapped": q.swapped,
                "matching": q.matching,
                "p_matching": float(pm),
                "p_a": float(pa),
            }
            for i, (q, k, pm, pa) in enumerate(zip(self.questions, self.question_ids, p_match, p_a, strict=True))
        ]

    def score(self, logits: torch.Tensor) -> dict[str, float]:
        """Mean ``p_matching`` and ``p_a`` over the asked questions, from last-token logits ``(n, vocab)``."""
        rows = self.per_item(logits)
        return {
            "p_matching": sum(r["p_matching"] for r in rows) / len(rows),
            "p_a": sum(r["p_a"] for r in rows) / len(rows),
        }


def ab_probabilities(
    model: nn.Module,
    tokenizer: Any,
    questions: Sequence[ABQuestion] | ABBehaviour,
    vector: SteeringVector | None = None,
    alpha: Alpha = 0.0,
    *,
    layer: int | None = None,
    mode: str = "add",
    scale: Scale = DEFAULT_SCALE,
    balance: bool = True,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """Per-question records of p(matching answer) and p("A"), unsteered or steered by ``vector`` at ``alpha``.

    ``questions`` may be an :class:`ABBehaviour` built once (then ``balance`` is its own): repeated calls then
    skip the chat template and the tokeniser.

    Example:
        >>> rows = ab_probabilities(model, tokenizer, questions, vec, 0.1, layer=12, scale="relative")
        >>> sum(r["p_matching"] for r in rows) / len(rows)
        >>> metric = ABBehaviour(tokenizer, questions)                 # tokenised once, for many calls
        >>> [p_matching(model, tokenizer, metric, vec, a, layer=12) for a in (-0.1, 0.1)]
    """
    metric = questions if isinstance(questions, ABBehaviour) else ABBehaviour(tokenizer, questions, balance=balance)
    template = _template(vector, layer=layer, mode=mode, scale=scale)
    ((_, logits),) = logits_over_alphas(
        model, metric.input_ids, metric.attention_mask, template, [alpha], last_only=True, batch_size=batch_size
    )
    return metric.per_item(logits)


def p_matching(
    model: nn.Module,
    tokenizer: Any,
    questions: Sequence[ABQuestion] | ABBehaviour,
    vector: SteeringVector | None = None,
    alpha: Alpha = 0.0,
    **options: Any,
) -> float:
    """Mean probability of the answer that matches the behaviour (A/B balanced by default); the options are
    those of :func:`ab_probabilities` (pass an :class:`ABBehaviour` to tokenise the questions once).

    Example:
        >>> p_matching(model, tokenizer, questions)                        # unsteered, about 0.5 at 135M
        >>> p_matching(model, tokenizer, questions, vec, 1.0, layer=12)    # CAA multiplier +1
    """
    rows = ab_probabilities(model, tokenizer, questions, vector, alpha, **options)
    return sum(r["p_matching"] for r in rows) / len(rows)


# ----- logit difference, projections, sentiment ------------------------------------------------------------


def _token_ids(tokenizer: Any, tokens: Sequence[str | int], what: str) -> list[int]:
    ids = []
    for tok in tokens:
        if isinstance(tok, int):
            ids.append(tok)
            continue
        pieces = tokenizer(tok, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            raise DataError(f"{what}: {tok!r} is {len(pieces)} tokens; give single tokens (e.g. ' yes') or token ids.")
        ids.append(pieces[0])
    if not ids:
        raise DataError(f"{what} is empty; give at least one token.")
    return ids


def logit_diff(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    positive: Sequence[str | int],
    negative: Sequence[str | int],
    vector: SteeringVector | None = None,
    alpha: Alpha = 0.0,
    *,
    layer: int | None = None,
    mode: str = "add",
    scale: Scale = DEFAULT_SCALE,
    batch_size: int = 16,
) -> list[float]:
    """Per prompt: mean next-token logit of the ``positive`` tokens minus that of the ``negative`` ones.

    Example:
        >>> logit_diff(model, tokenizer, ["The movie was"], [" great", " good"], [" bad", " awful"])
    """
    pos, neg = _token_ids(tokenizer, positive, "positive"), _token_ids(tokenizer, negative, "negative")
    prompts = list(prompts)
    if not prompts:
        raise DataError("no prompts were given for logit_diff.")
    ids, mask = pad_batch(encode(tokenizer, prompts), pad_id(tokenizer), side="left")
    template = _template(vector, layer=layer, mode=mode, scale=scale)
    ((_, logits),) = logits_over_alphas(model, ids, mask, template, [alpha], last_only=True, batch_size=batch_size)
    diff = logits[:, pos].mean(-1) - logits[:, neg].mean(-1)
    return [float(x) for x in diff]


def token_projections(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], vector: SteeringVector, layer: int, *, batch_size: int = 16
) -> list[dict[str, Any]]:
    """Per token of each text: the projection of the residual stream at ``layer`` (the vector's site) onto the
    vector's unit direction. The first token (the attention sink) is included and flagged.

    Example:
        >>> rows = token_projections(model, tokenizer, ["I love this"], vec, 12)
        >>> [(r["token"], round(r["projection"], 1)) for r in rows]
    """
    from steerlab._record import record

    checked_layers(vector, [layer])
    vector.check_fits(model)
    texts = list(texts)
    acts = record(model, tokenizer, texts, layers=[layer], reduce="all", exclude_first_token=False,
                  site=vector.site, batch_size=batch_size)  # fmt: skip
    unit = vector.directions[layer] / vector.directions[layer].norm().clamp_min(1e-12)
    rows = []
    for t, (ids, hidden) in enumerate(zip(encode(tokenizer, texts), acts.per_text(layer), strict=True)):
        proj = hidden @ unit
        for pos, (tok, value) in enumerate(zip(ids, proj, strict=True)):
            rows.append({"text": t, "position": pos, "token": tokenizer.decode([tok]), "projection": float(value),
                         "sink": pos == 0})  # fmt: skip
    return rows


def sentiment(texts: Sequence[str]) -> list[float]:
    """VADER compound sentiment of each text, in [-1, 1] (offline lexicon; needs the ``eval`` extra).

    Example:
        >>> sentiment(["What a lovely day!", "This is awful."])
        [0.6..., -0.5...]
    """
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as err:  # pragma: no cover - part of the eval extra
        raise DataError("sentiment needs vaderSentiment: pip install 'steerlab[eval]'.") from err
    analyzer = SentimentIntensityAnalyzer()
    return [float(analyzer.polarity_scores(t)["compound"]) for t in texts]


# ----- coherence ---------------------------------------------------------------------------------------------


next_token_entropy = mean_entropy  # the public name of the one entropy function (steerlab._forward)


class NeutralKL:
    """Coherence as a logit metric: ``KL(steered || unsteered)`` of the next-token distributions averaged over
    every real token of a fixed text set (default :func:`neutral_texts`), in nats per token. The unsteered
    distributions are computed on the first call of :meth:`reference` and kept.

    Example:
        >>> kl = NeutralKL(tokenizer)
        >>> kl.reference(model)
        >>> template = Intervention(vec, layers=[12], scale="relative")
        >>> for alpha, logits in logits_over_alphas(model, kl.input_ids, kl.attention_mask, template, [0.1]):
        ...     print(kl.score(logits))
    """

    name = "kl"
    last_only = False

    def __init__(self, tokenizer: Any, texts: Sequence[str] | None = None):
        texts = list(texts) if texts is not None else neutral_texts()
        if not texts:
            raise DataError("the coherence text set is empty; pass at least one text.")
        self.texts = texts
        self.input_ids, self.attention_mask = pad_batch(encode(tokenizer, texts), pad_id(tokenizer), side="left")
        self._reference: torch.Tensor | None = None

    def reference(self, model: nn.Module, batch_size: int = 16) -> torch.Tensor:
        """Unsteered log-probabilities at the real tokens, ``(tokens, vocab)`` (computed once; call outside any
        steering)."""
        if self._reference is None:
            logits = batched_logits(model, self.input_ids, self.attention_mask, batch_size=batch_size)
            self._reference = log_probs_at(logits, self.attention_mask).float()
        return self._reference

    def score(self, logits: torch.Tensor) -> dict[str, float]:
        """Mean KL from the reference and mean next-token entropy over the real tokens."""
        if self._reference is None:
            raise SteeringError("NeutralKL.reference(model) must be called (unsteered) before score().")
        kl, entropy = kl_and_entropy(logits, self._reference, self.attention_mask)
        return {"kl": float(kl.mean().clamp_min(0.0)), "entropy": float(entropy.mean())}


def kl_from_unsteered(
    model: nn.Module,
    tokenizer: Any,
    vector: SteeringVector,
    alpha: Alpha,
    *,
    layer: int | None = None,
    mode: str = "add",
    scale: Scale = DEFAULT_SCALE,
    texts: Sequence[str] | None = None,
    batch_size: int = 16,
) -> float:
    """Mean ``KL(steered || unsteered)`` (nats/token) on the neutral text set; 0 at an identity alpha.

    Example:
        >>> kl_from_unsteered(model, tokenizer, vec, 0.1, layer=12, scale="relative")
    """
    metric = NeutralKL(tokenizer, texts)
    metric.reference(model, batch_size)
    template = _template(vector, layer=layer, mode=mode, scale=scale)
    ((_, logits),) = logits_over_alphas(
        model, metric.input_ids, metric.attention_mask, template, [alpha], batch_size=batch_size
    )
    return metric.score(logits)["kl"]


def generation_perplexity(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    vector: SteeringVector,
    alpha: Alpha,
    *,
    layer: int | None = None,
    mode: str = "add",
    scale: Scale = DEFAULT_SCALE,
    max_new_tokens: int = 32,
) -> float:
    """Perplexity under the *unsteered* model of greedy generations made with steering (exp of the mean
    per-token NLL over all prompts, from :func:`steerlab.compare`).

    Example:
        >>> generation_perplexity(model, tokenizer, NEUTRAL_PROMPTS, vec, 0.2, layer=12, scale="relative")
    """
    from steerlab.evaluate.comparison import compare

    template = _template(vector, layer=layer, mode=mode, scale=scale)
    rows = compare(model, tokenizer, prompts, template, alphas=[alpha], max_new_tokens=max_new_tokens)
    total = sum(g.nll * g.tokens for r in rows for g in r.generations if g.tokens and math.isfinite(g.nll))
    count = sum(g.tokens for r in rows for g in r.generations if g.tokens and math.isfinite(g.nll))
    return math.exp(total / count) if count else float("nan")
