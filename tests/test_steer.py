import math
from contextlib import nullcontext

import pytest
import torch
from transformers import DynamicCache

from conftest import steerlab_hooks
from steerlab import SteeringVector, steer
from steerlab._calling import cache_argument
from steerlab._models import ModelFingerprint
from steerlab.engines import pad_batch
from steerlab.errors import SteeringError, VectorMismatchError
from tiny import ARCHS, PROMPTS, greedy, random_vector


@pytest.mark.parametrize("arch", ARCHS)
def test_alpha_zero_is_identity_and_shift_is_exact(tiny, arch):
    model = tiny(arch)
    vec = random_vector(model, layers=(1,))
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        base = model(input_ids=ids, output_hidden_states=True)
        with steer(model, vec, alpha=0.0, scale="absolute"):
            zero = model(input_ids=ids, output_hidden_states=True)
        with steer(model, vec, alpha=2.5, scale="absolute"):
            moved = model(input_ids=ids, output_hidden_states=True)
    assert torch.equal(zero.logits, base.logits)
    for i in range(2):  # embeddings and block 0: before the steered block, bit-identical
        assert torch.equal(moved.hidden_states[i], base.hidden_states[i])
    shift = moved.hidden_states[2] - base.hidden_states[2]  # output of block 1
    torch.testing.assert_close(shift, (2.5 * vec.directions[1]).expand_as(shift), rtol=0, atol=1e-4)
    assert not torch.allclose(moved.logits, base.logits)


def test_hooks_removed_when_body_raises_and_user_hooks_survive(tiny):
    model = tiny("llama")
    vec = random_vector(model, layers=(0, 2))
    seen = []
    handle = model.model.layers[2].register_forward_hook(lambda *a: seen.append(1))
    try:
        with (
            pytest.raises(RuntimeError, match="boom"),
            steer(model, vec, alpha=1.0, positions="generated", scale="absolute"),
        ):
            assert steerlab_hooks(model) == 3  # two blocks + the position tracker
            raise RuntimeError("boom")
        assert steerlab_hooks(model) == 0
        model(input_ids=torch.tensor([[3, 4]]))
        assert seen == [1]
    finally:
        handle.remove()


def test_setup_failure_leaves_no_hook(tiny):
    model = tiny("llama")
    vec = random_vector(model, layers=(1,))
    with (
        pytest.raises(SteeringError, match=r"layers \[3\] are not in the vector"),
        steer(model, vec, layers=[3], scale="absolute"),
    ):
        pass
    assert steerlab_hooks(model) == 0


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gptj", "gemma2"])
@pytest.mark.parametrize("positions", ["all", "generated", "prompt", 3])
def test_generation_same_with_and_without_kv_cache(tiny, arch, positions):
    model = tiny(arch)
    vec = random_vector(model, layers=(1, 2), scale=8.0)
    with steer(model, vec, alpha=1.0, positions=positions, scale="absolute"):
        cached = greedy(model, PROMPTS, use_cache=True)
        uncached = greedy(model, PROMPTS, use_cache=False)
    assert torch.equal(cached, uncached)
    plain = greedy(model, PROMPTS)
    assert not torch.equal(cached, plain)  # every choice of positions steers something here
    # The first new token is read at the prompt's last token: steered by "all", "prompt" and 3 (for prompts of
    # more than 3 tokens), not by "generated".
    if positions == "generated":
        assert torch.equal(cached[:, 0], plain[:, 0])
    if positions == "prompt":  # the whole prompt pass is steered, as under "all"; generated tokens are not
        with steer(model, vec, alpha=1.0, positions="all", scale="absolute"):
            everywhere = greedy(model, PROMPTS)
        assert torch.equal(cached[:, 0], everywhere[:, 0])
    if positions == 3:  # PROMPTS[1] has 2 tokens: its first two new tokens are read at indices 1 and 2 < 3
        assert torch.equal(cached[1, :2], plain[1, :2]) and not torch.equal(cached[1], plain[1])


@pytest.mark.parametrize("arch", ["llama", "gptj"])
def test_prompt_positions_steer_the_prompt_pass_and_no_generated_token(tiny, arch):
    """positions='prompt' is a decode whose prompt pass runs under positions='all' and whose later steps run
    unsteered on the same KV cache (written out by hand here). On these two models steering the generated tokens
    too changes the text, so steering them by mistake would show."""
    model = tiny(arch)
    vec = random_vector(model, layers=(1, 2), scale=8.0)
    row = PROMPTS[2]
    with steer(model, vec, alpha=1.0, positions="prompt", scale="absolute"):
        got = greedy(model, [row])[0].tolist()
    cache, ids, expected = DynamicCache(config=model.config), torch.tensor([row]), []
    with torch.no_grad():
        for step in range(len(got)):
            past = cache.get_seq_length()
            kwargs = {"input_ids": ids, "position_ids": torch.arange(past, past + ids.shape[1])[None]}
            kwargs |= {"use_cache": True, cache_argument(model): cache}
            with steer(model, vec, alpha=1.0, scale="absolute") if step == 0 else nullcontext():
                ids = model(**kwargs).logits[:, -1:].argmax(-1)
            expected.append(int(ids))
    assert got == expected
    with steer(model, vec, alpha=1.0, scale="absolute"):
        assert greedy(model, [row])[0].tolist() != expected


