from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

# With 2 cores, torch on 2 threads beside anything else ran 25-40x slower than on 1.
torch.set_num_threads(int(os.environ.get("STEERLAB_TEST_THREADS", "1")))

from steerlab import load_model  # noqa: E402
from tiny import make_tiny  # noqa: E402


def steerlab_hooks(model: nn.Module) -> int:
    """How many hooks defined by steerlab are on any module of ``model``."""
    count = 0
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            count += sum(1 for fn in hooks.values() if getattr(fn, "__module__", "").startswith("steerlab"))
    return count


_MODELS: list[nn.Module] = []


@pytest.fixture(autouse=True)
def no_hook_left_behind():
    """Every test must leave no steerlab hook on any model it used, whatever happened inside."""
    yield
    for model in _MODELS:
        assert steerlab_hooks(model) == 0, "a steerlab hook was left on the model after the test"


@pytest.fixture(scope="session")
def smol():
    """The real SmolLM2-135M-Instruct (installed by `make test`; never skipped)."""
    model, tokenizer = load_model("smollm2-135m")
    _MODELS.append(model)
    return model, tokenizer


@pytest.fixture(scope="session")
def tokenizer(smol):
    return smol[1]


_TINY_CACHE: dict[str, nn.Module] = {}


@pytest.fixture
def tiny():
    """Factory: ``tiny(arch)`` gives a tiny random model of that architecture (shared per session)."""

    def get(arch: str) -> nn.Module:
        if arch not in _TINY_CACHE:
            _TINY_CACHE[arch] = make_tiny(arch)
            _MODELS.append(_TINY_CACHE[arch])
        return _TINY_CACHE[arch]

    return get


@pytest.fixture(scope="session")
def refusal_judge():
    """The embedding refusal classifier, trained once on the CAA refusal answers shipped in datasets/."""
    from steerlab.evaluate.judges import RefusalClassifier

    return RefusalClassifier.train(Path(__file__).parents[1] / "datasets/caa/generate/refusal/generate_dataset.json")
