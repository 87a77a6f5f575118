from contextlib import nullcontext

import pytest
import torch

from conftest import steerlab_hooks
from steerlab import Intervention, directional_ablation, record, steer, steer_rows
from steerlab._interventions import ablate, ablate_then_add, add, apply_operator, check_alpha, clamp
from steerlab.arch import SITES, get_layout
from steerlab.engines import pad_batch
from steerlab.errors import ArchitectureError, SteeringError
from tiny import ARCHS, PROMPTS, greedy, random_vector

TEXTS = ["I love it when the sun is out", "No way", "Tell me a story about a dragon."]


def hidden_and_v(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(3, 5, 16, generator=gen) * 4, torch.randn(16, generator=gen)


def proj(h, v):
    return h @ (v / v.norm())


def test_operators_on_tensors():
    h, v = hidden_and_v()
    unit = v / v.norm()
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 2:] = True
    mask[2] = True

    out = ablate(h, v, 1.0, mask)
    assert torch.equal(out[~mask], h[~mask])  # unselected tokens bit-identical
    assert proj(out[mask], v).abs().max() < 1e-5
    orth = lambda x: x - proj(x, v)[..., None] * unit  # noqa: E731
    torch.testing.assert_close(orth(out[mask]), orth(h[mask]))  # nothing orthogonal to v changes

    torch.testing.assert_close(proj(ablate_then_add(h, v, 2.5), v), torch.full((3, 5), 2.5))
    torch.testing.assert_close(add(h, v, 2.0) - h, (2.0 * v).expand_as(h))
    assert torch.equal(add(h, v, 0.0), h) and torch.equal(ablate(h, v, 0.0), h)

    band = clamp(h, v, (-1.0, 0.5))
    p0, p1 = proj(h, v), proj(band, v)
    assert p1.min() >= -1.0 - 1e-5 and p1.max() <= 0.5 + 1e-5
    inside = (p0 >= -1.0) & (p0 <= 0.5)
    torch.testing.assert_close(band[inside], h[inside])
    floor = clamp(h, v, (1.0, None))
    assert proj(floor, v).min() >= 1.0 - 1e-5

    for mode, alpha in (("add", 3.0), ("ablate", 1.0), ("ablate_then_add", 9.0), ("clamp", (2.0, 3.0))):
        kept = apply_operator(mode, h, v, alpha, mask, preserve_norm=True)
        torch.testing.assert_close(kept.norm(dim=-1), h.norm(dim=-1))
        assert torch.equal(kept[~mask], h[~mask])


def test_alpha_validation():
    with pytest.raises(SteeringError, match="unknown mode 'magic'"):
        check_alpha("magic", 1.0)
    with pytest.raises(SteeringError, match=r"'clamp' takes alpha=\(lo, hi\)"):
        check_alpha("clamp", 3.0)
    with pytest.raises(SteeringError, match="is empty: lo must be <= hi"):
        check_alpha("clamp", (2.0, 1.0))
    with pytest.raises(SteeringError, match="finite number for mode 'ablate'"):
        check_alpha("ablate", float("nan"))
    assert check_alpha("clamp", [None, 2]) == (None, 2.0)


def site_supported(model, site):
    try:
        get_layout(model).site_module(1, site)
        return True
    except ArchitectureError:
        return False


# Bloom's attention and MLP add the residual inside themselves, so no module's output is the sublayer's write
# alone; OPT's MLP output (fc2) comes out with the tokens flattened to (batch * tokens, width). Those sites are
# refused there. Every other (arch, site) must be supported.
UNSUPPORTED = {("bloom", "attn_out"), ("bloom", "mlp_out"), ("opt", "mlp_out")}
SUPPORTED = [(arch, site) for arch in ARCHS for site in SITES if (arch, site) not in UNSUPPORTED]


@pytest.mark.parametrize("arch", ARCHS)
def test_sites_supported_exactly_as_listed_and_others_refused(tiny, tokenizer, arch):
    model = tiny(arch)
    vec = random_vector(model, layers=(1,))
    for site in SITES:
        assert site_supported(model, site) == ((arch, site) not in UNSUPPORTED), site
        if (arch, site) in UNSUPPORTED:
            with pytest.raises(ArchitectureError, match=f"not available for model_type '{arch}'"):
                record(model, tokenizer, TEXTS, layers=[1], site=site)
            with (
                pytest.raises(ArchitectureError, match=f"not available for model_type '{arch}'"),
                steer(model, vec, 1.0, site=site, scale="absolute"),
            ):
                pass


_UNSTEERED = {}