@pytest.mark.parametrize("arch", ["llama", "gpt2", "falcon", "qwen3"])
@pytest.mark.parametrize("positions", ["all", "generated", 2])
def test_left_padded_batch_equals_rows_alone(tiny, arch, positions):
    model = tiny(arch)
    vec = random_vector(model, layers=(2,), scale=8.0)
    with steer(model, vec, alpha=1.0, positions=positions, scale="absolute"):
        batched = greedy(model, PROMPTS)
        alone = [greedy(model, [row])[0] for row in PROMPTS]
    for row, single in zip(batched, alone, strict=True):
        assert torch.equal(row, single)


def test_generated_only_leaves_prompt_logits_untouched(tiny):
    model = tiny("llama")
    vec = random_vector(model, layers=(1,), scale=8.0)
    ids, mask = pad_batch(PROMPTS, 2, side="left")
    kwargs = dict(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=4,
        do_sample=False,
        pad_token_id=2,
        eos_token_id=None,
        output_logits=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        base = model.generate(**kwargs)
        with steer(model, vec, alpha=1.0, positions="generated", scale="absolute"):
            steered = model.generate(**kwargs)
            prompt_logits = model(input_ids=ids, attention_mask=mask).logits
        plain_logits = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(prompt_logits, plain_logits)
    assert torch.equal(steered.logits[0], base.logits[0])  # first new token comes from the prompt alone
    assert not torch.allclose(steered.logits[1], base.logits[1])  # later ones see steered tokens


def test_from_token_k_changes_only_tokens_from_k(tiny):
    model = tiny("qwen2")
    vec = random_vector(model, layers=(1,))
    row = PROMPTS[2]
    ids, mask = pad_batch([row, PROMPTS[1]], 2, side="left")
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[2]
        with steer(model, vec, alpha=1.0, positions=4, scale="absolute"):
            moved = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[2]
    diff = (moved - base).norm(dim=-1)
    assert torch.all(diff[0, :4] == 0) and torch.all(diff[0, 4:] > 1)
    assert torch.all(diff[1] == 0)  # the short row (2 real tokens, left padded) has no token at index >= 4


def test_nested_steering_adds_up(tiny):
    model = tiny("llama")
    a, b = random_vector(model, seed=1), random_vector(model, seed=2)
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        with steer(model, a, alpha=1.0, scale="absolute"), steer(model, b, alpha=0.5, scale="absolute"):
            nested = model(input_ids=ids).logits
        with steer(model, a + 0.5 * b, alpha=1.0, scale="absolute"):
            summed = model(input_ids=ids).logits
    torch.testing.assert_close(nested, summed, rtol=1e-4, atol=1e-4)


def test_relative_scale_uses_recorded_norm(tiny):
    model = tiny("llama")
    vec = random_vector(model, layers=(1,))
    vec.resid_norm = {1: 40.0}
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        base = model(input_ids=ids, output_hidden_states=True).hidden_states[2]
        with steer(model, vec, alpha=0.5, scale="relative"):
            moved = model(input_ids=ids, output_hidden_states=True).hidden_states[2]
    assert (moved - base).norm(dim=-1).sub(20.0).abs().max() < 1e-3


def test_bad_steering_requests(tiny):
    model = tiny("llama")
    vec = random_vector(model)
    for alpha, message in ((math.nan, "must be a finite number"), (math.inf, "finite"), ("2", "is not a strength")):
        with (
            pytest.raises(SteeringError, match=message),
            steer(model, vec, alpha=alpha, scale="absolute"),
        ):
            pass
    with (
        pytest.raises(SteeringError, match="positions='middle' is not valid"),
        steer(model, vec, 1.0, positions="middle", scale="absolute"),
    ):
        pass
    with pytest.raises(SteeringError, match="relative"), steer(model, vec, scale="relative"):
        pass
    other = SteeringVector({1: torch.ones(64)}, model_id="other", fingerprint=ModelFingerprint("llama", 64, 4))
    with (
        pytest.raises(VectorMismatchError, match=r"hidden size 64 \(vector\) vs 32 \(model\)"),
        steer(model, other, 1.0, scale="absolute"),
    ):
        pass
    deep = SteeringVector({7: torch.ones(32)}, model_id="x", fingerprint=ModelFingerprint("llama", 32, 8))
    with (
        pytest.raises(VectorMismatchError, match=r"layers \[7\] do not exist"),
        steer(model, deep, 1.0, scale="absolute"),
    ):
        pass
    assert steerlab_hooks(model) == 0


def test_other_model_id_with_same_shape_warns(tiny):
    model = tiny("llama")
    vec = random_vector(model)
    vec.model_id = "some/other-model"
    with pytest.warns(UserWarning, match="extracted from 'some/other-model'"), steer(model, vec, 1.0, scale="absolute"):
        pass


def test_wrong_layout_width_is_reported(tiny):
    from steerlab.arch import ArchSpec, set_architecture
    from steerlab.errors import ArchitectureError

    model = tiny("llama")
    vec = random_vector(model)
    # A wrong override: the MLP's inner projections list is not the residual stream (only for this test).
    fake = torch.nn.ModuleList([layer.mlp.up_proj for layer in model.model.layers])
    model._steerlab_fake = fake
    set_architecture(model, ArchSpec(layers=("_steerlab_fake",)))
    try:
        with (
            pytest.raises(ArchitectureError, match="resid_post of block 1 has width 64 but the vector has width 32"),
            steer(model, vec, alpha=1.0, scale="absolute"),
        ):
            model(input_ids=torch.tensor([PROMPTS[0]]))
    finally:
        set_architecture(model, None)
        del model._steerlab_fake


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_projection_modes_skip_only_the_prompts_first_token_when_generating(tiny, arch):
    """With a KV cache the first token is only in the prompt pass: no generated token is taken for it. A one-token
    prompt is nothing but the sink, so there the default steers exactly the generated tokens."""
    model = tiny(arch)
    vec = random_vector(model, layers=(1, 2), scale=8.0)
    rows = [[5], PROMPTS[1], PROMPTS[2]]
    with steer(model, vec, alpha=20.0, mode="ablate_then_add", scale="absolute"):
        cached = greedy(model, rows, use_cache=True)
        uncached = greedy(model, rows, use_cache=False)
        alone = greedy(model, rows[:1])[0]
    with steer(model, vec, alpha=20.0, mode="ablate_then_add", positions="generated", scale="absolute"):
        generated_only = greedy(model, rows[:1])[0]
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[0], alone)  # left padding is not taken for the first token either
    assert torch.equal(alone, generated_only)
    assert not torch.equal(alone, greedy(model, rows[:1])[0])  # and the generated tokens are steered


