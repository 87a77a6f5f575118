import copy
import dataclasses
import gc
import warnings
import weakref

import pytest
import torch
import transformers as tf

from steerlab import load_model, steer
from steerlab._models import model_id
from steerlab._replay import _output_head
from steerlab._state import peek
from steerlab.arch import (
    ArchSpec,
    get_layout,
    register_architecture,
    registered_architectures,
    registry,
    set_architecture,
)
from steerlab.bake import bake_addition
from steerlab.errors import ArchitectureError
from tiny import ARCHS, CONFIGS, LAYERS, PROMPTS, SMALL_VOCAB, WIDTH, make_tiny, random_vector

# Registered model types without a tiny model of their own, each mapped to the tiny architecture whose
# ArchSpec is the same record (checked below): every fact steerlab reads about them is exercised there.
ALIASES = {
    "gemma3": "gemma3_text",  # the multimodal wrapper: its text model sits at model.language_model
    "mixtral": "mistral",  # a mixture of experts in place of the MLP; the same block and head layout
    "qwen2_moe": "qwen2",  # likewise
    "qwen3_moe": "qwen3",  # likewise
    "smollm3": "llama",  # Llama blocks (some layers without rotary embeddings)
}


@pytest.fixture
def own_registry(monkeypatch):
    """The registry as a copy for one test: what the test registers goes when it ends."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.mark.parametrize("arch", ARCHS)
def test_layout_resolves_from_registry(tiny, arch):
    layout = get_layout(tiny(arch))
    assert layout.source == "registry"
    assert layout.num_layers == LAYERS and len(layout.layers) == LAYERS
    assert layout.hidden_size == WIDTH


def test_every_registered_architecture_has_a_tiny_model_or_an_alias():
    registered = registered_architectures()
    uncovered = sorted(set(registered) - set(CONFIGS) - set(ALIASES))
    assert not uncovered, (
        f"registered model types {uncovered} have no tiny model: add a config to tests/tiny.py, or list them in "
        "ALIASES with the tiny architecture whose ArchSpec they share"
    )
    for alias, covered_by in ALIASES.items():
        assert alias not in CONFIGS, f"{alias} has its own tiny model: remove it from ALIASES"
        assert covered_by in CONFIGS, f"ALIASES maps {alias} to {covered_by}, which has no tiny model"
        assert registered[alias] == registered[covered_by], (
            f"{alias}'s ArchSpec differs from {covered_by}'s, so {covered_by}'s tiny model does not exercise it: "
            f"give {alias} a tiny model of its own"
        )


def _meta_model(model_type: str) -> torch.nn.Module:
    """The architecture at its default (full) size, built on the meta device: its real module tree, no memory."""
    config = tf.AutoConfig.for_model(model_type)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # default configs of some architectures warn about their own defaults
        return tf.AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("model_type", sorted(registry._REGISTRY))
def test_registered_facts_name_real_modules(model_type):
    """Each registry entry against the architecture itself (aliases included): the blocks, the sublayer outputs
    and the final norm are where it says, post-norm sublayers are norms, and the logit settings exist."""
    model = _meta_model(model_type)
    layout = get_layout(model)
    spec = layout.spec
    assert layout.source == "registry"
    block = layout.block(0)
    for site in ("attn_out", "mlp_out"):
        path = getattr(spec, site)
        if path is not None:
            module = registry._resolve_path(block, path)
            assert module is not None, f"{model_type}: {site} path {path!r} is not a module of its blocks"
            is_norm = "norm" in type(module).__name__.lower()
            assert is_norm == spec.post_norms, f"{model_type}: {site} is {type(module).__name__}"
    assert layout.final_norm is not None and "norm" in type(layout.final_norm).__name__.lower()
    config = registry.text_config(model)
    for name in (spec.residual_multiplier, spec.logit_scale, spec.logit_divisor, spec.logit_softcap):
        assert name is None or hasattr(config, name), f"{model_type}: the config has no {name!r}"


def _opt_with_projection() -> torch.nn.Module:
    # OPT-350m's shape: embeddings narrower than the residual stream, projected in and out.
    config = tf.OPTConfig(vocab_size=SMALL_VOCAB, hidden_size=WIDTH, word_embed_proj_dim=16, num_hidden_layers=LAYERS,
                          num_attention_heads=4, ffn_dim=64, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


@pytest.mark.parametrize("arch", [*ARCHS, "opt-projected"])
def test_output_head_from_the_spec_gives_the_models_logits(tiny, arch):
    """The head facts (final norm, projection, logit scale / divisor / soft cap) recompute the model's logits
    from its last block's output, which is what the replay of a sweep relies on."""
    model = _opt_with_projection() if arch == "opt-projected" else tiny(arch)
    layout = get_layout(model)
    if arch == "opt-projected":
        assert layout.project_out is not None
    out = {}
    handle = layout.block(LAYERS - 1).register_forward_hook(
        lambda mod, args, output: out.update(last=output[0] if isinstance(output, tuple) else output)
    )
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([PROMPTS[2]])).logits
            head = _output_head(model, layout)
            assert head is not None
            torch.testing.assert_close(head(out["last"]), logits, rtol=1e-5, atol=1e-5)
    finally:
        handle.remove()