def unsteered(model, tokenizer, arch, site):
    """The unsteered recording of TEXTS at layers 0 and 1 of ``site``: once per (arch, site), since the session's
    tiny models never change and every site's test compares against all sites."""
    if (arch, site) not in _UNSTEERED:
        _UNSTEERED[arch, site] = record(model, tokenizer, TEXTS, layers=[0, 1], site=site, reduce="all")
    return _UNSTEERED[arch, site]


@pytest.mark.parametrize(("arch", "site"), SUPPORTED)
def test_add_at_each_site_changes_only_that_site(tiny, tokenizer, arch, site):
    model = tiny(arch)
    vec = random_vector(model, layers=(1,), scale=5.0)
    base = {s: unsteered(model, tokenizer, arch, s) for s in SITES if site_supported(model, s)}
    with steer(model, vec, alpha=1.0, site=site, scale="absolute"):
        moved = {s: record(model, tokenizer, TEXTS, layers=[0, 1], site=s, reduce="all") for s in base}
    shift = 1.0 * vec.directions[1]
    torch.testing.assert_close(
        moved[site].values[1] - base[site].values[1], shift.expand_as(base[site].values[1]), rtol=0, atol=2e-4
    )
    for s in base:  # layer 0 is untouched at every site
        assert torch.equal(moved[s].values[0], base[s].values[0])
    if site == "attn_out" and "resid_pre" in base:
        assert torch.equal(moved["resid_pre"].values[1], base["resid_pre"].values[1])
    if site == "mlp_out":  # the MLP is the block's last write: the block output moves by alpha * v
        diff = moved["resid_post"].values[1] - base["resid_post"].values[1]
        # times the residual multiplier where the block scales its sublayers' outputs (Granite)
        name = get_layout(model).spec.residual_multiplier
        factor = 1.0 if name is None else getattr(model.config, name)
        torch.testing.assert_close(diff, factor * shift.expand_as(diff), rtol=0, atol=2e-4)


@pytest.mark.parametrize(("arch", "site"), SUPPORTED)
def test_ablate_clamp_and_norm_preservation_at_each_site(tiny, tokenizer, arch, site):
    model = tiny(arch)
    vec = random_vector(model, layers=(2,))
    unit = vec.directions[2] / vec.directions[2].norm()
    base = record(model, tokenizer, TEXTS, layers=[2], site=site, reduce="all", exclude_first_token=False)
    with steer(model, vec, alpha=1.0, mode="ablate", site=site, positions="all", scale="absolute"):  # token 0 too
        gone = record(model, tokenizer, TEXTS, layers=[2], site=site, reduce="all", exclude_first_token=False)
    assert (gone.values[2] @ unit).abs().max() < 1e-3 * base.values[2].norm(dim=-1).max()
    orth = lambda x: x - (x @ unit)[:, None] * unit  # noqa: E731
    torch.testing.assert_close(orth(gone.values[2]), orth(base.values[2]), rtol=1e-4, atol=1e-3)
    with steer(model, vec, alpha=1.0, mode="ablate", site=site, preserve_norm=True, positions="all", scale="absolute"):
        kept = record(model, tokenizer, TEXTS, layers=[2], site=site, reduce="all", exclude_first_token=False)
    torch.testing.assert_close(kept.values[2].norm(dim=-1), base.values[2].norm(dim=-1))
    with steer(model, vec, alpha=(-0.5, 0.5), mode="clamp", site=site, positions="all", scale="absolute"):
        banded = record(model, tokenizer, TEXTS, layers=[2], site=site, reduce="all", exclude_first_token=False)
    assert (banded.values[2] @ unit).abs().max() <= 0.5 + 1e-3


def test_several_interventions_apply_in_order(tiny):
    model = tiny("llama")
    a = random_vector(model, layers=(1,), seed=1)
    ids = torch.tensor([PROMPTS[2]])
    unit = a.directions[1] / a.directions[1].norm()
    with torch.no_grad():
        first = Intervention(a, alpha=2.0, scale="absolute")
        ablation = Intervention(
            a, mode="ablate", positions="all", scale="absolute"
        )  # the fraction removed needs no scale
        with steer(model, [first, ablation]):
            add_then_ablate = model(input_ids=ids, output_hidden_states=True).hidden_states[2]
        with steer(model, [ablation, first]):
            ablate_then_adding = model(input_ids=ids, output_hidden_states=True).hidden_states[2]
    assert (add_then_ablate @ unit).abs().max() < 1e-3
    torch.testing.assert_close(
        ablate_then_adding @ unit, torch.full((1, ids.shape[1]), 2.0 * a.directions[1].norm()), rtol=1e-4, atol=1e-3
    )
    with (
        pytest.raises(SteeringError, match="put the options in each Intervention"),
        steer(model, [Intervention(a, scale="absolute")], alpha=3.0),
    ):
        pass


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gptj"])
def test_per_row_batch_equals_rows_alone(tiny, arch):
    model = tiny(arch)
    happy, sad = random_vector(model, layers=(1, 2), seed=3, scale=8), random_vector(model, layers=(2,), seed=4)
    rows = [
        Intervention(happy, alpha=1.0, scale="absolute"),
        None,
        [
            Intervention(sad, alpha=-2.0, positions="generated", scale="absolute"),
            Intervention(happy, mode="ablate", layers=[1], scale="absolute"),
        ],
    ]
    with steer_rows(model, rows):
        batched = greedy(model, PROMPTS)
        batched_nocache = greedy(model, PROMPTS, use_cache=False)
    assert torch.equal(batched, batched_nocache)
    for row, prompt, item in zip(batched, PROMPTS, rows, strict=True):
        if item is None:
            alone = greedy(model, [prompt])[0]
        else:
            with steer(model, item if isinstance(item, list) else [item]):
                alone = greedy(model, [prompt])[0]
        assert torch.equal(row, alone)
    assert not torch.equal(batched[0], greedy(model, [PROMPTS[0]])[0])


