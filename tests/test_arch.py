import pytest
import torch

from steerlab.arch import ArchSpec, get_layout, register_architecture, registered_architectures, set_architecture
from steerlab.errors import ArchitectureError
from tiny import ARCHS, LAYERS, WIDTH


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


def test_unknown_model_type_falls_back_with_warning(tiny):
    model = tiny("llama")
    original = model.config.model_type
    try:
        model.config.model_type = "never_heard_of_it"
        with pytest.warns(UserWarning, match="not in steerlab's registry.*model.layers"):
            layout = get_layout(model)
        assert layout.source == "heuristic" and layout.layers is model.model.layers
    finally:
        model.config.model_type = original


def test_user_override_wins_and_registration_silences_warning(tiny):
    model = tiny("llama")
    set_architecture(model, ArchSpec(layers=("model.layers",)))
    try:
        assert get_layout(model).source == "override"
    finally:
        del model._steerlab_arch
    original = model.config.model_type
    try:
        model.config.model_type = "my_clone"
        register_architecture("my_clone", ArchSpec(layers=("model.layers",)))
        assert get_layout(model).source == "registry"
    finally:
        model.config.model_type = original


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