def test_alpha_recommended_uses_the_calibrated_setting(tiny):
    """``alpha="recommended"`` reads layer, strength, mode and scale from extra["recommended"] (issue 13): an
    option that contradicts it, a vector without one or one recorded without the random-baseline test is refused."""
    import dataclasses

    from steerlab import Intervention

    model = tiny("llama")
    plain = dataclasses.replace(random_vector(model, layers=(1, 2)), resid_norm={1: 6.0, 2: 7.0})
    rec = {"found": True, "layer": 2, "alpha": 0.1, "mode": "add", "scale": "relative"}
    vec = dataclasses.replace(plain, extra={"recommended": rec})
    item = Intervention(vec, alpha="recommended")
    assert (item.alpha, item.layers, item.mode, item.scale) == (0.1, (2,), "add", "relative")
    assert Intervention(vec, alpha="recommended", layers=[2], scale="relative").layers == (2,)  # agreeing: fine
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad(), steer(model, vec, alpha="recommended"):
        got = model(input_ids=ids).logits
    with torch.no_grad(), steer(model, vec, alpha=0.1, layers=[2]):
        want = model(input_ids=ids).logits
    torch.testing.assert_close(got, want)
    with pytest.raises(SteeringError, match=r"layers=\(1,\) \(recommended: \(2,\)\) contradicts"):
        Intervention(vec, alpha="recommended", layers=[1])
    with pytest.raises(SteeringError, match="scale='absolute'"):
        Intervention(vec, alpha="recommended", scale="absolute")
    with pytest.raises(SteeringError, match="has none. Run `steerlab calibrate"):
        Intervention(plain, alpha="recommended")
    old = dataclasses.replace(plain, extra={"recommended": {k: v for k, v in rec.items() if k != "found"}})
    with pytest.raises(SteeringError, match="older steerlab"):
        Intervention(old, alpha="recommended")
    with pytest.raises(SteeringError, match="not a strength"):
        Intervention(vec, alpha="strong")