def test_logit_facts_are_not_inert(tiny):
    """Dropping a logit transform from the spec breaks the head: the tiny models really exercise them."""
    for arch, field in (("cohere", "logit_scale"), ("granite", "logit_divisor"), ("gemma2", "logit_softcap")):
        model = tiny(arch)
        layout = get_layout(model)
        wrong = dataclasses.replace(layout, spec=dataclasses.replace(layout.spec, **{field: None}))
        hidden = torch.randn(1, 3, WIDTH) * 10
        with torch.no_grad():
            assert not torch.allclose(_output_head(model, wrong)(hidden), _output_head(model, layout)(hidden))


def test_layout_is_cached_per_model_and_resolved_again_when_its_inputs_change(own_registry):
    model = make_tiny("llama")
    first = get_layout(model)
    assert get_layout(model) is first
    assert get_layout(make_tiny("llama")) is not first  # per model object, not per architecture
    set_architecture(model, ArchSpec(layers=("model.layers",)))
    overridden = get_layout(model)
    assert overridden is not first and overridden.source == "override"
    assert get_layout(model) is overridden
    set_architecture(model, None)
    back = get_layout(model)
    assert back.source == "registry" and back is not overridden
    register_architecture("llama", dataclasses.replace(back.spec, final_norm=None))
    assert get_layout(model).final_norm is None  # a new registry entry reaches models already in use


def test_steerlab_writes_nothing_onto_the_model(tmp_path, tokenizer):
    make_tiny("llama").save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    model, _ = load_model(str(tmp_path / "m"))
    vec = random_vector(model, layers=(1,))
    with steer(model, vec, alpha=1.0, scale="absolute"), torch.no_grad():
        model(input_ids=torch.tensor([PROMPTS[0]]))
    set_architecture(model, ArchSpec(layers=("model.layers",)))
    get_layout(model)
    set_architecture(model, None)
    bake_addition(model, vec, alpha=1.0, inplace=True, scale="absolute")
    assert [key for key in vars(model) if key.startswith("_steerlab")] == []
    state = peek(model)
    assert state.model_id == str(tmp_path / "m") == model_id(model)
    assert [entry["kind"] for entry in state.baked] == ["add"]
    assert peek(copy.deepcopy(model)) is None  # a copy is a new model to steerlab


def test_state_goes_with_the_model():
    model = make_tiny("gpt2")
    assert get_layout(model) is peek(model).layout
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None  # nothing in steerlab's state keeps the model alive


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
        set_architecture(model, None)
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
