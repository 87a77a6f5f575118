"""Data sets: contrast pairs (plain, CAA A/B, two lists), labelled statements, plain prompt lists, and the texts
shipped with steerlab (``builtin/``: 32 sentiment pairs, neutral texts). Every file-format rule lives here.
Pairs given in memory may also come in the shapes of other libraries (:data:`PairLike`: tuples, dicts, repeng's
``DatasetEntry``).

Example:
    >>> from steerlab.datasets import balance_ab, load_pairs
    >>> pairs = balance_ab(load_pairs("datasets/caa/generate/refusal/generate_dataset.json")[:32])
"""

from steerlab._pairs import ContrastPair, PairLike, dataset_hash, pair_texts
from steerlab.datasets.instructions import load_completions, load_instructions
from steerlab.datasets.pairs import (
    NEUTRAL_PROMPTS,
    balance_ab,
    load_pairs,
    pairs_from_records,
    read_json_file,
    sentiment_pairs,
    swap_choice_text,
)
from steerlab.datasets.statements import load_statements

__all__ = [
    "NEUTRAL_PROMPTS",
    "ContrastPair",
    "PairLike",
    "balance_ab",
    "dataset_hash",
    "load_completions",
    "load_instructions",
    "load_pairs",
    "load_statements",
    "pair_texts",
    "pairs_from_records",
    "read_json_file",
    "sentiment_pairs",
    "swap_choice_text",
]
