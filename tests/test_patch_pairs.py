"""Patching pair files (steerlab.datasets.patch_pairs) and the IOI generator (steerlab.datasets.ioi)."""

from __future__ import annotations

import json

import pytest

from steerlab.datasets import IOI_NAMES, IOI_TEMPLATES, PatchPair, ioi_pairs, load_patch_pairs, save_patch_pairs
from steerlab.errors import DataError


def test_ioi_pairs_are_one_token_apart_and_balanced_in_order(tokenizer):
    """ABC: the clean and corrupted prompts differ in exactly one token, the repeat, and the answers are the IO and
    S names; every shipped name is one SmolLM2 token; both orders (ABB, BAB) occur; a seed repeats the draw."""
    pairs = ioi_pairs(64, tokenizer=tokenizer)
    assert len(pairs) == 64 and pairs == ioi_pairs(64) and pairs != ioi_pairs(64, seed=1)
    orders = set()
    for pair in pairs:
        a = tokenizer(pair.clean, add_special_tokens=False)["input_ids"]
        b = tokenizer(pair.corrupted, add_special_tokens=False)["input_ids"]
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=True)) == 1
        assert pair.clean.count(pair.wrong) == 2 and pair.clean.count(pair.correct) == 1
        assert pair.wrong not in pair.corrupted.split(",")[-1].split(".")[-1]
        orders.add(pair.clean.index(pair.correct) < pair.clean.index(pair.wrong))
    assert orders == {True, False}
    assert all(len(tokenizer(" " + n, add_special_tokens=False)["input_ids"]) == 1 for n in IOI_NAMES)
    swapped = ioi_pairs(8, corruption="swap", tokenizer=tokenizer)
    for pair in swapped:
        assert pair.corrupted.count(pair.correct) == 2 and pair.corrupted.count(pair.wrong) == 1
    assert {p.clean.split(" ")[0] for p in ioi_pairs(len(IOI_TEMPLATES))} == {t.split(" ")[0] for t in IOI_TEMPLATES}


def test_ioi_bad_settings_say_what_is_expected(tokenizer):
    with pytest.raises(DataError, match=r"not so: \['Bartholomew'\]"):
        ioi_pairs(2, names=["Mary", "John", "Bartholomew"], tokenizer=tokenizer)
    with pytest.raises(DataError, match=r"needs \{A\}, \{B\} and \{S\}"):
        ioi_pairs(2, templates=["{A} met {B} and gave it to"])
    with pytest.raises(DataError, match="at least 3 different names"):
        ioi_pairs(2, names=["Mary", "John"])
    with pytest.raises(DataError, match="corruption must be 'abc' or 'swap'"):
        ioi_pairs(2, corruption="bab")
    with pytest.raises(DataError, match="different token lengths"):
        # At the start of a text "Kate" is two tokens (no leading space), "Mary" one: swapping them changes the length.
        ioi_pairs(8, corruption="swap", templates=["{A} and {B} left; {S} waved to"], names=["Mary", "Kate", "Tom"],
                  tokenizer=tokenizer)  # fmt: skip


def test_pair_files_round_trip_and_refuse_bad_rows(tmp_path):
    pairs = ioi_pairs(3)
    path = save_patch_pairs(pairs, tmp_path / "p.jsonl")
    assert load_patch_pairs(path) == pairs
    array = tmp_path / "p.json"
    array.write_text(json.dumps([{"clean": "a b", "corrupted": "a c", "correct": " x", "wrong": " y", "note": 1}]))
    assert load_patch_pairs(array) == [PatchPair("a b", "a c", " x", " y")]
    cases = {
        "[]": "holds no pairs",
        "": "is empty",
        '{"clean": "a"}\n{': "line 2 is not JSON",
        '[{"clean": "a", "corrupted": "b", "correct": " x"}]': r"entry 0 lacks \['wrong'\]",
        '[{"clean": "a", "corrupted": "b", "correct": " x", "wrong": 3}]': r"\['wrong'\] must be non-empty text",
        "[1]": "entry 0 is int; expected an object",
    }
    for text, message in cases.items():
        array.write_text(text)
        with pytest.raises(DataError, match=message):
            load_patch_pairs(array)
    with pytest.raises(DataError, match="does not exist"):
        load_patch_pairs(tmp_path / "missing.jsonl")
