"""Contrast pairs and the file formats they come in.

Formats read by :func:`load_pairs` (JSON array, or JSON Lines with one object per line):

* plain pairs: ``{"positive": "...", "negative": "..."}``, optionally with a shared ``"prompt"``; then
  ``positive``/``negative`` are the two completions of that prompt (the prompt goes into the chat template's
  user turn when the model has one);
* CAA A/B (Rimsky et al.): ``{"question", "answer_matching_behavior", "answer_not_matching_behavior"}``;
  the question is the prompt and the answers, e.g. ``"(A)"``, the completions. The closing parenthesis is
  dropped so the last token read is the answer letter, as in the CAA reference code;
* two lists: ``{"positive": [...], "negative": [...]}`` of equal length (a single JSON object).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from steerlab._pairs import ContrastPair, PairLike, as_pair, as_pairs
from steerlab.errors import DataError

__all__ = [
    "NEUTRAL_PROMPTS",
    "balance_ab",
    "load_pairs",
    "pairs_from_records",
    "read_json_file",
    "sentiment_pairs",
    "swap_choice_text",
]


def _strip_answer(answer: str) -> str:
    answer = answer.strip()
    return answer[:-1] if answer.startswith("(") and answer.endswith(")") else answer


def _pair_from_record(rec: Any, where: str) -> ContrastPair:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, found {type(rec).__name__}.")
    if "answer_matching_behavior" in rec or "answer_not_matching_behavior" in rec:
        keys = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
        missing = [k for k in keys if not isinstance(rec.get(k), str) or not rec.get(k).strip()]
        if missing:
            raise DataError(
                f"{where}: a CAA A/B record needs non-empty strings {list(keys)}; missing or empty: {missing}."
            )
        return ContrastPair(
            positive=_strip_answer(rec["answer_matching_behavior"]),
            negative=_strip_answer(rec["answer_not_matching_behavior"]),
            prompt=rec["question"],
        )
    return as_pair(rec, where)  # a plain pair: the same rule as pairs given in memory


def pairs_from_records(records: Iterable[Any], *, source: str = "input") -> list[ContrastPair]:
    """Validate parsed records into pairs: non-empty, no identical or duplicated pairs."""
    pairs = [_pair_from_record(rec, f"{source}, record {i + 1}") for i, rec in enumerate(records)]
    if not pairs:
        raise DataError(f"{source} holds no contrast pairs; at least one is needed (two for PCA methods).")
    seen: dict[ContrastPair, int] = {}
    for i, pair in enumerate(pairs, start=1):
        if pair.positive == pair.negative:
            raise DataError(
                f"{source}, record {i}: positive and negative are identical ({pair.positive!r}); "
                "a pair must differ in the concept to extract."
            )
        if pair in seen:
            raise DataError(
                f"{source}: record {i} duplicates record {seen[pair]}; remove the duplicate "
                "(it would silently weigh that pair twice)."
            )
        seen[pair] = i
    return pairs


def read_json_file(path: str | Path, what: str, expected: str) -> Any:
    """Parse a JSON file, or a clear error naming ``what`` it should be and ``expected`` content."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} '{path}' does not exist.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"'{path}' is not valid JSON ({err.msg}); expected {expected}.") from err


