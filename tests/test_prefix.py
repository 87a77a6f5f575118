"""The prefix-reuse sweep gives the numbers of full steered forward passes, on every architecture."""

import dataclasses
import warnings

import pytest
import torch

from steerlab import Intervention, steer
from steerlab._packing import pack_rows
from steerlab._replay import UnsteeredPass
from steerlab._text import forward_kwargs, takes_position_ids
from steerlab.arch import get_layout, set_architecture
from steerlab.engines import pad_batch
from steerlab.errors import SteeringError
from steerlab.evaluate import logits_over_alphas
from tiny import ARCHS, PROMPTS, random_vector

ALPHAS = [None, -2.0, 0.0, 1.5, 4.0]


def full_logits(model, ids, mask, template, alpha):
    with torch.no_grad():
        if alpha is None:
            return model(**forward_kwargs(model, ids, mask)).logits.float()
        item = Intervention(
            template.vector, alpha, template.mode, template.layers, site=template.site, scale="absolute"
        )
        with steer(model, [item]):
            return model(**forward_kwargs(model, ids, mask)).logits.float()


@pytest.mark.parametrize("arch", ARCHS)
def test_replay_equals_full_passes(tiny, arch):
    model = tiny(arch)
    ids, mask = pad_batch(PROMPTS, 2, side="left")
    template = Intervention(random_vector(model, layers=(1, 2)), layers=[1, 2], scale="absolute")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to full passes would warn: every registered arch replays
        got = list(logits_over_alphas(model, ids, mask, template, ALPHAS))
    assert [a for a, _ in got] == ALPHAS
    for alpha, logits in got:
        torch.testing.assert_close(logits, full_logits(model, ids, mask, template, alpha), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got[1][1], got[4][1])


@pytest.mark.parametrize("layer", [0, 3])  # the first block, and the last (no next block to hand over to)
def test_replay_at_the_ends_of_the_stack(tiny, layer):
    model = tiny("qwen2")
    ids, mask = pad_batch(PROMPTS, 2, side="left")
    template = Intervention(random_vector(model, layers=(layer,)), scale="absolute")
    for alpha, logits in logits_over_alphas(model, ids, mask, template, [0.5, -1.0, 2.0]):
        torch.testing.assert_close(logits, full_logits(model, ids, mask, template, alpha), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "mlp_out"])
@pytest.mark.parametrize("mode", ["add", "ablate", "clamp"])
def test_replay_handles_every_site_and_operator(tiny, site, mode):
    model = tiny("llama")
    ids, mask = pad_batch(PROMPTS, 2, side="left")
    template = Intervention(random_vector(model, layers=(2,)), mode=mode, site=site, scale="absolute")
    alphas = [(-1.0, 1.0), (0.0, 0.5)] if mode == "clamp" else [0.5, 1.0]
    for (alpha, logits), expected in zip(
        logits_over_alphas(model, ids, mask, template, alphas, last_only=True),
        [full_logits(model, ids, mask, template, a)[:, -1] for a in alphas],
        strict=True,
    ):
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4, msg=f"alpha={alpha}")


def test_falls_back_with_a_warning_when_the_head_is_unknown(tiny, monkeypatch):
    model = tiny("llama")
    ids, mask = pad_batch(PROMPTS, 2, side="left")
    template = Intervention(random_vector(model, layers=(1,)), scale="absolute")
    # An ArchSpec claiming a logit scale this model does not apply: the recomputed head disagrees with the model.
    monkeypatch.setattr(model.config, "logit_scale", 3.0, raising=False)
    set_architecture(model, dataclasses.replace(get_layout(model).spec, logit_scale="logit_scale"))
    try:
        with pytest.warns(UserWarning, match="running full forward passes"):
            got = list(logits_over_alphas(model, ids, mask, template, [1.0, 2.0]))
    finally:
        set_architecture(model, None)
    torch.testing.assert_close(got[1][1], full_logits(model, ids, mask, template, 2.0))


