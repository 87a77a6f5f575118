"""Data sets: contrast pairs (plain, CAA A/B, two lists), labelled statements, plain prompt lists, patching pairs
(clean / corrupted prompts with their answers; IOI prompts generated from our own templates), and the texts
shipped with steerlab (``builtin/``: 32 sentiment pairs, neutral texts). Every file-format rule lives here.
Pairs given in memory may also come in the shapes of other libraries (:data:`PairLike`: tuples, dicts, repeng's
``DatasetEntry``).

Example:
    >>> from steerlab.datasets import balance_ab, load_pairs
    >>> pairs = balance_ab(load_pairs("datasets/caa/generate/refusal/generate_dataset.json")[:32])
"""

from steerlab._pairs import ContrastPair, PairLike, dataset_hash, pair_texts
from steerlab.datasets.instructions import load_completions, load_instructions
from steerlab.datasets.ioi import IOI_NAMES, IOI_TEMPLATES, ioi_pairs
from steerlab.datasets.pairs import (
    NEUTRAL_PROMPTS,
    balance_ab,
    load_pairs,
    pairs_from_records,
    read_json_file,
    sentiment_pairs,
    swap_choice_text,
)
from steerlab.datasets.patch_pairs import PatchPair, load_patch_pairs, save_patch_pairs
from steerlab.datasets.statements import load_statements

__all__ = [
    "IOI_NAMES",
    "IOI_TEMPLATES",
    "NEUTRAL_PROMPTS",
    "ContrastPair",
    "PairLike",
    "PatchPair",
    "balance_ab",
    "dataset_hash",
    "ioi_pairs",
    "load_completions",
    "load_instructions",
    "load_pairs",
    "load_patch_pairs",
    "load_statements",
    "pair_texts",
    "pairs_from_records",
    "read_json_file",
    "save_patch_pairs",
    "sentiment_pairs",
    "swap_choice_text",
]