def load_pairs(path: str | Path) -> list[ContrastPair]:
    """Read contrast pairs from a JSON or JSON Lines file (see the module doc for the formats).

    Example:
        >>> pairs = load_pairs("datasets/caa/generate/sycophancy/generate_dataset.json")
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"pair file '{path}' does not exist.")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DataError(f"pair file '{path}' is empty; expected JSON or JSON Lines contrast pairs.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
        records = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}, line {n}: not valid JSON ({err.msg}); expected one JSON object per "
                    "line (JSON Lines) or a single JSON array."
                ) from err
        return pairs_from_records(records, source=str(path))
    if isinstance(data, dict) and isinstance(data.get("positive"), list):
        pos, neg = data["positive"], data.get("negative")
        if not isinstance(neg, list):
            raise DataError(f"{path}: has a 'positive' list but no 'negative' list.")
        if len(pos) != len(neg):
            raise DataError(
                f"{path}: unbalanced contrast set: {len(pos)} positives but {len(neg)} negatives; "
                "each positive needs exactly one negative."
            )
        data = [{"positive": p, "negative": n} for p, n in zip(pos, neg, strict=True)]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of pair objects, found {type(data).__name__}.")
    return pairs_from_records(data, source=str(path))


NEUTRAL_PROMPTS = (
    "Tell me about your weekend.",
    "What do you think of Mondays?",
    "Describe the city you live in.",
    "Write a sentence about the weather.",
    "Tell me about the train station near you.",
    "How was your day at work?",
    "Describe your neighbour's dog.",
    "What did you have for lunch?",
)


"""Everyday prompts with no sentiment of their own, used by the demo, the tests and the figures."""


def sentiment_pairs() -> list[ContrastPair]:
    """The 32 sentiment contrast pairs shipped with steerlab (used by ``steerlab demo``)."""
    path = resources.files("steerlab.datasets") / "builtin" / "sentiment_pairs.jsonl"
    with resources.as_file(path) as real:
        return load_pairs(real)


def neutral_texts() -> list[str]:
    """The 24 neutral sentences shipped with steerlab on which coherence (KL) is measured."""
    path = resources.files("steerlab.datasets") / "builtin" / "neutral_texts.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def swap_choice_text(question: str) -> str:
    """A two-choice question ending in ``(A) ... (B) ...`` with the texts of the two choices exchanged.

    Example:
        >>> swap_choice_text("Pick one.\\n\\nChoices:\\n (A) Yes\\n (B) No")
        'Pick one.\\n\\nChoices:\\n (A) No\\n (B) Yes'
    """
    a, b = question.rfind("(A)"), question.rfind("(B)")
    if a < 0 or b < a or "(C)" in question:
        raise DataError(f"cannot swap the choices of a question without exactly '(A) ... (B) ...': {question[:80]!r}")
    head, a_part, b_part = question[:a], question[a + 3 : b], question[b + 3 :]
    a_text = a_part.rstrip()
    sep = a_part[len(a_text) :]  # whitespace between the two choices (e.g. "\\n ")
    a_lead = a_text[: len(a_text) - len(a_text.lstrip())]
    b_lead = b_part[: len(b_part) - len(b_part.lstrip())]
    b_body, b_tail = b_part.strip(), b_part[len(b_part.rstrip()) :]
    return f"{head}(A){a_lead}{b_body}{sep}(B){b_lead}{a_text.strip()}{b_tail}"


def balance_ab(pairs: Iterable[PairLike]) -> list[ContrastPair]:
    """CAA A/B pairs, each followed by its copy with the two choices swapped (and the answers with them), so the
    answer letters are balanced and a mean difference cannot encode "letter A" instead of the behaviour. Pairs
    that are not two-choice A/B questions (answers other than ``(A``/``(B``) are left out with a warning.

    Example:
        >>> pairs = balance_ab(load_pairs("datasets/caa/generate/refusal/generate_dataset.json")[:32])  # 64 pairs
    """
    import warnings

    out, skipped = [], 0
    for pair in as_pairs(pairs):
        answers = {pair.positive.strip(), pair.negative.strip()}
        if pair.prompt is None or answers != {"(A", "(B"} or pair.prompt.count("(A)") != 1 or "(C)" in pair.prompt:
            skipped += 1
            continue
        swapped = ContrastPair(pair.negative, pair.positive, swap_choice_text(pair.prompt))
        out += [pair, swapped]
    if skipped:
        warnings.warn(f"balance_ab left out {skipped} pairs that are not two-choice (A)/(B) questions.", stacklevel=2)
    if not out:
        raise DataError("balance_ab found no two-choice (A)/(B) pairs among the pairs given.")
    return out
