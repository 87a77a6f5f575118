"""HookSet counts the hooks it holds, so the suite's leak guard (conftest.py) sees a leak on any model."""

import re
from pathlib import Path

import pytest
import torch

from steerlab._hooks import HookSet, live_hooks

SRC = Path(__file__).parents[1] / "src" / "steerlab"


def hooks_on(module):
    return len(module._forward_hooks) + len(module._forward_pre_hooks)


def test_live_hooks_counts_every_kind_of_hook_until_the_set_closes():
    module = torch.nn.Linear(4, 4)
    before = live_hooks()
    with pytest.raises(RuntimeError, match="boom"), HookSet() as hooks:
        hooks.forward(module, lambda mod, args, out: None)
        hooks.pre_forward(module, lambda mod, args: None)
        hooks.on_hidden(module, True, lambda h: None)
        hooks.on_hidden(module, False, lambda h: h + 1)
        assert live_hooks() == before + 4 and hooks_on(module) == 4
        raise RuntimeError("boom")
    assert live_hooks() == before and hooks_on(module) == 0
    hooks.close()  # closing again removes nothing twice
    assert live_hooks() == before

    left_open = HookSet()  # a set never closed is what the guard must see
    left_open.forward(module, lambda mod, args, out: None)
    assert live_hooks() == before + 1
    left_open.close()
    assert live_hooks() == before


def test_only_the_hook_set_registers_hooks():
    """The count sees only hooks added through HookSet: any other registration in the package would escape it."""
    calls = re.compile(r"\.register_\w*hook\(")
    found = [
        f"{path.relative_to(SRC)}:{n}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "_hooks.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if calls.search(line)
    ]
    assert found == []
    assert len(calls.findall((SRC / "_hooks.py").read_text())) == 2  # the pattern does find the two that exist