def test_per_row_rejects_other_batch_sizes(tiny):
    model = tiny("llama")
    vec = random_vector(model)
    with (
        pytest.raises(SteeringError, match="set up for a batch of 2 rows, but the model ran a batch of 3"),
        steer_rows(model, [Intervention(vec, 1.0, scale="absolute"), None]),
    ):
        greedy(model, PROMPTS)
    assert steerlab_hooks(model) == 0


def test_bad_interventions(tiny):
    model = tiny("llama")
    vec = random_vector(model)
    with (
        pytest.raises(SteeringError, match="unknown mode 'explode'"),
        steer(model, vec, mode="explode", scale="absolute"),
    ):
        pass
    with (
        pytest.raises(SteeringError, match="unknown site 'resid_middle'"),
        steer(model, vec, site="resid_middle", scale="absolute"),
    ):
        pass
    with pytest.raises(SteeringError, match="expected Intervention objects, found str"), steer(model, ["x"]):
        pass
    with pytest.raises(SteeringError, match="not a bare SteeringVector"), steer_rows(model, [vec, None]):
        pass
    assert steerlab_hooks(model) == 0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_projection_modes_leave_each_rows_first_token_alone(tiny, arch):
    """The attention sink: ablate / clamp / ablate_then_add skip each row's first real token (found from the mask
    under left padding) unless positions="all"; add steers it. The first token attends only to itself, so its
    logits are untouched too."""
    model = tiny(arch)
    vec = random_vector(model, layers=(1,), scale=8.0)
    unit = vec.directions[1] / vec.directions[1].norm()
    ids, mask = pad_batch(PROMPTS, 2, side="left")
    rows, first = torch.arange(len(PROMPTS)), mask.argmax(-1)  # each row's first real token
    later = mask.bool() & (torch.arange(mask.shape[1]) > first[:, None])

    def run(options=None):
        with (
            torch.no_grad(),
            steer(model, [Intervention(vec, scale="absolute", **options)]) if options else nullcontext(),
        ):
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return out.hidden_states[2], out.logits

    base, base_logits = run()
    for mode, alpha, target in (("ablate", 1.0, 0.0), ("ablate_then_add", 5.0, 5.0), ("clamp", (-0.1, 0.1), None)):
        assert Intervention(vec, alpha=alpha, mode=mode, scale="absolute").positions == 1
        hidden, logits = run({"mode": mode, "alpha": alpha})
        assert torch.equal(hidden[rows, first], base[rows, first]), mode
        assert torch.equal(logits[rows, first], base_logits[rows, first]), mode
        edited, _ = run({"mode": mode, "alpha": alpha, "positions": "all"})
        for h in (hidden[later], edited[rows, first]):  # every later token by default, the first one with "all"
            if target is None:
                assert (h @ unit).abs().max() <= 0.1 + 1e-3, mode
            else:
                torch.testing.assert_close(h @ unit, torch.full((h.shape[0],), target), rtol=0, atol=1e-3)
        assert not torch.equal(edited[rows, first], base[rows, first])
    hidden, _ = run({"alpha": 2.0})  # add keeps steering every token
    assert Intervention(vec, scale="absolute").positions == "all"
    torch.testing.assert_close(hidden[rows, first] - base[rows, first], (2.0 * vec.directions[1]).expand(3, -1))


def test_directional_ablation_includes_the_first_token(tiny):
    """It must equal orthogonalize (tests/test_bake.py), whose weights act on every token, the sink included."""
    model = tiny("llama")
    assert {item.positions for item in directional_ablation(model, random_vector(model))} == {"all"}
