import pytest
import torch
from typer.testing import CliRunner

from steerlab import SteeringVector
from steerlab.cli import app
from steerlab.errors import FormatError, VectorMismatchError
from steerlab.io import hub
from steerlab.io.hub import export_hub_folder
from tiny import random_vector


def test_hub_folder_round_trip_and_model_card(tiny, tmp_path):
    model = tiny("llama")
    vec = random_vector(model, layers=(1, 2))
    vec.model_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    folder = export_hub_folder(vec, tmp_path / "share")
    card = (folder / "README.md").read_text()
    assert (
        card.startswith("---\nlibrary_name: steerlab\n") and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    )
    assert "| layers | 1, 2 |" in card and '"format": "steerlab.vector"' in card
    with pytest.warns(UserWarning, match="extracted from 'HuggingFaceTB"):  # the tiny model has another id
        back = SteeringVector.load(folder, model=model)
    assert torch.equal(back.directions[2], vec.directions[2])
    with pytest.raises(FormatError, match="exists and is not empty"):
        export_hub_folder(vec, folder)


def test_load_checks_fit_when_given_the_model(tiny, tmp_path):
    vec = random_vector(tiny("llama"), layers=(1,))
    path = vec.save(tmp_path / "v.safetensors")
    with pytest.raises(VectorMismatchError, match="model_type 'llama' \\(vector\\) vs 'gpt2' \\(model\\)"):
        SteeringVector.load(path, model=tiny("gpt2"))


def test_folder_with_several_files_needs_a_name(tiny, tmp_path):
    vec = random_vector(tiny("llama"), layers=(1,))
    vec.save(tmp_path / "a.safetensors")
    vec.save(tmp_path / "b.safetensors")
    with pytest.raises(FormatError, match="holds 2 .safetensors files"):
        SteeringVector.load(tmp_path)
    assert SteeringVector.load(tmp_path, filename="b.safetensors").layers == [1]


def test_repo_id_goes_through_huggingface_hub(tiny, tmp_path, monkeypatch):
    """The Hub is unreachable here: check the call we make (repo, file, revision) and the error when offline."""
    vec = random_vector(tiny("llama"), layers=(1,))
    local = vec.save(tmp_path / "downloaded.safetensors")
    calls = []

    def fake_download(repo_id, filename, revision=None):
        calls.append((repo_id, filename, revision))
        return str(local)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert SteeringVector.load("someone/happy-vector", revision="v1").layers == [1]
    assert calls == [("someone/happy-vector", hub.VECTOR_FILENAME, "v1")]
    monkeypatch.undo()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FormatError, match="cannot get 'vector.safetensors' from the Hugging Face Hub repo"):
        SteeringVector.load("nobody/not-in-the-cache")
    with pytest.raises(FormatError, match="does not exist"):
        SteeringVector.load(tmp_path / "missing.safetensors")


def test_cli_export_hub(tiny, tmp_path):
    vec = random_vector(tiny("llama"), layers=(1,))
    src = vec.save(tmp_path / "v.safetensors")
    result = CliRunner().invoke(app, ["export", str(src), "--format", "hub", "--out", str(tmp_path / "share")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "share" / "vector.safetensors").is_file() and (tmp_path / "share" / "README.md").is_file()