def test_bad_inputs_are_explained(tiny):
    model = tiny("llama")
    ids, mask = pad_batch(PROMPTS, 2, side="right")
    template = Intervention(random_vector(model, layers=(1,)), scale="absolute")
    with pytest.raises(SteeringError, match="left-padded"):
        list(logits_over_alphas(model, ids, mask, template, [1.0], last_only=True))
    with pytest.raises(SteeringError, match="at least one alpha"):
        list(logits_over_alphas(model, ids, mask, template, []))
    with pytest.raises(SteeringError, match="Intervention as the template"):
        list(logits_over_alphas(model, ids, mask, template.vector, [1.0]))


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_the_caller_never_runs_in_inference_mode(tiny, reuse_prefix):
    """logits_over_alphas is a generator: the inference mode of its passes must not leak to the caller between
    items, nor stay on when the caller stops early (several chunks closed out of order once left it on for good,
    and autograd silently stopped working in everything run afterwards)."""
    model = tiny("llama")
    ids, mask = pad_batch(PROMPTS, 2, side="left")
    template = Intervention(random_vector(model, layers=(1,)), layers=[1], scale="absolute")
    items = logits_over_alphas(model, ids, mask, template, [1.0, 2.0], batch_size=1, reuse_prefix=reuse_prefix)
    next(items)  # stopped early, with every chunk suspended
    assert not torch.is_inference_mode_enabled()
    del items
    ((_, logits),) = logits_over_alphas(model, ids, mask, template, [1.0], batch_size=1, reuse_prefix=reuse_prefix)
    assert not torch.is_inference_mode_enabled() and logits.shape[0] == len(PROMPTS)
    assert torch.ones(1, requires_grad=True).mul(2).requires_grad  # autograd still works after it


@pytest.mark.parametrize("arch", ARCHS)
def test_one_unsteered_pass_replays_every_layer_direction_and_strength(tiny, arch):
    """What a sweep shares: one recorded unsteered pass serves interventions at several layers and of several
    directions, each replayed from its own layer, equal to full steered passes; a layer that was not recorded
    (here block 2's input; the recorded ones are blocks 1 and 3's) still gives the right logits, through full passes."""
    model = tiny(arch)
    ids, mask = pad_batch(PROMPTS, 2, side="left")
    vector = random_vector(model, layers=(0, 2, 3))
    templates = [Intervention(vector, layers=[layer], scale="absolute") for layer in (0, 2)]
    for last_only in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no registered arch falls back to full passes
            base = UnsteeredPass(model, ids, mask, templates, last_only=last_only, batch_size=2)
        unsteered = full_logits(model, ids, mask, templates[0], None)
        torch.testing.assert_close(base.logits, unsteered[:, -1] if last_only else unsteered, rtol=1e-4, atol=1e-4)
        other = Intervention(random_vector(model, layers=(2,), seed=7), site="resid_pre", scale="absolute")
        for template in [*templates, dataclasses.replace(templates[1], vector=vector.random_like(seed=1)), other]:
            got = list(base.steered(template, [0.0, -1.5, 2.0]))
            assert [a for a, _ in got] == [0.0, -1.5, 2.0]
            assert got[0][1] is base.logits  # an identity strength is the unsteered pass itself
            for alpha, logits in got[1:]:
                expected = full_logits(model, ids, mask, template, alpha)
                expected = expected[:, -1] if last_only else expected
                torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4, msg=f"{template.layers} {alpha}")


