import warnings

import pytest
import torch

from steerlab.arch import (
    ArchSpec,
    get_layout,
    register_architecture,
    registered_architectures,
    registry,
    set_architecture,
)
from steerlab.errors import ArchitectureError
from tiny import ARCHS, LAYERS, WIDTH, make_tiny


@pytest.mark.parametrize("arch", ARCHS)
def test_layout_resolves_from_registry(tiny, arch):
    layout = get_layout(tiny(arch))
    assert layout.source == "registry"
    assert layout.num_layers == LAYERS and len(layout.layers) == LAYERS
    assert layout.hidden_size == WIDTH


def test_registry_covers_required_architectures():
    required = {
        "gpt2",
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3",
        "phi3",
        "gpt_neox",
        "olmo",
    }
    assert required <= set(registered_architectures())


def test_unknown_model_type_falls_back_with_warning():
    model = make_tiny("llama")  # its config is changed below: a model of its own, not the shared one
    model.config.model_type = "never_heard_of_it"
    with pytest.warns(UserWarning, match="not in steerlab's registry.*model.layers"):
        layout = get_layout(model)
    assert layout.source == "heuristic" and layout.layers is model.model.layers


def test_user_override_wins_and_registration_silences_warning(monkeypatch):
    # register_architecture writes the process-wide registry: work on a copy that monkeypatch puts back.
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    model = make_tiny("llama")
    set_architecture(model, ArchSpec(layers=("model.layers",)))
    assert get_layout(model).source == "override"

    clone = make_tiny("llama")
    clone.config.model_type = "my_clone"
    with pytest.warns(UserWarning, match="model_type 'my_clone' is not in steerlab's registry"):
        assert get_layout(clone).source == "heuristic"
    register_architecture("my_clone", ArchSpec(layers=("model.layers",)))
    assert registered_architectures()["my_clone"] == ArchSpec(layers=("model.layers",))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # registered: no warning any more
        assert get_layout(clone).source == "registry"


def test_wrong_override_and_wrong_count_are_clear(tiny):
    model = tiny("llama")
    set_architecture(model, ArchSpec(layers=("model.nothing_here",)))
    try:
        with pytest.raises(ArchitectureError, match="none of them is a ModuleList"):
            get_layout(model)
    finally:
        del model._steerlab_arch
    model.config.num_hidden_layers = LAYERS + 1
    try:
        with pytest.raises(
            ArchitectureError, match=f"holds {LAYERS} blocks but config.num_hidden_layers is {LAYERS + 1}"
        ):
            get_layout(model)
    finally:
        model.config.num_hidden_layers = LAYERS


def test_no_candidate_lists_what_was_found():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 3, "hidden_size": 4, "model_type": "odd"})()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])

    with pytest.raises(ArchitectureError, match=r"expected a ModuleList of 3 blocks.*blocks \(2\)"):
        get_layout(Odd())


def test_layer_index_out_of_range(tiny):
    layout = get_layout(tiny("gpt2"))
    with pytest.raises(ArchitectureError, match=r"out of range: this model has 4 decoder layers, numbered 0..3"):
        layout.block(4)
    with pytest.raises(ArchitectureError, match="out of range"):
        layout.block(-1)
