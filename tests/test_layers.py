"""The layer table of conftest.py names only tests that exist, and every test file has an entry."""

import ast
from pathlib import Path

from conftest import LAYER_NAMES, LAYERS

TESTS = Path(__file__).parent


def test_every_entry_names_an_existing_file_or_test_and_a_layer():
    for key, layer in LAYERS.items():
        assert layer in LAYER_NAMES, key
        file, _, name = key.partition("::")
        assert (TESTS / file).is_file(), f"LAYERS names {file}, which does not exist"
        if name:
            tree = ast.parse((TESTS / file).read_text())
            functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
            assert name in functions, f"LAYERS names {key}, which does not exist"
            assert LAYERS[file] != layer, f"{key} repeats its file's layer: drop the entry"


def test_every_test_file_has_a_layer():
    assert sorted(p.name for p in TESTS.glob("test_*.py") if p.name not in LAYERS) == []