PAIRED = [[5, 17, 923, 44, 8, 300], [5, 17, 923, 44, 9, 301, 302], [12, 99, 4000, 7], [12, 99, 4001, 7, 8], [301, 7, 5]]
GROUPS = [0, 0, 1, 1, 2]  # rows 0-1 share 4 tokens, rows 2-3 share 2, row 4 is alone


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_rows_give_each_row_its_own_logits(tiny, arch):
    """Rows of a group run as one sequence (their shared beginning once, a 4-D mask keeping each row's own
    tokens apart, positions as if alone); unsteered and steered, each row's next-token logits are those of the
    row run alone, in the given order."""
    model = tiny(arch)
    ids, mask = pad_batch(PAIRED, 2, side="left")
    vector = random_vector(model, layers=(1, 2))
    templates = [Intervention(vector, layers=[layer], scale="absolute") for layer in (1, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every registered arch honours the packing mask
        base = UnsteeredPass(model, ids, mask, templates, last_only=True, batch_size=3, groups=GROUPS)
    # Packed wherever positions can be given (ALiBi models such as bloom read them from the 2-D mask: unpacked).
    assert (base._order is not None) == takes_position_ids(model)
    unsteered = full_logits(model, ids, mask, templates[0], None)[:, -1]
    torch.testing.assert_close(base.logits, unsteered, rtol=1e-4, atol=1e-4)
    for template in templates:
        for alpha, logits in base.steered(template, [-1.5, 2.0]):
            expected = full_logits(model, ids, mask, template, alpha)[:, -1]
            torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4, msg=f"{template.layers} {alpha}")
    at_position = dataclasses.replace(templates[0], positions=1)  # not replayable: full passes, row by row
    ((_, logits),) = base.steered(at_position, [2.0])
    ((_, expected),) = logits_over_alphas(model, ids, mask, at_position, [2.0], last_only=True)
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(logits, base.logits)


def test_a_model_that_ignores_the_packing_mask_runs_unpacked(tiny, monkeypatch):
    import steerlab._replay as replay

    def leaky(*args, **kwargs):  # as if the model ignored the mask: every token sees every earlier one
        chunks = pack_rows(*args, **kwargs)
        for chunk in chunks:
            width = chunk.attention_mask.shape[-1]
            causal = torch.ones(width, width, dtype=torch.bool).tril()
            chunk.attention_mask = torch.zeros_like(chunk.attention_mask).masked_fill(~causal, -1e30)
        return chunks

    monkeypatch.setattr(replay, "pack_rows", leaky)
    model = tiny("llama")
    ids, mask = pad_batch(PAIRED, 2, side="left")
    template = Intervention(random_vector(model, layers=(1,)), layers=[1], scale="absolute")
    with pytest.warns(UserWarning, match="running the rows unpacked"):
        base = UnsteeredPass(model, ids, mask, [template], last_only=True, batch_size=3, groups=GROUPS)
    assert base._order is None
    ((_, logits),) = base.steered(template, [2.0])
    torch.testing.assert_close(logits, full_logits(model, ids, mask, template, 2.0)[:, -1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_continuations_of_one_prompt_share_its_pass(tiny, arch):
    """generated_nll runs each distinct prompt once and its continuations on the prompt's repeated cache: the
    numbers equal each (prompt, continuation) run whole, for prompts of other lengths (left padding in the prompt
    pass), continuations of other lengths, a prompt longer than the batch and an empty continuation."""
    from steerlab._forward import next_token_nll
    from steerlab.engines import generated_nll

    model = tiny(arch)
    short, long = [5, 9, 14], [7, 3, 22, 41, 8, 30]
    pairs = [(long, [4, 9, 11]), (short, [6]), (long, [4, 9, 12, 50, 3]), (short, [17, 2]), (long, []),
             (long, [8, 8]), (short, [6, 1, 1, 19]), (long, [40])]  # fmt: skip
    got = generated_nll(model, pairs, batch_size=3)
    for (prompt, continuation), value in zip(pairs, got, strict=True):
        if not continuation:
            assert value != value  # nan: nothing was generated
            continue
        ids = torch.tensor([prompt + continuation])
        whole = next_token_nll(model, ids, torch.ones_like(ids))[0, len(prompt) - 1 :]
        assert value == pytest.approx(float(whole.mean()), rel=1e-4, abs=1e-4), (prompt, continuation)
