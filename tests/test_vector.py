import json

import pytest
import torch
from safetensors.torch import save_file

from steerlab import SteeringVector
from steerlab._models import ModelFingerprint
from steerlab.errors import FormatError, VectorMismatchError

FP = ModelFingerprint("llama", 8, 6)


def make(seed=0, layers=(2, 4), extra=None, **kw) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    return SteeringVector(
        {k: torch.randn(8, generator=gen) for k in layers},
        model_id="m",
        fingerprint=FP,
        method="pca_diff",
        normalized=False,
        dataset_hash="abc",
        resid_norm={k: 10.0 + k for k in layers},
        extra=extra or {"reduce": "last"},
        **kw,
    )


def test_save_load_is_exact(tmp_path):
    vec = make()
    path = vec.save(tmp_path / "v.safetensors")
    back = SteeringVector.load(path)
    assert back.layers == vec.layers
    for layer in vec.layers:
        assert torch.equal(back.directions[layer], vec.directions[layer])
    assert back.header() == vec.header()


def test_header_tolerates_unknown_keys(tmp_path):
    vec = make()
    header = {**vec.header(), "from_the_future": {"x": 1}}
    path = tmp_path / "v.safetensors"
    save_file(
        {f"layer.{k}": v for k, v in vec.directions.items()},
        str(path),
        metadata={"steerlab": json.dumps(header)},
    )
    assert SteeringVector.load(path).layers == [2, 4]


def test_algebra():
    a, b = make(0), make(1, layers=(4, 5))
    total = 0.8 * a - 0.3 * b
    assert total.layers == [2, 4, 5]
    torch.testing.assert_close(total.directions[2], 0.8 * a.directions[2])
    torch.testing.assert_close(total.directions[4], 0.8 * a.directions[4] - 0.3 * b.directions[4])
    torch.testing.assert_close(total.directions[5], -0.3 * b.directions[5])
    assert total.method == "combination" and len(total.extra["terms"]) == 2
    torch.testing.assert_close((-a).directions[2], -a.directions[2])
    torch.testing.assert_close((a / 2).directions[4], a.directions[4] / 2)
    assert float(a.normalized_copy().directions[2].norm()) == pytest.approx(1.0)
    other = SteeringVector({2: torch.ones(16)}, model_id="x", fingerprint=ModelFingerprint("llama", 16, 6))
    with pytest.raises(VectorMismatchError, match="different models or sites"):
        a + other


def test_invalid_vectors():
    with pytest.raises(VectorMismatchError, match="at least one layer"):
        SteeringVector({}, model_id="m", fingerprint=FP)
    with pytest.raises(VectorMismatchError, match="NaN"):
        SteeringVector({1: torch.tensor([float("nan")] * 8)}, model_id="m", fingerprint=FP)
    with pytest.raises(VectorMismatchError, match=r"widths \[4\].*hidden_size=8"):
        SteeringVector({1: torch.ones(4)}, model_id="m", fingerprint=FP)


def _write(path, tensors, header):
    meta = {"steerlab": header if isinstance(header, str) else json.dumps(header)} if header is not None else None
    save_file(tensors, str(path), metadata=meta)
    return path


def test_malformed_files(tmp_path):
    good = make().header()
    tensors = {"layer.2": torch.ones(8), "layer.4": torch.ones(8)}
    cases = [
        (_write(tmp_path / "a", tensors, None), "without a steerlab header"),
        (_write(tmp_path / "b", tensors, "{not json"), "not valid JSON"),
        (_write(tmp_path / "c", tensors, {**good, "format_version": 99}), "format version 99, newer than"),
        (_write(tmp_path / "d", {"weird": torch.ones(8)}, good), "unexpected tensor 'weird'"),
        (
            _write(tmp_path / "e", {"layer.2": torch.ones(8)}, good),
            r"lists layers \[2, 4\] but the file holds \[2\]",
        ),
        (
            _write(tmp_path / "f", tensors, {k: v for k, v in good.items() if k != "fingerprint"}),
            "fingerprint",
        ),
        (
            _write(tmp_path / "g", {"layer.2": torch.ones(8), "layer.4": torch.full((8,), float("inf"))}, good),
            "NaN or inf",
        ),
    ]
    for path, message in cases:
        with pytest.raises(FormatError, match=message):
            SteeringVector.load(path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 this is not safetensors")
    with pytest.raises(FormatError, match="not a readable .safetensors"):
        SteeringVector.load(junk)
    with pytest.raises(FormatError, match="does not exist"):
        SteeringVector.load(tmp_path / "missing.safetensors")


def test_random_like_keeps_norms_and_is_seeded():
    vec = make()
    control = vec.random_like(seed=3)
    assert control.layers == vec.layers and control.method == "random"
    for layer in vec.layers:
        assert float(control.directions[layer].norm()) == pytest.approx(float(vec.directions[layer].norm()))
        assert (
            abs(float(torch.nn.functional.cosine_similarity(control.directions[layer], vec.directions[layer], dim=0)))
            < 0.99
        )
    assert torch.equal(vec.random_like(seed=3).directions[2], control.directions[2])
    assert not torch.equal(vec.random_like(seed=4).directions[2], control.directions[2])


def test_random_like_is_reproducible_per_layer():
    """A seed and a layer give one direction, whatever other layers the vector holds (issue 18): one generator
    drawing every layer in turn made layer 4's baseline depend on whether layer 2 came first."""
    both, alone = make(layers=(2, 4)), make(layers=(4,))
    assert torch.allclose(
        both.random_like(seed=3).directions[4] / both.directions[4].norm(),
        alone.random_like(seed=3).directions[4] / alone.directions[4].norm(),
    )
    wide = make(layers=tuple(range(11)))
    assert torch.allclose(
        wide.random_like(seed=3).directions[4] / wide.directions[4].norm(),
        alone.random_like(seed=3).directions[4] / alone.directions[4].norm(),
    )
    one = both.random_like(seed=3)
    cosine = torch.nn.functional.cosine_similarity(one.directions[2], one.directions[4], dim=0)
    assert abs(float(cosine)) < 0.99  # layers still get different directions


def test_derived_vectors_drop_the_recommendation():
    """A calibration holds for the direction it measured: a flipped, summed, copied or random vector loses it."""
    vec = make(extra={"reduce": "last", "recommended": {"layer": 2, "alpha": 0.1}})
    assert (1.0 * vec).extra["recommended"] == {"layer": 2, "alpha": 0.1}
    for derived in (-vec, 2 * vec, vec + vec, vec.at_layers([2, 4], 2), vec.random_like(seed=0)):
        assert "recommended" not in derived.extra and derived.extra["reduce"] == "last"
