import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from steerlab import directional_ablation, steer
from steerlab._models import model_id
from steerlab.arch import registered_architectures
from steerlab.bake import bake_addition, orthogonalize, save_baked
from steerlab.errors import SteeringError
from tiny import ARCHS, PROMPTS, make_tiny, random_vector

# From the architectures' facts: sublayer outputs normalised after their projection (Gemma 2/3, OLMo 2), or no
# module whose output is exactly a sublayer's contribution (Bloom). test_arch checks those facts against the modules.
NOT_BAKEABLE = {
    arch
    for arch, spec in registered_architectures().items()
    if arch in ARCHS and (spec.post_norms or spec.attn_out is None or spec.mlp_out is None)
}
BAKEABLE = [a for a in ARCHS if a not in NOT_BAKEABLE]
# Architectures whose config has a switch creating the biases that baking needs (or that have them already).
SAVEABLE_RESID = {"llama", "gpt2", "gpt_neox", "gptj", "gpt_neo", "falcon", "granite", "phi"}
IDS = torch.tensor([PROMPTS[2]])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def fresh(arch):
    model = make_tiny(arch)
    with torch.no_grad():  # give every existing bias a value, so that baking must add to it, not replace it
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("arch", BAKEABLE)
def test_baked_addition_equals_hook(arch):
    model = fresh(arch)
    vec = random_vector(model, layers=(1, 2), scale=4.0)
    with steer(model, vec, alpha=1.5, scale="absolute"):
        hooked = logits(model)
    baked = bake_addition(copy.deepcopy(model), vec, alpha=1.5, scale="absolute")
    torch.testing.assert_close(logits(baked), hooked, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits(model), hooked)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gptj"])
@pytest.mark.parametrize("site", ["mlp_out", "attn_out"])
def test_baked_sublayer_addition_equals_hook(arch, site):
    model = fresh(arch)
    vec = random_vector(model, layers=(2,), scale=4.0)
    with steer(model, vec, alpha=-2.0, site=site, scale="absolute"):
        hooked = logits(model)
    baked = bake_addition(copy.deepcopy(model), vec, alpha=-2.0, site=site, scale="absolute")
    torch.testing.assert_close(logits(baked), hooked, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", BAKEABLE)
def test_orthogonalized_weights_equal_ablation_hooks(arch):
    model = fresh(arch)
    vec = random_vector(model, layers=(1,), scale=4.0)
    with steer(model, directional_ablation(model, vec)):
        hooked = logits(model)
    ortho = orthogonalize(copy.deepcopy(model), vec)
    torch.testing.assert_close(logits(ortho), hooked, rtol=1e-4, atol=2e-4)
    assert not torch.allclose(logits(model), hooked, atol=1e-3)


@pytest.mark.parametrize("arch", BAKEABLE)
def test_saved_folder_loads_in_plain_transformers(arch, tmp_path, tokenizer):
    model = fresh(arch)
    vec = random_vector(model, layers=(1, 3), scale=4.0)
    baked = bake_addition(copy.deepcopy(model), vec, alpha=2.0, scale="absolute")
    if arch not in SAVEABLE_RESID:
        with pytest.raises(SteeringError, match="has no config switch that creates the baked parameters"):
            save_baked(baked, tokenizer, tmp_path / "x")
        return
    expected = logits(baked)
    save_baked(baked, tokenizer, tmp_path / "baked")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "baked").eval()  # no steerlab involved
    torch.testing.assert_close(logits(plain), expected, rtol=1e-5, atol=1e-5)

    ortho = orthogonalize(copy.deepcopy(model), vec, source=1)
    expected = logits(ortho)
    save_baked(ortho, None, tmp_path / "ortho")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ortho").eval()
    torch.testing.assert_close(logits(plain), expected, rtol=1e-5, atol=1e-5)


def test_attention_bias_switch_saves_attn_out_baking(tmp_path):
    model = fresh("qwen3")  # its MLP has no bias switch, its attention has one (attention_bias)
    vec = random_vector(model, layers=(2,), scale=4.0)
    baked = bake_addition(copy.deepcopy(model), vec, alpha=1.0, site="attn_out", scale="absolute")
    expected = logits(baked)
    save_baked(baked, None, tmp_path / "q")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "q").eval()
    assert plain.config.attention_bias is True
    torch.testing.assert_close(logits(plain), expected, rtol=1e-5, atol=1e-5)


def test_what_cannot_be_baked_is_refused():
    model = fresh("llama")
    vec = random_vector(model, layers=(1,))
    with pytest.raises(SteeringError, match="positions='generated' cannot be baked"):
        bake_addition(model, vec, positions="generated", scale="absolute")
    with pytest.raises(SteeringError, match="site 'resid_pre' cannot be baked"):
        bake_addition(model, vec, site="resid_pre", scale="absolute")
    with pytest.raises(SteeringError, match="alpha must be a finite number"):
        bake_addition(model, vec, alpha=float("nan"), scale="absolute")
    for arch in NOT_BAKEABLE:
        other = make_tiny(arch)
        with pytest.raises(SteeringError, match="cannot be baked into its weights exactly"):
            bake_addition(other, random_vector(other), scale="absolute")
        with pytest.raises(SteeringError, match="cannot be baked into its weights exactly"):
            orthogonalize(other, random_vector(other))


def test_baking_returns_a_copy_unless_asked_to_work_in_place(tiny):
    """The model a user baked from keeps its own weights (issue 13: a README one-liner left the live model steered)."""
    model = tiny("llama")
    vec = random_vector(model, layers=(1,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    baked = bake_addition(model, vec, alpha=1.5, scale="absolute")
    assert baked is not model and model_id(baked) == model_id(model)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    ortho = orthogonalize(model, vec)
    assert ortho is not model and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    twin = copy.deepcopy(model)
    assert bake_addition(twin, vec, alpha=1.5, inplace=True, scale="absolute") is twin
    assert set(twin.state_dict()) - set(before)  # the bias was created on twin itself
