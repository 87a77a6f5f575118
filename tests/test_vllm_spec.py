"""The vLLM plugin's request field, without vLLM: parsing into the library's Interventions, the library's errors,
the resolved plan, and the prefix-cache salt (which must change with anything that changes prompt KV)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from steerlab import SteeringVector
from steerlab._models import ModelFingerprint
from steerlab._steer import resolve_entries
from steerlab.errors import SteeringError, VectorMismatchError
from steerlab.vllm import VECTORS_ENV, steering_args
from steerlab.vllm._spec import parse_steering

FP = ModelFingerprint("llama", 8, 4)


def _vector(seed: int = 0, layers=(1, 2)) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    return SteeringVector(
        {k: torch.randn(8, generator=gen) for k in layers},
        model_id="tiny",
        fingerprint=FP,
        resid_norm={k: 10.0 + k for k in layers},
    )


@pytest.fixture
def vec_path(tmp_path):
    return str(_vector().save(tmp_path / "v.safetensors"))


def test_steering_args_travel_as_json_and_parse_back(vec_path):
    args = steering_args([{"vector": vec_path, "alpha": 0.1}], {"other": 1})
    assert args["other"] == 1 and isinstance(args["steering"], str)
    steering = parse_steering(args["steering"], FP, "tiny")
    assert steering is not None and steering.layers == [1, 2]
    # The same entry as a list (offline) or a single object parses the same.
    for raw in ([{"vector": vec_path, "alpha": 0.1}], {"vector": vec_path, "alpha": 0.1}):
        assert [p.layer for p in parse_steering(raw, FP, "tiny").plans] == [1, 2]


def test_plans_are_the_librarys_resolution_in_layer_then_given_order(vec_path):
    raw = [
        {"vector": vec_path, "alpha": 0.1, "layers": [2]},
        {"vector": vec_path, "mode": "clamp", "alpha": [None, 0.5], "positions": "prompt", "preserve_norm": True},
    ]
    steering = parse_steering(raw, FP, "tiny")
    assert [(p.layer, p.mode) for p in steering.plans] == [(1, "clamp"), (2, "add"), (2, "clamp")]
    add = steering.plans[1]
    expected, _ = resolve_entries(steering.interventions[0])
    assert torch.equal(add.direction, expected[2, "resid_post"].direction.float())
    assert add.alpha == pytest.approx(0.1) and add.positions == "all"
    clamp = steering.plans[2]
    # clamp's band is in activation units: a fraction of the recorded norm with the default relative scale.
    assert clamp.alpha == (None, pytest.approx(0.5 * 12.0)) and clamp.preserve_norm and clamp.positions == "prompt"
    # the projection modes default to leaving the attention sink alone, as in the library
    ablate = parse_steering([{"vector": vec_path, "mode": "ablate"}], FP, "tiny")
    assert {p.positions for p in ablate.plans} == {1}


def test_the_librarys_errors_name_the_entry(vec_path, tmp_path):
    with pytest.raises(SteeringError, match=r"steering\[0\]: unknown mode"):
        parse_steering([{"vector": vec_path, "alpha": 0.1, "mode": "multiply"}], FP, "tiny")
    with pytest.raises(SteeringError, match=r"steering\[1\]: .*layers \[7\] are not in the vector"):
        parse_steering([{"vector": vec_path, "alpha": 0.1}, {"vector": vec_path, "alpha": 1, "layers": [7]}], FP, "t")
    with pytest.raises(SteeringError, match="past the limit"):
        parse_steering([{"vector": vec_path, "alpha": 5.0}], FP, "tiny")
    with pytest.raises(SteeringError, match="unknown keys"):
        parse_steering([{"vector": vec_path, "alpha": 0.1, "strength": 2}], FP, "tiny")
    with pytest.raises(SteeringError, match="not valid JSON"):
        parse_steering("[{", FP, "tiny")
    with pytest.raises(VectorMismatchError, match="hidden size 8 .vector. vs 16 .model."):
        parse_steering([{"vector": vec_path, "alpha": 0.1}], ModelFingerprint("llama", 16, 4), "big")
    with pytest.raises(SteeringError, match="not steered through vLLM"):
        parse_steering([{"vector": vec_path, "alpha": 0.1, "site": "heads"}], FP, "tiny")
    bloom = ModelFingerprint("bloom", 8, 4)  # the registry names no sublayer outputs for it
    bloom_path = str(dataclasses.replace(_vector(), fingerprint=bloom).save(tmp_path / "bloom.safetensors"))
    with pytest.raises(SteeringError, match="not known for model type 'bloom'"):
        parse_steering([{"vector": bloom_path, "alpha": 0.1, "site": "mlp_out"}], bloom, "tiny")
    with pytest.raises(Exception, match="does not exist|not a readable"):
        parse_steering([{"vector": str(tmp_path / "missing.safetensors"), "alpha": 0.1}], FP, "tiny")


def test_every_residual_and_sublayer_site_is_planned_where_the_library_resolves_it(vec_path):
    for site in ("resid_pre", "resid_post", "attn_out", "mlp_out"):
        entries = [
            {"vector": vec_path, "alpha": 0.1, "site": site},
            {"vector": vec_path, "mode": "ablate", "site": site},
        ]
        steering = parse_steering(entries, FP, "tiny")
        assert {(p.layer, p.site) for p in steering.plans} == {(1, site), (2, site)}
        # the same directions and strengths as the library's own resolution
        resolved, _ = resolve_entries(steering.interventions[0])
        assert torch.equal(next(p for p in steering.plans if p.layer == 1).direction, resolved[1, site].direction)
    salts = {
        parse_steering([{"vector": vec_path, "alpha": 0.1, "site": s}], FP, "t").salt for s in ("attn_out", "mlp_out")
    }
    assert len(salts) == 2  # another site is another prompt KV


def test_identity_entries_leave_a_request_unsteered(vec_path):
    assert parse_steering(None, FP, "tiny") is None
    assert parse_steering([{"vector": vec_path, "alpha": 0.0}], FP, "tiny") is None
    assert parse_steering([], FP, "tiny") is None


def test_named_vectors_come_from_the_vectors_folder(tmp_path, monkeypatch):
    _vector(3).save(tmp_path / "happy.safetensors")
    monkeypatch.setenv(VECTORS_ENV, str(tmp_path))
    steering = parse_steering([{"vector": "happy", "alpha": 0.1}], FP, "tiny")
    assert torch.equal(steering.interventions[0].vector.directions[1], _vector(3).directions[1])


def test_the_salt_follows_what_changes_prompt_kv(tmp_path, vec_path):
    def salt(entries, own=None):
        steering = parse_steering(entries, FP, "tiny", salt=own)
        return steering.salt

    base = salt([{"vector": vec_path, "alpha": 0.1}])
    assert base and base == salt(json.dumps([{"vector": vec_path, "alpha": 0.1}]))
    assert base != salt([{"vector": vec_path, "alpha": 0.2}])
    assert base != salt([{"vector": vec_path, "alpha": 0.1}], own="user-salt")
    assert base != salt([{"vector": vec_path, "alpha": 0.1, "positions": "prompt"}])
    # generation-only steering leaves prompt KV as it is: no salt, prompt blocks are shared
    assert salt([{"vector": vec_path, "alpha": 0.1, "positions": "generated"}]) is None
    # a vector file rewritten under the same name salts differently
    _vector(seed=5).save(vec_path)
    assert base != salt([{"vector": vec_path, "alpha": 0.1}])


def test_decoder_layers_are_found_or_refused_by_name():
    from torch import nn

    from steerlab.vllm._runner import decoder_layers

    class Inner(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(n))

    class Model(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.model = Inner(n)

    class Elsewhere(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.transformer = Inner(n)

    model = Model(4)
    assert decoder_layers(model, 4) is model.model.layers
    other = Elsewhere(4)
    assert decoder_layers(other, 4) is other.transformer.layers
    with pytest.raises(RuntimeError, match="expected one ModuleList named 'layers' with 5 modules, found none"):
        decoder_layers(model, 5)


# ----- reading: the capture a request asks for, and what a worker keeps of it ---------------------------------------
def _capture_spec(**changes):
    from steerlab.vllm._spec import parse_capture

    raw = {"id": "c1", "layers": [2, 1], "site": "resid_post", "reduce": "last", "exclude_first_token": True}
    return parse_capture({**raw, **changes}, FP)


def test_a_capture_is_checked_against_the_model_and_only_travels_as_a_dict():
    spec = _capture_spec()
    assert spec.layers == (1, 2) and spec.site == "resid_post"
    with pytest.raises(SteeringError, match="cannot travel over HTTP"):
        from steerlab.vllm._spec import parse_capture

        parse_capture(json.dumps({"id": "c1"}), FP)
    with pytest.raises(SteeringError, match=r"layers must be .* in 0\.\.3, found \[4\]"):
        _capture_spec(layers=[4])
    with pytest.raises(SteeringError, match="site 'heads' is not read through vLLM"):
        _capture_spec(site="heads")
    with pytest.raises(SteeringError, match="reduce='first' is not valid"):
        _capture_spec(reduce="first")


@pytest.mark.parametrize("reduce", ["last", "mean", "all"])
def test_a_capture_reduces_as_the_transformers_reader_does_and_a_recomputed_token_counts_once(reduce):
    """Rows arrive in chunks (chunked prefill), one chunk twice (recomputed after a preemption) and with a generated
    token past the prompt: the result is the one reduction of the prompt's rows, sink left out."""
    from steerlab.vllm._capture import Capture

    rows = torch.randn(5, 8)
    rows[0] *= 100  # the attention sink
    capture = Capture(_capture_spec(reduce=reduce), prompt_length=5)
    capture.write(1, rows[:3], torch.arange(3))
    capture.write(1, rows[:3] + 0.0, torch.arange(3))  # recomputed
    capture.write(1, torch.cat([rows[3:], torch.randn(1, 8)]), torch.arange(3, 6))  # with a generated token
    result = capture.result()[1]
    expected = {"last": rows[4], "mean": rows[1:].mean(0), "all": rows[1:]}[reduce]
    torch.testing.assert_close(result["value"], expected)
    assert result["norm_count"] == 4 and not result["single"]
    assert result["norm_sum"] == pytest.approx(float(rows[1:].norm(dim=-1).sum()), rel=1e-6)


def test_a_capture_with_a_token_never_computed_is_refused():
    from steerlab.vllm._capture import Capture

    capture = Capture(_capture_spec(), prompt_length=4)
    capture.write(2, torch.randn(2, 8), torch.tensor([2, 3]))  # the first two came from a cache
    with pytest.raises(RuntimeError, match=r"positions \[0, 1\] of the 4-token prompt were never computed"):
        capture.result()
